//! Issuers: the one base URL that names this service in every token (`iss`), discovery
//! document and JWKS URL, and the earlier base URLs whose tokens still verify.
//!
//! The base is `public_url` when configured, else fixed at start-up from the address the
//! listener bound (`http://127.0.0.1:8080`, `https://` with TLS, IPv6 in brackets). It never
//! comes from a request's `Host`: a token issued through one host name must verify through
//! any other, and after a restart.

use std::net::SocketAddr;

/// The current base URL and its aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuers {
    base: String,
    aliases: Vec<String>,
}

/// A base URL without its trailing slashes.
fn trimmed(u: &str) -> String {
    u.trim_end_matches('/').to_owned()
}

impl Issuers {
    /// `public_url` when set, else `<scheme>://<addr>` of the bound address; `aliases` are
    /// earlier base URLs (or earlier issuers of one app) whose tokens still verify.
    pub fn new(public_url: Option<&str>, bound: &str, tls: bool, aliases: &[String]) -> Self {
        let base = match public_url {
            Some(u) => trimmed(u),
            None => format!("{}://{bound}", if tls { "https" } else { "http" }),
        };
        Self {
            aliases: aliases
                .iter()
                .map(|a| trimmed(a))
                .filter(|a| *a != base)
                .collect(),
            base,
        }
    }

    /// As [`Self::new`] for a bound socket address (IPv6 in brackets).
    pub fn bound(
        public_url: Option<&str>,
        addr: SocketAddr,
        tls: bool,
        aliases: &[String],
    ) -> Self {
        Self::new(public_url, &addr.to_string(), tls, aliases)
    }

    /// The base URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An app's issuer, `<base>/apps/<id>`: the `iss` of every new token of the app.
    pub fn issuer(&self, app_id: &str) -> String {
        format!("{}/apps/{app_id}", self.base)
    }

    /// Whether a token of `app_id` carrying `iss` was issued by this service: the current
    /// issuer, or one under an alias.
    pub fn accepts(&self, app_id: &str, iss: &str) -> bool {
        let of = |base: &str| {
            iss.strip_prefix(base)
                .and_then(|rest| rest.strip_prefix("/apps/"))
                .is_some_and(|id| id == app_id)
        };
        of(&self.base)
            || self.aliases.iter().any(|a| {
                of(a)
                    || (iss == a
                        && a.strip_suffix(app_id)
                            .is_some_and(|b| b.ends_with("/apps/")))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_public_url_else_the_bound_address() {
        let i = Issuers::new(
            Some("https://keys.example.com/"),
            "0.0.0.0:8080",
            false,
            &[],
        );
        assert_eq!(i.issuer("A"), "https://keys.example.com/apps/A");
        let addr: SocketAddr = "[::1]:8443".parse().expect("addr");
        let i = Issuers::bound(None, addr, true, &[]);
        assert_eq!(i.issuer("A"), "https://[::1]:8443/apps/A");
    }

    #[test]
    fn aliases_keep_earlier_issuers_verifying() {
        let i = Issuers::new(
            Some("https://new.example.com"),
            "",
            false,
            &[
                "http://127.0.0.1:8080/".into(),
                "https://old.example.com/apps/B".into(),
            ],
        );
        assert!(i.accepts("A", "https://new.example.com/apps/A"));
        assert!(i.accepts("A", "http://127.0.0.1:8080/apps/A"));
        assert!(i.accepts("B", "https://old.example.com/apps/B"));
        // Never another app's issuer, nor a look-alike.
        assert!(!i.accepts("A", "https://new.example.com/apps/B"));
        assert!(!i.accepts("A", "https://old.example.com/apps/B"));
        assert!(!i.accepts("A", "http://127.0.0.1:8080/apps/A/x"));
        assert!(!i.accepts("A", "http://127.0.0.1:80800/apps/A"));
    }
}
