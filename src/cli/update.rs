//! `pagodirecto version`, `pagodirecto update --check` and `pagodirecto update`.
//!
//! `update` refuses a binary that dpkg owns (apt updates it). It stages the
//! verified release beside the binary (the running daemon's, else this
//! one) and swaps the file. With a daemon running, it then asks the daemon
//! to hand over to the new version (`Request::Upgrade`: the daemon backs up,
//! starts the new binary on its sockets and rolls back if it is not ready;
//! docs/update-handover.md) and waits for the outcome in `status`, putting
//! the previous file back after a rollback. With none, it takes the backup
//! itself, the way `backup create` does offline, before the swap.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::database::Session;
use crate::config::Loaded;
use crate::control::{self, Request, StatusReport};
use crate::handover::{Outcome, Record};
use crate::update::{self, Options};

/// `pagodirecto version [--json]`. The daemon runs this on a staged binary
/// to learn what it is, so it reads no config and needs nothing else.
pub fn version(json: bool) -> ExitCode {
    let schema = crate::migrate::latest_known();
    if json {
        println!(
            "{}",
            serde_json::json!({ "version": update::VERSION, "schema": schema })
        );
    } else {
        println!("pagodirecto {} (database schema {schema})", update::VERSION);
    }
    ExitCode::SUCCESS
}

/// `pagodirecto update --check`: what the channel offers; changes nothing.
pub async fn check(loaded: &Loaded) -> Result<ExitCode> {
    super::init_cli_logging(loaded);
    let cfg = &loaded.config.update;
    let available = update::check(cfg).await?;
    println!("current:   {}", available.current);
    match &available.latest {
        None => println!(
            "available: nothing on the {} channel of {}",
            cfg.channel.as_str(),
            cfg.feed
        ),
        Some(release) if available.newer().is_some() => {
            println!(
                "available: {} ({}{}), {}",
                release.version,
                release.tag,
                if release.prerelease {
                    ", pre-release"
                } else {
                    ""
                },
                release.asset_url
            );
            if let Some(notes) = &release.notes {
                println!("notes:\n{}", indent(notes));
            }
        }
        Some(release) => println!(
            "available: {} is the newest on the {} channel; up to date",
            release.version,
            cfg.channel.as_str()
        ),
    }
    if let Some(package) = update::current_exe()
        .ok()
        .and_then(|exe| update::package_owner(&exe))
    {
        println!(
            "note: this binary is installed by the Debian package {package}; apt updates it, not pagodirecto update"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `pagodirecto update [--allow-downgrade]`.
pub async fn run(loaded: Loaded, allow_downgrade: bool) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let socket = loaded.config.paths().control_socket();
    // With a daemon running, the file to replace is the one it runs.
    let running = match control::call(&socket, &Request::Status).await {
        Ok(value) => Some(
            serde_json::from_value::<StatusReport>(value)
                .context("reading the running daemon's status")?,
        ),
        Err(control::Error::NotRunning { .. }) => None,
        Err(control::Error::Refused(reason)) => bail!("{reason}"),
        Err(err) => return Err(err.into()),
    };
    let exe = match running.as_ref().and_then(|status| status.exe.clone()) {
        Some(exe) => exe,
        None => update::current_exe()?,
    };
    if let Some(package) = update::package_owner(&exe) {
        eprintln!(
            "pagodirecto: {} is installed by the Debian package {package}; update it with apt (apt-get update && apt-get install {package}). Nothing was changed",
            exe.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let options = Options { allow_downgrade };
    match running {
        None => offline(&loaded, &exe, &options).await,
        Some(_) => online(&loaded, &socket, &exe, &options).await,
    }
}

/// Beyond `ready_timeout`, how long the hand-over may take: the pre-update
/// backup when it is taken in the gap (an update that migrates), stopping
/// and starting PostgreSQL.
const HAND_OVER_MARGIN: Duration = Duration::from_secs(15 * 60);

/// A daemon runs: stage → swap the file → ask it to hand over to the new
/// version (it backs up first) → wait for the outcome in `status`. When it
/// rolls back, the previous binary is put back on disk too.
async fn online(loaded: &Loaded, socket: &Path, exe: &Path, options: &Options) -> Result<ExitCode> {
    let cfg = &loaded.config.update;
    let staged = update::stage(cfg, exe, options).await?;
    let (version, schema) = (staged.version.to_string(), staged.schema);
    let installed = update::install(staged).context("swapping the binaries")?;
    let asked = time::OffsetDateTime::now_utc() - Duration::from_secs(5);
    let request = Request::Upgrade {
        version: version.clone(),
        schema,
    };
    let answer = match control::call(socket, &request).await {
        Ok(answer) => answer,
        Err(err) => {
            let refused = anyhow::Error::from(err);
            return Err(match installed.revert() {
                Ok(()) => refused.context(format!(
                    "the daemon did not take the update to {version}; the previous binary is back at {}, nothing was changed",
                    exe.display()
                )),
                Err(revert) => refused.context(format!(
                    "the daemon did not take the update to {version}, and putting the previous binary back failed ({:#}): move {} to {} by hand",
                    anyhow::Error::from(revert),
                    installed.previous.display(),
                    exe.display()
                )),
            });
        }
    };
    match answer["backup"].as_str() {
        Some(backup) => println!("backup taken before the update: {backup}"),
        None if answer["backup_in_gap"].as_bool() == Some(true) => {
            println!(
                "{version} migrates the database: the daemon backs up once it has stopped serving"
            );
        }
        None => {}
    }
    println!("the daemon is handing over to {version}…");
    let deadline = tokio::time::Instant::now() + cfg.ready_timeout + HAND_OVER_MARGIN;
    loop {
        if let Some((record, report)) = outcome(socket, &version, asked).await {
            match record.outcome {
                Outcome::InProgress => {}
                Outcome::Updated => {
                    println!(
                        "updated {} → {version}; previous binary kept at {}; pid {} serves {}",
                        record.from,
                        installed.previous.display(),
                        report.pid,
                        report.version
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                Outcome::RolledBack => {
                    let reason = record.reason.unwrap_or_else(|| "no reason recorded".into());
                    let put_back = match installed.revert() {
                        Ok(()) => format!("the previous binary is back at {}", exe.display()),
                        Err(err) => format!(
                            "putting the previous binary back failed ({:#}): move {} to {} by hand",
                            anyhow::Error::from(err),
                            installed.previous.display(),
                            exe.display()
                        ),
                    };
                    bail!(
                        "the update to {version} was rolled back: {reason}; the daemon runs {} again and {put_back}",
                        record.from
                    );
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the update to {version} has not finished after {:?}; see pagodirecto status (the new binary is at {}, the previous one at {})",
                cfg.ready_timeout + HAND_OVER_MARGIN,
                exe.display(),
                installed.previous.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The daemon's record of the update to `version` made after `asked`, once a
/// daemon answers (during the hand-over none may).
async fn outcome(
    socket: &Path,
    version: &str,
    asked: time::OffsetDateTime,
) -> Option<(Record, StatusReport)> {
    let value = control::call(socket, &Request::Status).await.ok()?;
    let report: StatusReport = serde_json::from_value(value).ok()?;
    let record = report
        .last_update
        .clone()
        .filter(|r| r.to == version && r.at >= asked)?;
    Some((record, report))
}

/// No daemon: stage → backup → swap, here.
async fn offline(loaded: &Loaded, exe: &Path, options: &Options) -> Result<ExitCode> {
    let staged = update::stage(&loaded.config.update, exe, options).await?;
    let version = staged.version.clone();
    let backup = match backup_before(loaded, &version).await {
        Ok(backup) => backup,
        Err(err) => {
            let _ = staged.discard();
            return Err(err.context(format!(
                "taking the backup before updating to {version}; nothing was changed"
            )));
        }
    };
    let installed = update::install(staged).context("swapping the binaries")?;
    println!(
        "updated {} → {version}; previous binary kept at {}",
        update::VERSION,
        installed.previous.display()
    );
    match backup {
        Some(name) => println!("backup taken before the update: {name}"),
        None => println!("no backup taken (see the warning above)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The backup `backup create` takes with no daemon running, labelled with
/// the version being installed. `None` (with a warning) when there is
/// nothing this command can back up: an external database (back it up
/// where it runs), or no database yet.
async fn backup_before(loaded: &Loaded, version: &semver::Version) -> Result<Option<String>> {
    let config = &loaded.config;
    if config.database.url.is_some() {
        eprintln!(
            "warning: the database is external ([database] url); no backup is taken before the update: back it up where it runs"
        );
        return Ok(None);
    }
    if !config.paths().pgdata().join("PG_VERSION").exists() {
        eprintln!(
            "warning: no database in {} yet; nothing to back up before the update",
            config.data_dir.display()
        );
        return Ok(None);
    }
    let label: String = format!("before-update-to-{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let session = Session::open(loaded).await?;
    let result = super::backup::backups(loaded, &session)
        .create(Some(&label), super::backup::progress("backing up"))
        .await;
    session.close().await?;
    Ok(Some(result?.name))
}
