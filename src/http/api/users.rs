//! `/api/v1/users`: the people of one tenant — list, create (invite), get,
//! and change name, role or whether they may log in.
//!
//! Owns the rules of user management beyond the permission table:
//! - only owners create owners or touch an owner ([`rbac::may_assign`]);
//! - nobody demotes or deactivates themselves (a slip that would lock them
//!   out of the very page they would need to undo it);
//! - a tenant always keeps at least one active owner.
//!
//! Invariant: the password hash never leaves the database through this
//! module; [`COLUMNS`] is the only column list, and it does not name it.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    ApiJson, ApiPath, ApiQuery, Auth, Cursor, Page, Scoped, created, email, if_match, like_pattern,
    page, text, with_etag,
};
use crate::auth::{self as authn, Permission, Role, rbac};
use crate::http::AppState;
use crate::http::error::{ApiError, Problem};

/// Everything a client may see of a user: not the password hash, and not
/// the lockout counters (bookkeeping of the login endpoint).
const COLUMNS: &str = "id, email, name, role, active, version, created_at, updated_at";

/// The login endpoint refuses longer passwords outright, so a user created
/// with one could never log in.
const MAX_PASSWORD_BYTES: usize = 1024;

/// Length of a generated one-time password: 24 hex digits, 96 bits.
const GENERATED_PASSWORD_LEN: usize = 24;

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// A deactivated user cannot log in, and their tokens stop working at once.
    pub active: bool,
    /// Changes on every update; also sent as the `ETag`.
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl User {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            email: row.get(1),
            name: row.get(2),
            // The column's CHECK allows exactly the four roles.
            role: Role::parse(row.get(3)).unwrap_or(Role::Viewer),
            active: row.get(4),
            version: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
        }
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// A new user, and the one-time password when the server generated it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: User,
    /// Present only when the request had no password: shown this once, never
    /// stored in clear, so hand it to the user now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_password: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Search in email and name (case-insensitive, substring).
    pub q: Option<String>,
    /// Only active (`true`) or only deactivated (`false`) users; both when absent.
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub email: String,
    pub name: String,
    pub role: Role,
    /// At least 12 characters. Absent: the server generates one and returns
    /// it once as `initial_password`.
    pub password: Option<String>,
}

/// Absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub active: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(ListParams),
    responses((status = 200, body = Page<User>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<User>>, ApiError> {
    let limit = super::limit(params.limit)?;
    let cursor = params
        .cursor
        .as_deref()
        .map(Cursor::decode)
        .transpose()?
        .unwrap_or_else(Cursor::start);
    let pattern = params
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| text("q", q, 1, 200).map(|q| like_pattern(&q)))
        .transpose()?;
    let db = Scoped::begin(&state, auth, Permission::UsersRead, &headers).await?;
    let client = db.client();
    // A tenant has tens of users, not millions: one statement with optional
    // filters is simpler than one per combination and plans just as well.
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM iam.users \
             WHERE (created_at, id) < ($1, $2) \
               AND ($3::boolean IS NULL OR active = $3) \
               AND ($4::text IS NULL OR email ILIKE $4 OR name ILIKE $4) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &cursor.created_at,
                &cursor.id,
                &params.active,
                &pattern,
                &(limit + 1),
            ],
        )
        .await?;
    db.commit().await?;
    let items = rows.iter().map(User::from_row).collect();
    Ok(Json(page(items, limit, User::cursor)))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserCreate,
    responses((status = 201, body = CreatedUser), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UserCreate>,
) -> Result<Response, ApiError> {
    let address = email("email", &body.email)?;
    let name = text("name", &body.name, 1, 200)?;
    if let Some(password) = &body.password
        && (password.chars().count() < authn::MIN_PASSWORD_LEN
            || password.len() > MAX_PASSWORD_BYTES)
    {
        return Err(ApiError::validation(
            "password",
            format!(
                "password must be {} characters to {MAX_PASSWORD_BYTES} bytes",
                authn::MIN_PASSWORD_LEN
            ),
        ));
    }
    // Refuse before hashing: argon2 costs tens of milliseconds of CPU, which
    // a caller without the right role must not be able to make us spend.
    let db = Scoped::begin(&state, auth, Permission::UsersManage, &headers).await?;
    if !rbac::may_assign(db.role, body.role) {
        return Err(ApiError::NotAllowed(
            "only an owner can create an owner".into(),
        ));
    }
    let generated = body
        .password
        .is_none()
        .then(|| crate::secrets::generate()[..GENERATED_PASSWORD_LEN].to_string());
    let password = body
        .password
        .or_else(|| generated.clone())
        .expect("either given or generated");
    let hash = authn::hash_password(password)
        .await
        .map_err(|err| match err {
            authn::Error::WeakPassword => ApiError::validation("password", err.to_string()),
            other => ApiError::Internal(other.into()),
        })?;
    let row = db
        .client()
        .query_one(
            &format!(
                "INSERT INTO iam.users (email, name, role, password_hash) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
            ),
            &[&address, &name, &body.role.as_str(), &hash],
        )
        .await
        .map_err(|err| match ApiError::from(err) {
            // Emails are unique across tenants (login needs only the email),
            // so this also answers for an address used in another tenant.
            ApiError::Conflict(_) => {
                ApiError::Conflict(format!("a user with email {address} already exists"))
            }
            other => other,
        })?;
    db.commit().await?;
    let user = User::from_row(&row);
    Ok(created(
        &format!("/api/v1/users/{}", user.id),
        user.version,
        Json(CreatedUser {
            user,
            initial_password: generated,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let db = Scoped::begin(&state, auth, Permission::UsersRead, &headers).await?;
    let row = db
        .client()
        .query_opt(
            &format!("SELECT {COLUMNS} FROM iam.users WHERE id = $1"),
            &[&id],
        )
        .await?;
    db.commit().await?;
    let user = User::from_row(&row.ok_or(ApiError::NotFound("user"))?);
    Ok(with_etag(user.version, Json(user)))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)), request_body = UserUpdate,
    responses((status = 200, body = User), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 428, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UserUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let name = body
        .name
        .as_deref()
        .map(|n| text("name", n, 1, 200))
        .transpose()?;
    let db = Scoped::begin(&state, auth, Permission::UsersManage, &headers).await?;
    let client = db.client();

    // Lock the tenant's active owners first, always in id order, then the
    // target. Two owners demoting each other at once would otherwise both
    // see the other still in place and leave the tenant with none; with
    // the lock the second waits, re-reads, and gets the 409. One fixed lock
    // order keeps concurrent changes from deadlocking.
    let owners: Vec<Uuid> = client
        .query(
            "SELECT id FROM iam.users WHERE role = 'owner' AND active ORDER BY id FOR UPDATE",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let target = client
        .query_opt(
            "SELECT role, active, version FROM iam.users WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let current = Change {
        role: Role::parse(target.get(0)).unwrap_or(Role::Viewer),
        active: target.get(1),
    };
    if target.get::<_, i32>(2) != version {
        return Err(ApiError::PreconditionFailed);
    }
    let wanted = Change {
        role: body.role.unwrap_or(current.role),
        active: body.active.unwrap_or(current.active),
    };
    // The caller's role was read when the transaction began; an owner
    // demoted since then (by the other half of that race) is no longer in
    // the locked list, and must not act as an owner now.
    let actor = if owners.contains(&db.auth.user_id) {
        Role::Owner
    } else {
        db.role.min(Role::Admin)
    };
    check_change(
        actor,
        id == db.auth.user_id,
        current,
        wanted,
        owners.iter().filter(|o| **o != id).count(),
    )?;

    let row = client
        .query_one(
            &format!(
                "UPDATE iam.users SET name = coalesce($2, name), role = $3, active = $4 \
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id, &name, &wanted.role.as_str(), &wanted.active],
        )
        .await?;
    if current.active && !wanted.active {
        // Access tokens die at once (every request re-reads `active`); this
        // ends the refresh tokens too, so a later reactivation does not
        // revive sessions opened before.
        client
            .execute(
                "UPDATE iam.refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
    }
    db.commit().await?;
    let user = User::from_row(&row);
    Ok(with_etag(user.version, Json(user)))
}

/// A user's role and whether they may log in: what [`check_change`] judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    role: Role,
    active: bool,
}

/// Whether `actor` may turn a user from `current` into `wanted`.
/// `other_active_owners` counts the tenant's active owners besides the target.
fn check_change(
    actor: Role,
    is_self: bool,
    current: Change,
    wanted: Change,
    other_active_owners: usize,
) -> Result<(), ApiError> {
    if !rbac::may_assign(actor, current.role) {
        return Err(ApiError::NotAllowed(
            "only an owner can change an owner".into(),
        ));
    }
    if !rbac::may_assign(actor, wanted.role) {
        return Err(ApiError::NotAllowed(
            "only an owner can make someone an owner".into(),
        ));
    }
    // Checked before the self rule: a sole owner trying to step down should
    // hear the rule that holds whoever asks (the tenant needs an owner),
    // not one that another owner could get around.
    let owner_before = current.role == Role::Owner && current.active;
    let owner_after = wanted.role == Role::Owner && wanted.active;
    if owner_before && !owner_after && other_active_owners == 0 {
        return Err(ApiError::Conflict(
            "this is the tenant's last active owner; a tenant must keep one".into(),
        ));
    }
    if is_self && wanted.role != current.role {
        return Err(ApiError::NotAllowed(
            "you cannot change your own role; ask another owner or admin".into(),
        ));
    }
    if is_self && !wanted.active {
        return Err(ApiError::NotAllowed(
            "you cannot deactivate yourself; ask another owner or admin".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn change(role: Role, active: bool) -> Change {
        Change { role, active }
    }

    #[track_caller]
    fn check(actor: Role, is_self: bool, from: Change, to: Change, others: usize, expected: &str) {
        let got = match check_change(actor, is_self, from, to, others) {
            Ok(()) => "ok",
            Err(ApiError::NotAllowed(_)) => "403",
            Err(ApiError::Conflict(_)) => "409",
            Err(other) => panic!("unexpected {other:?}"),
        };
        assert_eq!(got, expected, "{actor:?} self={is_self} {from:?} → {to:?}");
    }

    use Role::{Admin, Agent, Owner, Viewer};

    #[test]
    fn admins_manage_everyone_but_owners() {
        check(
            Admin,
            false,
            change(Agent, true),
            change(Admin, true),
            1,
            "ok",
        );
        check(
            Admin,
            false,
            change(Admin, true),
            change(Viewer, false),
            1,
            "ok",
        );
        check(
            Admin,
            false,
            change(Agent, true),
            change(Owner, true),
            1,
            "403",
        );
        check(
            Admin,
            false,
            change(Owner, true),
            change(Owner, false),
            1,
            "403",
        );
        check(
            Admin,
            false,
            change(Owner, true),
            change(Owner, true),
            1,
            "403",
        );
        check(
            Agent,
            false,
            change(Viewer, true),
            change(Viewer, false),
            1,
            "403",
        );
    }

    #[test]
    fn owners_manage_owners_but_never_the_last_one() {
        check(
            Owner,
            false,
            change(Agent, true),
            change(Owner, true),
            1,
            "ok",
        );
        check(
            Owner,
            false,
            change(Owner, true),
            change(Admin, true),
            1,
            "ok",
        );
        check(
            Owner,
            false,
            change(Owner, true),
            change(Admin, true),
            0,
            "409",
        );
        check(
            Owner,
            false,
            change(Owner, true),
            change(Owner, false),
            0,
            "409",
        );
        // Reactivating a deactivated owner never removes one.
        check(
            Owner,
            false,
            change(Owner, false),
            change(Owner, true),
            0,
            "ok",
        );
    }

    #[test]
    fn nobody_demotes_or_deactivates_themselves() {
        check(
            Owner,
            true,
            change(Owner, true),
            change(Admin, true),
            3,
            "403",
        );
        check(
            Owner,
            true,
            change(Owner, true),
            change(Owner, false),
            3,
            "403",
        );
        // The sole owner hears about the rule that needs someone else's help.
        check(
            Owner,
            true,
            change(Owner, true),
            change(Admin, true),
            0,
            "409",
        );
        check(
            Admin,
            true,
            change(Admin, true),
            change(Agent, true),
            0,
            "403",
        );
        check(
            Admin,
            true,
            change(Admin, true),
            change(Admin, true),
            0,
            "ok",
        );
    }
}
