//! The command line: `Cli` and its subcommands, and [`run`], which builds the
//! runtime and hands each command to its module in `cli/`.
//!
//! Commands that act on a running daemon go through its control socket;
//! commands that need the database with no daemon running take the data-dir
//! lock and start PostgreSQL themselves. `postgres install|status` need
//! neither (see `cli/postgres_cmd.rs`), and neither does `service`, which
//! only writes the files of a standalone install (`cli/service.rs`).

mod backup;
mod config_cmd;
mod database;
mod doctor;
mod logs;
mod migrate;
mod postgres_cmd;
mod psql;
mod run;
mod service;
mod status;
mod update;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, Loaded, Overrides};

/// The PagoDirecto CRM server: its own PostgreSQL, API and web app in one binary.
#[derive(Debug, Parser)]
#[command(name = "pagodirecto", version = crate::update::VERSION, about)]
pub struct Cli {
    /// Config file [default: /etc/pagodirecto/pagodirecto.toml when it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: /var/lib/pagodirecto as root, else the XDG data dir]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance in the foreground (as systemd does)
    Run {
        /// Address to listen on; repeat for several [default: 127.0.0.1:8080]
        #[arg(long, value_name = "ADDR")]
        listen: Vec<SocketAddr>,
        /// Seed a demo data set (two tenants, thousands of customers) unless
        /// it is there already; the demo users' password is shown once
        #[arg(long)]
        demo: bool,
        /// Serve the web app from DIR (re-read on every request) instead of
        /// the copy built into the binary: for frontend work (assets/dist)
        #[arg(long, value_name = "DIR")]
        dev_assets: Option<PathBuf>,
    },
    /// Show what the running daemon is doing
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print the running daemon's metrics (Prometheus text) from its control socket
    Metrics,
    /// Check the host and configuration (binaries, data dir ownership, disk
    /// reserve, cgroups, ports…) and say how to fix problems; exit 1 on a failure
    Doctor,
    /// Show the daemon's and PostgreSQL's logs
    Logs {
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
        /// How many lines to show
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only lines from this part
        #[arg(long, value_enum)]
        service: Option<logs::ServiceArg>,
    },
    /// Apply database migrations, or show them
    Migrate {
        /// List migrations and whether each is applied
        #[arg(long)]
        status: bool,
    },
    /// An interactive psql on the private socket (arguments after -- go to psql)
    Psql {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Take, list, verify and prune backups; run a restore drill
    Backup {
        #[command(subcommand)]
        action: backup::BackupAction,
    },
    /// Replace the data with a backup (a safety backup is taken first)
    Restore {
        name: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Token signing keys
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Manage tenants
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Manage users (the password is read from stdin, or prompted for)
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Check or show the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Install PostgreSQL binaries into the data dir, or show which are used
    Postgres {
        #[command(subcommand)]
        action: PostgresAction,
    },
    /// Install or remove the systemd service on a host without the .deb
    Service {
        #[command(subcommand)]
        action: service::ServiceAction,
    },
    /// Print this binary's version and the database schema it migrates to
    Version {
        /// Print {"version": "...", "schema": N}
        #[arg(long)]
        json: bool,
    },
    /// Update this binary to the newest signed release on the [update]
    /// channel (a backup is taken first; the old binary is kept as
    /// <binary>.previous). A .deb install is updated by apt instead
    Update {
        /// Only say what is available; change nothing
        #[arg(long)]
        check: bool,
        /// Take the newest release even when it is older than this binary
        #[arg(long, conflicts_with = "check")]
        allow_downgrade: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PostgresAction {
    /// Install PostgreSQL binaries into <data>/pg/binaries/<version>
    ///
    /// From a theseus-rs/postgresql-binaries archive on this machine
    /// (FILE.sha256 beside it is checked when present), or downloaded from
    /// <mirror>/<V>/postgresql-<V>-<target>.tar.gz, whose .sha256 is required.
    /// A version that is already installed is left as it is.
    #[command(group = clap::ArgGroup::new("source").required(true))]
    Install {
        /// A postgresql-<version>-<target>.tar.gz on this machine (offline)
        #[arg(long, value_name = "FILE", group = "source")]
        archive: Option<PathBuf>,
        /// Download this release, e.g. 16.4.0
        #[arg(long, value_name = "V", group = "source")]
        version: Option<String>,
        /// Download from here instead of [database] mirror
        #[arg(long, value_name = "URL", requires = "version")]
        mirror: Option<String>,
    },
    /// Show which PostgreSQL binaries would be used and why, and what is installed
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// Sign new access tokens with a new key; tokens signed with the old one
    /// stay valid until they expire (no one is logged out)
    RotateKey,
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Create a tenant with the default sales pipeline
    Add { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user in a tenant
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = parse_role)]
        role: crate::auth::Role,
        #[arg(long)]
        name: Option<String>,
    },
    /// Set a new password, lift a lockout and end the user's sessions
    ResetPassword {
        #[arg(long)]
        email: String,
    },
}

fn parse_role(text: &str) -> Result<crate::auth::Role, String> {
    crate::auth::Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not a role (owner, admin, agent, viewer)"))
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration; exit 0 when valid
    Check,
    /// Print the effective configuration, secrets redacted
    Show,
}

/// Runs `cli`; the exit code says how it went.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // Before the runtime starts threads: it edits the environment.
    let inherited = match &cli.command {
        Command::Run { .. } => {
            crate::handover::Inherited::from_env().context("taking over the listening sockets")?
        }
        _ => crate::handover::Inherited::default(),
    };
    let global_args = global_args(cli.config.as_deref(), cli.data_dir.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pagodirecto")
        .build()
        .context("starting the async runtime")?;
    let Cli {
        config,
        data_dir,
        command,
    } = cli;
    let listen = match &command {
        Command::Run { listen, .. } => listen.clone(),
        _ => Vec::new(),
    };
    let load = || {
        Config::load(
            config.as_deref(),
            &Overrides {
                data_dir: data_dir.clone(),
                listen: listen.clone(),
            },
        )
    };
    match command {
        Command::Version { json } => Ok(update::version(json)),
        Command::Update { check: true, .. } => runtime.block_on(update::check(&load()?)),
        Command::Update {
            allow_downgrade, ..
        } => runtime.block_on(update::run(load()?, allow_downgrade)),
        Command::Config { action } => config_cmd::run(&action, load()),
        Command::Service { action } => service::run(&action),
        Command::Run {
            demo, dev_assets, ..
        } => {
            let options = crate::daemon::Options {
                demo,
                dev_assets,
                log_level: None,
                args: std::env::args_os().skip(1).collect(),
                global_args,
            };
            let exit = runtime.block_on(run::run(load()?, options, inherited))?;
            // Threads, the log writer and the sockets' other users are gone.
            drop(runtime);
            match exit {
                crate::daemon::Exit::Restart(restart) => Err(anyhow::Error::from(restart.exec())
                    .context("going back to the running version")),
                crate::daemon::Exit::Stopped | crate::daemon::Exit::HandedOver => {
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Status { json } => runtime.block_on(status::run(&load()?, json)),
        Command::Metrics => runtime.block_on(status::metrics(&load()?)),
        Command::Doctor => runtime.block_on(doctor::run(load(), data_dir.clone())),
        Command::Auth {
            action: AuthAction::RotateKey,
        } => runtime.block_on(users::rotate_key(load()?)),
        Command::Logs {
            follow,
            lines,
            service,
        } => logs::run(&load()?, follow, lines, service),
        Command::Migrate { status } => runtime.block_on(migrate::run(load()?, status)),
        Command::Psql { args } => runtime.block_on(psql::run(load()?, args)),
        Command::Backup { action } => runtime.block_on(backup::run(load()?, action)),
        Command::Restore { name, yes } => runtime.block_on(backup::restore(load()?, name, yes)),
        Command::Tenant {
            action: TenantAction::Add { name },
        } => runtime.block_on(users::add_tenant(load()?, name)),
        Command::User { action } => match action {
            UserAction::Add {
                tenant,
                email,
                role,
                name,
            } => runtime.block_on(users::add_user(load()?, tenant, email, role, name)),
            UserAction::ResetPassword { email } => {
                runtime.block_on(users::reset_password(load()?, email))
            }
        },
        Command::Postgres { action } => runtime.block_on(postgres_cmd::run(&load()?, action)),
    }
}

/// `--config`/`--data-dir` as given, to pass to another subcommand.
fn global_args(
    config: Option<&std::path::Path>,
    data_dir: Option<&std::path::Path>,
) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    if let Some(config) = config {
        args.extend(["--config".into(), config.as_os_str().to_owned()]);
    }
    if let Some(data_dir) = data_dir {
        args.extend(["--data-dir".into(), data_dir.as_os_str().to_owned()]);
    }
    args
}

/// Logging for commands other than `run`: stderr only, warnings and up
/// unless the config asks for more.
fn init_cli_logging(loaded: &Loaded) {
    let mut cfg = loaded.config.logging.clone();
    if cfg.level == "info" {
        cfg.level = "warn".into();
    }
    let _ = crate::logging::init(&cfg, None);
}
