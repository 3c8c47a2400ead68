//! `/api/v1/payments`: payment links sent to a customer and records of
//! payments received, each with an amount and a status. A status change is a
//! PATCH of `status`.
//!
//! Invariants: the amount, currency, kind and customer of a payment never
//! change once created (a wrong one is cancelled and filed again, so the
//! audit log reads as what happened); status moves only along
//! [`PaymentStatus::next`], which mirrors the `payments.check_transition`
//! trigger. The trigger is the authority: a transition it refuses is a 409
//! whatever this module believes, and a test walks every pair against it.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::list::ListQuery;
use super::money::{amount, currency};
use super::resource::{Columns, Resource, archive_row, found, get_row, made};
use super::{
    ApiJson, ApiPath, ApiQuery, Auth, Page, Scoped, clearable_text, double_option, if_match,
    optional_text, text,
};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

const TABLE: &str = "payments.payments";
const COLUMNS: &str = "id, customer_id, kind, description, amount_minor, currency, status, \
                       reference, paid_at, archived_at, version, created_at, updated_at";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentKind {
    /// A request for payment sent to the customer.
    Link,
    /// A payment that happened elsewhere (cash, transfer), recorded here.
    Record,
}

impl PaymentKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::Record => "record",
        }
    }

    fn from_db(text: &str) -> Self {
        match text {
            "link" => Self::Link,
            "record" => Self::Record,
            other => unreachable!("the kind CHECK constraint does not allow {other:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Paid,
    Failed,
    Cancelled,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Paid,
        Self::Failed,
        Self::Cancelled,
        Self::Refunded,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    fn from_db(text: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .expect("the status CHECK constraint allows only these")
    }

    /// Where a payment can go from here: a failed one can be retried or given
    /// up, a paid one only refunded; cancelled and refunded are final.
    #[must_use]
    pub fn next(self) -> &'static [Self] {
        match self {
            Self::Pending => &[Self::Paid, Self::Failed, Self::Cancelled],
            Self::Failed => &[Self::Pending, Self::Cancelled],
            Self::Paid => &[Self::Refunded],
            Self::Cancelled | Self::Refunded => &[],
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub kind: PaymentKind,
    pub description: String,
    /// In minor units of `currency` (cents for EUR); more than 0.
    pub amount_minor: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    pub status: PaymentStatus,
    /// The statuses a PATCH may move this payment to now.
    pub next_statuses: &'static [PaymentStatus],
    /// The provider's or bank's reference, or the link sent.
    pub reference: Option<String>,
    /// Set by the database when the payment becomes paid.
    #[serde(with = "time::serde::rfc3339::option")]
    pub paid_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Resource for Payment {
    const TABLE: &'static str = TABLE;
    const COLUMNS: &'static str = COLUMNS;
    const WHAT: &'static str = "payment";
    const PATH: &'static str = "/api/v1/payments";

    fn from_row(row: &Row) -> Self {
        let status = PaymentStatus::from_db(row.get(6));
        Self {
            id: row.get(0),
            customer_id: row.get(1),
            kind: PaymentKind::from_db(row.get(2)),
            description: row.get(3),
            amount_minor: row.get(4),
            currency: row.get(5),
            status,
            next_statuses: status.next(),
            reference: row.get(7),
            paid_at: row.get(8),
            archived_at: row.get(9),
            version: row.get(10),
            created_at: row.get(11),
            updated_at: row.get(12),
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
    /// Search in description and reference (case-insensitive, substring).
    pub q: Option<String>,
    /// List archived payments instead of active ones.
    pub archived: Option<bool>,
    /// Only this customer's payments.
    pub customer_id: Option<Uuid>,
    /// Only payments with this status.
    #[param(inline)]
    pub status: Option<PaymentStatus>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentCreate {
    pub customer_id: Uuid,
    pub kind: PaymentKind,
    pub description: String,
    /// 1 to 10^15 minor units.
    pub amount_minor: i64,
    /// ISO 4217: three upper-case letters.
    pub currency: String,
    pub reference: Option<String>,
    /// `pending` (the default) or, for a payment already received, `paid`.
    pub status: Option<PaymentStatus>,
}

/// Absent fields are kept; `null` clears `reference`. Only the description,
/// the reference and the status can change (see the module header).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentUpdate {
    pub description: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub reference: Option<Option<String>>,
    /// One of the payment's `next_statuses`; anything else is a 409.
    pub status: Option<PaymentStatus>,
}

#[utoipa::path(get, path = "/api/v1/payments", tag = "payments", params(ListParams),
    responses((status = 200, body = Page<Payment>), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Payment>>, ApiError> {
    let query = ListQuery::new(params.archived, params.cursor.as_deref())?
        .equals("customer_id", params.customer_id)
        .equals("status", params.status.map(PaymentStatus::as_str))
        .search(&["description", "reference"], params.q.as_deref())?;
    query.page(&state, auth, &headers, params.limit).await
}

#[utoipa::path(post, path = "/api/v1/payments", tag = "payments", request_body = PaymentCreate,
    responses((status = 201, body = Payment), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PaymentCreate>,
) -> Result<Response, ApiError> {
    let description = text("description", &body.description, 1, 500)?;
    let amount_minor = amount("amount_minor", body.amount_minor, 1)?;
    let currency = currency("currency", &body.currency)?;
    let reference = optional_text("reference", body.reference.as_deref(), 200)?;
    // The transition trigger only guards updates; a payment is born either
    // waiting for money or, when recorded after the fact, already paid.
    let status = body.status.unwrap_or(PaymentStatus::Pending);
    if !matches!(status, PaymentStatus::Pending | PaymentStatus::Paid) {
        return Err(ApiError::validation(
            "status",
            "a new payment is pending or paid",
        ));
    }
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let row = db
        .client()
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (customer_id, kind, description, amount_minor, currency, reference, status, paid_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 = 'paid' THEN now() END) RETURNING {COLUMNS}"
            ),
            &[
                &body.customer_id,
                &body.kind.as_str(),
                &description,
                &amount_minor,
                &currency,
                &reference,
                &status.as_str(),
            ],
        )
        .await?;
    db.commit().await?;
    Ok(made(Payment::from_row(&row)))
}

#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    get_row::<Payment>(&state, auth, &headers, id).await
}

#[utoipa::path(patch, path = "/api/v1/payments/{id}", tag = "payments", params(("id" = Uuid, Path)), request_body = PaymentUpdate,
    responses((status = 200, body = Payment), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the status cannot move there from the current one"),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PaymentUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let description = body
        .description
        .as_deref()
        .map(|d| text("description", d, 1, 500))
        .transpose()?;
    let columns = Columns::new()
        .change("description", description)
        .change(
            "reference",
            clearable_text("reference", body.reference.as_ref(), 200)?,
        )
        .change("status", body.status.map(PaymentStatus::as_str));
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    // A refused transition raises in the trigger, which `ApiError` maps to
    // 409 with the trigger's own words ("cannot change from paid to pending").
    let payment: Payment = db.update(id, version, columns).await?;
    db.commit().await?;
    Ok(found(payment))
}

#[utoipa::path(post, path = "/api/v1/payments/{id}/archive", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    archive_row::<Payment>(&state, auth, &headers, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_go_nowhere_and_nothing_returns_to_itself() {
        for status in PaymentStatus::ALL {
            assert!(!status.next().contains(&status), "{status:?}");
        }
        assert!(PaymentStatus::Cancelled.next().is_empty());
        assert!(PaymentStatus::Refunded.next().is_empty());
        assert_eq!(PaymentStatus::Paid.next(), [PaymentStatus::Refunded]);
    }
}
