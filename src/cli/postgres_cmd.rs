//! `pagodirecto postgres install|status`: puts PostgreSQL binaries into
//! `<data>/pg/binaries`, and shows which binaries the daemon would use.
//!
//! Neither needs a running daemon, and neither takes the data-dir lock: an
//! install only adds a `<data>/pg/binaries/<version>` directory, by one
//! atomic rename, and never changes one in use (see
//! `postgres::binaries::archive`). A running daemon keeps the binaries it
//! started with and looks again at its next start; `status` only reads.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use super::PostgresAction;
use crate::config::Loaded;
use crate::postgres::binaries::{self, Install, Origin, archive};

pub async fn run(loaded: &Loaded, action: PostgresAction) -> Result<ExitCode> {
    match action {
        PostgresAction::Install {
            archive: Some(file),
            ..
        } => {
            init_logging(loaded);
            install_archive(loaded, file).await
        }
        PostgresAction::Install {
            version: Some(version),
            mirror,
            ..
        } => {
            init_logging(loaded);
            let mirror = mirror.unwrap_or_else(|| loaded.config.database.mirror.clone());
            install_version(loaded, &version, &mirror).await
        }
        PostgresAction::Install { .. } => bail!("give --archive FILE or --version V"),
        PostgresAction::Status => {
            super::init_cli_logging(loaded);
            status(loaded).await
        }
    }
}

/// Like the other commands (warnings only), except that our own progress
/// lines show: a download can take a while.
fn init_logging(loaded: &Loaded) {
    let mut cfg = loaded.config.logging.clone();
    if cfg.level == "info" {
        cfg.level = "warn,pagodirecto=info".into();
    }
    let _ = crate::logging::init(&cfg, None);
}

async fn install_archive(loaded: &Loaded, file: PathBuf) -> Result<ExitCode> {
    let installs = loaded.config.paths().pg_installs();
    let install = {
        let (installs, file) = (installs.clone(), file.clone());
        tokio::task::spawn_blocking(move || binaries::install_archive(&installs, &file))
            .await
            .expect("installing does not panic")
    }
    .with_context(|| format!("installing PostgreSQL from {}", file.display()))?;
    let checked = archive::checksum_path(&file);
    let verified = match &install.sha256 {
        Some(sha256) => format!("sha256 {sha256} matches {}", checked.display()),
        None => format!("not verified: there is no {}", checked.display()),
    };
    report(loaded, &install, &verified).await
}

async fn install_version(loaded: &Loaded, version: &str, mirror: &str) -> Result<ExitCode> {
    let installs = loaded.config.paths().pg_installs();
    let install = binaries::install_version(&installs, version, mirror)
        .await
        .with_context(|| format!("installing PostgreSQL {version} from {mirror}"))?;
    let verified = match &install.sha256 {
        Some(sha256) => format!("sha256 {sha256} matches the mirror's .sha256"),
        None => String::new(),
    };
    report(loaded, &install, &verified).await
}

async fn report(loaded: &Loaded, install: &Install, verified: &str) -> Result<ExitCode> {
    let b = &install.binaries;
    let dir = b.bin_dir.parent().unwrap_or(&b.bin_dir).display();
    if install.fresh {
        println!("installed PostgreSQL {} in {dir}", b.version);
        if !verified.is_empty() {
            println!("  {verified}");
        }
    } else {
        println!(
            "PostgreSQL {} is already installed in {dir}; left as it is",
            b.version
        );
    }
    warn_if_the_cluster_disagrees(loaded).await;
    Ok(ExitCode::SUCCESS)
}

/// The daemon takes the highest installed version at its next start; when
/// that is not the major the existing cluster was created with, it will
/// refuse to start. Better to hear it now than at the next restart.
async fn warn_if_the_cluster_disagrees(loaded: &Loaded) {
    let paths = loaded.config.paths();
    let Ok(cluster) = std::fs::read_to_string(paths.pgdata().join("PG_VERSION")) else {
        return;
    };
    let cluster = cluster.trim().to_string();
    let configured = loaded.config.database.bin_dir.clone();
    let installs = paths.pg_installs();
    let next =
        tokio::task::spawn_blocking(move || binaries::find(configured.as_deref(), &installs))
            .await
            .expect("binary lookup does not panic");
    if let Ok(next) = next
        && next.major() != cluster
    {
        eprintln!(
            "warning: the cluster in {} is PostgreSQL {cluster}, but the daemon's next start would use PostgreSQL {} from {} ({}) and refuse to run; set [database] bin_dir to PostgreSQL {cluster} binaries",
            paths.pgdata().display(),
            next.version,
            next.bin_dir.display(),
            next.origin.as_str(),
        );
    }
}

async fn status(loaded: &Loaded) -> Result<ExitCode> {
    let db = &loaded.config.database;
    let installs = loaded.config.paths().pg_installs();
    let (found, installed) = {
        let (configured, installs) = (db.bin_dir.clone(), installs.clone());
        tokio::task::spawn_blocking(move || {
            (
                binaries::find(configured.as_deref(), &installs),
                binaries::installed(&installs),
            )
        })
        .await
        .expect("binary lookup does not panic")
    };
    let mut out = String::new();
    if let Ok(b) = &found {
        let _ = writeln!(out, "PostgreSQL {} in {}", b.version, b.bin_dir.display());
        let _ = writeln!(out, "  origin: {}", b.origin.as_str());
        let _ = writeln!(out, "  why:    {}", why(b.origin));
    }
    let _ = writeln!(out, "installed under {}:", installs.display());
    if installed.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (bin, probed) in &installed {
        let _ = match probed {
            Ok(b) => writeln!(out, "  {:<8} {}", b.version, bin.display()),
            Err(problem) => writeln!(out, "  {:<8} {} ({problem})", "broken", bin.display()),
        };
    }
    print!("{out}");
    match found {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            if matches!(err, binaries::Error::NotFound { .. }) && db.download {
                eprintln!(
                    "note: [database] download is on, so `pagodirecto run` would download PostgreSQL {} from {}",
                    db.version, db.mirror
                );
            }
            Err(err.into())
        }
    }
}

fn why(origin: Origin) -> &'static str {
    match origin {
        Origin::Configured => "[database] bin_dir is set, so nothing else is looked at",
        Origin::Installed => {
            "no [database] bin_dir; the highest version installed under the data dir comes before the system's"
        }
        Origin::System => "no [database] bin_dir and nothing installed under the data dir",
        Origin::Downloaded => "nothing was found, so it was downloaded from [database] mirror",
    }
}
