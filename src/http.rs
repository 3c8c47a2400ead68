//! The HTTP server: one [`router`] that tests drive without a socket, and
//! [`server::serve`], which runs it on the daemon's listeners (plain or
//! [`tls`]) until shutdown.
//!
//! Called by `daemon`. The only module that turns our types into HTTP
//! responses (see `http/health.rs` for the readiness JSON).
//!
//! Invariant: shutdown stops accepting at once and gives in-flight requests
//! at most the drain timeout; it never waits unbounded on a slow client.

pub mod api;
pub mod edge;
pub mod server;
pub mod tls;
pub mod assets;
pub mod error;
mod health;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::SigningKeys;
use crate::config::AuthConfig;
use crate::health::Health;

/// What handlers can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
    pub api: Arc<ApiState>,
    pub edge: Arc<edge::Edge>,
    /// `/metrics`; absent in tests that build a router without a daemon.
    pub metrics: Option<Arc<MetricsEndpoint>>,
}

/// Renders the Prometheus text, for the addresses allowed to read it.
pub struct MetricsEndpoint {
    pub render: Box<dyn Fn() -> String + Send + Sync>,
    /// Replaced by a config reload.
    pub allow: std::sync::RwLock<Vec<std::net::IpAddr>>,
}

/// `GET /metrics`: to allowed addresses only; to anyone else it does not
/// exist (404), so scanners learn nothing.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    api::ClientAddr(peer): api::ClientAddr,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let allowed = |m: &MetricsEndpoint| {
        let allow = m.allow.read().expect("allow lock is never poisoned");
        peer.is_some_and(|p| allow.contains(&p.ip().to_canonical()))
    };
    match state.metrics.as_deref().filter(|m| allowed(m)) {
        Some(m) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            (m.render)(),
        )
            .into_response(),
        None => error::ApiError::NotFound("route").into_response(),
    }
}

/// What the JSON API needs beyond health.
pub struct ApiState {
    /// Connects as the application role; see `http::api::Scoped`.
    pub pool: deadpool_postgres::Pool,
    /// Replaced when the signing key is rotated (`pagodirecto auth rotate-key`).
    pub keys: std::sync::RwLock<SigningKeys>,
    pub auth: AuthConfig,
    /// Absent in tests that build a router without a cluster.
    pub backups: Option<Arc<crate::backup::Backups>>,
    /// The last hour of resource samples, for the System page's charts.
    pub samples: crate::telemetry::Samples,
    pub limits: crate::config::LimitsConfig,
    /// The daemon's event loop, which answers `status` (the same report the
    /// CLI shows). Absent in tests that build a router without a daemon.
    pub status: Option<tokio::sync::mpsc::Sender<crate::control::Pending>>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "PagoDirecto CRM API", version = crate::update::VERSION, description = "Multi-tenant CRM. Errors are application/problem+json (RFC 9457)."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API routes and the OpenAPI document generated from the same handlers,
/// so the two cannot drift.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::auth::login))
        .routes(routes!(api::auth::refresh))
        .routes(routes!(api::auth::logout))
        .routes(routes!(api::auth::me))
        .routes(routes!(api::customers::list, api::customers::create))
        .routes(routes!(api::customers::get, api::customers::update))
        .routes(routes!(api::customers::archive))
        .routes(routes!(api::contacts::list, api::contacts::create))
        .routes(routes!(api::contacts::get, api::contacts::update))
        .routes(routes!(api::contacts::archive))
        .routes(routes!(api::deals::list, api::deals::create))
        .routes(routes!(api::deals::get, api::deals::update))
        .routes(routes!(api::deals::archive))
        .routes(routes!(api::deals::stages))
        .routes(routes!(api::activities::list, api::activities::create))
        .routes(routes!(api::activities::get, api::activities::update))
        .routes(routes!(api::activities::archive))
        .routes(routes!(api::payments::list, api::payments::create))
        .routes(routes!(api::payments::get, api::payments::update))
        .routes(routes!(api::payments::archive))
        .routes(routes!(api::audit::list))
        .routes(routes!(api::system::list, api::system::create))
        .routes(routes!(api::system::resources))
        .routes(routes!(api::system::status))
        .routes(routes!(api::users::list, api::users::create))
        .routes(routes!(api::users::get, api::users::update))
        .split_for_parts()
}

/// One function builds the whole app, so tests drive it without a socket.
/// The web app is the one embedded in this binary.
pub fn router(state: AppState) -> Router {
    router_with_assets(state, assets::Assets::embedded())
}

/// [`router`] with the web app's files from `assets` (the daemon passes a
/// directory in dev mode). An argument rather than an `AppState` field: the
/// handlers never need it, only the fallback does.
pub fn router_with_assets(state: AppState, assets: assets::Assets) -> Router {
    let edge = state.edge.clone();
    let (api, openapi) = api();
    let openapi = Arc::new(openapi);
    // JSON is compressed per response (br, gzip or zstd, by Accept-Encoding);
    // the web app is not: its files are compressed at build time.
    let json = api
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .layer(tower_http::compression::CompressionLayer::new());
    Router::new()
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .route("/actuator/health", get(health::ready))
        .route("/metrics", get(metrics))
        .route("/actuator/prometheus", get(metrics))
        .merge(json)
        // The edge limits bodies (`[server] max_body`, changeable live).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.edge.clone(),
            edge::edge,
        ))
        // Everything else is the web app, added after the layers: the edge
        // runs around `assets::serve` itself, without the middleware's
        // machinery and request timer, which cost more than serving a file.
        // `assets::serve` keeps the API's problem+json 404 for unknown paths
        // under the daemon's own prefixes.
        .fallback_service(tower::service_fn(move |req: axum::extract::Request| {
            let (edge, assets) = (edge.clone(), assets.clone());
            async move {
                let serve = |req: axum::extract::Request, _timeout| async move {
                    assets::serve(&assets, req.method(), req.uri(), req.headers()).await
                };
                Ok::<_, std::convert::Infallible>(edge.handle(req, serve).await)
            }
        }))
        .with_state(state)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    /// An API state whose pool points nowhere: for tests that never reach the database.
    pub(crate) fn api_state() -> Arc<ApiState> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pg = tokio_postgres::Config::new();
        pg.host_path("/nonexistent").user("nobody").dbname("none");
        let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(1)
            .build()
            .expect("pool");
        let keys =
            SigningKeys::load_or_create(dir.path(), Duration::from_secs(900), None).expect("keys");
        Arc::new(ApiState {
            pool,
            keys: std::sync::RwLock::new(keys),
            auth: AuthConfig::default(),
            backups: None,
            samples: crate::telemetry::Samples::default(),
            limits: crate::config::LimitsConfig::default(),
            status: None,
        })
    }

    #[test]
    fn the_openapi_document_carries_the_binary_version() {
        assert_eq!(api().1.info.version, crate::update::VERSION);
    }

    #[tokio::test]
    async fn every_path_in_the_openapi_document_is_routed() {
        let (_, openapi) = api();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let health = Health::new(rx, std::env::temp_dir(), 0, None);
        let app = router(AppState {
            health,
            api: api_state(),
            edge: edge::Edge::new(&crate::config::ServerConfig::default()),
            metrics: None,
        });
        let mut checked = 0;
        for (path, item) in &openapi.paths.paths {
            let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
            for (method, _) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PATCH", &item.patch),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
            ]
            .into_iter()
            .filter(|(_, op)| op.is_some())
            {
                let req = Request::builder()
                    .method(method)
                    .uri(&concrete)
                    .body(Body::empty())
                    .expect("request");
                let res = app.clone().oneshot(req).await.expect("response");
                assert_ne!(
                    res.status(),
                    404,
                    "{method} {path} is in the spec but not routed"
                );
                assert_ne!(
                    res.status(),
                    405,
                    "{method} {path} is in the spec but not routed for {method}"
                );
                checked += 1;
            }
        }
        drop(tx);
        assert!(checked >= 10, "only {checked} operations in the spec");
    }

    #[tokio::test]
    async fn an_unknown_api_path_is_a_problem_document() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let health = Health::new(rx, std::env::temp_dir(), 0, None);
        let app = router(AppState {
            health,
            api: api_state(),
            edge: edge::Edge::new(&crate::config::ServerConfig::default()),
            metrics: None,
        });
        let res = app
            .oneshot(
                Request::get("/api/v1/nope")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("res");
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
}
