//! The accept loop: serves a router on sockets that are already bound, in
//! plain HTTP or TLS, HTTP/1.1 and HTTP/2 on the same port.
//!
//! Called by `daemon` through [`serve`]. Takes `std` listeners rather than
//! addresses so whoever binds (the daemon today, a socket handed over by
//! systemd or a previous process later) is not this module's business.
//! Not `axum::serve`: that cannot do TLS or set a header read timeout.
//!
//! Invariants:
//! - A client gets `header_read_timeout` for its TLS handshake and for each
//!   request's headers; a slow or silent one cannot hold a connection.
//! - On shutdown every listener stops accepting at once; HTTP/1.1 answers
//!   carry `Connection: close` from then on, and for [`LINGER`] a connection
//!   may still bring a request; then every connection is told to finish
//!   (HTTP/1.1: after the request in flight; HTTP/2: GOAWAY), and after the
//!   drain time whatever is left is dropped. Listening sockets are not
//!   closed here when someone else holds a copy (a hand-over): connections
//!   that arrive meanwhile wait in the backlog.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// After shutdown starts, how long an open HTTP/1.1 connection may still
/// bring a request (answered with `Connection: close`) before it is closed
/// if idle. Closing an idle keep-alive connection at once races a request
/// the client is sending on it, which then fails; busy clients get their
/// close with their next answer, and only idle ones wait this long.
const LINGER: Duration = Duration::from_millis(500);

/// One bound socket and what it serves.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub app: Router,
    /// `Some`: every connection is TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves every listener until `shutdown` fires, then drains connections
/// for at most `drain`.
pub async fn serve(
    listeners: Vec<Listener>,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    let connections = TaskTracker::new();
    // Cancelled only when the drain time is up: drops what is still open.
    let kill = CancellationToken::new();
    for listener in listeners {
        let Listener { socket, app, tls } = listener;
        let addr = socket.local_addr().ok();
        let socket = match socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(socket))
        {
            Ok(socket) => socket,
            Err(err) => {
                warn!(?addr, %err, "cannot serve on this listener");
                continue;
            }
        };
        let conn = Connection {
            app,
            tls,
            builder: builder.clone(),
            header_read_timeout,
            stop: shutdown.clone(),
            kill: kill.clone(),
        };
        let tracker = connections.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = socket.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors, mostly: pause instead of spinning.
                            warn!(?addr, %err, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                tracker.spawn(conn.clone().run(stream, peer));
            }
        });
    }
    shutdown.cancelled().await;
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        warn!(
            ?drain,
            "in-flight requests did not finish in time; closing them"
        );
        kill.cancel();
        connections.wait().await;
    } else {
        info!("HTTP drained");
    }
}

#[derive(Clone)]
struct Connection {
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: std::sync::Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    stop: CancellationToken,
    kill: CancellationToken,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        // A connection checks both tokens each time it is polled, and a
        // token's state sits behind a mutex: per-connection children keep
        // those locks uncontended (a shared one was taken by every request
        // on both workers).
        self.stop = self.stop.child_token();
        self.kill = self.kill.child_token();
        let kill = self.kill.clone();
        let work = async move {
            match self.tls.clone() {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => self.http(stream, peer).await,
                        Ok(Err(err)) => debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => self.http(stream, peer).await,
            }
        };
        tokio::select! {
            () = work => {}
            () = kill.cancelled() => {}
        }
    }

    async fn http<I>(&self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let stop = self.stop.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let http1 = req.version() <= axum::http::Version::HTTP_11;
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = tower::Service::call(&mut app.clone(), req);
            let stop = stop.clone();
            async move {
                let mut response = response.await?;
                if http1 && stop.is_cancelled() {
                    // The client reconnects for its next request, which the
                    // kernel queues for whoever listens next.
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut stopping = false;
        let linger = tokio::time::sleep(Duration::MAX);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        debug!(%peer, %err, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                }
                () = linger.as_mut(), if stopping => {
                    conn.as_mut().graceful_shutdown();
                    linger.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400));
                }
            }
        }
    }
}

/// What the `redirect_http` listener serves: every request is sent to the
/// same host and path over HTTPS on `https_port` (308, so a POST stays one).
pub fn redirect_to_https(https_port: u16) -> Router {
    Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            redirect(https_port, &uri, &headers)
        },
    )
}

fn redirect(
    https_port: u16,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port)
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c))
        });
    let Some(host) = host else {
        return (
            StatusCode::BAD_REQUEST,
            "a Host header is needed to redirect to HTTPS\n",
        )
            .into_response();
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("https://{host}{port}{path}"))],
    )
        .into_response()
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_path_and_name_the_https_port() {
        let check = |port: u16, host: &str, uri: &str, expected: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("host", host.parse().expect("host"));
            let res = redirect(port, &uri.parse().expect("uri"), &headers);
            assert_eq!(res.status(), 308, "{host} {uri}");
            assert_eq!(res.headers()["location"], expected);
        };
        check(
            443,
            "crm.example.com",
            "/customers?q=a",
            "https://crm.example.com/customers?q=a",
        );
        check(
            8443,
            "crm.example.com:8080",
            "/",
            "https://crm.example.com:8443/",
        );
        check(8443, "[::1]:8080", "/x", "https://[::1]:8443/x");
        let res = redirect(
            443,
            &"/".parse().expect("uri"),
            &axum::http::HeaderMap::new(),
        );
        assert_eq!(res.status(), 400);
    }
}
