//! `/api/v1/customers`: the template every CRM resource follows — list with
//! cursor, search and filters; create; get; update with `If-Match`; archive.

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

#[derive(Debug, Serialize, ToSchema)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Resource for Customer {
    const TABLE: &'static str = "customers.customers";
    const COLUMNS: &'static str =
        "id, name, email, phone, company, notes, archived_at, version, created_at, updated_at";
    const WHAT: &'static str = "customer";
    const PATH: &'static str = "/api/v1/customers";

    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            phone: row.get(3),
            company: row.get(4),
            notes: row.get(5),
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
    /// Search in name, email and company (case-insensitive, substring).
    pub q: Option<String>,
    /// List archived customers instead of active ones.
    pub archived: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerCreate {
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
}

/// Absent fields are kept; `null` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerUpdate {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub company: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub notes: Option<Option<String>>,
}

fn optional_email(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => email("email", v).map(Some),
    }
}

#[utoipa::path(get, path = "/api/v1/customers", tag = "customers", params(ListParams),
    responses((status = 200, body = Page<Customer>), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Customer>>, ApiError> {
    ListQuery::new(params.archived, params.cursor.as_deref())?
        .search(&["name", "email", "company"], params.q.as_deref())?
        .page(&state, auth, &headers, params.limit)
        .await
}

#[utoipa::path(post, path = "/api/v1/customers", tag = "customers", request_body = CustomerCreate,
    responses((status = 201, body = Customer), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CustomerCreate>,
) -> Result<Response, ApiError> {
    let name = text("name", &body.name, 1, 200)?;
    let email = optional_email(body.email.as_deref())?;
    let phone = optional_text("phone", body.phone.as_deref(), 50)?;
    let company = optional_text("company", body.company.as_deref(), 200)?;
    let notes = optional_text("notes", body.notes.as_deref(), 10_000)?;
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let customer: Customer = db
        .insert(
            Columns::new()
                .set("name", name)
                .set("email", email)
                .set("phone", phone)
                .set("company", company)
                .set("notes", notes),
        )
        .await?;
    db.commit().await?;
    Ok(made(customer))
}

#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)),
    responses((status = 200, body = Customer), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    get_row::<Customer>(&state, auth, &headers, id).await
}

#[utoipa::path(patch, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)), request_body = CustomerUpdate,
    responses((status = 200, body = Customer), (status = 404, body = Problem), (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CustomerUpdate>,
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
        .change("name", name)
        .change("email", email)
        .change("phone", clearable_text("phone", body.phone.as_ref(), 50)?)
        .change(
            "company",
            clearable_text("company", body.company.as_ref(), 200)?,
        )
        .change(
            "notes",
            clearable_text("notes", body.notes.as_ref(), 10_000)?,
        );
    let db = Scoped::begin(&state, auth, Permission::CrmWrite, &headers).await?;
    let customer: Customer = db.update(id, version, columns).await?;
    db.commit().await?;
    Ok(found(customer))
}

#[utoipa::path(post, path = "/api/v1/customers/{id}/archive", tag = "customers", params(("id" = Uuid, Path)),
    responses((status = 200, body = Customer), (status = 404, body = Problem), (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    archive_row::<Customer>(&state, auth, &headers, id).await
}
