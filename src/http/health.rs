//! `GET /health` (liveness: the event loop answers) and `GET /ready`
//! (readiness: every check in [`crate::health`] passes; 503 otherwise).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "UP" }))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let report = state.health.check().await;
    let ready = report.ready();
    let checks: serde_json::Map<String, Value> = report
        .checks
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                json!({ "ok": c.ok, "detail": c.detail }),
            )
        })
        .collect();
    let body = Json(
        json!({ "status": if ready { "UP" } else { "DOWN" }, "ready": ready, "checks": checks }),
    );
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::super::{AppState, router};
    use crate::health::Health;

    async fn get(state: AppState, path: &str) -> (u16, serde_json::Value) {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let res = router(state).oneshot(req).await.expect("response");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("json"))
    }

    fn state(postgres_up: bool, reserve: u64) -> (AppState, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(postgres_up);
        let health = Health::new(rx, std::env::temp_dir(), reserve, None);
        (
            AppState {
                health,
                api: crate::http::tests::api_state(),
                edge: crate::http::edge::Edge::new(&crate::config::ServerConfig::default()),
                metrics: None,
            },
            tx,
        )
    }

    #[tokio::test]
    async fn health_is_up_even_when_postgres_is_down() {
        let (state, _tx) = state(false, 0);
        assert_eq!(get(state, "/health").await.0, 200);
    }

    #[tokio::test]
    async fn ready_names_each_failing_check() {
        let (state, tx) = state(false, u64::MAX);
        let (status, body) = get(state.clone(), "/ready").await;
        assert_eq!(status, 503);
        assert_eq!(body["checks"]["postgres"]["ok"], false);
        assert_eq!(body["checks"]["migrations"]["ok"], false);
        assert_eq!(
            body["checks"]["disk"]["ok"], false,
            "free space is below a u64::MAX reserve"
        );

        tx.send(true).expect("send");
        state
            .health
            .migrations_applied
            .store(true, Ordering::Release);
        let (status, body) = get(state, "/ready").await;
        assert_eq!(status, 503, "the disk is still below the reserve");
        assert_eq!(body["checks"]["postgres"]["ok"], true);
        assert_eq!(body["checks"]["migrations"]["ok"], true);
    }

    #[tokio::test]
    async fn ready_is_200_when_every_check_passes() {
        let (state, _tx) = state(true, 0);
        state
            .health
            .migrations_applied
            .store(true, Ordering::Release);
        let (status, body) = get(state, "/actuator/health").await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "UP");
    }
}
