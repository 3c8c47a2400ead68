//! `pagodirecto version`, `pagodirecto update --check` and `pagodirecto update`.
//!
//! `update` refuses a binary that dpkg owns (apt updates it). With a daemon
//! running, it asks the daemon over the control socket (the daemon stages,
//! backs up, swaps and restarts into the new version). With none, it does
//! the work itself: stage the verified release beside this binary, take a
//! backup the way `backup create` does offline, then swap the binaries.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use super::database::Session;
use crate::config::Loaded;
use crate::control::{self, Request};
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
    let exe = update::current_exe()?;
    if let Some(package) = update::package_owner(&exe) {
        eprintln!(
            "pagodirecto: {} is installed by the Debian package {package}; update it with apt (apt-get update && apt-get install {package}). Nothing was changed",
            exe.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let socket = loaded.config.paths().control_socket();
    match control::call(&socket, &Request::Update { allow_downgrade }).await {
        Ok(answer) => {
            match answer.get("message").and_then(|m| m.as_str()) {
                Some(message) => println!("{message}"),
                None => println!("{}", serde_json::to_string_pretty(&answer)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(control::Error::NotRunning { .. }) => offline(&loaded, &exe, allow_downgrade).await,
        Err(control::Error::Refused(reason)) => bail!("{reason}"),
        Err(err) => Err(err.into()),
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
