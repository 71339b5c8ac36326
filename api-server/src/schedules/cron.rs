//! Cron expressions and next-fire computation (§18.1): 5 fields, or 6 with leading seconds, plus `@hourly`,
//! `@daily`, `@weekly`, `@monthly` and `@yearly`, evaluated in an IANA time zone.
//!
//! Parsing and matching use `croner` (which follows the Vixie-cron rules across DST changes: a fixed time in
//! a spring-forward gap fires right after the gap, once; a fixed time in a fall-back repeat fires once, on
//! its first pass; wildcard and step fields fire on each real instant that matches) and `chrono-tz` for the
//! zone database. Occurrences are returned as UTC instants.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::infra::database::Timestamp;

const PRESETS: [&str; 5] = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];

/// The most occurrences fired for one schedule in one poll (§18.2); the excess is coalesced.
pub const MAX_FIRES_PER_POLL: usize = 5;

/// How far one window is walked before giving up (a guard against absurd windows).
const MAX_WALK: usize = 100_000;

/// A parsed schedule: the expression and the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

/// Parses a cron expression: exactly 5 or 6 fields, or one of the presets.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.starts_with('@') {
        if !PRESETS.iter().any(|p| p.eq_ignore_ascii_case(trimmed)) {
            return Err(format!(
                "unknown preset {trimmed:?}; use one of {}",
                PRESETS.join(", ")
            ));
        }
    } else {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 && fields != 6 {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading seconds, \
                 got {fields}"
            ));
        }
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| e.to_string())
}

/// Parses an IANA time zone name (`UTC`, `Europe/Paris`, …).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone name"))
}

impl CronSpec {
    pub fn new(cron_expression: &str, timezone: &str) -> Result<CronSpec, CronSpecError> {
        let cron = parse_cron(cron_expression).map_err(CronSpecError::Cron)?;
        let tz = parse_timezone(timezone).map_err(CronSpecError::Timezone)?;
        Ok(CronSpec { cron, tz })
    }

    /// The first occurrence strictly after `t`, or `None` when the expression never fires again.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The occurrences in `(after, until]`, oldest first, at most `cap` of them: when more fall in the
    /// window, the most recent `cap` are kept and the number of older ones dropped is returned too.
    pub fn occurrences(
        &self,
        after: Timestamp,
        until: Timestamp,
        cap: usize,
    ) -> (Vec<Timestamp>, usize) {
        let mut all = Vec::new();
        let mut t = after;
        while all.len() < MAX_WALK {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    all.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        let dropped = all.len().saturating_sub(cap);
        (all.split_off(dropped), dropped)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronSpecError {
    Cron(String),
    Timezone(String),
}

/// `DateTime<Utc>` from an RFC 3339 string (tests and logs).
pub fn utc(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        utc(s).unwrap()
    }

    fn spec(expr: &str, tz: &str) -> CronSpec {
        CronSpec::new(expr, tz).unwrap()
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        spec(expr, tz)
            .next_after(t(after))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn five_fields_fire_on_the_minute() {
        assert_eq!(
            next("*/15 * * * *", "UTC", "2026-03-01T10:07:30Z"),
            "2026-03-01T10:15:00Z"
        );
        assert_eq!(
            next("30 9 * * 1-5", "UTC", "2026-03-06T10:00:00Z"), // a Friday, after 9:30
            "2026-03-09T09:30:00Z"
        );
    }

    #[test]
    fn six_fields_have_leading_seconds() {
        assert_eq!(
            next("*/2 * * * * *", "UTC", "2026-03-01T10:00:01Z"),
            "2026-03-01T10:00:02Z"
        );
        assert_eq!(
            next("15 30 9 * * *", "UTC", "2026-03-01T09:30:15Z"),
            "2026-03-02T09:30:15Z"
        );
    }

    #[test]
    fn next_is_strictly_after() {
        assert_eq!(
            next("0 12 * * *", "UTC", "2026-03-01T12:00:00Z"),
            "2026-03-02T12:00:00Z"
        );
    }

    #[test]
    fn presets() {
        let after = "2026-03-11T10:20:00Z"; // a Wednesday
        assert_eq!(next("@hourly", "UTC", after), "2026-03-11T11:00:00Z");
        assert_eq!(next("@daily", "UTC", after), "2026-03-12T00:00:00Z");
        assert_eq!(next("@weekly", "UTC", after), "2026-03-15T00:00:00Z"); // Sunday
        assert_eq!(next("@monthly", "UTC", after), "2026-04-01T00:00:00Z");
        assert_eq!(next("@yearly", "UTC", after), "2027-01-01T00:00:00Z");
        assert_eq!(next("@DAILY", "UTC", after), "2026-03-12T00:00:00Z");
    }

    #[test]
    fn invalid_expressions_are_refused() {
        for bad in [
            "",
            "* * * *",
            "0 0 0 1 1 * 2030",
            "61 * * * *",
            "* 25 * * *",
            "@fortnightly",
            "@annually",
            "not a cron",
            "*/0 * * * *",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn time_zones() {
        // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            next("0 9 * * *", "Europe/Paris", "2026-01-15T12:00:00Z"),
            "2026-01-16T08:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "Europe/Paris", "2026-07-15T12:00:00Z"),
            "2026-07-16T07:00:00Z"
        );
        // Daily midnight in Tokyo (UTC+9, no DST).
        assert_eq!(
            next("@daily", "Asia/Tokyo", "2026-03-01T10:00:00Z"),
            "2026-03-01T15:00:00Z"
        );
        // The day is the schedule zone's: 06:00 UTC on the 10th is 22:00 on the 9th in Los Angeles.
        assert_eq!(
            next("0 23 * * *", "America/Los_Angeles", "2026-01-10T06:00:00Z"),
            "2026-01-10T07:00:00Z"
        );
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(parse_timezone("").is_err());
        assert!(matches!(
            CronSpec::new("* * * * *", "Nowhere/City"),
            Err(CronSpecError::Timezone(_))
        ));
        assert!(matches!(
            CronSpec::new("* *", "UTC"),
            Err(CronSpecError::Cron(_))
        ));
    }

    #[test]
    fn spring_forward_gap() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT. 02:30 does not exist that day; the fixed-time
        // job fires once, right after the gap (03:00 EDT = 07:00 UTC), then at 02:30 EDT on later days.
        let s = spec("30 2 * * *", "America/New_York");
        let first = s.next_after(t("2026-03-08T05:00:00Z")).unwrap(); // 00:00 EST
        assert_eq!(first, t("2026-03-08T07:00:00Z"));
        // The next day, 02:30 EDT.
        assert_eq!(s.next_after(first).unwrap(), t("2026-03-09T06:30:00Z"));
        // The day before, 02:30 EST.
        assert_eq!(
            s.next_after(t("2026-03-07T05:00:00Z")).unwrap(),
            t("2026-03-07T07:30:00Z")
        );
        // An hourly wildcard job skips the missing hour: 01:00 EST, then 03:00 EDT — one hour apart in
        // real time.
        let h = spec("0 * * * *", "America/New_York");
        let one = h.next_after(t("2026-03-08T05:30:00Z")).unwrap();
        assert_eq!(one, t("2026-03-08T06:00:00Z")); // 01:00 EST
        assert_eq!(h.next_after(one).unwrap(), t("2026-03-08T07:00:00Z")); // 03:00 EDT
    }

    #[test]
    fn fall_back_repeat() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice. A fixed-time job
        // fires once (the first pass, 01:30 EDT = 05:30 UTC), then the next day.
        let s = spec("30 1 * * *", "America/New_York");
        let first = s.next_after(t("2026-11-01T04:00:00Z")).unwrap(); // 00:00 EDT
        assert_eq!(first, t("2026-11-01T05:30:00Z"));
        assert_eq!(s.next_after(first).unwrap(), t("2026-11-02T06:30:00Z")); // 01:30 EST next day

        // A wildcard-minute job fires in both passes of the repeated hour.
        let w = spec("0,30 * * * *", "America/New_York");
        let (times, dropped) = w.occurrences(
            t("2026-11-01T04:45:00Z"), // 00:45 EDT
            t("2026-11-01T07:15:00Z"), // 02:15 EST
            100,
        );
        assert_eq!(dropped, 0);
        assert_eq!(
            times,
            vec![
                t("2026-11-01T05:00:00Z"), // 01:00 EDT
                t("2026-11-01T05:30:00Z"), // 01:30 EDT
                t("2026-11-01T06:00:00Z"), // 01:00 EST
                t("2026-11-01T06:30:00Z"), // 01:30 EST
                t("2026-11-01T07:00:00Z"), // 02:00 EST
            ]
        );
    }

    #[test]
    fn occurrences_are_capped_keeping_the_latest() {
        let s = spec("* * * * * *", "UTC");
        let after = t("2026-03-01T10:00:00Z");
        let (times, dropped) = s.occurrences(after, t("2026-03-01T10:00:07Z"), MAX_FIRES_PER_POLL);
        assert_eq!(dropped, 2);
        assert_eq!(times.len(), 5);
        assert_eq!(times[0], t("2026-03-01T10:00:03Z"));
        assert_eq!(times[4], t("2026-03-01T10:00:07Z"));
        // The window is half-open: `after` itself is excluded, `until` included.
        let (times, dropped) = s.occurrences(after, t("2026-03-01T10:00:02Z"), 5);
        assert_eq!(dropped, 0);
        assert_eq!(
            times,
            vec![t("2026-03-01T10:00:01Z"), t("2026-03-01T10:00:02Z")]
        );
        let (times, _) = spec("0 0 1 1 *", "UTC").occurrences(after, after, 5);
        assert!(times.is_empty());
    }
}
