//! Durations as people write them in inventories and flags: `500ms`, `60s`, `5m`, `1h30m`.

use std::time::Duration;

/// Parses `1h30m`, `90s`, `250ms`; a bare number is refused (seconds or minutes is ambiguous).
pub fn parse(text: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration \"{text}\": write a number with a unit, like 500ms, 30s, 5m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return Err(err()),
        };
        let part = u32::try_from(number).ok().and_then(|n| unit.checked_mul(n)).ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it back (`1m30s`, `250ms`).
pub fn format(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    out
}

/// A short human form for tables: `850ms`, `12.3s`, `4m05s`.
pub fn format_short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// A time something has been up, for people: the two largest units, whole seconds (`0s`, `3s`,
/// `2m 5s`, `1h 2m`, `3d 4h`). An uptime is never read back, so it needs no [`parse`] form,
/// and "0ms" for a container started this second says nothing useful.
pub fn format_uptime(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [(secs / 86_400, "d"), (secs / 3600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    let Some(first) = units.iter().position(|(n, _)| *n > 0) else { return "0s".into() };
    let mut out = format!("{}{}", units[first].0, units[first].1);
    if let Some((n, unit)) = units.get(first + 1).filter(|(n, _)| *n > 0) {
        out += &format!(" {n}{unit}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_as_people_say_them() {
        let up = |s| format_uptime(Duration::from_secs(s));
        assert_eq!(
            [up(0), up(3), up(60), up(125), up(3720), up(3 * 86_400 + 4 * 3600 + 59)],
            ["0s", "3s", "1m", "2m 5s", "1h 2m", "3d 4h"]
        );
        assert_eq!(format_uptime(Duration::from_millis(400)), "0s", "never 0ms");
    }

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse("60").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5 minutes").is_err());
        assert!(parse("99999999999999h").is_err());
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse(&s);
        }
        #[test]
        fn round_trips(secs in 1u64..1_000_000) {
            let d = Duration::from_secs(secs);
            proptest::prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
