//! `pagodirecto run`: logging, then the daemon. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Loaded;
use crate::{daemon, logging};

pub async fn run(loaded: Loaded, demo: bool, dev_assets: Option<PathBuf>) -> Result<ExitCode> {
    let paths = loaded.config.paths();
    let guard = logging::init(&loaded.config.logging, Some(paths.log_dir()))?;
    match daemon::run(
        loaded,
        daemon::Options {
            demo,
            dev_assets,
            log_level: Some(guard.level()),
        },
    )
    .await
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            // Also into the log file: under systemd, stderr is the journal, but
            // `pagodirecto logs` reads the files.
            tracing::error!("{err:#}");
            Err(err)
        }
    }
}
