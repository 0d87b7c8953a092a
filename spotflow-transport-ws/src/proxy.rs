//! HTTP CONNECT proxies: configuration (explicit or `HTTPS_PROXY`/`NO_PROXY`) and tunnelling.

use std::fmt;
use std::time::Duration;

use spotflow_core::{Error, Result, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// An HTTP proxy reached with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub address: String,
    /// Basic credentials, never logged.
    pub credentials: Option<(String, Secret)>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("address", &self.address)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "***")))
            .finish()
    }
}

impl Proxy {
    /// Parses `http://[user:password@]host:port` (or `host:port`).
    pub fn parse(url: &str) -> Result<Proxy> {
        let bad = |why: &str| Error::invalid("proxy", format!("{why} (expected http://[user:password@]host:port)"));
        let rest = url.trim().strip_prefix("http://").unwrap_or(url.trim());
        if rest.contains("://") {
            return Err(bad("only http:// proxies are supported"));
        }
        let rest = rest.trim_end_matches('/');
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((creds, addr)) => {
                let (user, pass) = creds.split_once(':').unwrap_or((creds, ""));
                (Some((percent_decode(user), Secret::new(percent_decode(pass)))), addr)
            }
            None => (None, rest),
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) || address.contains('/') {
            return Err(bad("invalid host or port"));
        }
        Ok(Proxy { address: address.to_owned(), credentials })
    }

    /// The proxy from `HTTPS_PROXY` (or `https_proxy`), unless `NO_PROXY` (or `no_proxy`) excludes
    /// `host`.
    pub fn from_env(host: &str) -> Result<Option<Proxy>> {
        let get = |k: &str| {
            std::env::var(k).ok().or_else(|| std::env::var(k.to_lowercase()).ok()).filter(|v| !v.trim().is_empty())
        };
        let Some(url) = get("HTTPS_PROXY") else { return Ok(None) };
        if let Some(no_proxy) = get("NO_PROXY") {
            if excluded(&no_proxy, host) {
                return Ok(None);
            }
        }
        Proxy::parse(&url).map(Some)
    }
}

/// Whether `NO_PROXY` (comma-separated hosts or domain suffixes, `*` for all) covers `host`.
pub fn excluded(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).any(|entry| {
        let entry = entry.split(':').next().unwrap_or("").trim_start_matches('*').trim_start_matches('.').to_owned();
        entry.is_empty() || host == entry || host.ends_with(&format!(".{entry}"))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].iter().enumerate() {
            if k <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Opens a TCP tunnel to `host:port` through `proxy`.
pub async fn tunnel(proxy: &Proxy, host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let work = async {
        let mut tcp = TcpStream::connect(&proxy.address)
            .await
            .map_err(|e| Error::transport_with(format!("cannot reach the proxy {}", proxy.address), e))?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some((user, pass)) = &proxy.credentials {
            let token = base64(format!("{user}:{}", pass.expose()).as_bytes());
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.map_err(|e| Error::transport_with("writing to the proxy", e))?;
        // Read the answer head byte by byte so that nothing of the tunnel is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(Error::transport("the proxy's answer is too long"));
            }
            let mut b = [0u8; 1];
            match tcp.read(&mut b).await {
                Ok(0) => return Err(Error::transport("the proxy closed the connection")),
                Ok(_) => head.push(b[0]),
                Err(e) => return Err(Error::transport_with("reading from the proxy", e)),
            }
        }
        let status_line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) => {
                debug!(proxy = %proxy.address, "proxy tunnel open");
                Ok(tcp)
            }
            Some(407) => Err(Error::Unauthorized(format!("the proxy refused the credentials ({status_line:?})"))),
            _ => Err(Error::transport(format!("the proxy refused the tunnel: {status_line:?}"))),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout(format!("proxy tunnel not open within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxies_and_no_proxy() {
        let p = Proxy::parse("http://user:p%40ss@proxy.local:3128/").unwrap();
        assert_eq!(p.address, "proxy.local:3128");
        assert_eq!(p.credentials.as_ref().unwrap().1.expose(), "p@ss");
        assert!(!format!("{p:?}").contains("p@ss"), "credentials never shown");
        assert_eq!(Proxy::parse("127.0.0.1:8080").unwrap().credentials, None);
        for bad in ["socks5://x:1", "http://host", "http://host:0", "http://:80"] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
        assert!(excluded("localhost,.example.com", "localhost"));
        assert!(excluded("localhost,.example.com", "hub.example.com"));
        assert!(excluded("*", "anything"));
        assert!(!excluded("example.com", "example.org"));
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
