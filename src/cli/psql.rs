//! `pagodirecto psql`: psql as the administrative role in the application
//! database: the superuser on the private socket (embedded), or the url's
//! user with its password and TLS settings (`[database] url`). Replaces the
//! old stack's Adminer.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::database::Session;
use crate::config::Loaded;

pub async fn run(loaded: Loaded, args: Vec<String>) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let session = Session::open(&loaded).await?;
    let mut cmd = session.access.client_command("psql", &session.database);
    cmd.args(&args);
    let status = cmd.status().await.with_context(|| match session.access.external() {
        Some(external) if external.client_bin_dir().is_none() => format!(
            "running psql for the external database {}: no PostgreSQL client tools found (install the postgresql-client package, or set [database] bin_dir)",
            external.display()
        ),
        _ => "running psql".to_string(),
    });
    session.close().await?;
    let status = status?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}
