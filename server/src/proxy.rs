//! Who the client is, and which URL it reaches us at, when a reverse proxy may stand between.
//!
//! `X-Forwarded-For` and `X-Forwarded-Proto` are believed only from a proxy the operator named
//! (`--trusted-proxy`): anyone else could write anything there. The client is then the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy (entries to its
//! left were written by the client and prove nothing). Every request runs in a `request` span
//! that carries that address, so the server's logs name the client, not the proxy; handlers
//! find it as a [`ClientAddr`] extension (for per-client limits).
//!
//! Invites use `--public-url` when given; otherwise the `Host` the client used, with `wss://`
//! when the connection (or, from a trusted proxy, `X-Forwarded-Proto`) is HTTPS.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// A trusted proxy: one address, or a network in CIDR notation (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxy {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or a network like 10.0.0.0/8");
        let (ip, prefix) = s
            .trim()
            .split_once('/')
            .map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let network = IpAddr::from_str(ip).map_err(|_| bad())?.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(TrustedProxy { network, prefix })
    }
}

/// The base URL invites are built on: `https://host[:port][/prefix]` or `http://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('/');
        let (scheme, rest) = s.split_once("://").unwrap_or(("", ""));
        let scheme = match scheme {
            "https" | "wss" => "wss",
            "http" | "ws" => "ws",
            _ => {
                return Err(format!(
                    "{s:?}: a public URL looks like https://duet.example.com"
                ))
            }
        };
        if rest.is_empty() || rest.contains(['?', '#', ' ']) {
            return Err(format!("{s:?}: a public URL has a host and no query"));
        }
        Ok(PublicUrl(format!("{scheme}://{rest}")))
    }
}

/// The client's address: the peer's, or from `X-Forwarded-For` when the peer is a trusted
/// proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The WebSocket base of invites (`wss://host/ws`), for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsBase(pub String);

/// How the server is reached: set once at start.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub trusted: Vec<TrustedProxy>,
    pub public_url: Option<PublicUrl>,
    /// The server terminates TLS itself.
    pub tls: bool,
}

impl Edge {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|proxy| proxy.contains(ip))
    }

    /// The client behind `peer`, given the request's headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        if !self.trusts(peer) {
            return ClientAddr(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| IpAddr::from_str(a.trim()).ok())
            .collect();
        let client = forwarded
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer);
        ClientAddr(client)
    }

    /// The WebSocket base invites use for a request from `peer`.
    pub fn ws_base(&self, peer: IpAddr, headers: &HeaderMap) -> WsBase {
        if let Some(PublicUrl(url)) = &self.public_url {
            return WsBase(format!("{url}/ws"));
        }
        let forwarded_https = self.trusts(peer)
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        let scheme = if self.tls || forwarded_https {
            "wss"
        } else {
            "ws"
        };
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost:8000");
        WsBase(format!("{scheme}://{host}/ws"))
    }
}

/// Middleware: finds the client and the invites' base, and runs the request in a span that
/// names the client.
pub async fn identify(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = edge.client(peer.ip(), request.headers());
    let base = edge.ws_base(peer.ip(), request.headers());
    request.extensions_mut().insert(client);
    request.extensions_mut().insert(base);
    let span = tracing::info_span!("request", client = %client);
    next.run(request).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn edge(trusted: &[&str]) -> Edge {
        Edge {
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..Edge::default()
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let edge = edge(&["127.0.0.1", "10.0.0.0/8"]);
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.2")]);
        // From a trusted proxy: the right-most untrusted address.
        assert_eq!(edge.client(ip("127.0.0.1"), &spoofed).0, ip("198.51.100.2"));
        // From anyone else: the peer, whatever the header says.
        assert_eq!(edge.client(ip("127.0.0.5"), &spoofed).0, ip("127.0.0.5"));
        // Proxies chained inside the trusted network are skipped.
        let chained = headers(&[("x-forwarded-for", "198.51.100.2, 10.1.2.3")]);
        assert_eq!(edge.client(ip("10.0.0.1"), &chained).0, ip("198.51.100.2"));
        // No header: the proxy itself.
        assert_eq!(
            edge.client(ip("127.0.0.1"), &HeaderMap::new()).0,
            ip("127.0.0.1")
        );
        // IPv4-mapped IPv6 peers match IPv4 entries.
        assert_eq!(
            edge.client(ip("::ffff:127.0.0.1"), &chained).0,
            ip("198.51.100.2")
        );
    }

    #[test]
    fn invites_use_the_public_url_else_the_scheme_and_host_used() {
        let host = headers(&[("host", "h:8000"), ("x-forwarded-proto", "https")]);
        assert_eq!(
            edge(&[]).ws_base(ip("127.0.0.1"), &host).0,
            "ws://h:8000/ws"
        );
        assert_eq!(
            edge(&["127.0.0.1"]).ws_base(ip("127.0.0.1"), &host).0,
            "wss://h:8000/ws"
        );
        let public = Edge {
            public_url: Some("https://duet.example.com:8443/".parse().unwrap()),
            ..Edge::default()
        };
        assert_eq!(
            public.ws_base(ip("127.0.0.1"), &host).0,
            "wss://duet.example.com:8443/ws"
        );
        let tls = Edge {
            tls: true,
            ..Edge::default()
        };
        assert_eq!(tls.ws_base(ip("127.0.0.1"), &host).0, "wss://h:8000/ws");
    }

    #[test]
    fn bad_settings_say_what_is_expected() {
        assert!("ftp://x"
            .parse::<PublicUrl>()
            .unwrap_err()
            .contains("https://"));
        assert!("https://".parse::<PublicUrl>().is_err());
        assert!("10.0.0.0/33"
            .parse::<TrustedProxy>()
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!("nginx".parse::<TrustedProxy>().is_err());
        assert!("::1".parse::<TrustedProxy>().unwrap().contains(ip("::1")));
    }
}
