//! `/api/v1/activities`: notes, calls and tasks against a customer and,
//! optionally, one of its deals. Any kind may carry a `due_at`; `done` is
//! toggled by PATCH.
//!
//! Invariant: an activity's deal, when it has one, is a deal of the
//! activity's own customer. The schema only knows that both belong to the
//! tenant, so this module checks the pairing in the same transaction as the
//! write; deals never change customer (see `deals`), so the check stays true.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::list::ListQuery;
use super::resource::{Columns, Resource, archive_row, found, get_row, made};
use super::{
    ApiJson, ApiPath, ApiQuery, Auth, Page, Scoped, double_option, if_match, optional_text, text,
};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

const TABLE: &str = "activities.activities";
const COLUMNS: &str = "id, customer_id, deal_id, kind, subject, body, due_at, done, \
                       archived_at, version, created_at, updated_at";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    Note,
    Call,
    Task,
}

impl ActivityKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Note => "note",
            Self::Call => "call",
            Self::Task => "task",
        }
    }

    fn from_db(text: &str) -> Self {
        match text {
            "note" => Self::Note,
            "call" => Self::Call,
            "task" => Self::Task,
            other => unreachable!("the kind CHECK constraint does not allow {other:?}"),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub deal_id: Option<Uuid>,
    pub kind: ActivityKind,
    pub subject: String,
    pub body: Option<String>,
    /// RFC 3339.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    pub done: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Resource for Activity {
    const TABLE: &'static str = TABLE;
    const COLUMNS: &'static str = COLUMNS;
    const WHAT: &'static str = "activity";
    const PATH: &'static str = "/api/v1/activities";

    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            customer_id: row.get(1),
            deal_id: row.get(2),
            kind: ActivityKind::from_db(row.get(3)),
            subject: row.get(4),
            body: row.get(5),
            due_at: row.get(6),
            done: row.get(7),
            archived_at: row.get(8),
            version: row.get(9),
            created_at: row.get(10),
            updated_at: row.get(11),
        }
    }

    fn id(&self) -> Uuid {
        self.id
    }

    fn version(&self) -> i32 {
        self.version
    }

    fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Search in the subject (case-insensitive, substring).
    pub q: Option<String>,
    /// List archived activities instead of active ones.
    pub archived: Option<bool>,
    /// Only this customer's activities.
    pub customer_id: Option<Uuid>,
    /// Only this deal's activities.
    pub deal_id: Option<Uuid>,
    /// Only notes, calls or tasks.
    #[param(inline)]
    pub kind: Option<ActivityKind>,
    /// Only open (`false`) or finished (`true`) activities.
    pub done: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityCreate {
    pub customer_id: Uuid,
    /// A deal of the same customer.
    pub deal_id: Option<Uuid>,
    pub kind: ActivityKind,
    pub subject: String,
    pub body: Option<String>,
    /// RFC 3339, e.g. `2030-01-31T09:00:00Z`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub done: bool,
}

/// Absent fields are kept; `null` clears `deal_id`, `body` and `due_at`.
/// The customer cannot change: the activity happened with that customer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityUpdate {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub deal_id: Option<Option<Uuid>>,
    pub kind: Option<ActivityKind>,
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub body: Option<Option<String>>,
    #[serde(default, deserialize_with = "timestamp_patch")]
    #[schema(value_type = Option<OffsetDateTime>)]
    pub due_at: Option<Option<OffsetDateTime>>,
    pub done: Option<bool>,
}

/// Like `api::double_option`, for RFC 3339 timestamps.
#[expect(
    clippy::option_option,
    reason = "absent keeps, null clears: the PATCH convention"
)]
fn timestamp_patch<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<OffsetDateTime>>, D::Error> {
    time::serde::rfc3339::option::deserialize(d).map(Some)
}

/// RFC 3339 allows `9999-12-31T23:59:59-23:59`, which is year 10000 in UTC:
/// PostgreSQL would store it, but reading it back could not be formatted as
/// RFC 3339 again. Bounding the UTC year keeps every stored value printable.
fn due_at(value: Option<OffsetDateTime>) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(at) = value else { return Ok(None) };
    match at.checked_to_offset(UtcOffset::UTC) {
        Some(utc) if (1..=9999).contains(&utc.year()) => Ok(Some(utc)),
        _ => Err(ApiError::validation(
            "due_at",
            "due_at must be between years 1 and 9999 in UTC",
        )),
    }
}

/// Refuses a deal that is not visible (missing, or another tenant's) or that
/// belongs to another customer; both are the client's mistake about `deal_id`.
async fn check_deal(db: &Scoped, deal_id: Uuid, customer_id: Uuid) -> Result<(), ApiError> {
    let owner: Option<Uuid> = db
        .client()
        .query_opt(
            "SELECT customer_id FROM sales.deals WHERE id = $1",
            &[&deal_id],
        )
        .await?
        .map(|r| r.get(0));
    match owner {
        None => Err(ApiError::validation(
            "deal_id",
            "deal_id does not refer to an existing record",
        )),
        Some(owner) if owner != customer_id => Err(ApiError::validation(
            "deal_id",
            "deal_id is a deal of another customer",
        )),
        Some(_) => Ok(()),
    }
}

#[utoipa::path(get, path = "/api/v1/activities", tag = "activities", params(ListParams),
    responses((status = 200, body = Page<Activity>), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Activity>>, ApiError> {
    let query = ListQuery::new(params.archived, params.cursor.as_deref())?
        .equals("customer_id", params.customer_id)
        .equals("deal_id", params.deal_id)
        .equals("kind", params.kind.map(ActivityKind::as_str))
        .equals("done", params.done)
        .search(&["subject"], params.q.as_deref())?;
    query.page(&state, auth, &headers, params.limit).await
}

#[utoipa::path(post, path = "/api/v1/activities", tag = "activities", request_body = ActivityCreate,
    responses((status = 201, body = Activity), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ActivityCreate>,
) -> Result<Response, ApiError> {
    let subject = text("subject", &body.subject, 1, 200)?;
    let text_body = optional_text("body", body.body.as_deref(), 10_000)?;
    let due_at = due_at(body.due_at)?;
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    if let Some(deal_id) = body.deal_id {
        check_deal(&db, deal_id, body.customer_id).await?;
    }
    let activity: Activity = db
        .insert(
            Columns::new()
                .set("customer_id", body.customer_id)
                .set("deal_id", body.deal_id)
                .set("kind", body.kind.as_str())
                .set("subject", subject)
                .set("body", text_body)
                .set("due_at", due_at)
                .set("done", body.done),
        )
        .await?;
    db.commit().await?;
    Ok(made(activity))
}

#[utoipa::path(get, path = "/api/v1/activities/{id}", tag = "activities", params(("id" = Uuid, Path)),
    responses((status = 200, body = Activity), (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    get_row::<Activity>(&state, auth, &headers, id).await
}

#[utoipa::path(patch, path = "/api/v1/activities/{id}", tag = "activities", params(("id" = Uuid, Path)), request_body = ActivityUpdate,
    responses((status = 200, body = Activity), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ActivityUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let subject = body
        .subject
        .as_deref()
        .map(|s| text("subject", s, 1, 200))
        .transpose()?;
    let text_body = body
        .body
        .as_ref()
        .map(|b| optional_text("body", b.as_deref(), 10_000))
        .transpose()?;
    let due_at = body.due_at.map(due_at).transpose()?;
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    if let Some(Some(deal_id)) = body.deal_id {
        let customer_id: Uuid = db
            .client()
            .query_opt(
                &format!("SELECT customer_id FROM {TABLE} WHERE id = $1"),
                &[&id],
            )
            .await?
            .ok_or(ApiError::NotFound("activity"))?
            .get(0);
        check_deal(&db, deal_id, customer_id).await?;
    }
    let columns = Columns::new()
        .change("deal_id", body.deal_id)
        .change("kind", body.kind.map(ActivityKind::as_str))
        .change("subject", subject)
        .change("body", text_body)
        .change("due_at", due_at)
        .change("done", body.done);
    let activity: Activity = db.update(id, version, columns).await?;
    db.commit().await?;
    Ok(found(activity))
}

#[utoipa::path(post, path = "/api/v1/activities/{id}/archive", tag = "activities", params(("id" = Uuid, Path)),
    responses((status = 200, body = Activity), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    archive_row::<Activity>(&state, auth, &headers, id).await
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn due_dates_are_stored_in_utc_and_bounded_to_printable_years() {
        assert_eq!(due_at(None).expect("absent"), None);
        assert_eq!(
            due_at(Some(datetime!(2030-01-31 09:00 +1))).expect("valid"),
            Some(datetime!(2030-01-31 08:00 UTC))
        );
        for bad in [
            datetime!(9999-12-31 23:59:59 -23:59),
            datetime!(0000-01-01 00:00 +1),
        ] {
            assert!(due_at(Some(bad)).is_err(), "{bad}");
        }
    }
}
