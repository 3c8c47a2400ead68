//! Talking to systemd (`Type=notify`): READY when `/ready` would be 200,
//! STATUS lines saying what we are doing, STOPPING on shutdown, and
//! watchdog pings from the event loop.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the
//! daemon behaves the same on a laptop. Errors are logged, never fatal:
//! failing to talk to systemd must not take the appliance down.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Hands the service over to `pid` (our successor after an update): with
/// `NotifyAccess=main` only the current main process may say so.
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping: half the unit's `WatchdogSec`, or `None` without one.
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// The unit the .deb installs (`systemd/pagodirecto.service`), as text.
pub const UNIT: &str = include_str!("../systemd/pagodirecto.service");

/// Where [`UNIT`] expects the binary; the .deb puts it there.
pub const PACKAGED_EXE: &str = "/usr/bin/pagodirecto";

/// [`UNIT`] with `ExecStart=` running `exe` instead of [`PACKAGED_EXE`]:
/// the standalone install uses the same unit, hardening and all, for a
/// binary somewhere else.
#[must_use]
pub fn unit_for(exe: &std::path::Path) -> String {
    UNIT.lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(command) => {
                let args = command.strip_prefix(PACKAGED_EXE).unwrap_or(command);
                format!("ExecStart={}{args}\n", exe.display())
            }
            None => format!("{line}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_for_changes_only_the_executable() {
        let unit = unit_for(std::path::Path::new("/opt/pd/bin/pagodirecto"));
        let changed: Vec<_> = UNIT
            .lines()
            .zip(unit.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [(
                "ExecStart=/usr/bin/pagodirecto run --config /etc/pagodirecto/pagodirecto.toml",
                "ExecStart=/opt/pd/bin/pagodirecto run --config /etc/pagodirecto/pagodirecto.toml"
            )]
        );
        assert_eq!(UNIT.lines().count(), unit.lines().count());
    }
}
