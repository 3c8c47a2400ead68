//! `pagodirecto backup create | list | verify | prune | drill` and
//! `pagodirecto restore`.
//!
//! With a daemon running, the request goes through its control socket (the
//! daemon owns postgres and, for a restore, puts the API in maintenance).
//! With none, the command takes the data-dir lock, starts a temporary
//! postgres and does the work itself.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::database::Session;
use crate::backup::{Backups, Manifest, Store, pipeline};
use crate::config::Loaded;
use crate::control::{self, Request};

#[derive(Debug, clap::Subcommand)]
pub enum BackupAction {
    /// Take a backup now; prints its name and path
    Create {
        /// A label appended to the generated name
        #[arg(long)]
        name: Option<String>,
    },
    /// List good backups, newest first
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check a backup's checksum and contents (default: the newest)
    Verify { name: Option<String> },
    /// Delete failed backups and apply retention
    Prune,
    /// Restore the newest backup into a scratch database and check every row count
    Drill,
}

pub async fn run(loaded: Loaded, action: BackupAction) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let request = match &action {
        BackupAction::Create { name } => Request::BackupCreate {
            label: name.clone(),
        },
        BackupAction::List { .. } => Request::BackupList,
        BackupAction::Verify { name } => Request::BackupVerify { name: name.clone() },
        BackupAction::Prune => Request::BackupPrune,
        BackupAction::Drill => Request::BackupDrill,
    };
    let socket = loaded.config.paths().control_socket();
    let bar = match &action {
        BackupAction::Create { .. } => bar("backing up"),
        BackupAction::Verify { .. } => bar("verifying"),
        BackupAction::Drill => bar("restoring into a scratch database"),
        _ => None,
    };
    let value = match call(&socket, &request, bar.as_ref()).await {
        Ok(value) => value,
        Err(control::Error::NotRunning { .. }) => offline(&loaded, &action, bar.as_ref()).await?,
        Err(control::Error::Refused(reason)) => bail!("{reason}"),
        Err(err) => return Err(err.into()),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_result(&loaded, &action, value)
}

/// A progress bar on stderr when it is a terminal (none otherwise): the
/// bytes streamed so far and the rate, whether the daemon or this process
/// does the work.
pub(super) fn bar(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
            .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

/// What the offline path reports to `bar`.
pub(super) fn progress(bar: Option<&indicatif::ProgressBar>) -> pipeline::Progress {
    match bar {
        Some(bar) => {
            let bar = bar.clone();
            pipeline::Progress::new(move |bytes| bar.set_position(bytes))
        }
        None => pipeline::Progress::none(),
    }
}

/// Sends `request` to the daemon, asking for progress when there is a bar.
async fn call(
    socket: &std::path::Path,
    request: &Request,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<serde_json::Value, control::Error> {
    match bar {
        Some(bar) => {
            control::call_with_progress(socket, request, |bytes| bar.set_position(bytes)).await
        }
        None => control::call(socket, request).await,
    }
}

async fn offline(
    loaded: &Loaded,
    action: &BackupAction,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<serde_json::Value> {
    let session = Session::open(loaded).await?;
    let backups = backups(loaded, &session);
    let result = match action {
        BackupAction::Create { name } => backups
            .create(name.as_deref(), progress(bar))
            .await
            .map(json),
        BackupAction::List { .. } => backups.store().list().map(json),
        BackupAction::Verify { name } => backups
            .verify(name.as_deref(), progress(bar))
            .await
            .map(json),
        BackupAction::Prune => backups.prune().map(json),
        BackupAction::Drill => backups.drill().await.map(json),
    };
    session.close().await?;
    Ok(result?)
}

pub(super) fn backups(loaded: &Loaded, session: &Session) -> Backups {
    let config = &loaded.config;
    let store = Store::new(config.paths().backup_dir(), &config.backup);
    Backups::new(
        session.access.clone(),
        &session.database,
        store,
        config.limits.disk_reserve.as_u64(),
        config.limits.postgres_memory.as_u64(),
        None,
    )
}

fn json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn print_result(
    loaded: &Loaded,
    action: &BackupAction,
    value: serde_json::Value,
) -> Result<ExitCode> {
    let dir = loaded.config.paths().backup_dir().to_path_buf();
    match action {
        BackupAction::Create { .. } => {
            let m: Manifest =
                serde_json::from_value(value).context("reading the daemon's answer")?;
            println!("{}\t{}", m.name, dir.join(&m.file).display());
        }
        BackupAction::List { json: true } => println!("{}", serde_json::to_string_pretty(&value)?),
        BackupAction::List { json: false } => {
            let list: Vec<Manifest> =
                serde_json::from_value(value).context("reading the daemon's answer")?;
            if list.is_empty() {
                println!("no backups yet in {}", dir.display());
            }
            for m in list {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    m.name,
                    m.created_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    bytesize::ByteSize(m.size),
                    if m.encrypted { "encrypted" } else { "plain" },
                    m.restore_verified_at
                        .map(|_| "\trestore-verified")
                        .unwrap_or_default()
                );
            }
        }
        BackupAction::Verify { .. } => {
            let m: Manifest =
                serde_json::from_value(value).context("reading the daemon's answer")?;
            println!(
                "{} is good: checksum matches and pg_restore reads it",
                m.name
            );
        }
        BackupAction::Prune => {
            let removed: Vec<String> =
                serde_json::from_value(value).context("reading the daemon's answer")?;
            println!(
                "removed {} backup file(s){}",
                removed.len(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", removed.join(", "))
                }
            );
        }
        BackupAction::Drill => {
            let m: Manifest =
                serde_json::from_value(value).context("reading the daemon's answer")?;
            println!(
                "{} restored into a scratch database with every table's rows; recorded as restorable",
                m.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pagodirecto restore NAME [--yes]`.
pub async fn restore(loaded: Loaded, name: String, yes: bool) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "restore replaces the current data; pass --yes to confirm when not on a terminal"
            );
        }
        eprint!(
            "Replace the current data with backup {name}? A safety backup is taken first. [y/N] "
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("restore cancelled");
        }
    }
    let socket = loaded.config.paths().control_socket();
    let bar = bar("restoring");
    let request = Request::Restore { name: name.clone() };
    let value = match call(&socket, &request, bar.as_ref()).await {
        Ok(value) => value,
        Err(control::Error::NotRunning { .. }) => {
            let session = Session::open(&loaded).await?;
            let result = backups(&loaded, &session)
                .restore(&name, progress(bar.as_ref()))
                .await;
            session.close().await?;
            serde_json::to_value(result?)?
        }
        Err(control::Error::Refused(reason)) => bail!("{reason}"),
        Err(err) => return Err(err.into()),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = |key: &str| value[key].as_f64().unwrap_or(0.0) / 1000.0;
    println!(
        "restored {name}; serving it again after {:.1} s",
        seconds("serving_after_ms")
    );
    println!(
        "the data before the restore is in backup {} (written {:.1} s later)",
        value["safety_backup"].as_str().unwrap_or("?"),
        seconds("total_ms") - seconds("serving_after_ms")
    );
    Ok(ExitCode::SUCCESS)
}
