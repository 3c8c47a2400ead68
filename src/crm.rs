//! Operator-level CRM administration: tenants and users created by the
//! appliance itself (first start) and by the CLI (`tenant add`, `user add`,
//! `user reset-password`), as the database superuser; and the pruning of
//! old audit rows (`[audit] keep_days`, a job the daemon's leader runs).
//!
//! Called by `daemon` and `cli`. The API never comes here: it works through
//! the application role under Row-Level Security.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::auth::Role;

/// The stages every new tenant's pipeline starts with: (name, kind).
pub const DEFAULT_STAGES: &[(&str, &str)] = &[
    ("Lead", "open"),
    ("Qualified", "open"),
    ("Proposal", "open"),
    ("Negotiation", "open"),
    ("Won", "won"),
    ("Lost", "lost"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}")]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("no tenant named {0:?}")]
    NoSuchTenant(String),
    #[error("a user with email {0:?} already exists")]
    UserExists(String),
    #[error("no user with email {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    Invalid(String),
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { step, source }
}

/// Creates a tenant and its default pipeline, in one transaction.
pub async fn create_tenant(client: &mut Client, name: &str) -> Result<Uuid, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Invalid(
            "a tenant name is 1 to 200 characters".into(),
        ));
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    if tx
        .query_opt("SELECT 1 FROM tenancy.tenants WHERE name = $1", &[&name])
        .await
        .map_err(db("looking up the tenant"))?
        .is_some()
    {
        return Err(Error::TenantExists(name.into()));
    }
    let id: Uuid = tx
        .query_one(
            "INSERT INTO tenancy.tenants (name) VALUES ($1) RETURNING id",
            &[&name],
        )
        .await
        .map_err(db("creating the tenant"))?
        .get(0);
    for (position, (stage, kind)) in DEFAULT_STAGES.iter().enumerate() {
        tx.execute(
            "INSERT INTO sales.pipeline_stages (tenant_id, name, position, kind) VALUES ($1, $2, $3, $4)",
            &[&id, stage, &i32::try_from(position).unwrap_or(0), kind],
        )
        .await
        .map_err(db("creating the pipeline stages"))?;
    }
    tx.commit().await.map_err(db("committing the new tenant"))?;
    Ok(id)
}

pub async fn tenant_count(client: &Client) -> Result<i64, Error> {
    Ok(client
        .query_one("SELECT count(*) FROM tenancy.tenants", &[])
        .await
        .map_err(db("counting tenants"))?
        .get(0))
}

/// Creates a user in the tenant named `tenant` with an already-hashed password.
pub async fn create_user(
    client: &Client,
    tenant: &str,
    email: &str,
    name: &str,
    role: Role,
    password_hash: &str,
) -> Result<Uuid, Error> {
    let tenant_id: Uuid = client
        .query_opt("SELECT id FROM tenancy.tenants WHERE name = $1", &[&tenant])
        .await
        .map_err(db("looking up the tenant"))?
        .ok_or_else(|| Error::NoSuchTenant(tenant.into()))?
        .get(0);
    let email = email.trim().to_lowercase();
    if !email.contains('@') || email.len() > 254 {
        return Err(Error::Invalid(format!("{email:?} is not an email address")));
    }
    if client
        .query_opt("SELECT 1 FROM iam.users WHERE email = $1", &[&email])
        .await
        .map_err(db("looking up the user"))?
        .is_some()
    {
        return Err(Error::UserExists(email));
    }
    let row = client
        .query_one(
            "INSERT INTO iam.users (tenant_id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&tenant_id, &email, &name.trim(), &role.as_str(), &password_hash],
        )
        .await
        .map_err(db("creating the user"))?;
    Ok(row.get(0))
}

/// Sets a new password and lifts any lockout.
pub async fn reset_password(
    client: &Client,
    email: &str,
    password_hash: &str,
) -> Result<(), Error> {
    let email = email.trim().to_lowercase();
    let updated = client
        .execute(
            "UPDATE iam.users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE email = $1",
            &[&email, &password_hash],
        )
        .await
        .map_err(db("updating the password"))?;
    if updated == 0 {
        return Err(Error::NoSuchUser(email));
    }
    // A reset also ends every session the old password opened.
    client
        .execute(
            "UPDATE iam.refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND user_id = (SELECT id FROM iam.users WHERE email = $1)",
            &[&email],
        )
        .await
        .map_err(db("revoking the user's sessions"))?;
    Ok(())
}

/// Rows deleted per statement when pruning: short transactions, so pruning
/// a large backlog never holds locks (or bloats WAL) in one go.
const PRUNE_BATCH: i64 = 5_000;

/// Deletes audit rows older than `keep_days` days, every tenant's, in
/// batches; returns how many went. As the tables' owner (superuser, or the
/// url's user with `BYPASSRLS`): the API role may only read audit rows.
pub async fn prune_audit(client: &Client, keep_days: u32) -> Result<u64, Error> {
    let days = i32::try_from(keep_days).unwrap_or(i32::MAX);
    let cutoff: time::OffsetDateTime = client
        .query_one("SELECT now() - make_interval(days => $1)", &[&days])
        .await
        .map_err(db("computing the audit cut-off"))?
        .get(0);
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM audit.events WHERE id IN \
                 (SELECT id FROM audit.events WHERE at < $1 ORDER BY id LIMIT $2)",
                &[&cutoff, &PRUNE_BATCH],
            )
            .await
            .map_err(db("deleting old audit rows"))?;
        total += deleted;
        if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}
