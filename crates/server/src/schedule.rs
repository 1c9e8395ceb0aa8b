//! When a resource is next fetched, from its strategy.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use edgecache_versions::Strategy;

/// The first retry after a failed fetch waits this long; each failure in a
/// row doubles it, up to `MAX_RETRY_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// A fetch that just failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure {
    /// Failures in a row, this one included.
    pub(crate) in_a_row: u32,
    /// The origin's status, if it answered.
    pub(crate) status_code: Option<u16>,
}

/// How long the retry after `failures_in_a_row` failures waits.
pub(crate) fn retry_delay(failures_in_a_row: u32) -> Duration {
    let doublings = failures_in_a_row.saturating_sub(1).min(20);
    FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// A parsed cron strategy.
pub(crate) struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses a standard 5-field expression read in `timezone` (IANA name,
    /// UTC when absent). The error says what is wrong.
    pub(crate) fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "`{expr}` has {fields} fields; a cron expression has 5: minute hour day-of-month month day-of-week"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expr)
            .map_err(|error| format!("`{expr}` is not a valid cron expression: {error}"))?;
        let zone = match timezone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| format!("`{name}` is not a known IANA time zone"))?,
        };
        Ok(Self { cron, zone })
    }

    /// The first slot strictly after `after`.
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|next| next.timestamp())
    }
}

fn later(now: Timestamp, seconds: u64) -> Option<Timestamp> {
    // Seconds come from users: saturate instead of overflowing.
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    Some(
        now.saturating_add(SignedDuration::from_secs(seconds))
            .unwrap_or(Timestamp::MAX),
    )
}

/// The next check after the origin was asked at `now`; `None` when the
/// strategy schedules nothing. After a failure, the retry backs off
/// exponentially whatever the strategy's interval, and a `never` resource
/// whose origin answered `404` or `410` takes that as the final answer.
pub(crate) fn next_check(strategy: &Strategy, now: Timestamp, failure: Option<Failure>) -> Option<Timestamp> {
    if let Some(failure) = failure {
        return match strategy {
            // Requests drive `on_request`; nothing to schedule, even after a failure.
            Strategy::OnRequest { .. } => None,
            Strategy::Never if matches!(failure.status_code, Some(404 | 410)) => None,
            _ => later(now, retry_delay(failure.in_a_row).as_secs()),
        };
    }
    match strategy {
        Strategy::OnRequest { .. } | Strategy::Never => None,
        Strategy::Age { seconds } => later(now, *seconds),
        Strategy::RemoteChanged {
            check_every_seconds, ..
        } => later(now, *check_every_seconds),
        Strategy::Cron { expr, timezone, .. } => Schedule::parse(expr, timezone.as_deref()).ok()?.next_after(now),
    }
}

/// The next check of a resource whose strategy just changed, the origin
/// having last been asked at `last_checked` (a past time means due now).
pub(crate) fn next_check_from(
    strategy: &Strategy,
    last_checked: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    match (strategy, last_checked) {
        (Strategy::Cron { .. }, _) => next_check(strategy, now, None),
        (_, Some(last)) => next_check(strategy, last, None),
        (Strategy::Never | Strategy::OnRequest { .. }, None) => None,
        (_, None) => Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn cron_reads_five_fields_in_the_given_zone() {
        let schedule = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(
            schedule.next_after(at("2026-01-10T10:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        let utc = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            utc.next_after(at("2026-01-10T10:00:00Z")),
            Some(at("2026-01-10T10:15:00Z"))
        );
        for bad in ["* * * *", "0 0 * * * *", "61 * * * *", "banana"] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        assert!(
            Schedule::parse("0 0 * * *", Some("Mars/Olympus"))
                .err()
                .unwrap()
                .contains("Mars/Olympus")
        );
    }

    #[test]
    fn strategies_schedule_from_the_last_check() {
        let now = at("2026-01-10T10:00:00Z");
        assert_eq!(next_check(&Strategy::Never, now, None), None);
        assert_eq!(
            next_check(&Strategy::Age { seconds: 60 }, now, None),
            Some(at("2026-01-10T10:01:00Z"))
        );
        assert_eq!(
            next_check(&Strategy::Age { seconds: u64::MAX }, now, None),
            Some(Timestamp::MAX)
        );
        let failed = |in_a_row, status_code| Some(Failure { in_a_row, status_code });
        // Failures back off from 10 s, doubling, whatever the interval.
        assert_eq!(
            next_check(&Strategy::Never, now, failed(1, None)),
            Some(at("2026-01-10T10:00:10Z"))
        );
        assert_eq!(
            next_check(&Strategy::Age { seconds: 1 }, now, failed(3, Some(503))),
            Some(at("2026-01-10T10:00:40Z"))
        );
        assert_eq!(
            next_check(&Strategy::Age { seconds: 60 }, now, failed(u32::MAX, None)),
            Some(at("2026-01-10T11:00:00Z"))
        );
        // For `never`, a 404 or 410 is the answer.
        assert_eq!(next_check(&Strategy::Never, now, failed(1, Some(404))), None);
        assert_eq!(next_check(&Strategy::Never, now, failed(1, Some(410))), None);
        assert!(next_check(&Strategy::Age { seconds: 60 }, now, failed(1, Some(404))).is_some());
        let daily = Strategy::Age { seconds: 86_400 };
        assert_eq!(
            next_check_from(&daily, Some(at("2026-01-01T00:00:00Z")), now),
            Some(at("2026-01-02T00:00:00Z"))
        );
        assert_eq!(next_check_from(&daily, None, now), Some(now));
    }

    proptest::proptest! {
        #[test]
        fn any_expression_parses_or_says_why_and_slots_move_forward(
            expr in "[0-9*/, A-Za-z-]{0,40}",
            second in 0i64..4_000_000_000,
        ) {
            if let Ok(schedule) = Schedule::parse(&expr, None) {
                let after = Timestamp::from_second(second).unwrap();
                if let Some(next) = schedule.next_after(after) {
                    proptest::prop_assert!(next > after);
                }
            }
        }
    }
}
