//! Result callbacks: POST a finished job to the submitter's `callback_url`, signed.
//!
//! Signature: `X-Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (the scheme Stripe uses, so existing verifiers fit). The timestamp lets receivers reject
//! replays.
//!
//! Server-side request forgery: unless `jobs.allow_private_callbacks` is set, a callback may
//! only reach public addresses ([`is_public`]). IP literals are checked when the job is
//! submitted; host names are checked then too, and again at connection time by a DNS resolver
//! that drops every non-public address (so a name that re-resolves to 127.0.0.1 later still
//! cannot get there). Redirects are not followed, and proxy environment variables are ignored
//! (a proxy would connect in our place).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use url::Host;

use crate::config::Secret;

/// Why a callback URL is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallbackError {
    /// Not an absolute http(s) URL
    #[error("`callback_url` must be an absolute http or https URL")]
    BadUrl,
    /// Resolves to loopback, private, link-local or another non-public address
    #[error("`callback_url` must not point to a loopback, private or link-local address")]
    PrivateAddress,
    /// The host name does not resolve
    #[error("`callback_url` host does not resolve")]
    Unresolvable,
    /// No signing secret is configured
    #[error("callbacks are not enabled on this gateway (set `jobs.callback_secret`)")]
    NotConfigured,
    /// Delivery failed after retries
    #[error("callback delivery failed: {0}")]
    Delivery(String),
}

/// Whether an address is reachable on the public internet (and so allowed for callbacks).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments (192.0.0.0/24)
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (192.88.99.0/24)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// IPv6: not loopback, unspecified, multicast, unique local, link local or site local, and in
/// none of the special-purpose ranges below.
///
/// Every form that carries an IPv4 address is refused whole rather than judged by the address
/// inside: `::/8` holds IPv4-compatible `::a.b.c.d`, IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d` and NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`; then
/// 6to4 `2002::/16` and Teredo `2001::/32`. Where the IPv4 address sits, and what a relay or
/// translator does with it, differs by form; a callback never needs one of them, since the
/// receiver can be named by its IPv4 address or a host name. (One cost: on an IPv6-only
/// network with DNS64, a name of an IPv4-only host resolves into 64:ff9b::/96 and is refused.)
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, fourth, ..] = ip.segments();
    let special = match first {
        // Reserved by the IETF, and where every IPv4-in-IPv6 form but 6to4 and Teredo lives.
        0x0000..=0x00ff => true,
        // Discard-only, 100::/64.
        0x0100 => second == 0 && third == 0 && fourth == 0,
        // IETF protocol assignments 2001::/23 (Teredo 2001::/32, benchmarking, ORCHID…)
        // and documentation 2001:db8::/32.
        0x2001 => second < 0x0200 || second == 0x0db8,
        // 6to4.
        0x2002 => true,
        // Documentation, 3fff::/20.
        0x3fff => second < 0x1000,
        // Segment-routing SIDs, 5f00::/16.
        0x5f00 => true,
        // Site local (deprecated), fec0::/10.
        0xfec0..=0xfeff => true,
        _ => false,
    };
    !(special
        || ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local())
}

/// A resolver that only ever yields public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(std::io::Error::other("host resolves to no public address"))
                        as Box<dyn std::error::Error + Send + Sync>,
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Sends signed callbacks.
pub struct CallbackSender {
    http: reqwest::Client,
    secret: Option<Secret>,
    allow_private: bool,
}

impl CallbackSender {
    /// A sender with its own HTTP client (no redirects; public-only DNS unless allowed).
    pub fn new(
        secret: Option<Secret>,
        allow_private: bool,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        // No proxy, whatever `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` say: a proxy would resolve
        // and connect in our place, past the public-only resolver.
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("sluice-callback/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout);
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            http: builder.build()?,
            secret,
            allow_private,
        })
    }

    /// Checks a URL at submission time.
    pub async fn check_url(&self, url: &str) -> Result<Url, CallbackError> {
        if self.secret.is_none() {
            return Err(CallbackError::NotConfigured);
        }
        let parsed = Url::parse(url).map_err(|_| CallbackError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(CallbackError::BadUrl);
        }
        let host = parsed.host().ok_or(CallbackError::BadUrl)?;
        if self.allow_private {
            return Ok(parsed);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let ips: Vec<IpAddr> = match host {
            Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
            Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
            Host::Domain(name) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| CallbackError::Unresolvable)?
                .map(|a| a.ip())
                .collect(),
        };
        if ips.is_empty() {
            return Err(CallbackError::Unresolvable);
        }
        if ips.iter().any(|ip| !is_public(*ip)) {
            return Err(CallbackError::PrivateAddress);
        }
        Ok(parsed)
    }

    /// `X-Sluice-Signature` for `body` at `unix_secs`.
    pub fn signature(secret: &Secret, unix_secs: u64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail; an empty MAC is never sent
        // because `send` requires a configured secret.
        let mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map(|mut m| {
            m.update(unix_secs.to_string().as_bytes());
            m.update(b".");
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        });
        format!("t={unix_secs},v1={}", mac.unwrap_or_default())
    }

    /// POSTs `body` to `url`, signed, with up to three attempts; inside a Lambda invocation,
    /// given up at its deadline (minus the margin) rather than frozen mid-call.
    pub async fn send(&self, url: &str, body: &[u8], unix_secs: u64) -> Result<(), CallbackError> {
        match crate::invocation::time_left() {
            Some(left) => tokio::time::timeout(left, self.attempts(url, body, unix_secs))
                .await
                .unwrap_or_else(|_| {
                    Err(CallbackError::Delivery(
                        "the invocation's deadline came first".into(),
                    ))
                }),
            None => self.attempts(url, body, unix_secs).await,
        }
    }

    async fn attempts(&self, url: &str, body: &[u8], unix_secs: u64) -> Result<(), CallbackError> {
        let secret = self.secret.as_ref().ok_or(CallbackError::NotConfigured)?;
        let url = self.check_url(url).await?;
        let signature = Self::signature(secret, unix_secs, body);
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let sent = self
                .http
                .post(url.clone())
                .header("content-type", "application/json")
                .header("x-sluice-signature", &signature)
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => last = e.without_url().to_string(),
            }
        }
        Err(CallbackError::Delivery(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 special ranges and every way IPv6 embeds an IPv4 address, each with a public and
    /// a private IPv4 inside (the whole range is refused either way).
    #[test]
    fn special_ranges_and_every_ipv4_in_ipv6_form_are_not_public() {
        for ip in [
            // IETF protocol assignments and the 6to4 relay anycast.
            "192.0.0.1",
            "192.0.0.170",
            "192.0.0.255",
            "192.88.99.1",
            "192.88.99.255",
            // IPv6 site-local (deprecated), fec0::/10.
            "fec0::1",
            "fed0::1",
            "feff:ffff::1",
            // IPv4-compatible ::a.b.c.d.
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            // IPv4-mapped ::ffff:a.b.c.d.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:8.8.8.8",
            // IPv4-translated ::ffff:0:a.b.c.d (SIIT).
            "::ffff:0:7f00:1",
            // 6to4, 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:a9fe:a9fe::1",
            "2002:808:808::1",
            // NAT64, the well-known prefix and the local-use one.
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::808:808",
            // Teredo: 2001:0::/32, the client's IPv4 inverted in the last 32 bits.
            "2001::80ff:fefe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:0:ffff:ffff:ffff:ffff:f5ff:fffe",
            // Other special-purpose IPv6: discard, benchmarking, ORCHIDv2, documentation.
            "100::1",
            "2001:2::1",
            "2001:20::1",
            "3fff::1",
            "5f00::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(!is_public(parsed), "{ip}");
        }
        // Neighbours of the refused ranges stay public.
        for ip in [
            "192.0.1.1",
            "192.88.98.1",
            "192.88.100.1",
            "2003::1",
            "2001:200::1",
            "2001:4860:4860::8888",
            "3fff:1000::1",
            "2a00:1450:4001:80b::200e",
            "101::1",
            "100:0:0:1::1",
            "fe00::1",
            "fe7f::1",
            "fbff:ffff::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn callback_urls_in_the_special_ranges_are_refused() {
        let strict =
            CallbackSender::new(Some(Secret::new("s")), false, Duration::from_secs(1)).unwrap();
        for url in [
            "http://192.0.0.170/x",
            "http://192.88.99.1/x",
            "http://[fec0::1]/x",
            "http://[::127.0.0.1]/x",
            "http://[::ffff:127.0.0.1]:8080/x",
            "http://[2002:7f00:1::1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[64:ff9b:1::a00:1]/x",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
        ] {
            assert!(
                matches!(
                    strict.check_url(url).await,
                    Err(CallbackError::PrivateAddress)
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_to_private_addresses_are_refused_unless_allowed() {
        let secret = Some(Secret::new("s"));
        let strict = CallbackSender::new(secret.clone(), false, Duration::from_secs(1)).unwrap();
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://10.0.0.8/x",
            "http://169.254.169.254/latest",
            "http://localhost:8080/x",
        ] {
            assert!(strict.check_url(url).await.is_err(), "{url}");
        }
        assert!(matches!(
            strict.check_url("ftp://example.com/x").await,
            Err(CallbackError::BadUrl)
        ));
        let lax = CallbackSender::new(secret, true, Duration::from_secs(1)).unwrap();
        assert!(lax.check_url("http://127.0.0.1:9/x").await.is_ok());
        let unsigned = CallbackSender::new(None, true, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            unsigned.check_url("http://127.0.0.1:9/x").await,
            Err(CallbackError::NotConfigured)
        ));
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_not_connected_to() {
        // A name that was public when the job was accepted and points at 127.0.0.1 when it
        // is delivered (DNS rebinding) meets the sender's client, past `check_url`.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        let secret = Some(Secret::new("s"));
        let strict = CallbackSender::new(secret.clone(), false, Duration::from_secs(2)).unwrap();
        for host in ["localhost", "LOCALHOST", "localhost."] {
            let url = format!("http://{host}:{port}/hook");
            let sent = strict.http.post(&url).body("{}").send().await;
            assert!(sent.is_err(), "{url}");
            assert!(strict.send(&url, b"{}", 0).await.is_err(), "{url}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        // The same name is reachable when private callbacks are allowed: the refusal above
        // is the resolver's doing, not a dead listener.
        let lax = CallbackSender::new(secret, true, Duration::from_secs(2)).unwrap();
        let _ = lax
            .http
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = CallbackSender::signature(&Secret::new("key"), 1700000000, b"{}");
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sig,
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
