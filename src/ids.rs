//! Ids given on the command line, as git takes them: the whole id or a unique prefix.
//!
//! Run and deployment ids are UUIDv7s (36 characters); `history` shows them shortened, so every
//! place that takes an id accepts what `history` shows. A prefix that names several ids is
//! refused with the candidates listed (never a guess: a rollback to the wrong deployment is
//! worse than a second try), and one shorter than [`MIN_PREFIX`] is refused outright.

/// The shortest prefix taken: shorter ones would match almost every id of a busy log.
pub const MIN_PREFIX: usize = 4;

/// The shortest length `history` shows: the whole millisecond timestamp of a UUIDv7
/// (`0192f3a1-7c2e`), so two runs share it only when they started in the same millisecond.
pub const SHOWN: usize = 13;

/// Why a prefix names no single id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Shorter than [`MIN_PREFIX`].
    TooShort,
    /// No id starts with it.
    NotFound,
    /// These ids start with it (at most a few, sorted).
    Ambiguous(Vec<String>),
}

impl Unresolved {
    /// The message for `given`, naming ids as `what` ("deployment", "run").
    pub fn describe(&self, given: &str, what: &str) -> String {
        match self {
            Unresolved::TooShort => {
                format!("{what} id \"{given}\" is too short: give at least {MIN_PREFIX} characters")
            }
            Unresolved::NotFound => format!("no {what} {given} on record"),
            Unresolved::Ambiguous(ids) => {
                format!("{what} id \"{given}\" is ambiguous: it could be {}", ids.join(", "))
            }
        }
    }
}

/// The one id among `ids` that is `given` or starts with it.
pub fn resolve<'a>(given: &str, ids: impl Iterator<Item = &'a str>) -> Result<&'a str, Unresolved> {
    let mut matches: Vec<&str> = Vec::new();
    for id in ids {
        if id == given {
            return Ok(id);
        }
        if id.starts_with(given) && !matches.contains(&id) {
            matches.push(id);
        }
    }
    if given.chars().count() < MIN_PREFIX {
        return Err(Unresolved::TooShort);
    }
    match matches.as_slice() {
        [] => Err(Unresolved::NotFound),
        [one] => Ok(one),
        _ => {
            matches.sort_unstable();
            Err(Unresolved::Ambiguous(matches.iter().map(|s| (*s).to_string()).collect()))
        }
    }
}

/// The length at which `ids` (all shown together) are told apart: at least [`SHOWN`], longer
/// when two share that much.
pub fn shown_length<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> usize {
    let longest = ids.clone().map(str::len).max().unwrap_or(0);
    let mut length = SHOWN;
    while length < longest {
        let mut seen = std::collections::HashSet::new();
        if ids.clone().all(|id| seen.insert(id.get(..length).unwrap_or(id))) {
            break;
        }
        length += 1;
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_prefix_names_its_id() {
        let ids = ["0192aaaa-0001-7000", "0192aaaa-0002-7000", "0192bbbb-0001-7000"];
        assert_eq!(resolve("0192b", ids.iter().copied()), Ok("0192bbbb-0001-7000"));
        assert_eq!(resolve("0192aaaa-0001-7000", ids.iter().copied()), Ok("0192aaaa-0001-7000"));
        assert_eq!(resolve("019", ids.iter().copied()), Err(Unresolved::TooShort));
        assert_eq!(resolve("0193", ids.iter().copied()), Err(Unresolved::NotFound));
        assert_eq!(
            resolve("0192aaaa", ids.iter().copied()),
            Err(Unresolved::Ambiguous(vec!["0192aaaa-0001-7000".into(), "0192aaaa-0002-7000".into()]))
        );
    }

    #[test]
    fn shown_ids_are_long_enough_to_differ() {
        let far = ["0192aaaa-0001-7000-1", "0192bbbb-0001-7000-1"];
        assert_eq!(shown_length(far.iter().copied()), SHOWN);
        let same_ms = ["0192aaaa-0001-7000-1", "0192aaaa-0001-7abc-1"];
        assert_eq!(shown_length(same_ms.iter().copied()), 16);
    }
}
