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

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping: half the unit's `WatchdogSec`, or `None` without one.
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}
