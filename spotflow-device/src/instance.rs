//! Parsing of the `instance` option.

use spotflow_core::is_loopback_host as is_loopback;
use spotflow_core::{Error, Result};

/// The default platform instance.
pub const DEFAULT_INSTANCE: &str = "api.eu1.spotflow.io";

/// A validated platform instance: where provisioning and registration requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `false` only for `http://` on a loopback host (local development).
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// The host alone (without brackets for IPv6).
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
}

impl Instance {
    /// Parses a host name (`acme.spotflow.io`), `host:port`, a `https://host[:port]` URL, or an
    /// `http://` URL whose host is loopback (`localhost`, `127.0.0.0/8`, `[::1]`). A trailing `/`
    /// is accepted; a path, query, user info or any other scheme is an error.
    pub fn parse(input: &str) -> Result<Instance> {
        let bad = |reason: &str| Error::invalid("instance", format!("{input:?}: {reason}"));
        let trimmed = input.trim();
        let (https, rest) = if let Some(r) = trimmed.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = trimmed.strip_prefix("http://") {
            (false, r)
        } else if trimmed.contains("://") {
            return Err(bad("only https:// (or http:// on a loopback host) is supported"));
        } else {
            (true, trimmed)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad("must be a host with an optional port, without path, query or user info"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("invalid host or port"))?;
        if !https && !is_loopback(&host) {
            return Err(bad("http:// is allowed only for loopback hosts; use https://"));
        }
        Ok(Instance { https, authority: authority.to_ascii_lowercase(), host, port })
    }

    /// `https://authority` (or `http://` for loopback development).
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority)
    }

    /// The string stored with the identity to recognise the instance on the next start.
    pub fn id(&self) -> String {
        if self.https {
            self.authority.clone()
        } else {
            self.base_url()
        }
    }
}

fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (h.to_owned(), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    let valid_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    if !(host.contains(':') || valid_name(&host)) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let i = Instance::parse("api.eu1.spotflow.io").unwrap();
        assert_eq!((i.https, i.authority.as_str(), i.port), (true, "api.eu1.spotflow.io", None));
        let i = Instance::parse("https://localhost:8443/").unwrap();
        assert_eq!((i.https, i.authority.as_str(), i.port), (true, "localhost:8443", Some(8443)));
        assert_eq!(i.base_url(), "https://localhost:8443");
        let i = Instance::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((i.https, i.host.as_str(), i.id().as_str()), (false, "127.0.0.1", "http://127.0.0.1:8080"));
        let i = Instance::parse("http://[::1]:80").unwrap();
        assert_eq!(i.host, "::1");
        assert_eq!(Instance::parse("ACME.spotflow.io").unwrap().authority, "acme.spotflow.io");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "   ",
            "https://",
            "ftp://host",
            "http://example.com",
            "host/path",
            "https://host/path",
            "host:0",
            "host:99999",
            "host:abc",
            "user@host",
            "ho st",
            "-host",
            "host..com",
            "[zz]:1",
            "https://host?x=1",
        ] {
            let err = Instance::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid instance"), "{bad}: {err}");
        }
    }
}
