//! Target-name globs: `*`, `?` and `[...]` classes, as shells and Ansible users write them.
//!
//! A dozen lines of matching are cheaper than a regex engine's build time, and target names are
//! short, so a backtracking matcher over characters is plenty fast for 10,000 targets.

/// True when `pattern` contains glob syntax (so a miss is "matches nothing", not "unknown name").
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Matches `name` against `pattern`. A `[` without a closing `]` matches itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    matches_with(pattern, name, true)
}

/// Matches with `*` and `?` only, `[` being literal: OpenSSH's patterns (known_hosts, where
/// `[host]:port` is a name, not a class).
pub fn matches_wildcards(pattern: &str, name: &str) -> bool {
    matches_with(pattern, name, false)
}

fn matches_with(pattern: &str, name: &str, classes: bool) -> bool {
    // Target names are ASCII (the inventory checks it), so the byte path is the common one; it
    // allocates nothing, which matters when 10,000 targets meet a few globs.
    if pattern.is_ascii() && name.is_ascii() {
        return match_from(pattern.as_bytes(), name.as_bytes(), classes);
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n, classes)
}

/// A pattern or name unit: a byte of ASCII text or a `char`.
trait Unit: Copy + Ord + From<u8> {}
impl Unit for u8 {}
impl Unit for char {}

fn match_from<T: Unit>(p: &[T], n: &[T], classes: bool) -> bool {
    let (star, question, open) = (T::from(b'*'), T::from(b'?'), T::from(b'['));
    let (mut pi, mut ni) = (0, 0);
    // Position to resume from after the last `*`: (pattern index after it, name index).
    let mut resume: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some(&c) if c == star => {
                resume = Some((pi + 1, ni));
                pi += 1;
                continue;
            }
            Some(&c) if c == question => Some(1),
            Some(&c) if classes && c == open && has_close(&p[pi..]) => class(&p[pi..], n[ni]),
            Some(&c) if c == n[ni] => Some(1),
            _ => None,
        };
        match step {
            Some(width) => {
                pi += width;
                ni += 1;
            }
            None => match resume {
                Some((sp, sn)) => {
                    pi = sp;
                    ni = sn + 1;
                    resume = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

/// True when the `[` at the start of `p` has a closing `]` (else it is a literal `[`).
fn has_close<T: Unit>(p: &[T]) -> bool {
    p.iter().skip(2).any(|&x| x == T::from(b']'))
}

/// Matches a `[...]` class at the start of `p` against `c`: `Some(pattern width)` on a match.
fn class<T: Unit>(p: &[T], c: T) -> Option<usize> {
    let close = p.iter().skip(2).position(|&x| x == T::from(b']')).map(|i| i + 2)?;
    let body = &p[1..close];
    let (negate, body) = match body.first() {
        Some(&x) if x == T::from(b'!') || x == T::from(b'^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut hit = false;
    let mut i = 0;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == T::from(b'-') {
            hit |= body[i] <= c && c <= body[i + 2];
            i += 3;
        } else {
            hit |= body[i] == c;
            i += 1;
        }
    }
    (hit != negate).then_some(close + 1)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_question_and_classes() {
        assert!(matches("stg-*", "stg-1"));
        assert!(matches("stg-*", "stg-"));
        assert!(!matches("stg-*", "prod-1"));
        assert!(matches("*-1", "prod-1"));
        assert!(matches("p?od-[0-9]", "prod-3"));
        assert!(!matches("prod-[!3]", "prod-3"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("[", "["));
        assert!(matches("web", "web"));
        assert!(!matches("web", "web2"));
        assert!(matches("é-*", "é-1"), "non-ASCII takes the char path");
        assert!(matches("[é]x", "éx"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_literal_matches_itself(p in "[a-z*?\\[\\]!-]{0,12}", n in "[a-z-]{0,12}") {
            let _ = matches(&p, &n);
            if !super::is_glob(&n) {
                proptest::prop_assert!(matches(&n, &n));
            }
        }
    }
}
