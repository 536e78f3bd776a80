//! The names the server answers to, checked against every request's `Host`.
//!
//! Under DNS rebinding an attacker's name (`evil.example`) is made to resolve
//! to this server, so a page of the attacker's becomes "same origin" with it:
//! `Origin` and `Host` then agree, and both name the attacker. Only a `Host`
//! compared with names the operator gave (`--public-url`, `--server-name`),
//! or by default with the address the server listens on and the loopback
//! names, tells the server's own pages from the attacker's.

use std::net::{IpAddr, SocketAddr};

/// The names accepted, with the listening port, when none is configured.
pub const DEFAULT_LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The port a `Host` without one means on a name whose scheme is not known
/// (the server itself speaks plain HTTP).
const HTTP_PORT: u16 = 80;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Self::Http => HTTP_PORT,
            Self::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A `--public-url`: where browsers reach the server (scheme, name, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    scheme: Scheme,
    /// Lowercase; an IPv6 address in brackets.
    host: String,
    port: u16,
}

impl PublicUrl {
    /// Parses `https://chat.example.com`, `http://10.0.0.5:8080/`, `https://[::1]:8443`.
    pub fn parse(raw: &str) -> Result<Self, BadName> {
        let bad = || BadName::Url(raw.to_owned());
        let lower = raw.trim().to_ascii_lowercase();
        let (scheme, rest) = if let Some(rest) = lower.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = lower.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_authority(authority).ok_or_else(bad)?;
        Ok(Self { scheme, host: host.to_owned(), port: port.unwrap_or(scheme.default_port()) })
    }

    /// The origin a page at this URL sends: `https://chat.example.com` (no default port).
    pub fn origin(&self) -> String {
        if self.port == self.scheme.default_port() {
            format!("{}://{}", self.scheme.as_str(), self.host)
        } else {
            format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// A `--server-name`: a host name (any port) or `name:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    host: String,
    port: Option<u16>,
}

impl ServerName {
    /// Parses `chat.example.com`, `10.0.0.5`, `[fe80::1]`, `chat.internal:8080`.
    pub fn parse(raw: &str) -> Result<Self, BadName> {
        let lower = raw.trim().to_ascii_lowercase();
        let (host, port) = split_authority(&lower).ok_or_else(|| BadName::Name(raw.to_owned()))?;
        Ok(Self { host: host.to_owned(), port })
    }
}

/// A `--public-url` or `--server-name` that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("--public-url {0:?} is not a URL like https://chat.example.com[:port]")]
    Url(String),
    #[error("--server-name {0:?} is not a host name like chat.example.com[:port]")]
    Name(String),
}

/// The configured names; empty means the defaults (see [`HostPolicy::new`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub public_urls: Vec<PublicUrl>,
    pub server_names: Vec<ServerName>,
}

impl Names {
    /// Parses `--public-url` and `--server-name` values.
    pub fn parse<S: AsRef<str>>(public_urls: &[S], server_names: &[S]) -> Result<Self, BadName> {
        Ok(Self {
            public_urls: public_urls.iter().map(|u| PublicUrl::parse(u.as_ref())).collect::<Result<_, _>>()?,
            server_names: server_names.iter().map(|n| ServerName::parse(n.as_ref())).collect::<Result<_, _>>()?,
        })
    }

    /// True when neither flag was given.
    pub fn is_empty(&self) -> bool {
        self.public_urls.is_empty() && self.server_names.is_empty()
    }
}

/// Which `Host` values the running server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    public_urls: Vec<PublicUrl>,
    server_names: Vec<ServerName>,
}

/// A `Host` that named this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch {
    /// The `Host` as sent, lowercase: `chat.example.com`, `127.0.0.1:8080`.
    pub authority: String,
    /// When it named a `--public-url`: the origins of the public URLs it
    /// named (a page's `Origin` must be one of them, scheme included, even
    /// if a `--server-name` names the same host).
    pub public_origins: Vec<String>,
}

/// A `Host` that is missing, malformed or not one of the server's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefused {
    #[error("this request has no Host header")]
    Missing,
    #[error("this request has more than one Host")]
    Several,
    #[error("the Host header is not a host name")]
    Malformed,
    #[error("this server does not answer to that Host; see --public-url and --server-name")]
    Foreign,
}

impl HostPolicy {
    /// The names to accept: the configured ones, or, when none is, the
    /// address the server listens on (`listen`, as bound: port 0 resolved)
    /// and [`DEFAULT_LOOPBACK_NAMES`], all with the listening port.
    pub fn new(names: &Names, listen: SocketAddr) -> Self {
        if !names.is_empty() {
            return Self { public_urls: names.public_urls.clone(), server_names: names.server_names.clone() };
        }
        let port = Some(listen.port());
        let own = match listen.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut server_names: Vec<ServerName> =
            DEFAULT_LOOPBACK_NAMES.iter().map(|host| ServerName { host: (*host).to_owned(), port }).collect();
        if !server_names.iter().any(|n| n.host == own) {
            server_names.push(ServerName { host: own, port });
        }
        Self { public_urls: Vec::new(), server_names }
    }

    /// Checks one `Host` value.
    pub fn check(&self, host: &str) -> Result<HostMatch, HostRefused> {
        let authority = host.trim().to_ascii_lowercase();
        let (name, port) = split_authority(&authority).ok_or(HostRefused::Malformed)?;
        let public_origins: Vec<String> = self
            .public_urls
            .iter()
            .filter(|u| u.host == name && port.unwrap_or(u.scheme.default_port()) == u.port)
            .map(PublicUrl::origin)
            .collect();
        let named =
            self.server_names.iter().any(|n| n.host == name && n.port.is_none_or(|p| p == port.unwrap_or(HTTP_PORT)));
        if public_origins.is_empty() && !named {
            return Err(HostRefused::Foreign);
        }
        Ok(HostMatch { authority, public_origins })
    }
}

impl std::fmt::Display for HostPolicy {
    /// The accepted hosts, for the log: `https://chat.example.com, chat.internal (any port)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = self.public_urls.iter().map(PublicUrl::origin);
        let names = self.server_names.iter().map(|n| match n.port {
            Some(port) => format!("{}:{port}", n.host),
            None => format!("{} (any port)", n.host),
        });
        write!(f, "{}", urls.chain(names).collect::<Vec<_>>().join(", "))
    }
}

/// Splits a lowercase `host[:port]` and checks both: a DNS name or IPv4
/// address (letters, digits, `-`, `.`, `_`) or a bracketed IPv6 address.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        (host, rest)
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let (host, rest) = authority.split_at(end);
        let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_');
        if host.is_empty() || !host.bytes().all(valid) {
            return None;
        }
        (host, rest)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(addr: &str) -> SocketAddr {
        addr.parse().expect("socket address")
    }

    #[test]
    fn by_default_the_listen_address_and_loopback_names_with_its_port_are_accepted() {
        let p = HostPolicy::new(&Names::default(), listen("127.0.0.1:41234"));
        for host in ["127.0.0.1:41234", "localhost:41234", "LOCALHOST:41234", "[::1]:41234"] {
            assert!(p.check(host).is_ok(), "{host}");
        }
        for host in ["127.0.0.1:8080", "localhost", "evil.example:41234", "evil.example", "127.0.0.2:41234"] {
            assert_eq!(p.check(host), Err(HostRefused::Foreign), "{host}");
        }
        let wide = HostPolicy::new(&Names::default(), listen("0.0.0.0:8080"));
        assert!(wide.check("0.0.0.0:8080").is_ok());
        assert!(wide.check("192.168.1.5:8080").is_err(), "a LAN address must be named");
        let v6 = HostPolicy::new(&Names::default(), listen("[::1]:9000"));
        assert!(v6.check("[::1]:9000").is_ok());
        let on_80 = HostPolicy::new(&Names::default(), listen("127.0.0.1:80"));
        assert!(on_80.check("localhost").is_ok(), "no port means 80");
    }

    #[test]
    fn a_match_keeps_the_host_as_sent() {
        let p = HostPolicy::new(&Names::default(), listen("127.0.0.1:8080"));
        let m = p.check("LocalHost:8080").expect("ours");
        assert_eq!(m, HostMatch { authority: "localhost:8080".into(), public_origins: vec![] });
    }

    #[test]
    fn public_urls_give_name_scheme_and_port_and_replace_the_defaults() {
        let names = Names::parse(&["https://Chat.Example.com/", "http://10.0.0.5:8080"], &[]).expect("valid");
        let p = HostPolicy::new(&names, listen("127.0.0.1:8080"));
        let m = p.check("chat.example.com").expect("ours");
        assert_eq!(m.public_origins, ["https://chat.example.com"]);
        assert!(p.check("chat.example.com:443").is_ok(), "the default port spelled out");
        assert_eq!(p.check("chat.example.com:8443"), Err(HostRefused::Foreign));
        assert_eq!(p.check("10.0.0.5:8080").expect("ours").public_origins, ["http://10.0.0.5:8080"]);
        assert_eq!(p.check("127.0.0.1:8080"), Err(HostRefused::Foreign), "defaults are off once names are given");
        assert_eq!(p.check("localhost:8080"), Err(HostRefused::Foreign));
    }

    #[test]
    fn server_names_match_any_port_unless_one_is_given() {
        let names = Names::parse(&[], &["chat.example.com", "internal:9000", "[fe80::1]"]).expect("valid");
        let p = HostPolicy::new(&names, listen("127.0.0.1:8080"));
        for host in ["chat.example.com", "chat.example.com:8080", "internal:9000", "[fe80::1]:8080"] {
            let m = p.check(host).expect(host);
            assert!(m.public_origins.is_empty(), "{host}: Origin checked against Host");
        }
        assert_eq!(p.check("internal:9001"), Err(HostRefused::Foreign));
        assert_eq!(p.check("internal"), Err(HostRefused::Foreign));
        assert_eq!(p.check("chat.example.com.evil.example"), Err(HostRefused::Foreign));
    }

    #[test]
    fn malformed_hosts_are_refused() {
        let p = HostPolicy::new(&Names::default(), listen("127.0.0.1:8080"));
        for host in
            ["", ":8080", "localhost:", "localhost:80x", "localhost:99999", "a b", "local/host", "[::1", "[]:1", "::1"]
        {
            assert_eq!(p.check(host), Err(HostRefused::Malformed), "{host:?}");
        }
    }

    #[test]
    fn bad_flag_values_are_config_errors() {
        for bad in
            ["chat.example.com", "ftp://x", "https://", "https://a.com/chat", "https://u@a.com", "https://a.com?x"]
        {
            assert_eq!(PublicUrl::parse(bad), Err(BadName::Url(bad.to_owned())), "{bad}");
        }
        for bad in ["https://a.com", "a.com/x", "", "a.com:"] {
            assert_eq!(ServerName::parse(bad), Err(BadName::Name(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(PublicUrl::parse("https://[::1]:8443").expect("valid").origin(), "https://[::1]:8443");
        assert_eq!(PublicUrl::parse("HTTP://A.com:80").expect("valid").origin(), "http://a.com");
    }
}
