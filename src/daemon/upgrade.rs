//! Replacing the running daemon with a new binary without refusing a
//! connection, and going back when the new one does not come up.
//!
//! The caller (`pagodirecto update`, as root) has verified and installed
//! the new binary at this daemon's path; [`crate::control::Request::Upgrade`]
//! starts this:
//!
//! 1. Pre-update backup, while serving. When the new version brings
//!    migrations, the backup is taken later, once HTTP has stopped (step 3),
//!    so that a rollback can restore exactly what the new version found.
//! 2. Stop accepting and drain in-flight requests. The listening sockets
//!    stay open (copies kept in [`handover::Sockets`]): new connections
//!    wait in the kernel's backlog.
//! 3. (Migrations pending: the backup.) Stop postgres, release the data
//!    dir lock and the cgroups.
//! 4. Start the new binary with the same arguments and the sockets
//!    ([`handover::ENV`]); it starts postgres, migrates, serves on the
//!    inherited sockets, and says `ready` on a pipe.
//! 5. Ready in time with the expected version, and still up [`SETTLE`]
//!    later: record `updated`, tell systemd the new main pid, exit. Otherwise: stop it, restore the
//!    pre-update backup if it may have migrated, record `rolled_back` with
//!    the reason, and exec this process's own image again (same pid,
//!    same sockets), which starts as a normal daemon.
//!
//! PostgreSQL is restarted rather than adopted: a postmaster that is not
//! our child cannot be supervised (no wait, no exit status, no death
//! signal), and a warm restart costs a fraction of a second.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::{Serving, clear_runtime_files};
use crate::backup::pipeline;
use crate::cgroup::Cgroups;
use crate::config::Config;
use crate::database::Access;
use crate::handover::{self, Outcome, Record};
use crate::lock::DataDirLock;
use crate::paths::Paths;
use crate::{migrate, postgres, systemd, update};

/// How long a new version that said it is ready must stay up before this
/// process leaves (and with it the way back).
const SETTLE: Duration = Duration::from_secs(3);

/// An update the event loop accepted: the backup is taken (or due in the
/// gap), the sockets are to be handed over.
#[derive(Debug)]
pub(super) struct Plan {
    pub version: String,
    /// The new binary's migration level.
    pub schema: i64,
    /// The pre-update backup, when taken while serving.
    pub backup: Option<String>,
    /// The file this process swapped (automatic updates), put back on
    /// failure; `pagodirecto update` puts its own back.
    pub installed: Option<update::Installed>,
}

impl Plan {
    fn put_back(&self) {
        if let Some(installed) = &self.installed
            && let Err(err) = installed.revert()
        {
            error!(%err, "cannot put the previous binary back");
        }
    }

    /// Whether the new version migrates the database (so going back needs
    /// the backup).
    fn migrates(&self) -> bool {
        self.schema > migrate::latest_known()
    }
}

/// How `run` ended.
pub enum Exit {
    /// SIGTERM/SIGINT: everything stopped.
    Stopped,
    /// A successor serves now.
    HandedOver,
    /// The update failed: the caller must exec this (the old image again).
    Restart(Restart),
}

/// Exec of this binary's own image with the sockets: what a failed update
/// ends in, after the runtime and the log writer are shut down.
pub struct Restart {
    sockets: handover::Sockets,
    /// The path it was started as (`argv[0]`).
    exe: std::path::PathBuf,
    args: Vec<OsString>,
}

impl Restart {
    /// Replaces the process; returns only if that failed.
    #[must_use]
    pub fn exec(self) -> std::io::Error {
        self.sockets
            .exec(&handover::own_image(), self.exe.as_os_str(), &self.args)
    }
}

/// An update to hand over to, as the event loop passes it on: asked for
/// by `pagodirecto update` ([`crate::control::Request::Upgrade`]) or found
/// by the automatic check.
pub(super) struct Request {
    pub version: String,
    pub schema: i64,
    /// Whether the database is external (no rollback across migrations).
    pub external: bool,
    /// Set while an update is under way; cleared here if it is refused.
    pub busy: Arc<std::sync::atomic::AtomicBool>,
}

type Reply = tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>;

/// Answers [`crate::control::Request::Upgrade`] in the background: takes the
/// pre-update backup (unless it belongs in the gap) and passes the plan
/// back to the event loop, which leaves it to hand over.
pub(super) fn accept(
    serving: &Serving,
    request: Request,
    reply: Reply,
    plans: tokio::sync::mpsc::Sender<Plan>,
) {
    let backups = serving.backups.clone();
    tokio::spawn(async move {
        let busy = request.busy.clone();
        match prepare(&backups, request, None).await {
            Ok(plan) => {
                let _ = reply.send(Ok(serde_json::json!({
                    "backup": plan.backup,
                    "backup_in_gap": plan.migrates(),
                    "handing_over_to": plan.version,
                })));
                let _ = plans.send(plan).await;
            }
            Err(reason) => {
                busy.store(false, std::sync::atomic::Ordering::Release);
                let _ = reply.send(Err(reason));
            }
        }
    });
}

/// `[update] automatic`: looks for a newer release; when there is one,
/// stages and installs it beside `exe` (when this process may write there)
/// and hands over to it like [`accept`]. What stops it is logged.
pub(super) fn automatic(
    serving: &Serving,
    config: crate::config::UpdateConfig,
    exe: std::path::PathBuf,
    external: bool,
    busy: Arc<std::sync::atomic::AtomicBool>,
    plans: tokio::sync::mpsc::Sender<Plan>,
) {
    let backups = serving.backups.clone();
    tokio::spawn(async move {
        let done = |what: &str, reason: String| {
            busy.store(false, std::sync::atomic::Ordering::Release);
            warn!(%reason, "automatic update: {what}");
        };
        if let Some(package) = update::package_owner(&exe) {
            return done(
                "not applied",
                format!(
                    "{} is installed by the Debian package {package}; apt updates it",
                    exe.display()
                ),
            );
        }
        let options = update::Options {
            allow_downgrade: false,
        };
        let staged = match update::stage(&config, &exe, &options).await {
            Ok(staged) => staged,
            Err(update::Error::UpToDate { .. }) => {
                busy.store(false, std::sync::atomic::Ordering::Release);
                return info!(
                    version = update::VERSION,
                    "automatic update check: up to date"
                );
            }
            Err(err) => return done("not applied", format!("{:#}", anyhow::Error::from(err))),
        };
        let request = Request {
            version: staged.version.to_string(),
            schema: staged.schema,
            external,
            busy: busy.clone(),
        };
        let installed = match update::install(staged) {
            Ok(installed) => installed,
            Err(err) => {
                return done(
                    "not applied",
                    format!(
                        "{:#}; run pagodirecto update as root",
                        anyhow::Error::from(err)
                    ),
                );
            }
        };
        info!(to = %request.version, "automatic update: installed; handing over");
        match prepare(&backups, request, Some(installed)).await {
            Ok(plan) => {
                let _ = plans.send(plan).await;
            }
            Err(reason) => done("refused", reason),
        }
    });
}

/// Ticks every `[update] check_every` give or take a tenth (so that
/// instances installed together do not all ask the feed at once), when
/// `automatic` is on; never otherwise.
pub(super) fn checks(config: &crate::config::UpdateConfig) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if !config.automatic {
        // Kept alive so the receiver pends instead of closing.
        std::mem::forget(tx);
        return rx;
    }
    let every = config.check_every;
    tokio::spawn(async move {
        loop {
            let mut random = [0u8; 8];
            let _ = getrandom::fill(&mut random);
            let factor = 0.9 + 0.2 * f64::from(random[0]) / 255.0;
            tokio::time::sleep(every.mul_f64(factor)).await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The checks of a [`Request`] and the pre-update backup (unless it
/// belongs in the gap). A refusal puts `installed` back.
async fn prepare(
    backups: &crate::backup::Backups,
    request: Request,
    installed: Option<update::Installed>,
) -> Result<Plan, String> {
    let mut plan = Plan {
        version: request.version,
        schema: request.schema,
        backup: None,
        installed,
    };
    let refused = |plan: &Plan, reason: String| {
        plan.put_back();
        reason
    };
    if plan.migrates() && request.external {
        let reason = format!(
            "version {} migrates the database (to level {}), and with an external database a \
             failed start could not be rolled back here; stop every instance, back up, then \
             update each",
            plan.version, plan.schema
        );
        return Err(refused(&plan, reason));
    }
    if !plan.migrates() {
        match backups
            .create(
                Some(&update::backup_label(&plan.version)),
                pipeline::Progress::none(),
            )
            .await
        {
            Ok(manifest) => plan.backup = Some(manifest.name),
            Err(err) => {
                let reason = format!(
                    "the pre-update backup failed, so nothing was changed: {:#}",
                    anyhow::Error::from(err)
                );
                return Err(refused(&plan, reason));
            }
        }
    }
    Ok(plan)
}

/// What the hand-over takes from `run`.
pub(super) struct Running<'a> {
    pub config: &'a Config,
    pub paths: &'a Paths,
    pub access: &'a Access,
    pub signals: &'a mut super::Signals,
    pub serving: Serving,
    pub server: Option<postgres::Server>,
    pub stop_postgres: tokio_util::sync::CancellationToken,
    pub lock: DataDirLock,
    pub cgroups: Arc<Cgroups>,
    /// Where this binary was started from: the new version is there now.
    pub exe: std::path::PathBuf,
    pub args: Vec<OsString>,
    pub global_args: Vec<OsString>,
}

/// Steps 2–5 of the module doc.
pub(super) async fn hand_over(plan: Plan, running: Running<'_>) -> Result<Exit> {
    let Running {
        config,
        paths,
        access,
        signals,
        mut serving,
        mut server,
        stop_postgres,
        lock,
        cgroups,
        exe,
        args,
        global_args,
    } = running;
    info!(to = %plan.version, "updating: handing the sockets over");
    systemd::status(&format!("updating to {}", plan.version));
    let sockets = std::mem::take(&mut serving.sockets);
    let mut attempt = Attempt {
        paths,
        from: crate::update::VERSION.to_owned(),
        plan,
        restart: Restart { sockets, exe, args },
    };
    if access.external().is_none() {
        // Writes dirty pages out now, while serving, so that the shutdown
        // checkpoint (in the gap) has little left to do.
        checkpoint(access).await;
    }
    serving.stop_accepting().await;
    let backed_up = if attempt.plan.migrates() {
        backup_in_gap(&serving, &mut attempt.plan).await
    } else {
        Ok(())
    };
    serving.stop(config.server.drain_timeout).await;
    stop(&stop_postgres, &mut server).await?;
    if let Err(reason) = backed_up {
        // Nothing was changed: this image starts again, serving.
        return Ok(attempt.fail(reason));
    }
    clear_runtime_files(paths);
    drop(lock);
    cgroups.release();
    attempt.record(Outcome::InProgress, None);

    let timeout = config.update.ready_timeout;
    let Restart { sockets, exe, args } = &attempt.restart;
    let mut successor = match sockets.spawn_successor(exe, args) {
        Ok(successor) => successor,
        Err(err) => {
            let reason = format!("cannot start {}: {err}", exe.display());
            return Ok(attempt.fail(reason));
        }
    };
    info!(pid = ?successor.pid(), exe = %exe.display(), ?timeout, "new version started; waiting until it is ready");
    let outcome = tokio::select! {
        ready = successor.wait_ready(timeout) => ready,
        () = ping_watchdog() => unreachable!("pings forever"),
        name = signals.next_stop() => {
            // Stopped meanwhile (systemctl stop, Ctrl-C): stop the new one
            // too, and leave its binary for the next start.
            warn!(signal = name, "stopping during the update");
            successor.stop(config.server.drain_timeout + Duration::from_secs(30)).await;
            attempt.record(Outcome::RolledBack, Some(format!("{name} during the update; nothing runs now")));
            return Ok(Exit::Stopped);
        }
    };
    let expected = &attempt.plan.version;
    let reason = match outcome {
        Ok(ready) if ready.version == *expected => {
            // Still holding the sockets, this process can go back if the
            // new one dies right after it became ready (a crash loop).
            match tokio::time::timeout(SETTLE, successor.exited()).await {
                Err(_) => {
                    attempt.record(Outcome::Updated, None);
                    systemd::main_pid(ready.pid);
                    info!(pid = ready.pid, version = %ready.version, "the new version serves; this process exits");
                    return Ok(Exit::HandedOver);
                }
                Ok(status) => format!(
                    "version {expected} exited ({status}) within {SETTLE:?} of becoming ready"
                ),
            }
        }
        Ok(ready) => format!(
            "the new binary said it is version {} (expected {expected})",
            ready.version
        ),
        Err(reason) => format!("version {expected}: {reason}"),
    };
    error!(%reason, "the update failed; going back to {}", attempt.from);
    successor
        .stop(config.server.drain_timeout + Duration::from_secs(30))
        .await;
    let mut reason = reason;
    if attempt.plan.migrates()
        && let Err(err) = restore_backup(&attempt.plan, &global_args).await
    {
        reason = format!("{reason}; restoring the pre-update backup failed too: {err:#}");
    }
    Ok(attempt.fail(reason))
}

/// The pre-update backup of an update that migrates: taken once nothing is
/// served any more, so a rollback can restore exactly that.
async fn backup_in_gap(serving: &Serving, plan: &mut Plan) -> Result<(), String> {
    let label = update::backup_label(&plan.version);
    match serving
        .backups
        .create(Some(&label), pipeline::Progress::none())
        .await
    {
        Ok(manifest) => {
            plan.backup = Some(manifest.name);
            Ok(())
        }
        Err(err) => Err(format!(
            "the pre-update backup failed: {:#}",
            anyhow::Error::from(err)
        )),
    }
}

/// One update under way, and the way back.
struct Attempt<'a> {
    paths: &'a Paths,
    from: String,
    plan: Plan,
    restart: Restart,
}

impl Attempt<'_> {
    /// Records the failure; the caller execs the old image.
    fn fail(self, reason: String) -> Exit {
        self.plan.put_back();
        self.record(Outcome::RolledBack, Some(reason));
        Exit::Restart(self.restart)
    }

    fn record(&self, outcome: Outcome, reason: Option<String>) {
        Record {
            from: self.from.clone(),
            to: self.plan.version.clone(),
            outcome,
            reason,
            backup: self.plan.backup.clone(),
            at: OffsetDateTime::now_utc(),
        }
        .save(&self.paths.update_record());
    }
}

async fn checkpoint(access: &Access) {
    let done = async {
        let (client, conn) = access.connect("postgres").await?;
        let result = client.batch_execute("CHECKPOINT").await;
        drop(client);
        let _ = conn.await;
        result
    };
    if let Err(err) = done.await {
        warn!(%err, "cannot checkpoint before the update (the stop takes longer)");
    }
}

async fn stop(
    stop_postgres: &tokio_util::sync::CancellationToken,
    server: &mut Option<postgres::Server>,
) -> Result<()> {
    stop_postgres.cancel();
    if let Some(server) = server {
        server.finished().await.context("stopping postgres")?;
    }
    Ok(())
}

/// The new version may have migrated before it failed: the old one would
/// refuse the newer schema, so the backup taken in the gap (nothing was
/// served since) goes back in, by this image's own `restore`.
async fn restore_backup(plan: &Plan, global_args: &[OsString]) -> Result<()> {
    let name = plan
        .backup
        .as_deref()
        .context("no pre-update backup was taken")?;
    warn!(backup = name, "restoring the pre-update backup");
    let status = tokio::process::Command::new(handover::own_image())
        .args(global_args)
        .args(["restore", name, "--yes"])
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .context("running restore")?;
    anyhow::ensure!(status.success(), "restore {name} exited with {status}");
    Ok(())
}

/// Keeps systemd's watchdog fed while the event loop is not running.
async fn ping_watchdog() {
    let every = systemd::watchdog_interval().unwrap_or(Duration::from_secs(3600));
    loop {
        systemd::watchdog();
        tokio::time::sleep(every).await;
    }
}
