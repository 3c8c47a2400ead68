//! `ApiError`: every failure of the JSON API, answered as an RFC 9457
//! `application/problem+json` document with a stable `type` per error.
//!
//! 5xx details go to the log with the full cause chain, never to the client.
//! Database errors that are the client's fault (a check constraint, a bad
//! reference, a unique key) become 4xx here, so bad input is never a 500.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where our problem types live (RFC 9457 §3.1.1: a URI; relative is allowed).
const TYPE_BASE: &str = "/problems/";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Validation {
        field: Option<String>,
        detail: String,
    },
    #[error("the request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("this action needs the {permission} permission")]
    Forbidden { permission: &'static str },
    /// The caller has the permission, but not for this target (an admin
    /// changing an owner, anyone demoting themselves).
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("this resource changed since you read it; fetch it again and retry")]
    PreconditionFailed,
    #[error("updates need an If-Match header with the ETag you read")]
    PreconditionRequired,
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    #[error("the database is not available right now")]
    Unavailable,
    #[error("maintenance: {0}; try again in a moment")]
    Maintenance(String),
    #[error("the server is busy; try again in a moment")]
    Overloaded,
    #[error("the request took too long and was abandoned")]
    Timeout,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable identifier of the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// For validation problems: the field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Validation {
            field: Some(field.into()),
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
            ),
            Self::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            Self::BadCredentials => (StatusCode::UNAUTHORIZED, "bad-credentials", "Login failed"),
            Self::Forbidden { .. } | Self::NotAllowed(_) => {
                (StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "stale-write",
                "Precondition failed",
            ),
            Self::PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "if-match-required",
                "Precondition required",
            ),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout", "Timeout"),
            Self::Maintenance(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "maintenance",
                "Maintenance",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        if status.is_server_error()
            && !matches!(
                self,
                Self::Unavailable | Self::Maintenance(_) | Self::Overloaded | Self::Timeout
            )
        {
            tracing::error!(error = ?anyhow::Error::from(self), "request failed");
            let problem = Problem {
                kind: format!("{TYPE_BASE}{kind}"),
                title,
                status: status.as_u16(),
                detail: "internal error; the server log has the details".into(),
                field: None,
            };
            return problem_response(status, &problem);
        }
        let field = match &self {
            Self::Validation { field, .. } => field.clone(),
            _ => None,
        };
        let problem = Problem {
            kind: format!("{TYPE_BASE}{kind}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            field,
        };
        let mut response = problem_response(status, &problem);
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable | Self::Overloaded | Self::Timeout => Some(1),
            Self::Maintenance(_) => Some(5),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let mut response = (status, Json(problem)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let Some(db) = err.as_db_error() else {
            if err.is_closed() {
                // The connection broke (postgres restarting): the client may retry.
                tracing::warn!(error = %err, "database connection lost");
                return Self::Unavailable;
            }
            return Self::Internal(err.into());
        };
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return Self::Conflict("a record with these values already exists".into());
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            // Deliberately the same answer for "does not exist" and "belongs
            // to another tenant": the composite keys make both fail here.
            let field = db
                .constraint()
                .and_then(reference_field)
                .unwrap_or("reference");
            return Self::validation(
                field,
                format!("{field} does not refer to an existing record"),
            );
        }
        if *code == SqlState::CHECK_VIOLATION {
            if db.constraint() == Some("payments_status_transition") {
                return Self::Conflict(db.message().to_string());
            }
            let field = db
                .constraint()
                .and_then(|c| check_field(db.table(), c))
                .unwrap_or_else(|| "body".to_string());
            return Self::validation(
                field.clone(),
                format!("{field} has a value that is not allowed"),
            );
        }
        if *code == SqlState::STRING_DATA_RIGHT_TRUNCATION
            || *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
        {
            return Self::Validation {
                field: None,
                detail: "a value is too long or out of range".into(),
            };
        }
        if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::CRASH_SHUTDOWN
        {
            return Self::Unavailable;
        }
        Self::Internal(err.into())
    }
}

/// `contacts_tenant_id_customer_id_fkey` → `customer_id`.
fn reference_field(constraint: &str) -> Option<&'static str> {
    ["customer_id", "stage_id", "deal_id", "user_id"]
        .into_iter()
        .find(|f| constraint.contains(f))
}

/// `customers_name_check` → `name`.
/// (`pipeline_stages`, `pipeline_stages_kind_check`) → `kind`: PostgreSQL
/// names check constraints `<table>_<column>_check`.
fn check_field(table: Option<&str>, constraint: &str) -> Option<String> {
    let trimmed = constraint.strip_suffix("_check")?;
    let field = match table {
        Some(table) => trimmed.strip_prefix(table)?.strip_prefix('_')?,
        None => trimmed.split_once('_')?.1,
    };
    (!field.is_empty()).then(|| field.to_string())
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %err, "no database connection");
        Self::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_names_map_to_fields() {
        assert_eq!(
            check_field(Some("customers"), "customers_name_check").as_deref(),
            Some("name")
        );
        assert_eq!(
            check_field(Some("deals"), "deals_amount_minor_check").as_deref(),
            Some("amount_minor")
        );
        assert_eq!(
            check_field(Some("pipeline_stages"), "pipeline_stages_kind_check").as_deref(),
            Some("kind")
        );
        assert_eq!(
            check_field(None, "customers_name_check").as_deref(),
            Some("name")
        );
        assert_eq!(
            reference_field("contacts_tenant_id_customer_id_fkey"),
            Some("customer_id")
        );
    }
}
