//! The JSON API under `/api/v1`: the shared machinery every resource uses —
//! the `Auth` extractor, the tenant-scoped transaction, request parsing that
//! answers bad input with problem documents, cursors and ETags.
//!
//! Invariant: handlers reach the database only through [`Scoped::begin`],
//! which checks the caller's *current* role against the endpoint's
//! permission and scopes the transaction to the caller's tenant. The pool
//! connects as a role that sees no tenant rows at all without that scope,
//! so a handler that forgets cannot leak another tenant's data.

pub mod activities;
pub mod audit;
pub mod auth;
pub mod contacts;
pub mod customers;
pub mod deals;
mod list;
mod money;
pub mod payments;
pub mod resource;
pub mod system;
pub mod users;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::auth::{Permission, Role, rbac};

/// The caller, as its access token says. Whether it may act is decided per
/// request by [`Scoped::begin`], from the database.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthenticated)?;
        let claims = state
            .api
            .keys
            .read()
            .expect("keys lock is never poisoned")
            .verify(token.trim())
            .map_err(|_| ApiError::Unauthenticated)?;
        Ok(Self {
            user_id: claims.sub,
            tenant_id: claims.tid,
        })
    }
}

/// The client's address, when the server knows it (not in `oneshot` tests).
pub struct ClientAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A transaction scoped to one tenant (and user), for one request.
///
/// Dropped without [`Scoped::commit`], it rolls back before its connection
/// goes back to the pool, so no request ever sees another's open transaction.
pub struct Scoped {
    client: Option<deadpool_postgres::Object>,
    pub role: Role,
    pub auth: Auth,
}

impl Scoped {
    /// Begins a transaction for `auth`, refusing when its current role lacks
    /// `permission` (or the user is deactivated: then 401).
    pub async fn begin(
        state: &AppState,
        auth: Auth,
        permission: Permission,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let (client, role) = begin_raw(state, auth.tenant_id, Some(auth.user_id), headers).await?;
        let role = role.ok_or(ApiError::Unauthenticated)?;
        let scoped = Self {
            client: Some(client),
            role,
            auth,
        };
        if !rbac::allows(role, permission) {
            return Err(ApiError::Forbidden {
                permission: permission.as_str(),
            });
        }
        Ok(scoped)
    }

    /// A transaction scoped to `tenant` with no user: for login and refresh,
    /// which learn the tenant from the database first.
    pub async fn for_tenant(
        state: &AppState,
        tenant: Uuid,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let (client, _) = begin_raw(state, tenant, None, headers).await?;
        Ok(Self {
            client: Some(client),
            role: Role::Viewer,
            auth: Auth {
                user_id: Uuid::nil(),
                tenant_id: tenant,
            },
        })
    }

    /// A read in one round trip: `BEGIN`, the scoping call, `sql` and
    /// `COMMIT` go out together, and the caller's role is checked when the
    /// answers come back; a refused caller gets the refusal, never the rows.
    ///
    /// The read is sent before the role is known, so it runs even for a
    /// caller who is then refused, but only ever inside the token's own
    /// tenant (the scoping call comes first in the same transaction, and RLS
    /// shows nothing without it) and with no effect: only use it for reads.
    pub async fn read(
        state: &AppState,
        auth: Auth,
        permission: Permission,
        headers: &HeaderMap,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, ApiError> {
        let client = checkout(state).await?;
        let scope = client
            .prepare_cached("SELECT iam.begin_request($1, $2, $3)")
            .await?;
        let statement = client.prepare_cached(sql).await?;
        let request_id = request_id(headers);
        let user = Some(auth.user_id);
        let scope_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&auth.tenant_id, &user, &request_id];
        let (begun, role, rows, committed) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query_one(&scope, &scope_params),
            client.query(&statement, params),
            client.batch_execute("COMMIT"),
        );
        begun?;
        let role: Option<String> = role?.get(0);
        let role = role
            .as_deref()
            .and_then(Role::parse)
            .ok_or(ApiError::Unauthenticated)?;
        if !rbac::allows(role, permission) {
            return Err(ApiError::Forbidden {
                permission: permission.as_str(),
            });
        }
        let rows = rows?;
        committed?;
        Ok(rows)
    }

    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("present until commit or drop")
    }

    pub async fn commit(mut self) -> Result<(), ApiError> {
        let client = self.client.take().expect("present until commit or drop");
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tokio::spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    // A broken connection: make the pool throw it away.
                    let _ = deadpool_postgres::Object::take(client);
                }
            });
        }
    }
}

async fn begin_raw(
    state: &AppState,
    tenant: Uuid,
    user: Option<Uuid>,
    headers: &HeaderMap,
) -> Result<(deadpool_postgres::Object, Option<Role>), ApiError> {
    let client = checkout(state).await?;
    let request_id = request_id(headers);
    let statement = client
        .prepare_cached("SELECT iam.begin_request($1, $2, $3)")
        .await?;
    // Pipelined: BEGIN and the scoping call go out together, one round trip.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&tenant, &user, &request_id];
    let (begun, row) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&statement, &params)
    );
    begun?;
    let role: Option<String> = row?.get(0);
    Ok((client, role.as_deref().and_then(Role::parse)))
}

/// A pooled connection, unless the database is down or in maintenance.
async fn checkout(state: &AppState) -> Result<deadpool_postgres::Object, ApiError> {
    if let Some(reason) = state.health.maintenance() {
        return Err(ApiError::Maintenance(reason));
    }
    if !*state.health.postgres_up.borrow() {
        return Err(ApiError::Unavailable);
    }
    Ok(state.api.pool.get().await?)
}

/// The request id the edge gave this request, for the audit log.
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Json<T>` whose rejections are problem documents naming what was wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Set by the edge, which also cut the body off there.
        let limit = req
            .extensions()
            .get::<super::edge::BodyLimit>()
            .map_or(super::edge::DEFAULT_BODY_LIMIT, |l| l.0);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection, limit)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection, limit: usize) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonDataError(err) => {
            // serde_path_to_error's text: "field: problem at line 1 column 9".
            let text = err.body_text();
            let detail = text
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&text);
            let field = detail
                .split_once(": ")
                .map(|(f, _)| f.to_string())
                .filter(|f| !f.contains(' '));
            ApiError::Validation {
                field,
                detail: detail.to_string(),
            }
        }
        JsonRejection::JsonSyntaxError(err) => ApiError::MalformedBody(err.body_text()),
        JsonRejection::BytesRejection(err) => {
            if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedBody(err.body_text())
            }
        }
        other => ApiError::MalformedBody(other.body_text()),
    }
}

/// `Query<T>` whose rejections are problem documents.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|rejection: QueryRejection| {
                // "Failed to deserialize query string: limit: invalid digit…"
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_string();
                let field = detail
                    .split_once(": ")
                    .map(|(f, _)| f.to_string())
                    .filter(|f| !f.contains(' '));
                ApiError::Validation { field, detail }
            })
    }
}

/// A `{id}` path segment that must be a UUID.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|rejection: PathRejection| {
                ApiError::validation("id", format!("not a valid id: {}", rejection.body_text()))
            })
    }
}

/// Page size bounds for every list endpoint.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

/// A position in a newest-first list: the last row's `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: OffsetDateTime,
    pub id: Uuid,
}

impl Cursor {
    #[must_use]
    pub fn encode(&self) -> String {
        format!(
            "{}.{}",
            self.created_at.unix_timestamp_nanos() / 1000,
            self.id.simple()
        )
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::validation("cursor", "not a cursor this API returned");
        let (micros, id) = text.split_once('.').ok_or_else(bad)?;
        let micros: i128 = micros.parse().map_err(|_| bad())?;
        let created_at =
            OffsetDateTime::from_unix_timestamp_nanos(micros * 1000).map_err(|_| bad())?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Self { created_at, id })
    }

    /// The starting point for the first page: after everything.
    #[must_use]
    pub fn start() -> Self {
        Self {
            created_at: OffsetDateTime::now_utc() + time::Duration::days(36500),
            id: Uuid::max(),
        }
    }
}

/// A page of results and where the next one starts.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Cuts `rows` (fetched with `limit + 1`) into a page.
pub fn page<T>(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> Cursor) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| cursor_of(last).encode())
    } else {
        None
    };
    Page { items, next_cursor }
}

/// `ILIKE` pattern for a user's search text, with its wildcards escaped.
#[must_use]
pub fn like_pattern(q: &str) -> String {
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The ETag of a row version.
#[must_use]
pub fn etag(version: i32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// The version an `If-Match` header names; required on every change.
pub fn if_match(headers: &HeaderMap) -> Result<i32, ApiError> {
    let value = headers
        .get(header::IF_MATCH)
        .ok_or(ApiError::PreconditionRequired)?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::PreconditionFailed)?
        .trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"')
        .parse()
        .map_err(|_| ApiError::PreconditionFailed)
}

/// Deserialises a field that may be absent (keep), `null` (clear) or a value.
pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// Trims `value` and checks its length in characters.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    let len = value.chars().count();
    if len < min || len > max {
        return Err(ApiError::validation(
            field,
            format!("{field} must be {min} to {max} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(ApiError::validation(
            field,
            format!("{field} must not contain NUL"),
        ));
    }
    Ok(value.to_string())
}

/// Like [`text`] for optional fields; empty means absent.
pub fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => text(field, v, 1, max).map(Some),
    }
}

/// For an update of an optional text field: absent (keep), `null` or empty
/// (clear), or a value checked like [`text`].
pub fn clearable_text(
    field: &str,
    value: Option<&Option<String>>,
    max: usize,
) -> Result<Option<Option<String>>, ApiError> {
    value
        .map(|v| optional_text(field, v.as_deref(), max))
        .transpose()
}

/// A plausible email: one `@`, something on both sides, no spaces. Lower-cased.
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    let ok = value.len() <= 254
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && value.matches('@').count() == 1
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(value)
    } else {
        Err(ApiError::validation(
            field,
            format!("{field} is not a valid email address"),
        ))
    }
}

pub fn with_etag(version: i32, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    response
}

pub fn created(location: &str, version: i32, body: impl IntoResponse) -> Response {
    let mut response = (axum::http::StatusCode::CREATED, body).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_validation_error() {
        let cursor = Cursor {
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("ts"),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).expect("decode"), cursor);
        for bad in [
            "",
            "abc",
            "1.2",
            "x.00000000000000000000000000000000",
            "99999999999999999999999999.0",
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(ApiError::Validation { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).expect("default"), DEFAULT_LIMIT);
        assert_eq!(limit(Some(200)).expect("max"), 200);
        for bad in [0, -1, 201, i64::MAX] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            email("email", " Ana@Example.COM ").expect("valid"),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "@x.com",
            "ana@",
            "ana@x",
            "a b@x.com",
            "a@b@c.com",
            "ana@.com",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_match_is_required_and_parsed() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            if_match(&headers),
            Err(ApiError::PreconditionRequired)
        ));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"7\""));
        assert_eq!(if_match(&headers).expect("parsed"), 7);
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"nope\""));
        assert!(matches!(
            if_match(&headers),
            Err(ApiError::PreconditionFailed)
        ));
    }
}
