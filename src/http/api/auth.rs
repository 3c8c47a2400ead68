//! `/api/v1/auth`: login, refresh (rotating, with reuse detection), logout, me.
//!
//! Lockout state lives in the database (per account on the user row, per
//! client address in `iam.login_throttle`), so it holds across restarts and
//! across several instances on one database.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ApiJson, Auth, ClientAddr, Scoped};
use crate::auth::{self as authn, AUDIENCE, Claims, ISSUER, Permission, Role};
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always "Bearer".
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Works once: `POST /auth/refresh` returns a new one.
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub email: String,
    pub name: String,
    pub role: Role,
}

fn client_key(peer: Option<SocketAddr>) -> String {
    // Trusted-proxy handling (X-Forwarded-For) belongs to the HTTP edge; until
    // then the peer address is the only thing we believe.
    peer.map_or_else(|| "unknown".to_string(), |p| p.ip().to_string())
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem), (status = 429, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let cfg = &state.api.auth;
    let client_key = client_key(peer);
    if body.email.len() > 254 || body.password.len() > 1024 {
        return Err(ApiError::BadCredentials);
    }
    let client = state.api.pool.get().await?;
    // Per client address: too many failures in the window → 429.
    let window =
        time::Duration::try_from(cfg.ip_failure_window).unwrap_or(time::Duration::minutes(15));
    let throttled = client
        .query_opt(
            "SELECT failures, window_start FROM iam.login_throttle WHERE client = $1 AND window_start > now() - $2::bigint * interval '1 second'",
            &[&client_key, &window.whole_seconds()],
        )
        .await?;
    if let Some(row) = &throttled {
        let failures: i32 = row.get(0);
        let start: OffsetDateTime = row.get(1);
        if failures >= i32::try_from(cfg.ip_failure_limit).unwrap_or(i32::MAX) {
            let retry = (start + window - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(1);
            return Err(ApiError::TooManyRequests {
                detail: "too many failed logins from this address; try again later".into(),
                retry_after: u64::try_from(retry).unwrap_or(1),
            });
        }
    }
    let found = client
        .query_opt(
            "SELECT * FROM iam.login_lookup($1)",
            &[&body.email.trim().to_lowercase()],
        )
        .await?;
    let locked_for = found.as_ref().and_then(|row| {
        let until: Option<OffsetDateTime> = row.get("locked_until");
        until
            .map(|u| (u - OffsetDateTime::now_utc()).whole_seconds())
            .filter(|s| *s > 0)
    });
    if let Some(secs) = locked_for {
        return Err(ApiError::TooManyRequests {
            detail: "this account is locked after too many failed logins; try again later".into(),
            retry_after: u64::try_from(secs).unwrap_or(1),
        });
    }
    let stored = found
        .as_ref()
        .map(|row| row.get::<_, String>("password_hash"));
    let verified = authn::verify_password(body.password, stored).await;
    let active = found
        .as_ref()
        .is_some_and(|row| row.get::<_, bool>("active"));
    if !(verified && active) {
        record_failure(&client, &client_key, window).await?;
        drop(client);
        if let Some(row) = &found {
            record_account_failure(&state, &headers, row.get("id"), row.get("tenant_id")).await?;
        }
        return Err(ApiError::BadCredentials);
    }
    let row = found.expect("verified implies found");
    let user_id: Uuid = row.get("id");
    let tenant_id: Uuid = row.get("tenant_id");
    drop(client);

    let db = Scoped::for_tenant(&state, tenant_id, &headers).await?;
    db.client()
        .execute("UPDATE iam.users SET failed_logins = 0, locked_until = NULL WHERE id = $1 AND failed_logins > 0", &[&user_id])
        .await?;
    let role: String = row.get("role");
    let tokens = issue(
        &state,
        &db,
        user_id,
        tenant_id,
        Role::parse(&role).unwrap_or(Role::Viewer),
        Uuid::new_v4(),
    )
    .await?;
    db.commit().await?;
    Ok(Json(tokens))
}

/// Counts a failed login against the client address.
async fn record_failure(
    client: &deadpool_postgres::Object,
    client_key: &str,
    window: time::Duration,
) -> Result<(), ApiError> {
    client
        .execute(
            "INSERT INTO iam.login_throttle AS t (client, window_start, failures) VALUES ($1, now(), 1) \
             ON CONFLICT (client) DO UPDATE SET \
               failures = CASE WHEN t.window_start > now() - $2::bigint * interval '1 second' THEN t.failures + 1 ELSE 1 END, \
               window_start = CASE WHEN t.window_start > now() - $2::bigint * interval '1 second' THEN t.window_start ELSE now() END",
            &[&client_key, &window.whole_seconds()],
        )
        .await?;
    Ok(())
}

/// Counts a failed password for an existing account; locks it at the threshold.
async fn record_account_failure(
    state: &AppState,
    headers: &HeaderMap,
    user_id: Uuid,
    tenant_id: Uuid,
) -> Result<(), ApiError> {
    let cfg = &state.api.auth;
    let db = Scoped::for_tenant(state, tenant_id, headers).await?;
    db.client()
        .execute(
            "UPDATE iam.users SET failed_logins = failed_logins + 1, \
               locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + $3::bigint * interval '1 second' ELSE locked_until END \
             WHERE id = $1",
            &[&user_id, &i32::try_from(cfg.lockout_after).unwrap_or(i32::MAX), &i64::try_from(cfg.lockout_for.as_secs()).unwrap_or(i64::MAX)],
        )
        .await?;
    db.commit().await
}

/// Signs an access token and stores a new refresh token in `family`.
async fn issue(
    state: &AppState,
    db: &Scoped,
    user_id: Uuid,
    tenant_id: Uuid,
    role: Role,
    family: Uuid,
) -> Result<TokenResponse, ApiError> {
    let cfg = &state.api.auth;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = cfg.access_token_ttl.as_secs();
    let claims = Claims {
        sub: user_id,
        tid: tenant_id,
        role,
        iat: now,
        exp: now + ttl,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let access_token = state
        .api
        .keys
        .read()
        .expect("keys lock is never poisoned")
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let (refresh_token, hash) = authn::new_refresh_token();
    let expires = OffsetDateTime::now_utc()
        + time::Duration::try_from(cfg.refresh_token_ttl).unwrap_or(time::Duration::days(30));
    db.client()
        .execute(
            "INSERT INTO iam.refresh_tokens (user_id, family_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
            &[&user_id, &family, &hash, &expires],
        )
        .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token,
    })
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let hash = authn::refresh_token_hash(body.refresh_token.trim());
    let client = state.api.pool.get().await?;
    let found = client
        .query_opt("SELECT * FROM iam.refresh_lookup($1)", &[&hash])
        .await?;
    drop(client);
    let row = found.ok_or(ApiError::Unauthenticated)?;
    let (token_id, tenant_id, user_id, family): (Uuid, Uuid, Uuid, Uuid) = (
        row.get("id"),
        row.get("tenant_id"),
        row.get("user_id"),
        row.get("family_id"),
    );
    let db = Scoped::for_tenant(&state, tenant_id, &headers).await?;
    // Mark it spent atomically: of two concurrent uses, only one gets the row.
    let spent = db
        .client()
        .query_opt(
            "UPDATE iam.refresh_tokens SET used_at = now() \
             WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() RETURNING id",
            &[&token_id],
        )
        .await?;
    if spent.is_none() {
        // Reuse of a spent (or revoked) token: someone else may hold a copy.
        // Revoke the whole family, so the thief's newer token dies too.
        let reused = row.get::<_, Option<OffsetDateTime>>("used_at").is_some();
        if reused {
            db.client()
                .execute("UPDATE iam.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", &[&family])
                .await?;
            tracing::warn!(%user_id, %family, "refresh token reused; revoked its family");
        }
        db.commit().await?;
        return Err(ApiError::Unauthenticated);
    }
    let role = db
        .client()
        .query_opt(
            "SELECT role FROM iam.users WHERE id = $1 AND active",
            &[&user_id],
        )
        .await?
        .and_then(|r| Role::parse(&r.get::<_, String>(0)))
        .ok_or(ApiError::Unauthenticated)?;
    let tokens = issue(&state, &db, user_id, tenant_id, role, family).await?;
    db.commit().await?;
    Ok(Json(tokens))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let hash = authn::refresh_token_hash(body.refresh_token.trim());
    let client = state.api.pool.get().await?;
    let found = client
        .query_opt("SELECT * FROM iam.refresh_lookup($1)", &[&hash])
        .await?;
    drop(client);
    let row = found.ok_or(ApiError::Unauthenticated)?;
    let db = Scoped::for_tenant(&state, row.get("tenant_id"), &headers).await?;
    db.client()
        .execute("UPDATE iam.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", &[&row.get::<_, Uuid>("family_id")])
        .await?;
    db.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn me(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let db = Scoped::begin(&state, auth, Permission::CrmRead, &headers).await?;
    let row = db
        .client()
        .query_one(
            "SELECT u.id, u.tenant_id, t.name, u.email, u.name, u.role FROM iam.users u JOIN tenancy.tenants t ON t.id = u.tenant_id WHERE u.id = $1",
            &[&auth.user_id],
        )
        .await?;
    db.commit().await?;
    Ok(Json(Me {
        id: row.get(0),
        tenant_id: row.get(1),
        tenant_name: row.get(2),
        email: row.get(3),
        name: row.get(4),
        role: Role::parse(&row.get::<_, String>(5)).unwrap_or(Role::Viewer),
    }))
}
