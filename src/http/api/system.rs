//! `/api/v1/system`: the appliance itself, for admins — its status (the
//! report `pagodirecto status` shows), resource samples and backups.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{ApiJson, Auth, Scoped};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

#[derive(Debug, Serialize, ToSchema)]
pub struct Backup {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub size: u64,
    pub encrypted: bool,
    pub schema_version: i64,
    pub duration_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// When a restore drill last proved this backup restorable.
    #[serde(with = "time::serde::rfc3339::option")]
    pub restore_verified_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Backups {
    pub items: Vec<Backup>,
    /// What runs now ("backup since …"), if anything.
    pub running: Option<String>,
    pub last_failure: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// A label appended to the generated name (letters, digits, '-', '_').
    pub label: Option<String>,
}

fn service(state: &AppState) -> Result<&std::sync::Arc<crate::backup::Backups>, ApiError> {
    state.api.backups.as_ref().ok_or(ApiError::Unavailable)
}

#[utoipa::path(get, path = "/api/v1/system/backups", tag = "system",
    responses((status = 200, body = Backups), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Json<Backups>, ApiError> {
    // The permission check reads the caller's current role from the database.
    Scoped::begin(&state, auth, Permission::SystemManage, &headers)
        .await?
        .commit()
        .await?;
    let backups = service(&state)?;
    let items = backups
        .store()
        .list()
        .map_err(|e| ApiError::Internal(e.into()))?
        .into_iter()
        .map(|m| Backup {
            name: m.name,
            created_at: m.created_at,
            size: m.size,
            encrypted: m.encrypted,
            schema_version: m.schema_version,
            duration_ms: m.duration_ms,
            verified_at: m.verified_at,
            restore_verified_at: m.restore_verified_at,
        })
        .collect();
    let history = backups.history();
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(Json(Backups {
        items,
        running: history
            .running
            .map(|(at, what)| format!("{what} since {}", rfc(at))),
        last_failure: history
            .last_failure
            .map(|(at, e)| format!("{}: {e}", rfc(at))),
    }))
}

#[utoipa::path(post, path = "/api/v1/system/backups", tag = "system", request_body = BackupRequest,
    responses((status = 202, description = "started; see GET for the result"), (status = 403, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BackupRequest>,
) -> Result<Response, ApiError> {
    let bad_label = |l: &String| {
        l.is_empty()
            || l.len() > 40
            || !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if body.label.as_ref().is_some_and(bad_label) {
        return Err(ApiError::validation(
            "label",
            "label must be 1 to 40 letters, digits, '-' or '_'",
        ));
    }
    Scoped::begin(&state, auth, Permission::SystemManage, &headers)
        .await?
        .commit()
        .await?;
    match service(&state)?.start(body.label) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "started" })),
        )
            .into_response()),
        Err(crate::backup::Error::Busy) => Err(ApiError::Conflict(
            "a backup, restore or drill is already running".into(),
        )),
        Err(err) => Err(ApiError::Internal(err.into())),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Resources {
    /// Samples every 5 s over the last hour, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub samples: Vec<crate::telemetry::Sample>,
    /// The budget the samples are measured against (`[limits]`; cores 0 =
    /// no CPU limit).
    pub memory_bytes: u64,
    pub cpu_cores: f64,
    pub postgres_memory_bytes: u64,
    pub postgres_cpu_cores: f64,
    pub disk_reserve_bytes: u64,
    pub max_connections: u32,
}

#[utoipa::path(get, path = "/api/v1/system/resources", tag = "system",
    responses((status = 200, body = Resources), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn resources(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Json<Resources>, ApiError> {
    Scoped::begin(&state, auth, Permission::SystemManage, &headers)
        .await?
        .commit()
        .await?;
    let limits = &state.api.limits;
    Ok(Json(Resources {
        samples: state.api.samples.all(),
        memory_bytes: limits.memory.as_u64(),
        cpu_cores: limits.cpu,
        postgres_memory_bytes: limits.postgres_memory.as_u64(),
        postgres_cpu_cores: limits.postgres_cpu,
        disk_reserve_bytes: limits.disk_reserve.as_u64(),
        max_connections: limits.max_connections,
    }))
}

#[utoipa::path(get, path = "/api/v1/system/status", tag = "system",
    description = "The report `pagodirecto status --json` prints: version, uptime, readiness checks, postgres (state, restarts, last exit), backups, configuration, latest resources.",
    responses((status = 200, body = Object), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    Scoped::begin(&state, auth, Permission::SystemManage, &headers)
        .await?
        .commit()
        .await?;
    let events = state.api.status.as_ref().ok_or(ApiError::Unavailable)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    events
        .send((
            crate::control::Request::Status,
            reply,
            crate::control::ProgressSink::default(),
        ))
        .await
        .map_err(|_| ApiError::Unavailable)?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(Ok(report))) => Ok(Json(report)),
        Ok(Ok(Err(reason))) => Err(ApiError::Internal(anyhow::anyhow!(reason))),
        // The daemon is stopping, or too busy to answer in time.
        Ok(Err(_)) | Err(_) => Err(ApiError::Unavailable),
    }
}
