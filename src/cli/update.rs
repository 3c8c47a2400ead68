//! `pagodirecto version`, `pagodirecto update --check` and `pagodirecto update`.
//!
//! `update` refuses a binary that dpkg owns (apt updates it). It stages the
//! verified release beside the binary. With a daemon running, it swaps the
//! file and asks the daemon (control socket, `upgrade`) to back up and hand
//! its sockets over to the new binary (`daemon::upgrade`), then waits for
//! the outcome in `status`: the new version serving, or a rollback — after
//! which the previous file goes back too. With none, it takes a backup the
//! way `backup create` does offline, then swaps the binaries.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::database::Session;
use crate::config::Loaded;
use crate::control::{self, Request, StatusReport};
use crate::handover::Outcome;
use crate::update::{self, Installed, Options};

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
    let running = match control::call(&socket, &Request::Status).await {
        Ok(value) => Some(
            serde_json::from_value::<StatusReport>(value).context("reading the daemon's status")?,
        ),
        Err(control::Error::NotRunning { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    // The binary the daemon runs, which need not be the one running this.
    let exe = match running.as_ref().and_then(|r| r.exe.clone()) {
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
        Some(daemon) => online(&loaded, &exe, &options, &daemon).await,
        None => offline(&loaded, &exe, allow_downgrade).await,
    }
}

/// A daemon runs: stage, swap the file, and have the daemon hand over to
/// it; wait for the outcome.
async fn online(
    loaded: &Loaded,
    exe: &Path,
    options: &Options,
    daemon: &StatusReport,
) -> Result<ExitCode> {
    let staged = update::stage(&loaded.config.update, exe, options).await?;
    let (version, schema) = (staged.version.to_string(), staged.schema);
    let installed = update::install(staged).context("swapping the binaries")?;
    println!(
        "verified {version}; installed at {} (previous kept at {})",
        installed.exe.display(),
        installed.previous.display()
    );
    let socket = loaded.config.paths().control_socket();
    let asked = time::OffsetDateTime::now_utc();
    let request = Request::Upgrade {
        version: version.clone(),
        schema,
    };
    let answer = match control::call(&socket, &request).await {
        Ok(answer) => answer,
        Err(err) => {
            put_back(&installed);
            return Err(anyhow::Error::from(err).context(format!(
                "the daemon did not take the update to {version}; the previous binary is back in place"
            )));
        }
    };
    match answer.get("backup").and_then(|b| b.as_str()) {
        Some(backup) => println!("backup taken before the update: {backup}"),
        None => println!(
            "{version} migrates the database: the backup is taken once requests have stopped"
        ),
    }
    println!("handing the sockets over to {version} (connections wait, none is refused)…");
    // The backup in the gap and a rollback's restore take time on a large
    // database: wait for an outcome, not for a guess.
    let deadline = Instant::now() + loaded.config.update.ready_timeout + Duration::from_secs(3600);
    loop {
        if let Ok(value) = control::call(&socket, &Request::Status).await
            && let Ok(now) = serde_json::from_value::<StatusReport>(value)
        {
            let last = now.last_update.filter(|u| u.to == version && u.at >= asked);
            let outcome = last.as_ref().map(|u| u.outcome);
            // `updated` is recorded by the old process once the new one has
            // stayed up a moment after it said ready (until then, a crash
            // still rolls back).
            if outcome == Some(Outcome::Updated) && now.version == version && now.ready {
                println!(
                    "updated {} → {version}: pid {} serves",
                    daemon.version, now.pid
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(last) = last
                && last.outcome == Outcome::RolledBack
                && now.ready
            {
                put_back(&installed);
                bail!(
                    "the update to {version} was rolled back: {}. {} serves again, and the previous binary is back at {}",
                    last.reason.as_deref().unwrap_or("no reason recorded"),
                    now.version,
                    installed.exe.display()
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no outcome of the update to {version} yet; see pagodirecto status and pagodirecto logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn put_back(installed: &Installed) {
    if let Err(err) = installed.revert() {
        eprintln!("pagodirecto: cannot put the previous binary back: {err}");
    }
}

/// No daemon: stage → backup → swap, here.
async fn offline(
    loaded: &Loaded,
    exe: &std::path::Path,
    allow_downgrade: bool,
) -> Result<ExitCode> {
    let staged = update::stage(&loaded.config.update, exe, &Options { allow_downgrade }).await?;
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
/// the version being installed. `None` (with a warning) when there is no
/// database yet.
async fn backup_before(loaded: &Loaded, version: &semver::Version) -> Result<Option<String>> {
    let config = &loaded.config;
    // An external database is backed up the same way (`Session` connects
    // to it); an embedded one may not exist yet.
    if config.database.url.is_none() && !config.paths().pgdata().join("PG_VERSION").exists() {
        eprintln!(
            "warning: no database in {} yet; nothing to back up before the update",
            config.data_dir.display()
        );
        return Ok(None);
    }
    let label = update::backup_label(&version.to_string());
    let session = Session::open(loaded).await?;
    let bar = super::backup::bar("backing up");
    let result = super::backup::backups(loaded, &session)
        .create(Some(&label), super::backup::progress(bar.as_ref()))
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    session.close().await?;
    Ok(Some(result?.name))
}
