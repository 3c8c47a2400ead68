//! `GET /api/v1/audit`: the audit log, newest first, for admins. Read-only:
//! rows are written by database triggers, and the API role may not change them.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{ApiQuery, Auth, Page, Scoped};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    /// The user who made the change; absent for changes made by the appliance itself.
    pub actor_id: Option<Uuid>,
    /// create, update or delete.
    pub action: String,
    /// The table, e.g. `customers.customers`.
    pub entity: String,
    pub entity_id: Uuid,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    pub request_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only events about this record.
    pub entity_id: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let limit = super::limit(params.limit)?;
    let before: i64 = match params.cursor.as_deref() {
        None => i64::MAX,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::validation("cursor", "not a cursor this API returned"))?,
    };
    let db = Scoped::begin(&state, auth, Permission::AuditRead, &headers).await?;
    let rows = db
        .client()
        .query(
            "SELECT id, actor_id, action, entity, entity_id, before, after, request_id, at FROM audit.events \
             WHERE id < $1 AND ($2::uuid IS NULL OR entity_id = $2) ORDER BY id DESC LIMIT $3",
            &[&before, &params.entity_id, &(limit + 1)],
        )
        .await?;
    db.commit().await?;
    let mut items: Vec<AuditEvent> = rows
        .iter()
        .map(|r| AuditEvent {
            id: r.get(0),
            actor_id: r.get(1),
            action: r.get(2),
            entity: r.get(3),
            entity_id: r.get(4),
            before: r.get(5),
            after: r.get(6),
            request_id: r.get(7),
            at: r.get(8),
        })
        .collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|e| e.id.to_string())
    });
    Ok(Json(Page {
        items,
        next_cursor: next_cursor.flatten(),
    }))
}
