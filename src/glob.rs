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
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Position to resume from after the last `*`: (pattern index after it, name index).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') if has_close(&p[pi..]) => class(&p[pi..], n[ni]),
            Some(&c) if c == n[ni] => Some(1),
            _ => None,
        };
        match step {
            Some(width) => {
                pi += width;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// True when the `[` at the start of `p` has a closing `]` (else it is a literal `[`).
fn has_close(p: &[char]) -> bool {
    p.iter().skip(2).any(|&x| x == ']')
}

/// Matches a `[...]` class at the start of `p` against `c`: `Some(pattern width)` on a match.
fn class(p: &[char], c: char) -> Option<usize> {
    let close = p.iter().skip(2).position(|&x| x == ']').map(|i| i + 2)?;
    let body = &p[1..close];
    let (negate, body) = match body.first() {
        Some('!' | '^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut hit = false;
    let mut i = 0;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == '-' {
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
