//! Files every instance on one external database must agree on (the token
//! signing keys): the database holds the copy that wins, each instance
//! keeps its local file in step with it.
//!
//! The table, `ops.shared_files`, is created by migration V4 in the `ops`
//! schema with no grant to the application role: only the administrative
//! role (the url's user) reads it.

use std::path::Path;

use tokio_postgres::Client;

use super::{Error, db};
use crate::fsutil;

/// Key of the advisory lock that serialises the first upload ("pagoshar").
const SHARE_LOCK: i64 = 0x7061_676f_7368_6172;

/// Makes `path` the shared copy of `name`: the database's when it has one
/// (written over the local file), else the local file (created first by
/// `create` if missing) is uploaded. Serialised across instances.
pub async fn adopt(
    client: &mut Client,
    name: &str,
    path: &Path,
    create: impl FnOnce() -> Result<(), String>,
) -> Result<(), Error> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting to share a file"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SHARE_LOCK])
        .await
        .map_err(db("taking the shared-file lock"))?;
    let row = tx
        .query_opt(
            "SELECT content FROM ops.shared_files WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(db("reading a shared file"))?;
    if let Some(row) = row {
        let content: String = row.get(0);
        fsutil::write_atomic(path, content.as_bytes(), 0o600).map_err(|e| io(path, &e))?;
    } else {
        if !path.exists() {
            create().map_err(|reason| Error::Shared {
                path: path.to_path_buf(),
                reason,
            })?;
        }
        let content = std::fs::read_to_string(path).map_err(|e| io(path, &e))?;
        tx.execute(
            "INSERT INTO ops.shared_files (name, content) VALUES ($1, $2)",
            &[&name, &content],
        )
        .await
        .map_err(db("uploading a shared file"))?;
    }
    tx.commit().await.map_err(db("committing a shared file"))
}

/// Uploads the local `path` as the new shared copy of `name` (after a
/// change such as a key rotation).
pub async fn publish(client: &Client, name: &str, path: &Path) -> Result<(), Error> {
    let content = std::fs::read_to_string(path).map_err(|e| io(path, &e))?;
    client
        .execute(
            "INSERT INTO ops.shared_files (name, content) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET content = EXCLUDED.content, updated_at = now()",
            &[&name, &content],
        )
        .await
        .map_err(db("publishing a shared file"))?;
    Ok(())
}

/// The shared copy of `name`, if there is one.
pub async fn fetch(client: &Client, name: &str) -> Result<Option<String>, Error> {
    let row = client
        .query_opt(
            "SELECT content FROM ops.shared_files WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(db("reading a shared file"))?;
    Ok(row.map(|r| r.get(0)))
}

fn io(path: &Path, err: &std::io::Error) -> Error {
    Error::Shared {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}
