//! `[[freeze]]` entries, checked once into [`crate::freeze::Window`]s: every key with its own
//! line in messages, every problem of every entry collected, so `ferry check` names them all.

use std::ops::Range;

use toml::Spanned;

use super::Environment;
use super::raw::RawFreeze;
use crate::diagnostic::did_you_mean;
use crate::freeze::{self, Hours, Schedule, Window, Zone};

/// A problem in an entry: (span, message, help).
pub(super) type Problem = (Range<usize>, String, Option<String>);

/// Checks the entries in file order; entries with problems are left out.
pub(super) fn windows(
    raw: Vec<Spanned<RawFreeze>>,
    envs: &[Environment],
    problems: &mut Vec<Problem>,
) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let before = problems.len();
        let window = window(i, entry, envs, problems);
        if let Some(window) = window.filter(|_| problems.len() == before) {
            if let Some(same) = out.iter().find(|w| w.name == window.name) {
                problems.push((
                    window.span.start..window.span.start,
                    format!("two [[freeze]] entries are named \"{}\"", same.name),
                    Some("give each window its own name: refusals and records name it".into()),
                ));
            }
            out.push(window);
        }
    }
    out
}

fn window(
    i: usize,
    entry: Spanned<RawFreeze>,
    envs: &[Environment],
    problems: &mut Vec<Problem>,
) -> Option<Window> {
    let span = entry.span();
    let raw = entry.into_inner();
    let at = span.start..span.start;
    let name = match raw.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            problems.push((
                n.span(),
                "an empty window name".into(),
                Some("name it, e.g. name = \"holidays\"".into()),
            ));
            String::new()
        }
        Some(n) => n.into_inner(),
        None => format!("#{}", i + 1),
    };
    if raw.environments.get_ref().is_empty() {
        problems.push((
            raw.environments.span(),
            "a freeze window for no environment".into(),
            Some("list the environments it freezes, e.g. environments = [\"prod\"]".into()),
        ));
    }
    let mut environments = Vec::new();
    for env in raw.environments.into_inner() {
        if !envs.iter().any(|e| &e.name == env.get_ref()) {
            let help = did_you_mean(env.get_ref(), envs.iter().map(|e| e.name.as_str()))
                .or(Some("a freeze names [environments.NAME] entries".into()));
            problems.push((
                env.span(),
                format!("unknown environment \"{}\" in a freeze window", env.get_ref()),
                help,
            ));
        }
        environments.push(env.into_inner());
    }
    if raw.reason.get_ref().trim().is_empty() {
        problems.push((
            raw.reason.span(),
            "an empty freeze reason".into(),
            Some("say why, e.g. reason = \"Code freeze over the holidays\": every refusal shows it".into()),
        ));
    }
    let zone = raw.timezone.as_ref().and_then(|tz| match freeze::time_zone(tz.get_ref()) {
        Ok(found) => Some(Zone { tz: found, label: tz.get_ref().clone() }),
        Err(e) => {
            problems.push((
                tz.span(),
                e,
                Some("write an IANA name, e.g. \"Europe/Berlin\" or \"UTC\"".into()),
            ));
            None
        }
    });
    let fixed = raw.from.is_some() || raw.until.is_some();
    let weekly = raw.days.is_some() || raw.hours.is_some();
    let (schedule, shown) = match (fixed, weekly) {
        (true, true) => {
            problems.push((
                at,
                "a freeze window has both from/until and days/hours".into(),
                Some(
                    "use from/until for one stretch, or days/hours (and timezone) for a weekly window".into(),
                ),
            ));
            return None;
        }
        (false, false) => {
            problems.push((
                at,
                "a freeze window needs from/until or days/hours".into(),
                Some(
                    "e.g. from = \"2026-12-24T00:00:00+01:00\", until = \"2027-01-04T08:00:00+01:00\"; or days = [\"sat\", \"sun\"], hours = \"00:00-24:00\", timezone = \"Europe/Berlin\""
                        .into(),
                ),
            ));
            return None;
        }
        (true, false) => between(raw.from, raw.until, at, problems)?,
        (false, true) => {
            let tz = zone.as_ref().map_or(jiff::tz::TimeZone::UTC, |z| z.tz.clone());
            (weekly_schedule(raw.days, raw.hours, tz, problems)?, Zone::utc())
        }
    };
    Some(Window {
        name,
        environments,
        reason: raw.reason.into_inner(),
        schedule,
        span,
        zone: zone.unwrap_or(shown),
    })
}

/// `from`/`until`: both, each RFC 3339 with an offset (a string or a TOML date-time), in order.
fn between(
    from: Option<Spanned<toml::Value>>,
    until: Option<Spanned<toml::Value>>,
    at: Range<usize>,
    problems: &mut Vec<Problem>,
) -> Option<(Schedule, Zone)> {
    let (Some(from), Some(until)) = (from, until) else {
        problems.push((
            at,
            "a freeze window needs both `from` and `until`".into(),
            Some("add the missing one (RFC 3339 with an offset)".into()),
        ));
        return None;
    };
    let mut instant = |value: &Spanned<toml::Value>, key: &str| {
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Datetime(d) => d.to_string(),
            _ => {
                problems.push((
                    value.span(),
                    format!("`{key}` must be a time"),
                    Some("e.g. \"2026-12-24T00:00:00+01:00\"".into()),
                ));
                return None;
            }
        };
        match freeze::parse_instant(&text) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                problems.push((value.span(), format!("`{key}`: {e}"), None));
                None
            }
        }
    };
    let start = instant(&from, "from");
    let end = instant(&until, "until");
    let ((start, _), (end, zone)) = (start?, end?);
    if end <= start {
        problems.push((
            until.span(),
            "`until` is not after `from`".into(),
            Some("a freeze window ends after it starts".into()),
        ));
        return None;
    }
    Some((Schedule::Between { from: start, until: end }, zone))
}

/// `days` (default: every day) and `hours` (default: all day).
fn weekly_schedule(
    days: Option<Spanned<Vec<Spanned<String>>>>,
    hours: Option<Spanned<String>>,
    tz: jiff::tz::TimeZone,
    problems: &mut Vec<Problem>,
) -> Option<Schedule> {
    let mut set = [days.is_none(); 7];
    let before = problems.len();
    if let Some(days) = days {
        if days.get_ref().is_empty() {
            problems.push((
                days.span(),
                "`days` lists no day".into(),
                Some("e.g. days = [\"sat\", \"sun\"], or leave it out for every day".into()),
            ));
        }
        for day in days.into_inner() {
            match freeze::parse_days(day.get_ref()) {
                Ok(list) => list.into_iter().for_each(|d| set[d % 7] = true),
                Err(e) => problems.push((day.span(), e, None)),
            }
        }
    }
    let hours = match hours {
        None => Hours::ALL_DAY,
        Some(text) => match freeze::parse_hours(text.get_ref()) {
            Ok(h) => h,
            Err(e) => {
                let help = "write HH:MM-HH:MM in the window's timezone, e.g. \"18:00-08:00\" (an end before the start is on the next day)";
                problems.push((text.span(), e, Some(help.into())));
                Hours::ALL_DAY
            }
        },
    };
    (problems.len() == before).then_some(Schedule::Weekly { days: set, hours, tz })
}
