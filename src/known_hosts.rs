//! OpenSSH `known_hosts` files: strict host-key checking without OpenSSH.
//!
//! ferry must agree with `ssh` about which key a host may present, or operators would trust one
//! tool and not the other. So this reads the same format: comma-separated host patterns with
//! `*`/`?` wildcards and `!` negation, `[host]:port` for other ports, hashed names
//! (`|1|salt|hmac`, HMAC-SHA1, from `HashKnownHosts yes`), `@revoked` keys (always refused), and
//! host names compared case-insensitively. `@cert-authority` lines are skipped (ferry does not
//! accept host certificates). Keys are compared as their algorithm name and base64 blob, so this
//! module needs no SSH library.

use std::path::{Path, PathBuf};

use base64ct::{Base64, Base64Unpadded, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What OpenSSH hashes known_hosts names with (`|1|` entries).
type HmacSha1 = Hmac<Sha1>;

/// A host's public key as known_hosts stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// Algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// The key blob, base64 as in the file.
    pub base64: String,
}

impl HostKey {
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        match Base64::decode_vec(&self.base64) {
            Ok(blob) => format!("SHA256:{}", Base64Unpadded::encode_string(&Sha256::digest(&blob))),
            Err(_) => "SHA256:(invalid key data)".to_string(),
        }
    }

    /// `ALGORITHM SHA256:…`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.algorithm, self.fingerprint())
    }
}

/// What the file says about a host presenting a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is listed for this host.
    Trusted,
    /// The key is marked `@revoked`.
    Revoked,
    /// The host is listed, with other keys: possibly a man in the middle.
    Changed {
        /// The keys the file lists for the host.
        known: Vec<HostKey>,
    },
    /// The host is not in the file.
    Unknown,
}

/// One parsed line.
#[derive(Debug, Clone)]
struct Entry {
    revoked: bool,
    patterns: Vec<String>,
    key: HostKey,
    line: usize,
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    /// The file it was read from.
    pub path: PathBuf,
    entries: Vec<Entry>,
}

/// The name OpenSSH looks up: `host` on port 22, else `[host]:port`.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 { host.to_string() } else { format!("[{host}]:{port}") }
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty one (every host is then unknown).
    pub fn load(path: &Path) -> std::io::Result<KnownHosts> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(KnownHosts::parse(path, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(KnownHosts { path: path.to_path_buf(), entries: Vec::new() })
            }
            Err(e) => Err(e),
        }
    }

    /// Parses the text of a known_hosts file; malformed lines are skipped, as OpenSSH does.
    pub fn parse(path: &Path, text: &str) -> KnownHosts {
        let entries = text.lines().enumerate().filter_map(|(i, line)| parse_line(i + 1, line)).collect();
        KnownHosts { path: path.to_path_buf(), entries }
    }

    /// Checks `key` presented by `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &HostKey) -> Verdict {
        let name = host_name(host, port).to_ascii_lowercase();
        let mut known = Vec::new();
        for entry in self.entries.iter().filter(|e| matches_host(&e.patterns, &name)) {
            if entry.key == *key {
                if entry.revoked {
                    return Verdict::Revoked;
                }
                known.push(entry.key.clone());
            } else if !entry.revoked {
                known.push(entry.key.clone());
            }
        }
        if known.contains(key) {
            Verdict::Trusted
        } else if known.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed { known }
        }
    }

    /// Line numbers of the entries that name `host` on `port`.
    pub fn lines_for(&self, host: &str, port: u16) -> Vec<usize> {
        let name = host_name(host, port).to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|e| !e.revoked && matches_host(&e.patterns, &name))
            .map(|e| e.line)
            .collect()
    }

    /// The key algorithms recorded (and not revoked) for `host` on `port`, each once, in file
    /// order. A connection asks the host for these types only, as OpenSSH does: a host with
    /// an RSA and an Ed25519 key, of which only the RSA one is recorded, then shows the RSA
    /// one instead of being refused as changed. Empty when the host is not in the file.
    pub fn key_types_for(&self, host: &str, port: u16) -> Vec<String> {
        let name = host_name(host, port).to_ascii_lowercase();
        let mut types: Vec<String> = Vec::new();
        for entry in self.entries.iter().filter(|e| !e.revoked && matches_host(&e.patterns, &name)) {
            if !types.contains(&entry.key.algorithm) {
                types.push(entry.key.algorithm.clone());
            }
        }
        types
    }
}

/// `text` (a known_hosts file) without the entries of `host` on `port`, for
/// `ferry trust --replace`: a line naming only that host goes, a line naming it among other
/// hosts loses just that name (plain or hashed), and everything else stays as it was: other
/// hosts, wildcard and negated patterns (they are not this host's own entry), `@revoked` and
/// `@cert-authority` lines, comments.
pub fn without_host(text: &str, host: &str, port: u16) -> String {
    let name = host_name(host, port).to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let split = trimmed.find(char::is_whitespace);
        let kept = match split {
            Some(at) if !trimmed.starts_with(['#', '@']) => {
                let (patterns, rest) = trimmed.split_at(at);
                let all: Vec<&str> = patterns.split(',').collect();
                let others: Vec<&str> = all.iter().copied().filter(|p| !names_exactly(p, &name)).collect();
                if others.len() == all.len() {
                    Some(line.to_string())
                } else if others.is_empty() {
                    None
                } else {
                    Some(format!("{}{rest}", others.join(",")))
                }
            }
            _ => Some(line.to_string()),
        };
        if let Some(kept) = kept {
            out += &kept;
            out.push('\n');
        }
    }
    out
}

/// Whether one pattern names exactly `name` (lower case): the same text, or a hashed name of it.
fn names_exactly(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("|1|") {
        Some(hashed) => hashed_matches(hashed, name),
        None => pattern.to_ascii_lowercase() == name,
    }
}

/// Rewrites the known_hosts file at `path` with `change` applied to its current text, safely
/// against the other writers of the file: under an exclusive `flock` of `PATH.lock` (two
/// `ferry trust` runs never lose each other's keys: each reads the file again under the lock),
/// through a temporary file that is fsynced and then renamed over the file (a reader or a crash
/// sees the old file or the new one, never half of one), and the folder is fsynced so the
/// rename itself is durable.
pub fn update(path: &Path, change: impl FnOnce(&str) -> String) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{file_name}.lock")))?;
    lock.lock()?;
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let text = change(&current);
    let temp = dir.join(format!(".{file_name}.ferry-{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    // The lock file stays (removing it would race with a writer that just opened it); the
    // lock itself goes with `lock`.
    written
}

/// The line to append for `host`/`port` presenting `key`.
pub fn entry_line(host: &str, port: u16, key: &HostKey) -> String {
    format!("{} {} {}", host_name(host, port), key.algorithm, key.base64)
}

fn parse_line(line: usize, text: &str) -> Option<Entry> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let mut fields = text.split_whitespace();
    let mut first = fields.next()?;
    let mut revoked = false;
    if first.starts_with('@') {
        match first {
            "@revoked" => revoked = true,
            _ => return None, // @cert-authority and unknown markers: not host keys
        }
        first = fields.next()?;
    }
    let algorithm = fields.next()?.to_string();
    let base64 = fields.next()?.to_string();
    Base64::decode_vec(&base64).ok()?;
    let patterns = first.split(',').map(str::to_string).collect();
    Some(Entry { revoked, patterns, key: HostKey { algorithm, base64 }, line })
}

/// OpenSSH semantics: a negated match excludes the host whatever else matches.
fn matches_host(patterns: &[String], name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_matches(hashed, name);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if crate::glob::matches_wildcards(&negated.to_ascii_lowercase(), name) {
                return false;
            }
        } else {
            matched |= crate::glob::matches_wildcards(&pattern.to_ascii_lowercase(), name);
        }
    }
    matched
}

/// `salt|hmac` (both base64): HMAC-SHA1 keyed with the salt over the host name, compared in
/// constant time.
fn hashed_matches(hashed: &str, name: &str) -> bool {
    let Some((salt, mac)) = hashed.split_once('|') else { return false };
    let (Ok(salt), Ok(mac)) = (Base64::decode_vec(salt), Base64::decode_vec(mac)) else { return false };
    // HMAC takes a key of any length, so this never fails; a failure would simply not match.
    let Ok(hmac) = HmacSha1::new_from_slice(&salt) else { return false };
    hmac.chain_update(name.as_bytes()).verify_slice(&mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHbmyPwzIbC38Bj2oeKN2H8+xPcJLNCy8zQ8X3m3fq4L";

    fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha1::new_from_slice(key).unwrap();
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    fn key(b: &str) -> HostKey {
        HostKey { algorithm: "ssh-ed25519".into(), base64: b.into() }
    }

    #[test]
    fn plain_ports_wildcards_and_case() {
        let file = format!(
            "web1.Example.com,10.0.0.1 ssh-ed25519 {KEY_A}\n[10.0.0.2]:2222 ssh-ed25519 {KEY_A}\n*.lab ssh-ed25519 {KEY_B}\n"
        );
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.check("WEB1.example.COM", 22, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("10.0.0.1", 22, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("10.0.0.2", 2222, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("10.0.0.2", 22, &key(KEY_A)), Verdict::Unknown, "port matters");
        assert_eq!(kh.check("h1.lab", 22, &key(KEY_B)), Verdict::Trusted);
        assert_eq!(kh.check("10.0.0.1", 22, &key(KEY_B)), Verdict::Changed { known: vec![key(KEY_A)] });
    }

    #[test]
    fn hashed_entries_match_like_openssh() {
        // Made with `ssh-keygen -H` for the host name "10.200.0.11".
        let salt = Base64::encode_string(b"0123456789abcdefghij");
        let mac = Base64::encode_string(&hmac_sha1(b"0123456789abcdefghij", b"10.200.0.11"));
        let file = format!("|1|{salt}|{mac} ssh-ed25519 {KEY_A}\n");
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.check("10.200.0.11", 22, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("10.200.0.12", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn reads_a_line_hashed_by_ssh_keygen() {
        // `ssh-keygen -H` (OpenSSH 9.2) output for "10.200.0.11".
        let file =
            format!("|1|k/BJoQGOchgkX7CA5xImlJMo7Oo=|xCdez3ophyx1njrzfgV4ereDb/w= ssh-ed25519 {KEY_A}\n");
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.check("10.200.0.11", 22, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("10.200.0.12", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn reads_a_hashed_line_with_a_port() {
        // `ssh-keygen -H` (OpenSSH 9.2p1) output for "[127.0.0.11]:2222".
        let file =
            format!("|1|HR7kHQf/3ZWwgnabdGCtlfsexXQ=|gk50eKGUChHSJzVdSr7bt86Ts6k= ssh-ed25519 {KEY_A}\n");
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.check("127.0.0.11", 2222, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("127.0.0.11", 22, &key(KEY_A)), Verdict::Unknown, "port matters");
    }

    #[test]
    fn hashed_entries_that_do_not_fit_never_match() {
        let salt = b"0123456789abcdefghij";
        let mac = hmac_sha1(salt, b"10.200.0.11");
        let encode = |bytes: &[u8]| Base64::encode_string(bytes);
        // A salt longer than SHA-1's block is hashed first (RFC 2104); it must still match.
        let long_salt = [7u8; 100];
        assert!(hashed_matches(
            &format!("{}|{}", encode(&long_salt), encode(&hmac_sha1(&long_salt, b"h"))),
            "h"
        ));
        assert!(hashed_matches(&format!("{}|{}", encode(salt), encode(&mac)), "10.200.0.11"));
        assert!(!hashed_matches(&format!("{}|{}", encode(salt), encode(&mac[..19])), "10.200.0.11"), "short");
        assert!(!hashed_matches(&format!("{}|{}", encode(&salt[1..]), encode(&mac)), "10.200.0.11"), "salt");
        assert!(!hashed_matches(&format!("{}|not base64!", encode(salt)), "10.200.0.11"));
        assert!(!hashed_matches(&encode(salt), "10.200.0.11"), "no mac");
    }

    #[test]
    fn revoked_and_negated() {
        let file =
            format!("@revoked * ssh-ed25519 {KEY_B}\n*,!bad.lab ssh-ed25519 {KEY_A}\n# comment\ngarbage\n");
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.check("any", 22, &key(KEY_B)), Verdict::Revoked);
        assert_eq!(kh.check("any", 22, &key(KEY_A)), Verdict::Trusted);
        assert_eq!(kh.check("bad.lab", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn key_types_are_those_recorded_for_the_host_each_once() {
        let rsa = "AAAAB3NzaC1yc2EAAAADAQAB";
        let file = format!(
            "h1 ssh-rsa {rsa}\nh1,h2 ssh-rsa {rsa}\nh2 ssh-ed25519 {KEY_A}\n@revoked h1 ssh-ed25519 {KEY_B}\n"
        );
        let kh = KnownHosts::parse(Path::new("k"), &file);
        assert_eq!(kh.key_types_for("h1", 22), ["ssh-rsa"]);
        assert_eq!(kh.key_types_for("h2", 22), ["ssh-rsa", "ssh-ed25519"]);
        assert!(kh.key_types_for("h3", 22).is_empty());
        assert!(kh.key_types_for("h1", 2222).is_empty(), "port matters");
    }

    #[test]
    fn replace_removes_only_that_hosts_own_entries() {
        let salt = b"0123456789abcdefghij";
        let hashed = |name: &str| {
            format!(
                "|1|{}|{}",
                Base64::encode_string(salt),
                Base64::encode_string(&hmac_sha1(salt, name.as_bytes()))
            )
        };
        let file = format!(
            "# fleet\n\
             10.0.0.1 ssh-ed25519 {KEY_A}\n\
             10.0.0.1,10.0.0.2  ssh-ed25519 {KEY_A} shared\n\
             web,10.0.0.1 ssh-ed25519 {KEY_B}\n\
             {h1} ssh-ed25519 {KEY_A}\n\
             {h2} ssh-ed25519 {KEY_B}\n\
             10.0.0.* ssh-ed25519 {KEY_B}\n\
             [10.0.0.1]:2222 ssh-ed25519 {KEY_B}\n\
             @revoked 10.0.0.1 ssh-ed25519 {KEY_B}\n\
             10.0.0.3 ssh-ed25519 {KEY_B}\n",
            h1 = hashed("10.0.0.1"),
            h2 = hashed("10.0.0.2"),
        );
        let out = without_host(&file, "10.0.0.1", 22);
        let expected = format!(
            "# fleet\n\
             10.0.0.2  ssh-ed25519 {KEY_A} shared\n\
             web ssh-ed25519 {KEY_B}\n\
             {h2} ssh-ed25519 {KEY_B}\n\
             10.0.0.* ssh-ed25519 {KEY_B}\n\
             [10.0.0.1]:2222 ssh-ed25519 {KEY_B}\n\
             @revoked 10.0.0.1 ssh-ed25519 {KEY_B}\n\
             10.0.0.3 ssh-ed25519 {KEY_B}\n",
            h2 = hashed("10.0.0.2"),
        );
        assert_eq!(out, expected);
        let kh = KnownHosts::parse(Path::new("k"), &out);
        assert_eq!(
            kh.check("10.0.0.2", 22, &key(KEY_A)),
            Verdict::Trusted,
            "the shared line still trusts 10.0.0.2"
        );
        assert_eq!(kh.check("web", 22, &key(KEY_B)), Verdict::Trusted);
    }

    #[test]
    fn concurrent_updates_lose_nothing_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "# start\n").unwrap();
        std::thread::scope(|scope| {
            for n in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    update(path, |text| {
                        // Widen the window between read and write: without the lock, writers
                        // that read the same text drop each other's lines.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        format!("{text}h{n} ssh-ed25519 {KEY_A}\n")
                    })
                    .unwrap();
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        for n in 0..8 {
            assert!(text.contains(&format!("h{n} ssh-ed25519")), "h{n} lost:\n{text}");
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn fingerprint_is_ssh_keygen_style() {
        assert!(key(KEY_A).fingerprint().starts_with("SHA256:"));
        assert!(!key(KEY_A).fingerprint().ends_with('='));
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202_case_2() {
        let mac = hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }
}
