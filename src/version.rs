//! Versions: which image tags are releases, and how they order.
//!
//! Real tags look like `1.2.3`, `v1.2.3`, `1.2.3.4`, `1.2.3-rc.1`, `2024.05.01`, next to tags that
//! are not versions at all (`latest`, `main`, `sha-3f9a1c7`, `pr-42`). A version here is an
//! optional `v`, one to four dot-separated numbers, an optional `-prerelease` (dot-separated
//! identifiers) and an optional `+build`. Numbers compare as numbers (`1.10` > `1.9`), missing
//! parts count as 0, a release sorts above its prereleases, and prerelease identifiers compare
//! like SemVer's (numbers below words). Anything else is not a version and is ignored when
//! ferry looks for the newest one; it can still be deployed by naming it.

use std::cmp::Ordering;

/// A tag that is a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The tag as written.
    pub tag: String,
    numbers: Vec<u64>,
    pre: Vec<Identifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Identifier {
    // Declared first: numeric identifiers sort below alphanumeric ones.
    Number(u64),
    Text(String),
}

impl Version {
    /// Parses `tag`; `None` when it is not a version.
    pub fn parse(tag: &str) -> Option<Version> {
        let body = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
        let (body, _build) = match body.split_once('+') {
            Some((b, build)) if is_identifiers(build) => (b, Some(build)),
            Some(_) => return None,
            None => (body, None),
        };
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) if is_identifiers(pre) => (core, Some(pre)),
            Some(_) => return None,
            None => (body, None),
        };
        let numbers: Vec<u64> = core
            .split('.')
            .map(|part| {
                let digits = !part.is_empty() && part.len() <= 19 && part.bytes().all(|b| b.is_ascii_digit());
                digits.then(|| part.parse().ok()).flatten()
            })
            .collect::<Option<_>>()?;
        if numbers.is_empty() || numbers.len() > 4 {
            return None;
        }
        let pre = pre.map_or_else(Vec::new, |p| {
            p.split('.')
                .map(|id| match id.parse::<u64>() {
                    Ok(n) if id.bytes().all(|b| b.is_ascii_digit()) => Identifier::Number(n),
                    _ => Identifier::Text(id.to_string()),
                })
                .collect()
        });
        Some(Version { tag: tag.to_string(), numbers, pre })
    }

    /// Whether it has a `-prerelease` part.
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

fn is_identifiers(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let width = self.numbers.len().max(other.numbers.len());
        let number = |v: &Version, i: usize| v.numbers.get(i).copied().unwrap_or(0);
        (0..width)
            .map(|i| number(self, i).cmp(&number(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
            // Equal versions written differently (`v1.2` and `1.2.0`) still order one way.
            .then_with(|| self.tag.cmp(&other.tag))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Which tags an app deploys as versions: `versions = { pattern = "…", prerelease = false }`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Tags must match this whole (already anchored) regex.
    pub pattern: Option<regex_lite::Regex>,
    /// Whether prereleases count.
    pub prerelease: bool,
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.prerelease == other.prerelease
            && self.pattern.as_ref().map(regex_lite::Regex::as_str)
                == other.pattern.as_ref().map(regex_lite::Regex::as_str)
    }
}

impl Rules {
    /// Whether `version` is allowed.
    pub fn allows(&self, version: &Version) -> bool {
        (self.prerelease || !version.is_prerelease())
            && self.pattern.as_ref().is_none_or(|p| p.is_match(&version.tag))
    }
}

/// The allowed versions among `tags`, newest first.
pub fn newest_first<'a>(tags: impl IntoIterator<Item = &'a str>, rules: &Rules) -> Vec<Version> {
    let mut versions: Vec<Version> =
        tags.into_iter().filter_map(Version::parse).filter(|v| rules.allows(v)).collect();
    versions.sort_by(|a, b| b.cmp(a));
    versions
}

/// Compiles a `pattern` so it must match the whole tag.
pub fn anchored(pattern: &str) -> Result<regex_lite::Regex, regex_lite::Error> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tags: &[&str], rules: &Rules) -> Vec<String> {
        newest_first(tags.iter().copied(), rules).into_iter().map(|v| v.tag).collect()
    }

    #[test]
    fn parses_what_real_tags_look_like() {
        for ok in [
            "1",
            "1.2",
            "1.2.3",
            "v1.2.3",
            "V2.0",
            "1.2.3.4",
            "1.2.3-rc.1",
            "2024.05.01",
            "1.0.0+build.7",
            "1.0-beta-2",
        ] {
            assert!(Version::parse(ok).is_some(), "{ok}");
        }
        for odd in [
            "latest",
            "main",
            "sha-3f9a1c7",
            "pr-42",
            "",
            "v",
            "1.",
            ".1",
            "1..2",
            "1.2.3.4.5",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-rc..1",
            "1.2.3-rc_1",
            "1.2a",
            "x1.2",
            "99999999999999999999",
            "-1.2",
        ] {
            assert!(Version::parse(odd).is_none(), "{odd:?} is not a version");
        }
    }

    #[test]
    fn orders_numbers_as_numbers_and_releases_above_prereleases() {
        let tags = [
            "1.9",
            "1.10",
            "1.2.3-rc.1",
            "1.2.3",
            "1.2.3-rc.10",
            "1.2.3-rc.2",
            "1.2.3-alpha",
            "v1.2.4",
            "1.2.3.1",
            "2024.05.01",
            "2024.12.01",
            "latest",
            "main",
        ];
        let all = Rules { prerelease: true, pattern: None };
        assert_eq!(
            order(&tags, &all),
            [
                "2024.12.01",
                "2024.05.01",
                "1.10",
                "1.9",
                "v1.2.4",
                "1.2.3.1",
                "1.2.3",
                "1.2.3-rc.10",
                "1.2.3-rc.2",
                "1.2.3-rc.1",
                "1.2.3-alpha"
            ]
        );
        let releases = Rules::default();
        assert_eq!(order(&["1.2.3-rc.1", "1.2.2", "latest"], &releases), ["1.2.2"]);
    }

    #[test]
    fn a_pattern_restricts_tags_to_the_whole_match() {
        let rules = Rules { pattern: Some(anchored(r"v\d+\.\d+\.\d+").unwrap()), prerelease: false };
        assert_eq!(order(&["v1.2.3", "1.2.4", "v1.2.3.4", "v2.0.0"], &rules), ["v2.0.0", "v1.2.3"]);
        assert!(anchored("(").is_err());
    }

    #[test]
    fn equal_versions_written_differently_order_stably() {
        let a = Version::parse("v1.2").unwrap();
        let b = Version::parse("1.2.0").unwrap();
        assert_ne!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
    }
}
