//! Applies the SQL files in `migrations/` (embedded at build time) and
//! creates the application's database and role credentials.
//!
//! Called by `daemon` at start and by `pagodirecto migrate`. Takes a
//! connection, not the whole system.
//!
//! Invariants:
//! - migrations run under a PostgreSQL advisory lock held on the same
//!   session, so two daemons on one database never apply them twice
//!   (refinery has no lock of its own);
//! - a database whose schema is newer than this binary knows is refused
//!   before anything is applied: it means a rolled-back binary, and running
//!   old code on a new schema corrupts data.

use tokio_postgres::Client;
use tracing::info;

refinery::embed_migrations!("migrations");

/// Key of the advisory lock that serialises migrations ("pagodire" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_676f_6469_7265;
/// The role the API connects as; created by the first migration.
pub const APP_ROLE: &str = "pagodirecto_app";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}")]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("applying migrations")]
    Migration(#[source] refinery::Error),
    #[error(
        "the database schema is at version {database} but this binary knows only up to {binary}: it was migrated by a newer pagodirecto; run that version, or restore a backup taken before the upgrade"
    )]
    SchemaNewer { database: i64, binary: i64 },
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { step, source }
}

/// One migration and whether it is applied.
#[derive(Debug, Clone)]
pub struct MigrationState {
    pub version: i64,
    pub name: String,
    pub applied_on: Option<String>,
}

/// The highest migration version this binary carries.
#[must_use]
pub fn latest_known() -> i64 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Creates database `name` if missing. `client` is connected to another
/// database (`postgres`) as a role that may create databases.
pub async fn ensure_database(client: &Client, name: &str) -> Result<bool, Error> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db("checking for the application database"))?
        .is_some();
    if !exists {
        // `name` is validated by config to [A-Za-z0-9_]; quoting keeps its case.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(db("creating the application database"))?;
        info!(database = name, "created the application database");
    }
    Ok(!exists)
}

/// Applies pending migrations under the advisory lock; returns how many ran.
pub async fn run(client: &mut Client) -> Result<usize, Error> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("taking the migration lock"))?;
    let result = run_locked(client).await;
    // The lock is per session; unlock explicitly so a pooled or reused
    // connection never keeps other instances waiting.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock.map_err(db("releasing the migration lock"))?;
    Ok(applied)
}

async fn run_locked(client: &mut Client) -> Result<usize, Error> {
    let runner = migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    let newest_applied = newest_applied(client).await?;
    let binary = latest_known();
    if newest_applied > binary {
        return Err(Error::SchemaNewer {
            database: newest_applied,
            binary,
        });
    }
    let report = runner.run_async(client).await.map_err(Error::Migration)?;
    for migration in report.applied_migrations() {
        info!(
            version = migration.version(),
            name = migration.name(),
            "applied migration"
        );
    }
    Ok(report.applied_migrations().len())
}

async fn newest_applied(client: &Client) -> Result<i64, Error> {
    if !table_exists(client).await? {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM refinery_schema_history",
            &[],
        )
        .await
        .map_err(db("reading the migration history"))?;
    Ok(row.get(0))
}

/// Every known or applied migration, oldest first.
pub async fn status(client: &Client) -> Result<Vec<MigrationState>, Error> {
    let mut states: Vec<MigrationState> = migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| MigrationState {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            applied_on: None,
        })
        .collect();
    if table_exists(client).await? {
        let rows = client
            .query("SELECT version::bigint, name, applied_on FROM refinery_schema_history ORDER BY version", &[])
            .await
            .map_err(db("reading the migration history"))?;
        for row in rows {
            let (version, name, applied_on): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            match states.iter_mut().find(|s| s.version == version) {
                Some(state) => state.applied_on = Some(applied_on),
                None => states.push(MigrationState {
                    version,
                    name,
                    applied_on: Some(applied_on),
                }),
            }
        }
    }
    states.sort_by_key(|s| s.version);
    Ok(states)
}

async fn table_exists(client: &Client) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("looking for the migration history"))?;
    Ok(row.get(0))
}

/// Gives the application role its (generated) password. Runs at every start,
/// so a replaced secrets file or a restored database is fixed by a restart.
pub async fn set_app_password(client: &Client, password: &str) -> Result<(), Error> {
    let literal = password.replace('\'', "''");
    client
        .batch_execute(&format!(
            // Generic plans for the API's prepared statements: re-planning every
            // list query cost more than running it (docs/api-benchmark.md).
            "ALTER ROLE {APP_ROLE} WITH LOGIN PASSWORD '{literal}'; \
             ALTER ROLE {APP_ROLE} SET plan_cache_mode = force_generic_plan"
        ))
        .await
        .map_err(db("setting the application role's password"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_start_at_one_without_gaps() {
        let runner = migrations::runner();
        let versions: Vec<i64> = runner
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .collect();
        let expected: Vec<i64> = (1..=i64::try_from(versions.len()).expect("few")).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected);
        assert_eq!(latest_known(), *expected.last().expect("at least one"));
    }
}
