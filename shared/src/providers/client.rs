//! The one HTTP client provider calls go through: hyper's pooled client, straight.
//!
//! Sluice's provider calls are all the same shape — a `POST` (or a batch poll's `GET`) of a
//! buffered body with a few headers, answered with a buffered body or an event stream — so
//! they need hyper's connection pool, TLS and a connect timeout, and nothing between. reqwest,
//! which Sluice used before, puts its own layers over the same hyper client (a redirect layer
//! that turns the URL into a string and parses it back, copies of the request's headers for
//! redirects that are never followed here, request extensions, boxed futures): about 25
//! allocations per provider call and ~5 KiB per call in flight (BENCHMARKS.md, issue 18,
//! seventh step). Webhook callbacks keep reqwest (`jobs::callback`): they want its redirect and
//! proxy switches, not speed.
//!
//! **Proxies.** An `https` provider URL goes through the proxy the environment names
//! (`HTTPS_PROXY`, else `ALL_PROXY`; lower case too; `NO_PROXY` exempts hosts), as curl does:
//! an HTTP `CONNECT` tunnel to the provider, TLS inside it, with the proxy URL's user and
//! password as `Proxy-Authorization`. A plain-`http` provider URL (a model server on the local
//! network, a fake in tests) is always reached directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use super::ProviderError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long opening a connection (TCP, and a proxy's `CONNECT`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
const AGENT: HeaderValue = HeaderValue::from_static(concat!("sluice/", env!("CARGO_PKG_VERSION")));
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Pooled keep-alive connections to every provider, HTTP/2 where a provider offers it over
/// TLS (rustls, the system's root certificates). Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: hyper_util::client::legacy::Client<HttpsConnector<Connect>, Full<Bytes>>,
}

impl HttpClient {
    /// The client, with proxies as the environment names them (see the module's notes).
    /// Fails only when the system has no root certificates at all.
    pub fn new() -> std::io::Result<Self> {
        Self::with_proxies(Matcher::from_env())
    }

    fn with_proxies(proxies: Matcher) -> std::io::Result<Self> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connect = Connect {
            tcp,
            proxies: Arc::new(proxies),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connect);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self { inner })
    }

    /// A `POST` to `url`.
    pub fn post(&self, url: impl IntoUri) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }

    /// A `GET` of `url`.
    pub fn get(&self, url: impl IntoUri) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    fn request(&self, method: Method, url: impl IntoUri) -> RequestBuilder<'_> {
        let request = url.into_uri().map(|uri| {
            let mut request = Request::new(Full::default());
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            request.headers_mut().insert(USER_AGENT, AGENT);
            request
        });
        RequestBuilder {
            client: self,
            request,
        }
    }
}

/// A URL for a request: parsed as a browser would (WHATWG, as the config check does), so an
/// unusual character in a path is percent-encoded rather than refused.
pub trait IntoUri {
    /// The URI, or why there is none.
    fn into_uri(self) -> Result<Uri, String>;
}

impl IntoUri for &Uri {
    fn into_uri(self) -> Result<Uri, String> {
        Ok(self.clone())
    }
}

impl IntoUri for &str {
    fn into_uri(self) -> Result<Uri, String> {
        let url = url::Url::parse(self).map_err(|e| format!("invalid URL: {e}"))?;
        Uri::try_from(String::from(url)).map_err(|e| format!("invalid URL: {e}"))
    }
}

impl IntoUri for String {
    fn into_uri(self) -> Result<Uri, String> {
        self.as_str().into_uri()
    }
}

/// A request being put together; an invalid part (a URL, a header value) is kept as the error
/// and reported when it is sent, as [`ProviderError::Connect`].
#[must_use]
pub struct RequestBuilder<'a> {
    client: &'a HttpClient,
    request: Result<Request<Full<Bytes>>, String>,
}

impl RequestBuilder<'_> {
    /// Adds a header.
    pub fn header(self, name: HeaderName, value: &str) -> Self {
        self.header_value(
            name,
            HeaderValue::try_from(value).map_err(|_| "invalid header value".to_owned()),
        )
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn bearer_auth(self, token: &str) -> Self {
        let mut value = String::with_capacity(7 + token.len());
        value.push_str("Bearer ");
        value.push_str(token);
        let value = HeaderValue::try_from(value)
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .map_err(|_| "invalid header value".to_owned());
        self.header_value(AUTHORIZATION, value)
    }

    /// `body` as JSON, with its content type.
    pub fn json(self, body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.header_value(CONTENT_TYPE, Ok(JSON)).body(bytes),
            Err(e) => Self {
                request: Err(format!("cannot encode the body: {e}")),
                ..self
            },
        }
    }

    /// The body as it is.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        if let Ok(request) = &mut self.request {
            *request.body_mut() = Full::new(Bytes::from(body));
        }
        self
    }

    fn header_value(mut self, name: HeaderName, value: Result<HeaderValue, String>) -> Self {
        self.request = match (self.request, value) {
            (Ok(mut request), Ok(value)) => {
                request.headers_mut().insert(name, value);
                Ok(request)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        self
    }

    /// The request as it would be sent (for tests of what a provider puts in it).
    #[cfg(test)]
    pub fn into_request(self) -> Result<Request<Full<Bytes>>, String> {
        self.request
    }

    /// Sends it and waits for the answer's head.
    pub async fn send(self) -> Result<Response<Incoming>, ProviderError> {
        let request = self.request.map_err(ProviderError::Connect)?;
        self.client.inner.request(request).await.map_err(transport)
    }
}

/// The whole body of an answer.
pub async fn bytes(response: Response<Incoming>) -> Result<Bytes, ProviderError> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(transport)?
        .to_bytes())
}

/// An answer's body as it arrives.
pub fn byte_stream(
    response: Response<Incoming>,
) -> impl futures_util::Stream<Item = Result<Bytes, ProviderError>> + Send + 'static {
    use futures_util::StreamExt;
    BodyDataStream::new(response.into_body()).map(|r| r.map_err(transport))
}

/// A transport error as a [`ProviderError`]: a timeout anywhere in its causes is a
/// [`ProviderError::Timeout`]; otherwise its causes, joined. No URL is in them (hyper's and
/// the connector's errors do not carry one).
pub fn transport(e: impl std::error::Error) -> ProviderError {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return ProviderError::Timeout;
        }
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    ProviderError::Connect(message)
}

/// Opens a connection to a provider: directly, or through a `CONNECT` tunnel when the
/// environment names a proxy for the (https) URL.
#[derive(Clone)]
pub struct Connect {
    tcp: HttpConnector,
    proxies: Arc<Matcher>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for Connect {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let proxy = (dst.scheme() == Some(&http::uri::Scheme::HTTPS))
            .then(|| self.proxies.intercept(&dst))
            .flatten();
        match proxy {
            None => {
                let connecting = self.tcp.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Some(proxy) if proxy.uri().scheme() != Some(&http::uri::Scheme::HTTP) => {
                let scheme = proxy.uri().scheme_str().unwrap_or("").to_owned();
                Box::pin(async move {
                    Err(format!("proxy scheme {scheme:?} is not supported (only http://)").into())
                })
            }
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.tcp.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// With a proxy named for https, the connection is a `CONNECT` tunnel through it, with
    /// the proxy's credentials; without one (or for plain http), the provider directly.
    #[tokio::test]
    async fn https_goes_through_the_named_proxy_and_http_does_not() {
        // The "provider": echoes one line back.
        let provider = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider_addr = provider.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = provider.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap();
                    s.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        // The proxy: accepts one CONNECT, records its head, splices to the target.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let (heads, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = proxy.accept().await.unwrap();
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 1];
                        if s.read(&mut b).await.unwrap() == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8(head).unwrap();
                    let target = head.split(' ').nth(1).unwrap().to_owned();
                    heads.send(head).unwrap();
                    let mut up = TcpStream::connect(target).await.unwrap();
                    s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                });
            }
        });
        let matcher = Matcher::builder()
            .https(format!("http://user:secret@{proxy_addr}"))
            .http(format!("http://{proxy_addr}"))
            .build();
        let mut connect = Connect {
            tcp: {
                let mut tcp = HttpConnector::new();
                tcp.enforce_http(false);
                tcp
            },
            proxies: Arc::new(matcher),
        };
        let echo = |mut io: TcpStream| async move {
            io.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            io.read_exact(&mut buf).await.unwrap();
            buf
        };

        let tunneled = connect
            .call(format!("https://{provider_addr}/v1").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(&echo(tunneled.into_inner()).await, b"ping");
        let head = seen.recv().await.unwrap();
        assert!(
            head.starts_with(&format!("CONNECT {provider_addr} HTTP/1.1\r\n")),
            "{head}"
        );
        // user:secret, base64.
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{head}"
        );

        let direct = connect
            .call(format!("http://{provider_addr}/v1").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(&echo(direct.into_inner()).await, b"ping");
        assert!(seen.try_recv().is_err(), "plain http went to the proxy");

        let socks = Matcher::builder()
            .https(format!("socks5://{proxy_addr}"))
            .build();
        connect.proxies = Arc::new(socks);
        let refused = connect
            .call(format!("https://{provider_addr}/v1").parse().unwrap())
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("not supported"), "{refused}");
    }

    #[tokio::test]
    async fn a_bad_url_or_header_fails_at_send_and_a_refused_connection_is_a_connect_error() {
        let client = HttpClient::with_proxies(Matcher::builder().build()).unwrap();
        let error = client.post("not a url").send().await.unwrap_err();
        assert!(
            matches!(&error, ProviderError::Connect(m) if m.contains("invalid URL")),
            "{error:?}"
        );
        let error = client
            .post("http://127.0.0.1:9/x")
            .header(HeaderName::from_static("x-api-key"), "line\nbreak")
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ProviderError::Connect(m) if m.contains("invalid header")),
            "{error:?}"
        );
        // Port 9 (discard) is closed here: refused, with the cause in the message.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let error = client
            .post(format!("http://{closed}/x"))
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ProviderError::Connect(m) if m.to_lowercase().contains("refused")),
            "{error:?}"
        );
    }

    #[test]
    fn urls_are_read_as_a_browser_would() {
        assert_eq!(
            "https://api.example.com/v1/models/a b:generateContent"
                .into_uri()
                .unwrap()
                .to_string(),
            "https://api.example.com/v1/models/a%20b:generateContent"
        );
        assert!("no scheme".into_uri().is_err());
    }
}
