//! Which browser pages may open a WebSocket. Browsers always send `Origin` on
//! a WebSocket handshake, so checking it stops other sites from using a
//! visitor's browser to talk to this server (cross-site WebSocket hijacking).
//! Requests without `Origin` come from non-browser clients and are allowed.
//! The request's `Host` has been checked first ([`super::names`]), so "the
//! server's own origin" cannot be an attacker's name under DNS rebinding.

use super::names::HostMatch;

/// The allowed origins besides the server's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Normalized `scheme://host[:port]`, lowercase, no trailing slash.
    allowed: Vec<String>,
    /// `--allow-origin '*'`: any page may connect (development only).
    any: bool,
}

/// An `--allow-origin` value that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow-origin {0:?} is not an origin like https://chat.example.com[:port] (or *)")]
pub struct BadOrigin(pub String);

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("origin {0:?} is neither this server nor an allowed origin")]
pub struct OriginRefused(pub String);

/// Lowercases and strips one trailing slash: `HTTPS://Chat.Example.com/` → `https://chat.example.com`.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl OriginPolicy {
    /// Builds the policy from `--allow-origin` values; `*` allows every origin.
    pub fn new<S: AsRef<str>>(origins: &[S]) -> Result<Self, BadOrigin> {
        let mut policy = Self::default();
        for raw in origins {
            let raw = raw.as_ref().trim();
            if raw == "*" {
                policy.any = true;
                continue;
            }
            let origin = normalize(raw);
            let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            match rest {
                Some(authority) if !authority.is_empty() && !authority.contains(['/', '?', '#', ' ']) => {
                    policy.allowed.push(origin);
                }
                _ => return Err(BadOrigin(raw.to_owned())),
            }
        }
        Ok(policy)
    }

    /// Allows a handshake when it has no `Origin`, when the origin is listed,
    /// or when it is the server's own: one of the public URLs the request's
    /// `Host` named (scheme included), or else an `http`/`https` origin whose
    /// authority is that `Host` (already checked to be one of the server's names).
    pub fn check(&self, origin: Option<&str>, host: &HostMatch) -> Result<(), OriginRefused> {
        let Some(origin) = origin else { return Ok(()) };
        let normalized = normalize(origin);
        if self.any || self.allowed.contains(&normalized) {
            return Ok(());
        }
        let own = if host.public_origins.is_empty() {
            let authority = normalized.strip_prefix("http://").or_else(|| normalized.strip_prefix("https://"));
            authority == Some(host.authority.as_str())
        } else {
            host.public_origins.contains(&normalized)
        };
        if own { Ok(()) } else { Err(OriginRefused(origin.to_owned())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Host` that named a server name (or a default name).
    fn host(authority: &str) -> HostMatch {
        HostMatch { authority: authority.to_owned(), public_origins: Vec::new() }
    }

    /// A `Host` that named `--public-url`s with these origins.
    fn public(authority: &str, origins: &[&str]) -> HostMatch {
        HostMatch { authority: authority.to_owned(), public_origins: origins.iter().map(|o| (*o).to_owned()).collect() }
    }

    #[test]
    fn no_origin_is_a_non_browser_client_and_is_allowed() {
        assert_eq!(OriginPolicy::default().check(None, &host("127.0.0.1:8080")), Ok(()));
    }

    #[test]
    fn the_servers_own_origin_is_allowed() {
        let p = OriginPolicy::default();
        assert_eq!(p.check(Some("http://127.0.0.1:8080"), &host("127.0.0.1:8080")), Ok(()));
        assert_eq!(p.check(Some("https://Chat.Example.com"), &host("chat.example.com")), Ok(()));
    }

    #[test]
    fn foreign_origins_are_refused() {
        let p = OriginPolicy::default();
        for (origin, authority) in [
            ("http://evil.example", "127.0.0.1:8080"),
            ("http://127.0.0.1:9999", "127.0.0.1:8080"),
            ("null", "127.0.0.1:8080"),
            ("ftp://127.0.0.1:8080", "127.0.0.1:8080"),
        ] {
            assert!(p.check(Some(origin), &host(authority)).is_err(), "{origin} should be refused");
        }
    }

    #[test]
    fn with_a_public_url_the_scheme_counts_too() {
        let p = OriginPolicy::default();
        let site = public("chat.example.com", &["https://chat.example.com"]);
        assert_eq!(p.check(Some("https://chat.example.com"), &site), Ok(()));
        assert!(p.check(Some("http://chat.example.com"), &site).is_err(), "plain http is another origin");
        assert!(p.check(Some("https://chat.example.com:8443"), &site).is_err());
        let listed = OriginPolicy::new(&["http://chat.example.com"]).expect("valid");
        assert_eq!(listed.check(Some("http://chat.example.com"), &site), Ok(()), "unless allowed");
    }

    #[test]
    fn listed_origins_are_allowed_after_normalizing() {
        let p = OriginPolicy::new(&["https://Pages.Example.com/"]).expect("valid");
        assert_eq!(p.check(Some("https://pages.example.com"), &host("api.example.com")), Ok(()));
        assert!(p.check(Some("http://pages.example.com"), &host("api.example.com")).is_err());
    }

    #[test]
    fn a_star_allows_everything() {
        let p = OriginPolicy::new(&["*"]).expect("valid");
        assert_eq!(p.check(Some("http://anything.test"), &host("x")), Ok(()));
    }

    #[test]
    fn malformed_allowed_origins_are_config_errors() {
        for bad in ["example.com", "https://", "https://a.com/path", "ws://a.com"] {
            assert_eq!(OriginPolicy::new(&[bad]), Err(BadOrigin(bad.to_owned())), "{bad}");
        }
    }
}
