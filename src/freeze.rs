//! Freeze windows (`[[freeze]]`): times when `deploy`, `promote` and `rollback` refuse to touch
//! an environment (Octopus's deployment freezes), unless overridden with a reason.
//!
//! A window is either a fixed span (`from`/`until`, RFC 3339 with an offset) or a weekly one
//! (`days` + `hours` in an IANA `timezone`). Weekly windows are computed in their own time zone
//! with [`jiff`], day by day, so "18:00-08:00" is 14 hours on a normal night and 13 or 15 on the
//! nights the clocks change; a start or end that falls into a skipped hour moves forward, as
//! clocks do (jiff's "compatible" rule).
//!
//! Time zones: jiff reads the system's `/usr/share/zoneinfo` (updated with the OS, so a new
//! DST rule is followed without rebuilding ferry) and falls back to the copy of the Time Zone
//! Database bundled into ferry (`tzdb-bundle-always`) when the system has none, as in slim
//! containers and CI images. The tests use the bundled copy only, so they give the same answer
//! on every machine, whatever its zoneinfo holds.
//!
//! Questions answered here: is an environment frozen at an instant, by which window, and until
//! when ([`frozen`]); which windows start within a horizon ([`upcoming`]). Overlapping and
//! back-to-back windows are merged: an environment is frozen until the last of them ends.

use std::ops::Range;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

/// How far [`frozen`] follows back-to-back windows: a window set that never ends (every day,
/// all day) stops being followed after this many windows, so the answer is "at least until".
const MAX_CHAIN: usize = 1000;

/// The horizon `check` and `plan` look ahead for windows that start soon.
pub const UPCOMING: SignedDuration = SignedDuration::from_hours(7 * 24);

/// One `[[freeze]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Window {
    /// `name`, or `#N` (its position among the `[[freeze]]` entries, from 1).
    pub name: String,
    /// The environments it freezes.
    pub environments: Vec<String>,
    /// Why (shown with every refusal).
    pub reason: String,
    /// When.
    pub schedule: Schedule,
    /// Where the entry is in the inventory.
    pub span: Range<usize>,
    /// The zone times are shown in: `timezone`, else the offset `until` was written with.
    pub zone: Zone,
}

/// A time zone with the name it is shown with.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The zone.
    pub tz: TimeZone,
    /// Its IANA name, `UTC`, or a fixed offset like `+01:00`.
    pub label: String,
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone { tz: TimeZone::UTC, label: "UTC".into() }
    }

    /// `t` in this zone and in UTC: `Mon 2026-12-28 08:00 Europe/Berlin (2026-12-28 07:00 UTC)`.
    pub fn show(&self, t: Timestamp) -> String {
        let local = t.to_zoned_datetime(self.tz.clone()).strftime("%a %Y-%m-%d %H:%M").to_string();
        let utc = t.to_zoned_datetime(TimeZone::UTC);
        if self.label == "UTC" || self.tz == TimeZone::UTC {
            return format!("{local} UTC");
        }
        format!("{local} {} ({} UTC)", self.label, utc.strftime("%Y-%m-%d %H:%M"))
    }
}

/// When a window is in force.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// From `from` (inclusive) until `until` (exclusive).
    Between {
        /// Start.
        from: Timestamp,
        /// End.
        until: Timestamp,
    },
    /// Every listed day from `hours.start`, until `hours.end` that day or, when the end is not
    /// after the start, the next day.
    Weekly {
        /// The days a window starts on, Monday first.
        days: [bool; 7],
        /// The time of day it starts and ends.
        hours: Hours,
        /// The zone the days and hours are in.
        tz: TimeZone,
    },
}

/// `hours = "18:00-08:00"`: a start and an end time of day; an end not after the start is on
/// the next day; `None` is `24:00` (midnight at the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Start time of day.
    pub start: Time,
    /// End time of day; `None`: 24:00.
    pub end: Option<Time>,
}

impl Hours {
    /// All day: 00:00-24:00.
    pub const ALL_DAY: Hours = Hours { start: Time::midnight(), end: None };
}

/// One stretch of time a window is in force.
#[derive(Debug, Clone)]
pub struct Occurrence<'a> {
    /// The window.
    pub window: &'a Window,
    /// Start (inclusive).
    pub start: Timestamp,
    /// End (exclusive).
    pub end: Timestamp,
}

/// An environment frozen at some instant.
#[derive(Debug, Clone)]
pub struct Frozen<'a> {
    /// The window in force at that instant that ends last.
    pub window: &'a Window,
    /// When that window's current stretch started.
    pub since: Timestamp,
    /// When the environment is no longer frozen (after every overlapping or back-to-back
    /// window).
    pub until: Timestamp,
    /// The window that ends at `until` (another one when windows follow each other).
    pub last: &'a Window,
    /// `until` is a lower bound: windows went on beyond what was followed.
    pub open_ended: bool,
}

impl Frozen<'_> {
    /// `prod is frozen by "holidays" until Mon 2026-12-28 08:00 Europe/Berlin (… UTC): Code freeze`.
    pub fn describe(&self, environment: &str) -> String {
        let until = self.last.zone.show(self.until);
        let at_least = if self.open_ended { "at least " } else { "" };
        let then = if std::ptr::eq(self.window, self.last) {
            String::new()
        } else {
            format!(", then by \"{}\"", self.last.name)
        };
        format!(
            "{environment} is frozen by \"{}\"{then} until {at_least}{until}: {}",
            self.window.name, self.window.reason
        )
    }

    /// What the audit record keeps of an override.
    pub fn record(&self, reason: &str) -> Override {
        Override {
            window: self.window.name.clone(),
            window_reason: self.window.reason.clone(),
            until: self.until.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `--override-freeze --reason TEXT`, as the run's `run_started` (or `run_finished`) record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Override {
    /// The window overridden.
    pub window: String,
    /// Its reason.
    pub window_reason: String,
    /// When the freeze would have ended (RFC 3339, UTC).
    pub until: String,
    /// Why it was overridden.
    pub reason: String,
}

impl Window {
    /// Whether it freezes `environment`.
    pub fn covers(&self, environment: &str) -> bool {
        self.environments.iter().any(|e| e == environment)
    }

    /// The stretches of this window that overlap `[from, to)`, in order.
    pub fn occurrences(&self, from: Timestamp, to: Timestamp) -> Vec<Occurrence<'_>> {
        let spans = match &self.schedule {
            Schedule::Between { from: start, until: end } => {
                if *start < to && *end > from {
                    vec![(*start, *end)]
                } else {
                    Vec::new()
                }
            }
            Schedule::Weekly { days, hours, tz } => weekly(days, *hours, tz, from, to),
        };
        spans.into_iter().map(|(start, end)| Occurrence { window: self, start, end }).collect()
    }
}

/// The stretches of a weekly window overlapping `[from, to)`: one per listed day, starting the
/// day before `from` (a stretch across midnight started then may still be running).
fn weekly(
    days: &[bool; 7],
    hours: Hours,
    tz: &TimeZone,
    from: Timestamp,
    to: Timestamp,
) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let first = from.to_zoned_datetime(tz.clone()).date().yesterday();
    let last = to.to_zoned_datetime(tz.clone()).date();
    let Ok(mut day) = first else { return out };
    while day <= last {
        let listed = usize::try_from(day.weekday().to_monday_zero_offset()).ok().and_then(|i| days.get(i));
        if listed == Some(&true)
            && let Some((start, end)) = stretch(day, hours, tz)
            && start < to
            && end > from
        {
            out.push((start, end));
        }
        match day.tomorrow() {
            Ok(next) => day = next,
            Err(_) => break,
        }
    }
    out
}

/// The instants a weekly window starting on `day` starts and ends (`None` at the calendar's end).
fn stretch(day: Date, hours: Hours, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
    let start = day.to_datetime(hours.start).to_zoned_datetime(tz.clone()).ok()?.timestamp();
    let (end_day, end_time) = match hours.end {
        Some(end) if end > hours.start => (day, end),
        Some(end) => (day.tomorrow().ok()?, end),
        None => (day.tomorrow().ok()?, Time::midnight()),
    };
    let end = end_day.to_datetime(end_time).to_zoned_datetime(tz.clone()).ok()?.timestamp();
    // A stretch that the clocks changed to nothing (inside a skipped hour) is no stretch.
    (end > start).then_some((start, end))
}

/// The stretches of `environment`'s windows in force at `at`.
fn covering<'a>(windows: &'a [Window], environment: &str, at: Timestamp) -> Vec<Occurrence<'a>> {
    let Ok(next) = at.checked_add(SignedDuration::from_nanos(1)) else { return Vec::new() };
    windows
        .iter()
        .filter(|w| w.covers(environment))
        .flat_map(|w| w.occurrences(at, next))
        .filter(|o| o.start <= at && at < o.end)
        .collect()
}

/// Whether `environment` is frozen at `at`: by the window in force that ends last, and until
/// every window that overlaps or follows on has ended.
pub fn frozen<'a>(windows: &'a [Window], environment: &str, at: Timestamp) -> Option<Frozen<'a>> {
    let now = covering(windows, environment, at).into_iter().max_by_key(|o| o.end)?;
    let mut frozen =
        Frozen { window: now.window, since: now.start, until: now.end, last: now.window, open_ended: false };
    for step in 0.. {
        let Some(next) = covering(windows, environment, frozen.until).into_iter().max_by_key(|o| o.end)
        else {
            break;
        };
        if step == MAX_CHAIN {
            frozen.open_ended = true;
            break;
        }
        frozen.until = next.end;
        frozen.last = next.window;
    }
    Some(frozen)
}

/// Stretches (of `environment`'s windows, or all) that start after `at` and at most `horizon`
/// later, by start.
pub fn upcoming<'a>(
    windows: &'a [Window],
    environment: Option<&str>,
    at: Timestamp,
    horizon: SignedDuration,
) -> Vec<Occurrence<'a>> {
    let Ok(to) = at.checked_add(horizon) else { return Vec::new() };
    let mut out: Vec<Occurrence<'a>> = windows
        .iter()
        .filter(|w| environment.is_none_or(|e| w.covers(e)))
        .flat_map(|w| w.occurrences(at, to))
        .filter(|o| o.start > at && o.start <= to)
        .collect();
    out.sort_by_key(|o| o.start);
    out
}

/// An environment frozen now, as `check` and `plan` show it in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveJson {
    /// The environment.
    pub environment: String,
    /// The window in force that ends last.
    pub window: String,
    /// Its reason.
    pub reason: String,
    /// When its current stretch started (RFC 3339, UTC).
    pub since: String,
    /// When the environment is no longer frozen (RFC 3339, UTC).
    pub until: String,
}

/// A stretch of a window that starts soon, as `check` and `plan` show it in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct UpcomingJson {
    /// The window.
    pub window: String,
    /// The environments it freezes.
    pub environments: Vec<String>,
    /// Its reason.
    pub reason: String,
    /// Start (RFC 3339, UTC).
    pub from: String,
    /// End (RFC 3339, UTC).
    pub until: String,
}

/// What is frozen now and what will be within [`UPCOMING`]: for `check` (every environment)
/// and `plan` (one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outlook {
    /// Environments frozen now.
    pub active: Vec<ActiveJson>,
    /// Stretches starting within the horizon, by start.
    pub upcoming: Vec<UpcomingJson>,
    /// The same, one line each, for people.
    #[serde(skip)]
    pub lines: Vec<String>,
}

impl Outlook {
    /// The outlook at `now` for `environments`.
    pub fn at(windows: &[Window], environments: &[&str], now: Timestamp) -> Outlook {
        let mut out = Outlook::default();
        for env in environments {
            if let Some(f) = frozen(windows, env, now) {
                out.lines.push(f.describe(env));
                out.active.push(ActiveJson {
                    environment: (*env).to_string(),
                    window: f.window.name.clone(),
                    reason: f.window.reason.clone(),
                    since: f.since.to_string(),
                    until: f.until.to_string(),
                });
            }
        }
        let soon = upcoming(windows, None, now, UPCOMING);
        for o in soon {
            let envs: Vec<String> = o
                .window
                .environments
                .iter()
                .filter(|e| environments.contains(&e.as_str()))
                .cloned()
                .collect();
            if envs.is_empty() {
                continue;
            }
            out.lines.push(format!(
                "{} will be frozen by \"{}\" from {} until {}: {}",
                envs.join(", "),
                o.window.name,
                o.window.zone.show(o.start),
                o.window.zone.show(o.end),
                o.window.reason
            ));
            out.upcoming.push(UpcomingJson {
                window: o.window.name.clone(),
                environments: envs,
                reason: o.window.reason.clone(),
                from: o.start.to_string(),
                until: o.end.to_string(),
            });
        }
        out
    }
}

/// Parses `hours = "HH:MM-HH:MM"` (spaces around `-` allowed; the end may be `24:00`).
pub fn parse_hours(text: &str) -> Result<Hours, String> {
    let (start, end) = text.split_once('-').ok_or_else(|| format!("hours \"{text}\" is not HH:MM-HH:MM"))?;
    let start = match parse_time(start.trim())? {
        Some(t) => t,
        None => return Err("a window cannot start at 24:00; write 00:00".into()),
    };
    let end = parse_time(end.trim())?;
    if end == Some(start) {
        return Err(format!(
            "hours \"{text}\" start and end at the same time; for whole days leave `hours` out (or write 00:00-24:00)"
        ));
    }
    Ok(Hours { start, end })
}

/// `HH:MM` (one- or two-digit hour), or `24:00` (`None`).
fn parse_time(text: &str) -> Result<Option<Time>, String> {
    let bad = || format!("\"{text}\" is not a time of day like 08:00 or 18:30");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if (h, m) == (24, 0) {
        return Ok(None);
    }
    Time::new(h, m, 0, 0).map(Some).map_err(|_| bad())
}

/// Parses one entry of `days`: `mon` … `sun` or the full English name (any case), or a range
/// such as `mon-fri` (`fri-mon` wraps over the weekend). Returns the days, Monday = 0.
pub fn parse_days(text: &str) -> Result<Vec<usize>, String> {
    let one = |s: &str| {
        weekday(s.trim()).ok_or_else(|| {
            format!(
                "\"{}\" is not a day; write mon, tue, wed, thu, fri, sat or sun (or a range like mon-fri)",
                s.trim()
            )
        })
    };
    match text.split_once('-') {
        None => Ok(vec![one(text)?]),
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            let mut out = vec![a];
            let mut d = a;
            while d != b {
                d = (d + 1) % 7;
                out.push(d);
            }
            Ok(out)
        }
    }
}

/// `mon` or `monday` (any case) as Monday = 0 … Sunday = 6.
fn weekday(text: &str) -> Option<usize> {
    const NAMES: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let lower = text.to_ascii_lowercase();
    NAMES.iter().position(|n| lower.len() >= 3 && (lower == n[..3] || lower == *n))
}

/// Looks an IANA time zone name up: the system's database first, else the bundled one.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .or_else(|_| jiff::tz::TimeZoneDatabase::bundled().get(name))
        .map_err(|_| format!("unknown time zone \"{name}\""))
}

/// Parses an RFC 3339 instant with its offset; returns it and a zone showing that offset.
pub fn parse_instant(text: &str) -> Result<(Timestamp, Zone), String> {
    let help =
        "write an RFC 3339 time with its offset, e.g. 2026-12-24T00:00:00+01:00 or 2026-12-23T23:00:00Z";
    let pieces =
        jiff::fmt::temporal::Pieces::parse(text).map_err(|_| format!("\"{text}\" is not a time: {help}"))?;
    let offset = pieces.to_numeric_offset().ok_or_else(|| format!("\"{text}\" has no offset: {help}"))?;
    if pieces.time().is_none() {
        return Err(format!("\"{text}\" has no time of day: {help}"));
    }
    let at: Timestamp = text.parse().map_err(|_| format!("\"{text}\" is not a time: {help}"))?;
    let zone = if offset == jiff::tz::Offset::UTC {
        Zone::utc()
    } else {
        let label = at.to_zoned_datetime(TimeZone::fixed(offset)).strftime("%:z").to_string();
        Zone { tz: TimeZone::fixed(offset), label }
    };
    Ok((at, zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled database: the same answer on every machine.
    fn tz(name: &str) -> TimeZone {
        jiff::tz::TimeZoneDatabase::bundled().get(name).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn weekly_window(name: &str, days: &[&str], hours: &str, zone: &str) -> Window {
        let mut set = [false; 7];
        for d in days {
            for i in parse_days(d).unwrap() {
                set[i] = true;
            }
        }
        Window {
            name: name.into(),
            environments: vec!["prod".into()],
            reason: format!("{name} reason"),
            schedule: Schedule::Weekly { days: set, hours: parse_hours(hours).unwrap(), tz: tz(zone) },
            span: 0..0,
            zone: Zone { tz: tz(zone), label: zone.into() },
        }
    }

    fn between(name: &str, from: &str, until: &str) -> Window {
        Window {
            name: name.into(),
            environments: vec!["prod".into()],
            reason: format!("{name} reason"),
            schedule: Schedule::Between { from: at(from), until: at(until) },
            span: 0..0,
            zone: Zone::utc(),
        }
    }

    /// (window name, since, until) of the freeze at `t`, in UTC.
    fn verdict(windows: &[Window], t: &str) -> Option<(String, String, String)> {
        frozen(windows, "prod", at(t))
            .map(|f| (f.window.name.clone(), f.since.to_string(), f.until.to_string()))
    }

    fn some(name: &str, since: &str, until: &str) -> Option<(String, String, String)> {
        Some((name.into(), since.into(), until.into()))
    }

    #[test]
    fn a_night_window_spans_midnight_in_its_own_zone() {
        // 18:00-08:00 Berlin in winter is 17:00-07:00 UTC.
        let w = [weekly_window("nights", &["mon-fri"], "18:00-08:00", "Europe/Berlin")];
        // Monday 2026-12-07.
        assert_eq!(verdict(&w, "2026-12-07T16:59:59Z"), None);
        let monday_night = some("nights", "2026-12-07T17:00:00Z", "2026-12-08T07:00:00Z");
        assert_eq!(verdict(&w, "2026-12-07T17:00:00Z"), monday_night);
        assert_eq!(verdict(&w, "2026-12-07T23:00:00Z"), monday_night, "just before midnight in Berlin");
        assert_eq!(verdict(&w, "2026-12-07T23:30:00Z"), monday_night, "just after midnight in Berlin");
        assert_eq!(verdict(&w, "2026-12-08T06:59:59Z"), monday_night);
        assert_eq!(verdict(&w, "2026-12-08T07:00:00Z"), None, "the end is exclusive");
        // Friday night runs into Saturday morning even though Saturday is not listed; Saturday
        // night is free.
        let friday_night = some("nights", "2026-12-11T17:00:00Z", "2026-12-12T07:00:00Z");
        assert_eq!(verdict(&w, "2026-12-12T06:00:00Z"), friday_night);
        assert_eq!(verdict(&w, "2026-12-12T20:00:00Z"), None);
        // Sunday 23:30 UTC is Monday 00:30 in Berlin: Sunday evening's window (none) decides.
        assert_eq!(verdict(&w, "2026-12-13T23:30:00Z"), None);
    }

    #[test]
    fn a_window_across_the_end_of_the_week() {
        // Sunday 18:00 to Monday 08:00, in UTC: days wrap from Sunday to Monday.
        let w = [weekly_window("weekend", &["sun"], "18:00-08:00", "UTC")];
        let stretch = some("weekend", "2026-12-13T18:00:00Z", "2026-12-14T08:00:00Z");
        assert_eq!(verdict(&w, "2026-12-13T18:00:00Z"), stretch);
        assert_eq!(verdict(&w, "2026-12-14T00:00:00Z"), stretch, "Monday just after midnight");
        assert_eq!(verdict(&w, "2026-12-14T07:59:00Z"), stretch);
        assert_eq!(verdict(&w, "2026-12-14T08:00:00Z"), None);
        assert_eq!(verdict(&w, "2026-12-13T17:59:59Z"), None);
        // The year's end on a Sunday night is no different (2026-12-27 is a Sunday).
        assert_eq!(
            verdict(&w, "2027-01-01T00:00:00Z"),
            None,
            "Friday New Year's Day is not in a Sunday window"
        );
        assert_eq!(
            verdict(&w, "2026-12-28T03:00:00Z"),
            some("weekend", "2026-12-27T18:00:00Z", "2026-12-28T08:00:00Z")
        );
    }

    #[test]
    fn the_spring_dst_change_makes_the_night_an_hour_shorter() {
        // Europe/Berlin goes from +01:00 to +02:00 at 02:00 on Sunday 2026-03-29.
        let w = [weekly_window("nights", &["sat"], "18:00-08:00", "Europe/Berlin")];
        // Saturday 18:00 CET = 17:00 UTC; Sunday 08:00 CEST = 06:00 UTC: 13 hours.
        let night = some("nights", "2026-03-28T17:00:00Z", "2026-03-29T06:00:00Z");
        assert_eq!(verdict(&w, "2026-03-29T00:30:00Z"), night, "01:30 CET, before the change");
        assert_eq!(verdict(&w, "2026-03-29T01:00:00Z"), night, "03:00 CEST, right after the change");
        assert_eq!(verdict(&w, "2026-03-29T05:59:59Z"), night);
        assert_eq!(verdict(&w, "2026-03-29T06:00:00Z"), None, "08:00 CEST is 06:00 UTC, not 07:00");
        let f = frozen(&w, "prod", at("2026-03-29T01:00:00Z")).unwrap();
        assert_eq!(f.until.duration_since(f.since), SignedDuration::from_hours(13));
        assert_eq!(
            f.window.zone.show(f.until),
            "Sun 2026-03-29 08:00 Europe/Berlin (2026-03-29 06:00 UTC)",
            "the end shown in local and UTC time"
        );
    }

    #[test]
    fn a_window_starting_in_the_skipped_hour_starts_when_the_clock_resumes() {
        // 02:30 does not exist in Berlin on 2026-03-29: the window starts when the clock shows
        // 03:30 CEST (01:30 UTC), an hour on, as clocks skip (jiff's "compatible" rule).
        let w = [weekly_window("odd", &["sun"], "02:30-04:00", "Europe/Berlin")];
        assert_eq!(verdict(&w, "2026-03-29T00:59:59Z"), None);
        assert_eq!(
            verdict(&w, "2026-03-29T01:30:00Z"),
            some("odd", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z")
        );
    }

    #[test]
    fn the_autumn_dst_change_makes_the_night_an_hour_longer() {
        // Europe/Berlin goes from +02:00 back to +01:00 at 03:00 on Sunday 2026-10-25.
        let w = [weekly_window("nights", &["sat"], "18:00-08:00", "Europe/Berlin")];
        // Saturday 18:00 CEST = 16:00 UTC; Sunday 08:00 CET = 07:00 UTC: 15 hours.
        let night = some("nights", "2026-10-24T16:00:00Z", "2026-10-25T07:00:00Z");
        assert_eq!(verdict(&w, "2026-10-25T00:30:00Z"), night, "02:30 CEST, the first time");
        assert_eq!(verdict(&w, "2026-10-25T01:30:00Z"), night, "02:30 CET, the second time");
        assert_eq!(verdict(&w, "2026-10-25T06:59:59Z"), night);
        assert_eq!(verdict(&w, "2026-10-25T07:00:00Z"), None);
        assert_eq!(verdict(&w, "2026-10-24T15:59:59Z"), None);
        let f = frozen(&w, "prod", at("2026-10-25T03:00:00Z")).unwrap();
        assert_eq!(f.until.duration_since(f.since), SignedDuration::from_hours(15));
    }

    #[test]
    fn overlapping_windows_the_latest_end_wins() {
        let w = [
            between("short", "2026-12-20T00:00:00Z", "2026-12-22T00:00:00Z"),
            between("long", "2026-12-21T00:00:00Z", "2027-01-04T00:00:00Z"),
            between("inner", "2026-12-24T00:00:00Z", "2026-12-27T00:00:00Z"),
        ];
        assert_eq!(
            verdict(&w, "2026-12-21T12:00:00Z"),
            some("long", "2026-12-21T00:00:00Z", "2027-01-04T00:00:00Z")
        );
        assert_eq!(
            verdict(&w, "2026-12-25T12:00:00Z"),
            some("long", "2026-12-21T00:00:00Z", "2027-01-04T00:00:00Z")
        );
        // Only "short" is in force on the 20th, but "long" follows on: frozen until it ends.
        let f = frozen(&w, "prod", at("2026-12-20T12:00:00Z")).unwrap();
        assert_eq!((f.window.name.as_str(), f.last.name.as_str()), ("short", "long"));
        assert_eq!(f.until, at("2027-01-04T00:00:00Z"));
        assert!(
            f.describe("prod").starts_with(
                "prod is frozen by \"short\", then by \"long\" until Mon 2027-01-04 00:00 UTC: short reason"
            ),
            "{}",
            f.describe("prod")
        );
        assert_eq!(verdict(&w, "2027-01-04T00:00:00Z"), None);
    }

    #[test]
    fn back_to_back_weekly_windows_merge_and_a_window_everywhere_is_open_ended() {
        // Nights (Sunday to Friday) plus whole weekends: from Friday 18:00 the freeze lasts
        // until Monday 08:00.
        let w = [
            weekly_window("nights", &["sun-fri"], "18:00-08:00", "UTC"),
            weekly_window("weekend", &["sat", "sun"], "00:00-24:00", "UTC"),
        ];
        let f = frozen(&w, "prod", at("2026-12-11T19:00:00Z")).unwrap();
        assert_eq!(f.window.name, "nights");
        assert_eq!(f.until, at("2026-12-14T08:00:00Z"));
        let always = [weekly_window("always", &["mon-sun"], "00:00-24:00", "UTC")];
        let f = frozen(&always, "prod", at("2026-12-11T19:00:00Z")).unwrap();
        assert!(f.open_ended, "{f:?}");
    }

    #[test]
    fn other_environments_are_not_frozen() {
        let w = [between("x", "2026-12-20T00:00:00Z", "2026-12-22T00:00:00Z")];
        assert!(frozen(&w, "staging", at("2026-12-21T00:00:00Z")).is_none());
    }

    #[test]
    fn upcoming_lists_the_stretches_that_start_within_the_horizon() {
        let w = [
            weekly_window("weekend", &["sun"], "18:00-08:00", "UTC"),
            between("holidays", "2026-12-24T00:00:00Z", "2027-01-04T00:00:00Z"),
        ];
        let list = upcoming(&w, Some("prod"), at("2026-12-14T00:00:00Z"), UPCOMING);
        let starts: Vec<String> = list.iter().map(|o| format!("{} {}", o.window.name, o.start)).collect();
        // The one in force (since Sunday 18:00) is not upcoming; next Sunday's is.
        assert_eq!(starts, ["weekend 2026-12-20T18:00:00Z"]);
        let list = upcoming(&w, None, at("2026-12-20T00:00:00Z"), UPCOMING);
        let starts: Vec<String> = list.iter().map(|o| format!("{} {}", o.window.name, o.start)).collect();
        assert_eq!(starts, ["weekend 2026-12-20T18:00:00Z", "holidays 2026-12-24T00:00:00Z"]);
        assert!(upcoming(&w, Some("staging"), at("2026-12-20T00:00:00Z"), UPCOMING).is_empty());
    }

    #[test]
    fn the_outlook_names_active_and_upcoming_windows() {
        let mut holidays = between("holidays", "2026-12-24T00:00:00Z", "2027-01-04T00:00:00Z");
        holidays.environments = vec!["prod".into(), "staging".into()];
        let w = [weekly_window("weekend", &["sun"], "18:00-08:00", "Europe/Berlin"), holidays];
        let o = Outlook::at(&w, &["staging", "prod"], at("2026-12-21T06:00:00Z"));
        assert_eq!(
            o.lines,
            [
                "prod is frozen by \"weekend\" until Mon 2026-12-21 08:00 Europe/Berlin (2026-12-21 07:00 UTC): weekend reason",
                "prod, staging will be frozen by \"holidays\" from Thu 2026-12-24 00:00 UTC until Mon 2027-01-04 00:00 UTC: holidays reason",
                // Within 7 days of Monday 06:00 UTC: Sunday evening's (inside the holidays).
                "prod will be frozen by \"weekend\" from Sun 2026-12-27 18:00 Europe/Berlin (2026-12-27 17:00 UTC) \
                 until Mon 2026-12-28 08:00 Europe/Berlin (2026-12-28 07:00 UTC): weekend reason",
            ]
        );
        assert_eq!(o.active.len(), 1);
        assert_eq!(o.upcoming[0].environments, ["prod", "staging"]);
        assert_eq!(o.upcoming[0].from, "2026-12-24T00:00:00Z");
        assert!(Outlook::at(&w, &["dev"], at("2026-12-21T06:00:00Z")).lines.is_empty());
    }

    #[test]
    fn hours_days_and_instants_parse() {
        let h = parse_hours("18:00-08:00").unwrap();
        assert_eq!((h.start, h.end), (Time::new(18, 0, 0, 0).unwrap(), Some(Time::new(8, 0, 0, 0).unwrap())));
        assert_eq!(parse_hours("0:00 - 24:00").unwrap(), Hours::ALL_DAY);
        for bad in [
            "",
            "18:00",
            "18-08",
            "25:00-08:00",
            "18:60-08:00",
            "24:00-08:00",
            "08:00-08:00",
            "18:00-24:30",
            "+1:00-02:00",
            "18:00-08:00-09:00",
        ] {
            assert!(parse_hours(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_days("Sat").unwrap(), [5]);
        assert_eq!(parse_days("sunday").unwrap(), [6]);
        assert_eq!(parse_days("fri-mon").unwrap(), [4, 5, 6, 0]);
        assert_eq!(parse_days("mon-fri").unwrap(), [0, 1, 2, 3, 4]);
        for bad in ["", "mo", "someday", "sat-", "-sun", "mondays"] {
            assert!(parse_days(bad).is_err(), "{bad:?}");
        }
        let (t, zone) = parse_instant("2026-12-24T00:00:00+01:00").unwrap();
        assert_eq!(t, at("2026-12-23T23:00:00Z"));
        assert_eq!(zone.show(t), "Thu 2026-12-24 00:00 +01:00 (2026-12-23 23:00 UTC)");
        assert_eq!(parse_instant("2026-12-24T00:00:00Z").unwrap().1.show(t), "Wed 2026-12-23 23:00 UTC");
        for bad in ["2026-12-24", "2026-12-24T00:00:00", "tomorrow", ""] {
            assert!(parse_instant(bad).is_err(), "{bad:?}");
        }
        assert!(time_zone("Europe/Berlin").is_ok());
        assert!(time_zone("Europe/Berlln").is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_hours_and_days_parsers_never_panic(text in "\\PC{0,24}") {
            let _ = parse_hours(&text);
            let _ = parse_days(&text);
            let _ = parse_instant(&text);
        }

        #[test]
        fn any_written_hours_read_back(h1 in 0i8..24, m1 in 0i8..60, h2 in 0i8..25, m2 in 0i8..60) {
            let m2 = if h2 == 24 { 0 } else { m2 };
            let text = format!("{h1:02}:{m1:02}-{h2:02}:{m2:02}");
            let parsed = parse_hours(&text);
            if (h1, m1) == (h2, m2) {
                proptest::prop_assert!(parsed.is_err());
            } else {
                let hours = parsed.map_err(proptest::test_runner::TestCaseError::fail)?;
                proptest::prop_assert_eq!(hours.start, Time::new(h1, m1, 0, 0).unwrap());
                proptest::prop_assert_eq!(hours.end, (h2 < 24).then(|| Time::new(h2, m2, 0, 0).unwrap()));
            }
        }

        #[test]
        fn a_weekly_stretch_always_contains_its_start(day in 0usize..7, h1 in 0i8..24, h2 in 0i8..24, secs in 0i64..(4 * 366 * 86_400)) {
            let mut days = [false; 7];
            days[day] = true;
            let hours = Hours { start: Time::new(h1, 0, 0, 0).unwrap(), end: Some(Time::new(h2, 30, 0, 0).unwrap()) };
            let w = Window {
                name: "w".into(),
                environments: vec!["prod".into()],
                reason: "r".into(),
                schedule: Schedule::Weekly { days, hours, tz: tz("Europe/Berlin") },
                span: 0..0,
                zone: Zone::utc(),
            };
            let t = at("2026-01-01T00:00:00Z").checked_add(SignedDuration::from_secs(secs)).unwrap();
            if let Some(f) = frozen(std::slice::from_ref(&w), "prod", t) {
                proptest::prop_assert!(f.since <= t && t < f.until);
                proptest::prop_assert!(f.until.duration_since(f.since) <= SignedDuration::from_hours(25));
            }
            for o in upcoming(std::slice::from_ref(&w), None, t, UPCOMING) {
                proptest::prop_assert!(frozen(std::slice::from_ref(&w), "prod", o.start).is_some());
            }
        }
    }
}
