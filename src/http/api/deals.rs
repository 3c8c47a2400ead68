//! `/api/v1/deals` and `/api/v1/pipeline-stages`: the sales pipeline. A deal
//! sits in one stage of its tenant's pipeline; moving it is a PATCH of
//! `stage_id`, with `If-Match` like any other change.
//!
//! Invariants: a deal's customer and stage belong to the caller's tenant
//! (composite foreign keys; another tenant's id is the same 422 as a missing
//! one), and a deal never changes customer, so activities filed against a
//! deal keep naming the deal's customer (see `activities`).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::list::ListQuery;
use super::money::{amount, currency};
use super::resource::{Columns, Resource, archive_row, found, get_row, made};
use super::{ApiJson, ApiPath, ApiQuery, Auth, Page, Scoped, if_match, text};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

const TABLE: &str = "sales.deals";
const COLUMNS: &str = "id, customer_id, stage_id, title, amount_minor, currency, expected_close, \
                       archived_at, version, created_at, updated_at";

// `YYYY-MM-DD` on the wire: `time`'s own serde format for `Date` is a
// (year, ordinal) tuple unless the `serde-human-readable` feature is on.
time::serde::format_description!(iso_date, Date, "[year]-[month]-[day]");

#[derive(Debug, Serialize, ToSchema)]
pub struct Deal {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub stage_id: Uuid,
    pub title: String,
    /// In minor units of `currency` (cents for EUR).
    pub amount_minor: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    /// `YYYY-MM-DD`.
    #[serde(with = "iso_date::option")]
    pub expected_close: Option<Date>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Resource for Deal {
    const TABLE: &'static str = TABLE;
    const COLUMNS: &'static str = COLUMNS;
    const WHAT: &'static str = "deal";
    const PATH: &'static str = "/api/v1/deals";

    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            customer_id: row.get(1),
            stage_id: row.get(2),
            title: row.get(3),
            amount_minor: row.get(4),
            currency: row.get(5),
            expected_close: row.get(6),
            archived_at: row.get(7),
            version: row.get(8),
            created_at: row.get(9),
            updated_at: row.get(10),
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
    /// Search in the title (case-insensitive, substring).
    pub q: Option<String>,
    /// List archived deals instead of active ones.
    pub archived: Option<bool>,
    /// Only this customer's deals.
    pub customer_id: Option<Uuid>,
    /// Only deals in this stage (one column of the pipeline board).
    pub stage_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DealCreate {
    pub customer_id: Uuid,
    /// Defaults to the first open stage of the pipeline.
    pub stage_id: Option<Uuid>,
    pub title: String,
    /// 0 to 10^15 minor units.
    pub amount_minor: i64,
    /// ISO 4217: three upper-case letters.
    pub currency: String,
    /// `YYYY-MM-DD`.
    #[serde(default, with = "iso_date::option")]
    pub expected_close: Option<Date>,
}

/// Absent fields are kept; `null` clears `expected_close`. The customer
/// cannot change (see the module header): file a new deal instead.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DealUpdate {
    /// Moves the deal to another stage of the pipeline.
    pub stage_id: Option<Uuid>,
    pub title: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "date_patch")]
    #[schema(value_type = Option<Date>)]
    pub expected_close: Option<Option<Date>>,
}

/// Like `api::double_option`, for `YYYY-MM-DD` dates.
#[expect(
    clippy::option_option,
    reason = "absent keeps, null clears: the PATCH convention"
)]
fn date_patch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Date>>, D::Error> {
    iso_date::option::deserialize(d).map(Some)
}

/// Keeps dates to years PostgreSQL and every client can hold: `time` parses
/// signed years that neither a `date` column nor most date pickers accept.
fn expected_close(value: Option<Date>) -> Result<Option<Date>, ApiError> {
    match value {
        Some(date) if !(1..=9999).contains(&date.year()) => Err(ApiError::validation(
            "expected_close",
            "expected_close must be a date between years 1 and 9999",
        )),
        other => Ok(other),
    }
}

#[utoipa::path(get, path = "/api/v1/deals", tag = "deals", params(ListParams),
    responses((status = 200, body = Page<Deal>), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Deal>>, ApiError> {
    let query = ListQuery::new(params.archived, params.cursor.as_deref())?
        .equals("customer_id", params.customer_id)
        .equals("stage_id", params.stage_id)
        .search(&["title"], params.q.as_deref())?;
    query.page(&state, auth, &headers, params.limit).await
}

#[utoipa::path(post, path = "/api/v1/deals", tag = "deals", request_body = DealCreate,
    responses((status = 201, body = Deal), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DealCreate>,
) -> Result<Response, ApiError> {
    let title = text("title", &body.title, 1, 200)?;
    let amount_minor = amount("amount_minor", body.amount_minor, 0)?;
    let currency = currency("currency", &body.currency)?;
    let expected_close = expected_close(body.expected_close)?;
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let stage_id = match body.stage_id {
        Some(id) => id,
        None => first_open_stage(&db).await?,
    };
    let deal: Deal = db
        .insert(
            Columns::new()
                .set("customer_id", body.customer_id)
                .set("stage_id", stage_id)
                .set("title", title)
                .set("amount_minor", amount_minor)
                .set("currency", currency)
                .set("expected_close", expected_close),
        )
        .await?;
    db.commit().await?;
    Ok(made(deal))
}

/// Where a new deal starts when the client names no stage. Looked up rather
/// than left to a subquery in the INSERT, because a pipeline with no open
/// stage would then fail as a NOT NULL violation: a 500, not a 422.
async fn first_open_stage(db: &Scoped) -> Result<Uuid, ApiError> {
    let row = db
        .client()
        .query_opt(
            "SELECT id FROM sales.pipeline_stages WHERE kind = 'open' ORDER BY position, id LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| r.get(0)).ok_or_else(|| {
        ApiError::validation(
            "stage_id",
            "stage_id is required: the pipeline has no open stage",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/deals/{id}", tag = "deals", params(("id" = Uuid, Path)),
    responses((status = 200, body = Deal), (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    get_row::<Deal>(&state, auth, &headers, id).await
}

#[utoipa::path(patch, path = "/api/v1/deals/{id}", tag = "deals", params(("id" = Uuid, Path)), request_body = DealUpdate,
    responses((status = 200, body = Deal), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<DealUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let title = body
        .title
        .as_deref()
        .map(|t| text("title", t, 1, 200))
        .transpose()?;
    let amount_minor = body
        .amount_minor
        .map(|a| amount("amount_minor", a, 0))
        .transpose()?;
    let currency = body
        .currency
        .as_deref()
        .map(|c| currency("currency", c))
        .transpose()?;
    let expected_close = body.expected_close.map(expected_close).transpose()?;
    let columns = Columns::new()
        .change("stage_id", body.stage_id)
        .change("title", title)
        .change("amount_minor", amount_minor)
        .change("currency", currency)
        .change("expected_close", expected_close);
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let deal: Deal = db.update(id, version, columns).await?;
    db.commit().await?;
    Ok(found(deal))
}

#[utoipa::path(post, path = "/api/v1/deals/{id}/archive", tag = "deals", params(("id" = Uuid, Path)),
    responses((status = 200, body = Deal), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    archive_row::<Deal>(&state, auth, &headers, id).await
}

/// One column of the pipeline board.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineStage {
    pub id: Uuid,
    pub name: String,
    /// Board order, left to right.
    pub position: i32,
    pub kind: StageKind,
}

/// Whether a deal in the stage is still being worked, or closed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Open,
    Won,
    Lost,
}

impl StageKind {
    fn from_db(text: &str) -> Self {
        match text {
            "open" => Self::Open,
            "won" => Self::Won,
            "lost" => Self::Lost,
            other => unreachable!("the kind CHECK constraint does not allow {other:?}"),
        }
    }
}

/// The whole pipeline in one page: a tenant has a handful of stages, so
/// there is no cursor (`next_cursor` is always absent).
#[utoipa::path(get, path = "/api/v1/pipeline-stages", tag = "deals",
    responses((status = 200, body = Page<PipelineStage>), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn stages(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Json<Page<PipelineStage>>, ApiError> {
    let db = Scoped::begin(&state, auth, Permission::CrmRead, &headers).await?;
    let rows = db
        .client()
        .query(
            "SELECT id, name, position, kind FROM sales.pipeline_stages ORDER BY position, id",
            &[],
        )
        .await?;
    db.commit().await?;
    let items = rows
        .iter()
        .map(|r| PipelineStage {
            id: r.get(0),
            name: r.get(1),
            position: r.get(2),
            kind: StageKind::from_db(r.get(3)),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn expected_close_is_an_iso_date_within_four_digit_years() {
        let body: DealCreate = serde_json::from_str(
            r#"{"customer_id": "00000000-0000-0000-0000-000000000000", "title": "t",
                "amount_minor": 0, "currency": "EUR", "expected_close": "2030-02-28"}"#,
        )
        .expect("valid");
        assert_eq!(body.expected_close, Some(date!(2030 - 02 - 28)));
        assert_eq!(
            expected_close(body.expected_close).expect("in range"),
            body.expected_close
        );
        assert!(expected_close(Some(date!(0000 - 01 - 01))).is_err());
        for bad in [
            "2030-02-30",
            "2030-2-28",
            "28/02/2030",
            "2030-02-28T00:00:00Z",
        ] {
            let json = format!(
                r#"{{"customer_id": "00000000-0000-0000-0000-000000000000", "title": "t",
                     "amount_minor": 0, "currency": "EUR", "expected_close": "{bad}"}}"#
            );
            assert!(serde_json::from_str::<DealCreate>(&json).is_err(), "{bad}");
        }
    }
}
