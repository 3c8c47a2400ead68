//! When scheduled jobs (backups, restore drills) are due: cron expressions
//! in local time, DST-aware (croner + chrono), driven by tokio's clock so
//! tests can pause it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// `""` means "never" (`None`). Config validation has already parsed it.
    pub fn parse(expr: &str) -> Result<Option<Self>, croner::errors::CronError> {
        if expr.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            cron: expr.parse()?,
        }))
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.cron.find_next_occurrence(t, false).ok()
    }

    /// The last scheduled time strictly before `t`.
    pub fn previous_before<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.cron.find_previous_occurrence(t, false).ok()
    }

    /// Whether a run was missed (the machine was off): the last scheduled
    /// time before `now` came after the last success. A first start with no
    /// success yet counts as missed, so a new install gets a backup at once.
    pub fn missed<Tz: TimeZone>(
        &self,
        last_success: Option<DateTime<Utc>>,
        now: &DateTime<Tz>,
    ) -> bool {
        match (self.previous_before(now), last_success) {
            (Some(_), None) => true,
            (Some(previous), Some(last)) => previous.with_timezone(&Utc) > last,
            (None, _) => false,
        }
    }
}

/// Sends on `due` at every scheduled time until `cancel`. `clock` tells the
/// wall-clock time in the schedule's time zone; the waiting itself uses
/// tokio's clock (so a paused test clock drives it).
pub async fn ticker<Tz: TimeZone + Send + Sync + 'static>(
    schedule: Schedule,
    clock: Arc<dyn Fn() -> DateTime<Tz> + Send + Sync>,
    due: mpsc::Sender<DateTime<Tz>>,
    cancel: CancellationToken,
) where
    Tz::Offset: Send + Sync,
{
    loop {
        let now = clock();
        let Some(next) = schedule.next_after(&now) else {
            return;
        };
        let wait = (next.clone() - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
        // Wall clocks jump (NTP, suspend): only fire once the time has come.
        if clock() >= next && due.send(next).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<chrono_tz::Tz> {
        New_York
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .expect("valid local time")
    }

    #[test]
    fn daily_at_two_in_local_time() {
        let s = Schedule::parse("0 2 * * *").expect("parse").expect("some");
        let next = s.next_after(&at(2026, 6, 1, 12, 0)).expect("next");
        assert_eq!(next, at(2026, 6, 2, 2, 0));
    }

    #[test]
    fn spring_forward_skips_the_missing_hour_without_losing_the_day() {
        // 2026-03-08 02:00 does not exist in New York (clocks jump to 03:00).
        let s = Schedule::parse("30 2 * * *").expect("parse").expect("some");
        let next = s.next_after(&at(2026, 3, 7, 12, 0)).expect("next");
        assert_eq!(
            next.date_naive(),
            at(2026, 3, 8, 12, 0).date_naive(),
            "still runs that day: {next}"
        );
        let after = s.next_after(&next).expect("next");
        assert_eq!(after, at(2026, 3, 9, 2, 30));
    }

    #[test]
    fn fall_back_runs_the_repeated_hour_once() {
        // 2026-11-01 01:30 happens twice in New York.
        let s = Schedule::parse("30 1 * * *").expect("parse").expect("some");
        let first = s.next_after(&at(2026, 10, 31, 12, 0)).expect("next");
        let second = s.next_after(&first).expect("next");
        assert_eq!(
            first.date_naive(),
            second.date_naive().pred_opt().expect("day before"),
            "{first} then {second}"
        );
    }

    #[test]
    fn a_run_missed_while_off_is_caught_up_once() {
        let s = Schedule::parse("0 2 * * *").expect("parse").expect("some");
        let now = at(2026, 6, 3, 9, 0);
        let yesterday_run = at(2026, 6, 2, 2, 5).with_timezone(&Utc);
        let today_run = at(2026, 6, 3, 2, 5).with_timezone(&Utc);
        assert!(
            s.missed(Some(yesterday_run), &now),
            "today's 02:00 was missed"
        );
        assert!(!s.missed(Some(today_run), &now));
        assert!(s.missed(None, &now), "never backed up");
    }

    #[test]
    fn empty_means_never() {
        assert!(Schedule::parse("  ").expect("parse").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_fires_at_each_scheduled_time_on_a_paused_clock() {
        let s = Schedule::parse("0 * * * *").expect("parse").expect("some");
        let start = tokio::time::Instant::now();
        let base = at(2026, 6, 1, 10, 15);
        let clock: Arc<dyn Fn() -> DateTime<chrono_tz::Tz> + Send + Sync> =
            Arc::new(move || base + chrono::Duration::from_std(start.elapsed()).expect("duration"));
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        tokio::spawn(ticker(s, clock, tx, cancel.clone()));
        assert_eq!(rx.recv().await, Some(at(2026, 6, 1, 11, 0)));
        assert_eq!(rx.recv().await, Some(at(2026, 6, 1, 12, 0)));
        assert!(start.elapsed() >= Duration::from_secs(105 * 60));
        cancel.cancel();
    }
}
