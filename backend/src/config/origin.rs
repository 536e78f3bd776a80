//! Which browser pages may open a WebSocket. Browsers always send `Origin` on
//! a WebSocket handshake, so checking it stops other sites from using a
//! visitor's browser to talk to this server (cross-site WebSocket hijacking).
//! Requests without `Origin` come from non-browser clients and are allowed.

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

    /// Allows a handshake when it has no `Origin`, when the origin is the
    /// server's own (its host equals the request's `Host`), or when it is listed.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), OriginRefused> {
        let Some(origin) = origin else { return Ok(()) };
        let normalized = normalize(origin);
        if self.any || self.allowed.contains(&normalized) {
            return Ok(());
        }
        let authority = normalized.strip_prefix("http://").or_else(|| normalized.strip_prefix("https://"));
        match (authority, host) {
            (Some(authority), Some(host)) if authority == host.trim().to_ascii_lowercase() => Ok(()),
            _ => Err(OriginRefused(origin.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_is_a_non_browser_client_and_is_allowed() {
        assert_eq!(OriginPolicy::default().check(None, Some("127.0.0.1:8080")), Ok(()));
    }

    #[test]
    fn the_servers_own_origin_is_allowed() {
        let p = OriginPolicy::default();
        assert_eq!(p.check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), Ok(()));
        assert_eq!(p.check(Some("https://Chat.Example.com"), Some("chat.example.com")), Ok(()));
    }

    #[test]
    fn foreign_origins_are_refused() {
        let p = OriginPolicy::default();
        for (origin, host) in [
            ("http://evil.example", Some("127.0.0.1:8080")),
            ("http://127.0.0.1:9999", Some("127.0.0.1:8080")),
            ("null", Some("127.0.0.1:8080")),
            ("http://127.0.0.1:8080", None),
            ("ftp://127.0.0.1:8080", Some("127.0.0.1:8080")),
        ] {
            assert!(p.check(Some(origin), host).is_err(), "{origin} should be refused");
        }
    }

    #[test]
    fn listed_origins_are_allowed_after_normalizing() {
        let p = OriginPolicy::new(&["https://Pages.Example.com/"]).expect("valid");
        assert_eq!(p.check(Some("https://pages.example.com"), Some("api.example.com")), Ok(()));
        assert!(p.check(Some("http://pages.example.com"), Some("api.example.com")).is_err());
    }

    #[test]
    fn a_star_allows_everything() {
        let p = OriginPolicy::new(&["*"]).expect("valid");
        assert_eq!(p.check(Some("http://anything.test"), Some("x")), Ok(()));
    }

    #[test]
    fn malformed_allowed_origins_are_config_errors() {
        for bad in ["example.com", "https://", "https://a.com/path", "ws://a.com"] {
            assert_eq!(OriginPolicy::new(&[bad]), Err(BadOrigin(bad.to_owned())), "{bad}");
        }
    }
}
