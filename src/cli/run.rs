//! `pagodirecto run`: logging, then the daemon. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Loaded;
use crate::{daemon, logging};

pub async fn run(loaded: Loaded, dev_assets: Option<PathBuf>) -> Result<ExitCode> {
    let paths = loaded.config.paths();
    let _guard = logging::init(&loaded.config.logging, Some(paths.log_dir()))?;
    match daemon::run(loaded, daemon::Options { dev_assets }).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            // Also into the log file: under systemd, stderr is the journal, but
            // `pagodirecto logs` reads the files.
            tracing::error!("{err:#}");
            Err(err)
        }
    }
}
