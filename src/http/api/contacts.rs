//! `/api/v1/contacts`: the people at a customer. Same conventions as
//! `customers`; a customer's contacts are `GET /contacts?customer_id=…`.
//!
//! Invariant: a contact always belongs to a customer of the caller's tenant.
//! The composite foreign key `(tenant_id, customer_id)` refuses any other id,
//! another tenant's included, with the same 422 as a nonexistent one, so the
//! answer cannot be used to probe for other tenants' ids.

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
use super::resource::{Columns, Resource, archive_row, found, get_row, made};
use super::{
    ApiJson, ApiPath, ApiQuery, Auth, Page, Scoped, clearable_text, double_option, email, if_match,
    optional_text, text,
};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

const TABLE: &str = "customers.contacts";
const COLUMNS: &str =
    "id, customer_id, name, email, phone, title, archived_at, version, created_at, updated_at";

#[derive(Debug, Serialize, ToSchema)]
pub struct Contact {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// Job title, e.g. "Head of Purchasing".
    pub title: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Resource for Contact {
    const TABLE: &'static str = TABLE;
    const COLUMNS: &'static str = COLUMNS;
    const WHAT: &'static str = "contact";
    const PATH: &'static str = "/api/v1/contacts";

    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            customer_id: row.get(1),
            name: row.get(2),
            email: row.get(3),
            phone: row.get(4),
            title: row.get(5),
            archived_at: row.get(6),
            version: row.get(7),
            created_at: row.get(8),
            updated_at: row.get(9),
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
    /// Search in name and email (case-insensitive, substring).
    pub q: Option<String>,
    /// List archived contacts instead of active ones.
    pub archived: Option<bool>,
    /// Only this customer's contacts.
    pub customer_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactCreate {
    pub customer_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub title: Option<String>,
}

/// Absent fields are kept; `null` clears an optional field. A new
/// `customer_id` moves the contact to that customer (people change jobs).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactUpdate {
    pub customer_id: Option<Uuid>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub title: Option<Option<String>>,
}

fn optional_email(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => email("email", v).map(Some),
    }
}

#[utoipa::path(get, path = "/api/v1/contacts", tag = "contacts", params(ListParams),
    responses((status = 200, body = Page<Contact>), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Contact>>, ApiError> {
    let query = ListQuery::new(params.archived, params.cursor.as_deref())?
        .equals("customer_id", params.customer_id)
        .search(&["name", "email"], params.q.as_deref())?;
    query.page(&state, auth, &headers, params.limit).await
}

#[utoipa::path(post, path = "/api/v1/contacts", tag = "contacts", request_body = ContactCreate,
    responses((status = 201, body = Contact), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ContactCreate>,
) -> Result<Response, ApiError> {
    let name = text("name", &body.name, 1, 200)?;
    let email = optional_email(body.email.as_deref())?;
    let phone = optional_text("phone", body.phone.as_deref(), 50)?;
    let title = optional_text("title", body.title.as_deref(), 200)?;
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let contact: Contact = db
        .insert(
            Columns::new()
                .set("customer_id", body.customer_id)
                .set("name", name)
                .set("email", email)
                .set("phone", phone)
                .set("title", title),
        )
        .await?;
    db.commit().await?;
    Ok(made(contact))
}

#[utoipa::path(get, path = "/api/v1/contacts/{id}", tag = "contacts", params(("id" = Uuid, Path)),
    responses((status = 200, body = Contact), (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    get_row::<Contact>(&state, auth, &headers, id).await
}

#[utoipa::path(patch, path = "/api/v1/contacts/{id}", tag = "contacts", params(("id" = Uuid, Path)), request_body = ContactUpdate,
    responses((status = 200, body = Contact), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ContactUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let name = body
        .name
        .as_deref()
        .map(|n| text("name", n, 1, 200))
        .transpose()?;
    let email = body
        .email
        .as_ref()
        .map(|e| optional_email(e.as_deref()))
        .transpose()?;
    let columns = Columns::new()
        .change("customer_id", body.customer_id)
        .change("name", name)
        .change("email", email)
        .change("phone", clearable_text("phone", body.phone.as_ref(), 50)?)
        .change("title", clearable_text("title", body.title.as_ref(), 200)?);
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let contact: Contact = db.update(id, version, columns).await?;
    db.commit().await?;
    Ok(found(contact))
}

#[utoipa::path(post, path = "/api/v1/contacts/{id}/archive", tag = "contacts", params(("id" = Uuid, Path)),
    responses((status = 200, body = Contact), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    archive_row::<Contact>(&state, auth, &headers, id).await
}
