//! `pagodirecto psql`: psql on the private socket, as the superuser, in the
//! application database. Replaces the old stack's Adminer.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::database::Session;
use crate::config::Loaded;

pub async fn run(loaded: Loaded, args: Vec<String>) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let session = Session::open(&loaded).await?;
    let mut cmd = session
        .cluster
        .client_command("psql", &loaded.config.database.name);
    cmd.args(&args);
    let status = cmd.status().await.context("running psql");
    session.close().await?;
    let status = status?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}
