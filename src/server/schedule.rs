//! When a resource is next fetched, from its strategy.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::versions::Strategy;

/// After a failed fetch, the origin is asked again this soon at the latest.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

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
/// strategy schedules nothing.
pub(crate) fn next_check(strategy: &Strategy, now: Timestamp, failed: bool) -> Option<Timestamp> {
    let next = match strategy {
        // Requests drive `on_request`; nothing to schedule, even after a failure.
        Strategy::OnRequest { .. } => return None,
        Strategy::Never => None,
        Strategy::Age { seconds } => later(now, *seconds),
        Strategy::RemoteChanged {
            check_every_seconds, ..
        } => later(now, *check_every_seconds),
        Strategy::Cron { expr, timezone, .. } => Schedule::parse(expr, timezone.as_deref()).ok()?.next_after(now),
    };
    if failed {
        // A failure is retried sooner than a long interval, and a never
        // strategy, whose one fetch failed, is retried too.
        let retry = later(now, RETRY_AFTER_FAILURE.as_secs());
        return next.min(retry).or(retry);
    }
    next
}

/// The next check of a resource whose strategy just changed, the origin
/// having last been asked at `last_checked` (a past time means due now).
pub(crate) fn next_check_from(
    strategy: &Strategy,
    last_checked: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    match (strategy, last_checked) {
        (Strategy::Cron { .. }, _) => next_check(strategy, now, false),
        (_, Some(last)) => next_check(strategy, last, false),
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
        assert_eq!(next_check(&Strategy::Never, now, false), None);
        assert_eq!(
            next_check(&Strategy::Age { seconds: 60 }, now, false),
            Some(at("2026-01-10T10:01:00Z"))
        );
        assert_eq!(
            next_check(&Strategy::Age { seconds: u64::MAX }, now, false),
            Some(Timestamp::MAX)
        );
        assert_eq!(
            next_check(&Strategy::Never, now, true),
            Some(at("2026-01-10T10:05:00Z"))
        );
        assert_eq!(
            next_check(&Strategy::Age { seconds: 60 }, now, true),
            Some(at("2026-01-10T10:01:00Z"))
        );
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
