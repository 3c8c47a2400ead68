//! The HTTP edge, in process: what the old stack's nginx proxy did in front
//! of the API — a request id on every request and log line, per-client rate
//! limits on the API, CORS for the configured origins, a body size limit, a
//! concurrency limit that sheds load (never the probes) instead of queueing,
//! a request timeout, and security headers (HSTS with TLS) on every response.
//!
//! One function ([`Edge::handle`]) so the order is explicit: id → log span
//! (API) → rate limit → CORS preflight → body limit → concurrency → timeout →
//! handler → headers. The router's middleware ([`edge`]) runs it around
//! every routed handler; the web app's files run it around `assets::serve`,
//! outside the router's layers. Everything it enforces comes from `[server]`
//! and is replaced by [`Edge::update`] on a config reload.
//!
//! CORS is done here rather than with tower-http's layer: that one answers
//! every `OPTIONS` as a preflight (with the allowed methods and headers)
//! whatever the origin, while the rule here is "nothing for other origins".
//!
//! Invariant: `X-Forwarded-For` is believed only from `trusted_proxies`;
//! otherwise the peer address is the client (never spoofable by a header).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use super::error::ApiError;
use crate::config::ServerConfig;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The edge's shared state: limits from `[server]`, replaceable at run time
/// (a config reload swaps them; requests in flight keep the ones they took).
pub struct Edge {
    limits: std::sync::RwLock<Arc<Limits>>,
    clock: DefaultClock,
    /// Requests refused so far, by the rate limits and by shedding: under
    /// overload a log line per refusal would cost more than the refusal.
    limited: std::sync::atomic::AtomicU64,
    shed: std::sync::atomic::AtomicU64,
    requests: crate::telemetry::RequestMetrics,
}

/// The first refusal of a kind is logged, then every this many.
const LOG_EVERY: u64 = 1000;

/// Counts one refusal; true when this one should be logged.
fn count(counter: &std::sync::atomic::AtomicU64) -> (bool, u64) {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    (n % LOG_EVERY == 1, n)
}

struct Limits {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    trusted_proxies: Vec<IpAddr>,
    max_body: usize,
    hsts: bool,
    cors_origins: Vec<HeaderValue>,
}

/// What axum enforces when no edge set a limit (tests without the edge).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The body limit in force for a request, for extractors that explain a 413.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl Limits {
    fn new(cfg: &ServerConfig) -> Self {
        let quota = |per_minute: u32| {
            let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
            Quota::per_minute(n)
        };
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota(cfg.rate_limit_per_minute)),
            auth_limiter: DefaultKeyedRateLimiter::keyed(quota(cfg.auth_rate_limit_per_minute)),
            in_flight: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
            timeout: cfg.request_timeout,
            trusted_proxies: cfg.trusted_proxies.clone(),
            max_body: usize::try_from(cfg.max_body.as_u64()).unwrap_or(usize::MAX),
            hsts: cfg.tls_enabled(),
            cors_origins: cfg
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }
}

impl Edge {
    #[must_use]
    pub fn new(cfg: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            limits: std::sync::RwLock::new(Arc::new(Limits::new(cfg))),
            clock: DefaultClock::default(),
            limited: std::sync::atomic::AtomicU64::new(0),
            shed: std::sync::atomic::AtomicU64::new(0),
            requests: crate::telemetry::RequestMetrics::default(),
        })
    }

    /// Applies new `[server]` limits (a config reload). Rate-limit budgets
    /// start afresh; requests in flight finish under the old limits.
    pub fn update(&self, cfg: &ServerConfig) {
        *self.limits.write().expect("limits lock is never poisoned") = Arc::new(Limits::new(cfg));
    }

    fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .expect("limits lock is never poisoned")
            .clone()
    }

    /// Every minute until `stop`, forgets clients not seen for a while, so
    /// the limiter's memory stays bounded however many addresses call.
    pub fn forget_idle_clients_until(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let edge = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let limits = edge.limits();
                        limits.limiter.retain_recent();
                        limits.auth_limiter.retain_recent();
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
    }
}

impl Limits {
    fn client(&self, req: &Request) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())?;
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        // The rightmost address our trusted proxy did not add itself.
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = forwarded.and_then(|list| {
            list.rsplit(',').map(str::trim).find_map(|a| {
                a.parse::<IpAddr>()
                    .ok()
                    .filter(|ip| !self.trusted_proxies.contains(ip))
            })
        });
        Some(client.unwrap_or(peer))
    }
}

/// Sent with TLS only: a year, and no `includeSubDomains` (the appliance
/// may sit on one name of a domain whose other hosts are not ours).
const HSTS: &str = "max-age=31536000";
/// What a cross-origin caller may do and read.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const CORS_HEADERS: &str = "authorization, content-type, if-match, if-none-match, x-request-id";
const CORS_EXPOSE: &str = "etag, location, retry-after, x-request-id";

impl Limits {
    /// The request's `Origin` when it is one of `cors_origins`.
    fn allowed_origin(&self, req: &Request) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        self.cors_origins.contains(origin).then(|| origin.clone())
    }

    /// A CORS preflight from an allowed origin, answered here; from any
    /// other origin it is an ordinary `OPTIONS` (which nothing routes), so
    /// the browser sees no CORS headers and refuses.
    fn preflight(&self, req: &Request) -> Option<Response> {
        let is_preflight = req.method() == axum::http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let origin = self.allowed_origin(req).filter(|_| is_preflight)?;
        Some(
            (
                axum::http::StatusCode::NO_CONTENT,
                [
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                    (
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        HeaderValue::from_static(CORS_METHODS),
                    ),
                    (
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static(CORS_HEADERS),
                    ),
                    (
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static("600"),
                    ),
                ],
            )
                .into_response(),
        )
    }

    /// 413 at once when `Content-Length` says the body is too large;
    /// otherwise the body is cut off at the limit as it is read (chunked
    /// uploads), which extractors report as 413 too.
    fn limit_body(&self, req: &mut Request) -> Option<Response> {
        if axum::body::HttpBody::is_end_stream(req.body()) {
            // No body at all (a GET, mostly): nothing to limit.
            return None;
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Some(
                ApiError::PayloadTooLarge {
                    limit: self.max_body,
                }
                .into_response(),
            );
        }
        req.extensions_mut().insert(BodyLimit(self.max_body));
        let body = std::mem::take(req.body_mut());
        *req.body_mut() = axum::body::Body::new(http_body_util::Limited::new(body, self.max_body));
        None
    }
}

/// Paths monitoring polls: never rate-limited or shed.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready") || path.starts_with("/actuator/")
}

/// Paths the per-client rate limits count: the API. The web app's files
/// are not counted (the old stack's frontend nginx did not limit them
/// either): a page load must not spend a client's API budget, and serving
/// them costs less than refusing them would; the concurrency limit still
/// bounds them.
fn is_rate_limited(path: &str) -> bool {
    path.starts_with("/api/") || path == "/openapi.json"
}

/// The edge as router middleware: everything the router routes passes
/// here, with the request timeout around the handler.
pub async fn edge(State(edge): State<Arc<Edge>>, req: Request, next: Next) -> Response {
    edge.handle(req, |req, timeout| run_with_timeout(next, req, timeout))
        .await
}

impl Edge {
    /// Everything the edge does, in the module header's order, around
    /// `handler`, which gets the request and the timeout it is held to. The
    /// router's middleware ([`edge`]) passes the routed handler; the web
    /// app's files, which the router does not route (`http::router`), pass
    /// `assets::serve`, which never waits (no timer to arm per file).
    pub async fn handle<F, Fut>(&self, mut req: Request, handler: F) -> Response
    where
        F: FnOnce(Request, Duration) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let id = req
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| {
                v.len() <= 128
                    && v.to_str()
                        .is_ok_and(|s| s.chars().all(|c| c.is_ascii_graphic()))
            })
            .cloned()
            .unwrap_or_else(|| {
                let mut id = [0; uuid::fmt::Hyphenated::LENGTH];
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
                HeaderValue::from_str(id).expect("a uuid is a valid header")
            });
        req.headers_mut().insert(REQUEST_ID, id.clone());
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let api = is_rate_limited(&path);
        // What an API request logs on its way (database errors, auth failures)
        // carries its id through this span. The rest (the web app's files, the
        // probes, /metrics) log nothing but the access line, which names the
        // request itself: no span for them (creating, formatting and entering
        // one was a measurable part of serving a small file).
        let span = if api {
            tracing::info_span!("request", request_id = %id.to_str().unwrap_or(""), method = %method, path = %path)
        } else {
            tracing::Span::none()
        };
        let started = Instant::now();
        let limits = self.limits();
        let client = limits.client(&req);
        let origin = limits.allowed_origin(&req);

        let mut response = async {
            if let Some(ip) = client.filter(|_| api) {
                let limiter = if path.starts_with("/api/v1/auth/") {
                    &limits.auth_limiter
                } else {
                    &limits.limiter
                };
                if let Err(not_until) = limiter.check_key(&ip) {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if let (true, total) = count(&self.limited) {
                        tracing::warn!(%ip, total, "rate limited (logged once per {LOG_EVERY})");
                    }
                    return ApiError::TooManyRequests {
                        detail: "too many requests from this address; slow down".into(),
                        retry_after: wait.as_secs().max(1),
                    }
                    .into_response();
                }
            }
            if let Some(preflight) = limits.preflight(&req) {
                return preflight;
            }
            if let Some(too_large) = limits.limit_body(&mut req) {
                return too_large;
            }
            // Shed, don't queue: past the limit a request gets 503 at once, so a
            // burst cannot pile up latency for everyone.
            let Ok(_permit) = limits.in_flight.try_acquire() else {
                if is_probe(&path) {
                    // Monitoring must see the daemon as it is, not as shed.
                    return handler(req, limits.timeout).await;
                }
                if let (true, total) = count(&self.shed) {
                    tracing::warn!(
                        total,
                        "over the concurrency limit; shedding (logged once per {LOG_EVERY})"
                    );
                }
                return ApiError::Overloaded.into_response();
            };
            handler(req, limits.timeout).await
        }
        .instrument(span)
        .await;

        limits.decorate(response.headers_mut(), id.clone(), origin);
        self.requests.record(
            route_label(matched.as_ref(), response.status()),
            &method,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            request_id = %id.to_str().unwrap_or(""),
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request"
        );
        response
    }
}

/// The handler, answered 503 when it takes longer than `timeout`.
async fn run_with_timeout(next: Next, req: Request, timeout: Duration) -> Response {
    if let Ok(response) = tokio::time::timeout(timeout, next.run(req)).await {
        response
    } else {
        tracing::warn!(?timeout, "request timed out");
        ApiError::Timeout.into_response()
    }
}

impl Limits {
    /// What every response gets on its way out: the request id, security
    /// headers, HSTS with TLS, and CORS headers for an allowed origin.
    fn decorate(
        &self,
        headers: &mut axum::http::HeaderMap,
        id: HeaderValue,
        origin: Option<HeaderValue>,
    ) {
        headers.reserve(SECURITY_HEADERS.len() + 2);
        headers.insert(REQUEST_ID, id);
        for (name, value) in SECURITY_HEADERS {
            if !headers.contains_key(*name) {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
        }
        if self.hsts {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        if !self.cors_origins.is_empty() {
            // The answer depends on Origin, so caches must not share it across origins.
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE),
            );
        }
    }
}

/// The metrics label for a request: the route's template (ids stay
/// `{id}`), so the number of series is bounded by the routes, whatever
/// paths clients send; the web app's files are one label.
fn route_label(matched: Option<&MatchedPath>, status: axum::http::StatusCode) -> &str {
    match matched {
        Some(route) => route.as_str(),
        None if status == axum::http::StatusCode::NOT_FOUND => "unmatched",
        None => "/*",
    }
}

/// On every response unless a handler set its own (the web app sets a CSP
/// that allows its scripts; everything else gets the strictest).
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
];

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    fn app(cfg: &ServerConfig) -> Router {
        app_with(Edge::new(cfg))
    }

    fn app_with(edge: Arc<Edge>) -> Router {
        Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/upload",
                axum::routing::post(
                    |body: axum::body::Bytes| async move { body.len().to_string() },
                ),
            )
            .route("/api/v1/auth/login", get(|| async { "login" }))
            .route("/api/v1/things", get(|| async { "things" }))
            .route("/health", get(|| async { "up" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(edge, super::edge))
    }

    /// The status `app` answers `req` with.
    async fn status_of(app: &Router, req: Request) -> axum::http::StatusCode {
        app.clone().oneshot(req).await.expect("res").status()
    }

    fn request(path: &str, from: [u8; 4], headers: &[(&str, &str)]) -> Request {
        let mut req = Request::get(path).body(Body::empty()).expect("request");
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((from, 40000))));
        for (name, value) in headers {
            req.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        req
    }

    #[tokio::test]
    async fn every_response_has_security_headers_and_a_request_id() {
        let res = app(&ServerConfig::default())
            .oneshot(request("/fast", [10, 0, 0, 1], &[]))
            .await
            .expect("response");
        assert_eq!(res.status(), 200);
        for (name, _) in SECURITY_HEADERS {
            assert!(res.headers().contains_key(*name), "{name}");
        }
        let id = res.headers()["x-request-id"].to_str().expect("id");
        assert_eq!(id.len(), 36, "a generated uuid: {id}");

        let res = app(&ServerConfig::default())
            .oneshot(request(
                "/fast",
                [10, 0, 0, 1],
                &[("x-request-id", "abc-123")],
            ))
            .await
            .expect("response");
        assert_eq!(
            res.headers()["x-request-id"],
            "abc-123",
            "an incoming id is propagated"
        );
    }

    #[tokio::test]
    async fn auth_is_rate_limited_per_client_with_retry_after_and_probes_never() {
        let cfg = ServerConfig {
            auth_rate_limit_per_minute: 2,
            ..ServerConfig::default()
        };
        let app = app(&cfg);
        for _ in 0..2 {
            let res = app
                .clone()
                .oneshot(request("/api/v1/auth/login", [10, 0, 0, 1], &[]))
                .await
                .expect("response");
            assert_eq!(res.status(), 200);
        }
        let res = app
            .clone()
            .oneshot(request("/api/v1/auth/login", [10, 0, 0, 1], &[]))
            .await
            .expect("response");
        assert_eq!(res.status(), 429);
        assert!(
            res.headers()["retry-after"]
                .to_str()
                .expect("header")
                .parse::<u64>()
                .expect("secs")
                >= 1
        );
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let other = app
            .clone()
            .oneshot(request("/api/v1/auth/login", [10, 0, 0, 2], &[]))
            .await
            .expect("response");
        assert_eq!(other.status(), 200, "another client has its own budget");
        let rest = app
            .clone()
            .oneshot(request("/fast", [10, 0, 0, 1], &[]))
            .await
            .expect("response");
        assert_eq!(
            rest.status(),
            200,
            "the looser general limit still has room"
        );
        for _ in 0..5 {
            let probe = app
                .clone()
                .oneshot(request("/health", [10, 0, 0, 1], &[]))
                .await
                .expect("response");
            assert_eq!(probe.status(), 200);
        }
    }

    #[tokio::test]
    async fn the_api_is_rate_limited_per_client_and_the_web_app_is_not() {
        let cfg = ServerConfig {
            rate_limit_per_minute: 3,
            ..ServerConfig::default()
        };
        let app = app(&cfg);
        for _ in 0..10 {
            assert_eq!(
                status_of(&app, request("/fast", [10, 0, 0, 1], &[])).await,
                200
            );
        }
        let mut api = Vec::new();
        for _ in 0..4 {
            api.push(status_of(&app, request("/api/v1/things", [10, 0, 0, 1], &[])).await);
        }
        assert_eq!(api[..3], [200; 3], "{api:?}");
        assert_eq!(api[3], 429, "{api:?}");
    }

    #[tokio::test]
    async fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let cfg = ServerConfig {
            auth_rate_limit_per_minute: 1,
            trusted_proxies: vec!["10.0.0.9".parse().expect("ip")],
            ..ServerConfig::default()
        };
        let app = app(&cfg);
        let via_proxy = |client: &str| {
            request(
                "/api/v1/auth/login",
                [10, 0, 0, 9],
                &[("x-forwarded-for", client)],
            )
        };
        assert_eq!(status_of(&app, via_proxy("203.0.113.1")).await, 200);
        assert_eq!(
            status_of(&app, via_proxy("203.0.113.2")).await,
            200,
            "a different client behind the proxy"
        );
        assert_eq!(status_of(&app, via_proxy("203.0.113.1")).await, 429);
        // From an untrusted peer the header is ignored: the peer is the client.
        let spoof = |client: &str| {
            request(
                "/api/v1/auth/login",
                [10, 0, 0, 7],
                &[("x-forwarded-for", client)],
            )
        };
        assert_eq!(status_of(&app, spoof("198.51.100.1")).await, 200);
        assert_eq!(
            status_of(&app, spoof("198.51.100.2")).await,
            429,
            "spoofing does not buy a new budget"
        );
    }

    #[tokio::test]
    async fn excess_concurrency_is_shed_with_503_not_queued() {
        let cfg = ServerConfig {
            max_concurrent_requests: 1,
            ..ServerConfig::default()
        };
        let app = app(&cfg);
        let slow = tokio::spawn(app.clone().oneshot(request("/slow", [10, 0, 0, 1], &[])));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = app
            .clone()
            .oneshot(request("/fast", [10, 0, 0, 2], &[]))
            .await
            .expect("response");
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        assert_eq!(
            status_of(&app, request("/health", [10, 0, 0, 2], &[])).await,
            200,
            "probes are never shed"
        );
        assert_eq!(slow.await.expect("join").expect("response").status(), 200);
        let after = app
            .oneshot(request("/fast", [10, 0, 0, 2], &[]))
            .await
            .expect("response");
        assert_eq!(
            after.status(),
            200,
            "capacity is back once the slow one finished"
        );
    }

    fn with_method(mut req: Request, method: &str) -> Request {
        *req.method_mut() = method.parse().expect("method");
        req
    }

    #[tokio::test]
    async fn cors_answers_configured_origins_only_and_follows_a_reload() {
        let cfg = ServerConfig {
            cors_origins: vec!["https://app.example".into()],
            ..ServerConfig::default()
        };
        let edge = Edge::new(&cfg);
        let app = app_with(edge.clone());
        let preflight = |origin: &str| {
            with_method(
                request(
                    "/fast",
                    [10, 0, 0, 1],
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "POST"),
                        (
                            "access-control-request-headers",
                            "authorization, content-type",
                        ),
                    ],
                ),
                "OPTIONS",
            )
        };
        let ok = app
            .clone()
            .oneshot(preflight("https://app.example"))
            .await
            .expect("res");
        assert_eq!(ok.status(), 204);
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let methods = ok.headers()["access-control-allow-methods"]
            .to_str()
            .expect("str");
        assert!(methods.contains("POST"), "{methods}");
        let allowed = ok.headers()["access-control-allow-headers"]
            .to_str()
            .expect("str");
        assert!(allowed.contains("authorization"), "{allowed}");

        let refused = app
            .clone()
            .oneshot(preflight("https://evil.example"))
            .await
            .expect("res");
        assert_ne!(refused.status(), 204);
        for name in refused.headers().keys() {
            assert!(
                !name.as_str().starts_with("access-control-"),
                "{name} for another origin"
            );
        }

        let simple = app
            .clone()
            .oneshot(request(
                "/fast",
                [10, 0, 0, 1],
                &[("origin", "https://app.example")],
            ))
            .await
            .expect("res");
        assert_eq!(
            simple.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(
            simple.headers()["access-control-expose-headers"]
                .to_str()
                .expect("str")
                .contains("etag")
        );
        let other = app
            .clone()
            .oneshot(request(
                "/fast",
                [10, 0, 0, 1],
                &[("origin", "https://evil.example")],
            ))
            .await
            .expect("res");
        assert_eq!(other.status(), 200);
        assert!(!other.headers().contains_key("access-control-allow-origin"));

        // A reload replaces the list.
        edge.update(&ServerConfig {
            cors_origins: vec!["https://evil.example".into()],
            ..ServerConfig::default()
        });
        let now = app
            .clone()
            .oneshot(preflight("https://evil.example"))
            .await
            .expect("res");
        assert_eq!(now.status(), 204);
        let old = app
            .oneshot(preflight("https://app.example"))
            .await
            .expect("res");
        assert!(!old.headers().contains_key("access-control-allow-origin"));
    }

    #[tokio::test]
    async fn hsts_only_with_tls() {
        let plain = app(&ServerConfig::default())
            .oneshot(request("/fast", [10, 0, 0, 1], &[]))
            .await
            .expect("res");
        assert!(!plain.headers().contains_key("strict-transport-security"));
        let tls = app(&ServerConfig {
            tls: crate::config::TlsMode::SelfSigned,
            ..ServerConfig::default()
        })
        .oneshot(request("/fast", [10, 0, 0, 1], &[]))
        .await
        .expect("res");
        assert_eq!(tls.headers()["strict-transport-security"], HSTS);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_whether_declared_or_streamed() {
        let cfg = ServerConfig {
            max_body: bytesize::ByteSize::kib(1),
            ..ServerConfig::default()
        };
        let app = app(&cfg);
        let upload = |body: Body, len: Option<usize>| {
            let mut req = with_method(request("/upload", [10, 0, 0, 1], &[]), "POST");
            if let Some(len) = len {
                req.headers_mut().insert("content-length", len.into());
            }
            *req.body_mut() = body;
            req
        };
        let small = app
            .clone()
            .oneshot(upload(Body::from(vec![b'x'; 1000]), Some(1000)))
            .await
            .expect("res");
        assert_eq!(small.status(), 200);
        let declared = app
            .clone()
            .oneshot(upload(Body::from(vec![b'x'; 2000]), Some(2000)))
            .await
            .expect("res");
        assert_eq!(declared.status(), 413);
        assert_eq!(
            declared.headers()["content-type"],
            "application/problem+json"
        );
        let chunks = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 500]))),
        );
        let streamed = app
            .oneshot(upload(Body::from_stream(chunks), None))
            .await
            .expect("res");
        assert_eq!(
            streamed.status(),
            413,
            "a chunked body is cut off at the limit"
        );
    }

    #[tokio::test]
    async fn a_request_over_the_timeout_is_abandoned_with_503() {
        let cfg = ServerConfig {
            request_timeout: Duration::from_millis(50),
            ..ServerConfig::default()
        };
        let res = app(&cfg)
            .oneshot(request("/slow", [10, 0, 0, 1], &[]))
            .await
            .expect("response");
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("x-request-id"));
    }
}
