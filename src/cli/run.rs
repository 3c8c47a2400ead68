//! `pagodirecto run`: logging, then the daemon. Nothing else.

use anyhow::Result;

use crate::config::Loaded;
use crate::daemon::{self, Exit};
use crate::handover::Inherited;
use crate::logging;

/// Runs the daemon; the log writer is flushed when this returns, before a
/// [`Exit::Restart`] replaces the process.
pub async fn run(
    loaded: Loaded,
    mut options: daemon::Options,
    inherited: Inherited,
) -> Result<Exit> {
    let paths = loaded.config.paths();
    let guard = logging::init(&loaded.config.logging, Some(paths.log_dir()))?;
    options.log_level = Some(guard.level());
    match daemon::run(loaded, options, inherited).await {
        Ok(exit) => Ok(exit),
        Err(err) => {
            // Also into the log file: under systemd, stderr is the journal, but
            // `pagodirecto logs` reads the files.
            tracing::error!("{err:#}");
            Err(err)
        }
    }
}
