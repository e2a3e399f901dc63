//! Secrets from programs: the `command = ["op", "read", "op://vault/x"]` secret source, and the
//! Docker credential helpers (`docker-credential-NAME get`) that feeds use.
//!
//! Teams keep their secrets in a manager (1Password, Bitwarden, Vault, AWS, sops, `pass`) and
//! every manager has a command line that prints one value. ferry runs it on the runner, as
//! given: argv[0] is looked up in `PATH`, there is no shell (an argument is never re-split or
//! expanded), stdin is /dev/null (or, for a credential helper, the registry's name), and the
//! program gets ferry's environment unchanged — unlike a hook, whose environment is cleared,
//! because these programs read their own session from it (`OP_SESSION_*`, `BW_SESSION`,
//! `VAULT_TOKEN`, `AWS_PROFILE`, `GNUPGHOME`, `PASSWORD_STORE_DIR`).
//!
//! It runs in its own process group, killed with everything it started at the timeout, through
//! the hooks' runner ([`crate::hooks::execute`]): one read loop for every program ferry starts
//! on the runner. Its stdout is capped ([`MAX_OUTPUT`]): a value is small, and a program that
//! prints without end must not grow ferry. What it printed on stderr is shown when it fails,
//! masked with every secret ferry knows and cut short; its stdout (the value, or part of it)
//! never is.
//!
//! A run asks each program once: the answer (or the failure) is cached by argv and input for
//! the rest of the process, so a value used by many apps and targets, or read again to mask
//! output, starts one `op read`, not one per use. The cache is kept in memory only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::exec::{OutputSink, Stream};
use crate::hooks::{Ended, Spawn};
use crate::secret::{Secret, mask};

/// How long a secret command may run unless its source says `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a program may print on stdout: far more than any password, key or token.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// The most stderr kept, and the most of it shown (characters) in an error.
const MAX_ERRORS: usize = 64 * 1024;
const SHOWN_ERRORS: usize = 1000;

/// One program to ask.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// argv: the program (looked up in `PATH` unless it has a `/`) and its arguments.
    pub argv: &'a [String],
    /// Written to its stdin (`None`: /dev/null).
    pub stdin: Option<&'a [u8]>,
    /// Its working directory (`None`: ferry's).
    pub dir: Option<&'a Path>,
    /// How long it may run.
    pub timeout: Duration,
}

/// Why a program gave no value. Never holds what it printed on stdout in a form that can be
/// shown: that may be the secret.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The argv is empty (the inventory refuses that; a guard).
    NoProgram,
    /// It could not be started (not found, not executable).
    NotStarted(String),
    /// Its end could not be read (a guard: the runner says why).
    Lost(String),
    /// It exited non-zero. `errors` is its stderr, masked and cut short; `stdout` is what it
    /// printed there (a credential helper's message; a secret command's partial value).
    Exited {
        /// The exit code.
        code: i32,
        /// Stderr, masked and cut short.
        errors: String,
        /// Stdout, for callers that know it is a message (credential helpers).
        stdout: Secret,
    },
    /// A signal ended it.
    Signal {
        /// The signal's name, without `SIG`.
        name: String,
        /// Stderr, masked and cut short.
        errors: String,
    },
    /// It outlived its timeout and was killed with its process group.
    TimedOut(Duration),
    /// It printed more than [`MAX_OUTPUT`].
    TooLong,
    /// What it printed is not UTF-8.
    NotText,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let said = |errors: &str| if errors.is_empty() { String::new() } else { format!(": {errors}") };
        match self {
            Failure::NoProgram => write!(f, "has no program to run"),
            Failure::NotStarted(why) => write!(f, "cannot be started: {why}"),
            Failure::Lost(why) => write!(f, "failed: {why}"),
            Failure::Exited { code, errors, .. } => write!(f, "exited {code}{}", said(errors)),
            Failure::Signal { name, errors } => write!(f, "was killed by SIG{name}{}", said(errors)),
            Failure::TimedOut(limit) => write!(
                f,
                "was still running after {}: killed with its process group",
                crate::duration::format(*limit)
            ),
            Failure::TooLong => write!(f, "printed more than {} KiB", MAX_OUTPUT / 1024),
            Failure::NotText => write!(f, "printed something that is not UTF-8 text"),
        }
    }
}

/// What a program printed, each stream capped.
#[derive(Default)]
struct Kept {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    too_long: bool,
}

impl OutputSink for Kept {
    fn output(&mut self, stream: Stream, data: &[u8]) {
        let (kept, limit) = match stream {
            Stream::Stdout => (&mut self.stdout, MAX_OUTPUT),
            Stream::Stderr => (&mut self.stderr, MAX_ERRORS),
        };
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
        if stream == Stream::Stdout && data.len() > room {
            self.too_long = true;
        }
    }
}

/// Answers of this run, by argv and input.
type Cache = BTreeMap<(Vec<String>, Option<Vec<u8>>), Result<Secret, Failure>>;

static CACHE: Mutex<Cache> = Mutex::new(BTreeMap::new());

/// What `invocation` prints on stdout (whole, untrimmed), from this run's cache or by running
/// it; `known` masks its stderr in a failure. The cache's lock is held while the program runs,
/// so two threads asking for one value start it once.
pub fn output(invocation: Invocation<'_>, known: &[Secret]) -> Result<Secret, Failure> {
    let key = (invocation.argv.to_vec(), invocation.stdin.map(<[u8]>::to_vec));
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(answer) = cache.get(&key) {
        return answer.clone();
    }
    let answer = run(invocation, known);
    cache.insert(key, answer.clone());
    answer
}

/// The values this run's commands printed (each as a secret command's value): known secrets,
/// for masking.
pub fn cached_values() -> Vec<Secret> {
    let cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out: Vec<Secret> = cache.values().filter_map(|answer| answer.as_ref().ok()).map(value).collect();
    out.extend(REMEMBERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned());
    out
}

/// Values taken out of a command's answer (a credential helper's `Secret` inside its JSON):
/// the whole answer alone would not mask the password where it shows up by itself.
static REMEMBERED: Mutex<Vec<Secret>> = Mutex::new(Vec::new());

/// Makes `secret` a known secret of this run (see [`cached_values`]).
pub fn remember(secret: &Secret) {
    let mut remembered = REMEMBERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !remembered.iter().any(|s| s.expose() == secret.expose()) {
        remembered.push(secret.clone());
    }
}

/// A secret command's value: its stdout with one trailing `\n` or `\r\n` removed (what `echo`
/// and most managers add; any other whitespace is part of the value).
pub fn value(stdout: &Secret) -> Secret {
    let text = stdout.expose();
    Secret::new(text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(text))
}

/// Runs `invocation` now (not cached). Usable from synchronous code inside or outside a Tokio
/// runtime: the program is awaited on a runtime of its own, on a thread of its own.
fn run(invocation: Invocation<'_>, known: &[Secret]) -> Result<Secret, Failure> {
    let Some((program, args)) = invocation.argv.split_first() else { return Err(Failure::NoProgram) };
    let spawn = Spawn {
        program: std::ffi::OsStr::new(program),
        args,
        dir: invocation.dir,
        env: None,
        stdin: invocation.stdin,
        detached: true,
    };
    let mut kept = Kept::default();
    let ended = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(crate::hooks::execute(&spawn, invocation.timeout, &mut kept))
                    }
                    Err(e) => Ended::Error(format!("cannot be started: {e}")),
                }
            })
            .join()
            .unwrap_or_else(|_| Ended::Error("cannot be started: its runner stopped".into()))
    });
    let stdout = String::from_utf8(std::mem::take(&mut kept.stdout));
    // Whatever it printed on stdout is masked in its stderr too: a failing program may echo it.
    let mut masks: Vec<Secret> = known.to_vec();
    if let Ok(text) = &stdout {
        masks.push(value(&Secret::new(text.as_str())));
    }
    let errors = || shown(&String::from_utf8_lossy(&kept.stderr), &masks);
    match ended {
        Ended::Exited(0) if kept.too_long => Err(Failure::TooLong),
        Ended::Exited(0) => stdout.map(Secret::new).map_err(|_| Failure::NotText),
        Ended::Exited(code) => {
            Err(Failure::Exited { code, errors: errors(), stdout: Secret::new(stdout.unwrap_or_default()) })
        }
        Ended::Signal(name) => Err(Failure::Signal { name, errors: errors() }),
        Ended::TimedOut(limit) => Err(Failure::TimedOut(limit)),
        Ended::Error(why) => {
            Err(Failure::NotStarted(why.trim_start_matches("cannot be started: ").to_string()))
        }
    }
}

/// Stderr as an error shows it: masked first (so no secret is cut in half and shown in part),
/// then trimmed and cut short, lines joined with ` | `.
pub fn shown(text: &str, masks: &[Secret]) -> String {
    let masked = mask(text, masks);
    let joined: Vec<&str> = masked.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let joined = joined.join(" | ");
    match joined.char_indices().nth(SHOWN_ERRORS) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A script in its own temp dir, and argv that runs it with `args`.
    fn script(body: &str, args: &[&str]) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut argv = vec![path.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        (dir, argv)
    }

    fn ask(argv: &[String], timeout: Duration, known: &[Secret]) -> Result<Secret, Failure> {
        output(Invocation { argv, stdin: None, dir: None, timeout }, known)
    }

    #[test]
    fn one_trailing_newline_is_trimmed_and_nothing_else() {
        let (_d, argv) = script(r#"printf ' v@l ue \n\n'"#, &[]);
        let out = ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap();
        assert_eq!(value(&out).expose(), " v@l ue \n");
        let (_d, argv) = script(r#"printf 'x\r\n'"#, &[]);
        assert_eq!(value(&ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap()).expose(), "x");
        let (_d, argv) = script(r#"printf 'x'"#, &[]);
        assert_eq!(value(&ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap()).expose(), "x");
    }

    #[test]
    fn arguments_are_passed_as_given_without_a_shell() {
        let (_d, argv) = script(r#"printf '%s|' "$@""#, &["a b", "$HOME", "'q'", "*"]);
        assert_eq!(ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap().expose(), "a b|$HOME|'q'|*|");
    }

    #[test]
    fn a_value_is_asked_for_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("count");
        let (_d, argv) = script(r#"echo run >> "$1"; echo secret"#, &[counter.to_str().unwrap()]);
        for _ in 0..3 {
            assert_eq!(value(&ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap()).expose(), "secret");
        }
        assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
    }

    #[test]
    fn a_hanging_program_is_killed_with_what_it_started_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let (_d, argv) = script(r#"sleep 60 & echo $! > "$1"; wait"#, &[pid_file.to_str().unwrap()]);
        let started = std::time::Instant::now();
        let failure = ask(&argv, Duration::from_millis(500), &[]).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        assert!(matches!(failure, Failure::TimedOut(_)), "{failure:?}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "the grandchild still runs: {stat}");
    }

    #[test]
    fn a_failure_shows_stderr_masked_never_stdout() {
        let (_d, argv) = script(
            "echo 'half-value'; echo 'token hunter2 refused' >&2; echo 'half-value again' >&2; exit 3",
            &[],
        );
        let failure = ask(&argv, DEFAULT_TIMEOUT, &[Secret::new("hunter2")]).unwrap_err();
        assert_eq!(failure.to_string(), "exited 3: token *** refused | *** again");
    }

    #[test]
    fn a_missing_program_and_endless_output_are_failures() {
        let argv = vec!["ferry-test-no-such-program".to_string()];
        let failure = ask(&argv, DEFAULT_TIMEOUT, &[]).unwrap_err();
        assert_eq!(failure.to_string(), "cannot be started: No such file or directory (os error 2)");
        let (_d, argv) = script("yes x | head -c 2000000", &[]);
        assert!(matches!(ask(&argv, DEFAULT_TIMEOUT, &[]), Err(Failure::TooLong)));
    }

    #[test]
    fn stdin_is_written_and_the_environment_passed_through() {
        let (_d, argv) = script(r#"cat; printf ' %s' "$PATH""#, &[]);
        let out = output(
            Invocation { argv: &argv, stdin: Some(b"reg:5000"), dir: None, timeout: DEFAULT_TIMEOUT },
            &[],
        )
        .unwrap();
        assert_eq!(out.expose(), format!("reg:5000 {}", std::env::var("PATH").unwrap()));
        // stdin is /dev/null otherwise: `cat` ends at once.
        let (_d, argv) = script("cat; echo done", &[]);
        assert_eq!(ask(&argv, Duration::from_secs(5), &[]).unwrap().expose(), "done\n");
    }

    #[test]
    fn a_command_runs_in_a_session_of_its_own_without_a_terminal() {
        // A session leader (sid = its pid) has no controlling terminal: a prompt on /dev/tty
        // fails at once instead of stopping the program (SIGTTIN) until the timeout.
        let (_d, argv) = script(
            r#"[ "$(cut -d' ' -f6 /proc/$$/stat)" = "$$" ] && echo leader; (: < /dev/tty) 2>/dev/null || echo no-tty"#,
            &[],
        );
        assert_eq!(ask(&argv, Duration::from_secs(5), &[]).unwrap().expose(), "leader\nno-tty\n");
    }

    #[test]
    fn a_remembered_value_is_a_known_secret() {
        remember(&Secret::new("helper-password-7f3a"));
        assert!(cached_values().iter().any(|s| s.expose() == "helper-password-7f3a"));
    }
}
