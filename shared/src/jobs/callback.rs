//! Result callbacks: POST a finished job to the submitter's `callback_url`, signed.
//!
//! Signature: `X-Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (the scheme Stripe uses, so existing verifiers fit). The timestamp lets receivers reject
//! replays.
//!
//! Server-side request forgery: unless `jobs.allow_private_callbacks` is set, a callback may
//! only reach public addresses. IP literals are checked when the job is submitted; host names
//! are checked then too, and again at connection time by a DNS resolver that drops every
//! non-public address (so a name that re-resolves to 127.0.0.1 later still cannot get there).
//! Redirects are not followed.

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
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                || v6 == Ipv6Addr::UNSPECIFIED)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
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
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("sluice-callback/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
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

    /// POSTs `body` to `url`, signed, with up to three attempts.
    pub async fn send(&self, url: &str, body: &[u8], unix_secs: u64) -> Result<(), CallbackError> {
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
