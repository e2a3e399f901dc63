//! OpenSSH `known_hosts` files: strict host-key checking without OpenSSH.
//!
//! ferry must agree with `ssh` about which key a host may present, or operators would trust one
//! tool and not the other. So this reads the same format: comma-separated host patterns with
//! `*`/`?` wildcards and `!` negation, `[host]:port` for other ports, hashed names
//! (`|1|salt|hmac`, HMAC-SHA1, from `HashKnownHosts yes`), `@revoked` keys (always refused), and
//! host names compared case-insensitively. Keys are compared as their algorithm name and base64
//! blob.
//!
//! `@cert-authority` lines make a host certificate acceptable (see [`KnownHosts::check_certificate`]),
//! with OpenSSH's rules and no more lenient: the certificate is a host certificate, signed by a CA
//! listed for the host, valid now, without critical options, naming the host exactly among its
//! principals, and neither its key nor its CA is `@revoked`. A certificate that fails is refused;
//! there is no fallback to the plain key (ferry asks for a certificate only when a CA line matches
//! the host, so the plain-key path would find nothing recorded anyway).

use std::path::{Path, PathBuf};

use base64ct::{Base64, Base64Unpadded, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, HashAlg, PublicKey};
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
    /// The host presented a certificate that the file's `@cert-authority` lines do not make
    /// acceptable; `reason` says which rule it broke, with the details an operator needs.
    UntrustedCertificate {
        /// Why, e.g. "it expired at 2020-01-02T00:00:00Z (valid 2020-01-01T00:00:00Z to …)".
        reason: String,
    },
}

/// What a line is: a host key, a revoked key, or a certificate authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// A plain line: this key is the host's.
    Plain,
    /// `@revoked`: this key is refused wherever it shows up for the matching hosts.
    Revoked,
    /// `@cert-authority`: host certificates signed by this key are the hosts' keys.
    CertAuthority,
}

/// One parsed line.
#[derive(Debug, Clone)]
struct Entry {
    marker: Marker,
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
        self.check_name(&host_name(host, port), key)
    }

    /// Checks `key` presented by the host known_hosts calls `name` (see [`lookup_name`]).
    pub fn check_name(&self, name: &str, key: &HostKey) -> Verdict {
        let name = name.to_ascii_lowercase();
        let mut known = Vec::new();
        for entry in self.entries.iter().filter(|e| e.marker != Marker::CertAuthority) {
            if !matches_host(&entry.patterns, &name) {
                continue;
            }
            if entry.key == *key {
                if entry.marker == Marker::Revoked {
                    return Verdict::Revoked;
                }
                known.push(entry.key.clone());
            } else if entry.marker == Marker::Plain {
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
            .filter(|e| e.marker == Marker::Plain && matches_host(&e.patterns, &name))
            .map(|e| e.line)
            .collect()
    }

    /// The key algorithms recorded (and not revoked) for `host` on `port`, each once, in file
    /// order. A connection asks the host for these types only, as OpenSSH does: a host with
    /// an RSA and an Ed25519 key, of which only the RSA one is recorded, then shows the RSA
    /// one instead of being refused as changed. Empty when the host is not in the file.
    pub fn key_types_for(&self, host: &str, port: u16) -> Vec<String> {
        self.key_types_for_name(&host_name(host, port))
    }

    /// [`KnownHosts::key_types_for`] the host known_hosts calls `name` (see [`lookup_name`]).
    pub fn key_types_for_name(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        let mut types: Vec<String> = Vec::new();
        for entry in
            self.entries.iter().filter(|e| e.marker == Marker::Plain && matches_host(&e.patterns, &name))
        {
            if !types.contains(&entry.key.algorithm) {
                types.push(entry.key.algorithm.clone());
            }
        }
        types
    }

    /// True when an `@cert-authority` line matches the host known_hosts calls `name`: only then
    /// is the host asked for a certificate (as OpenSSH does).
    pub fn has_cert_authority_for(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.entries.iter().any(|e| e.marker == Marker::CertAuthority && matches_host(&e.patterns, &name))
    }

    /// The verdict on a host certificate presented by the host known_hosts calls `name`, which
    /// ferry reached as `principal` (its HostName, or HostKeyAlias), at `now` (Unix seconds).
    /// OpenSSH's rules (`sshconnect.c` `check_host_key`, `hostfile.c` `check_key_not_revoked`):
    /// neither the certified key nor the CA is `@revoked` for the host; a host certificate; its
    /// CA is listed by an `@cert-authority` line for the host and its signature verifies; valid
    /// now; no critical options; `principal` is exactly one of its principals (no wildcards).
    pub fn check_certificate(&self, name: &str, principal: &str, cert: &Certificate, now: u64) -> Verdict {
        let refuse = |reason: String| Verdict::UntrustedCertificate { reason };
        let lower = name.to_ascii_lowercase();
        let matching = |marker: Marker| -> Vec<&Entry> {
            self.entries.iter().filter(|e| e.marker == marker && matches_host(&e.patterns, &lower)).collect()
        };
        let (Some(inner), Some(ca)) = (key_of(cert.public_key()), key_of(cert.signature_key())) else {
            return refuse("its key or its CA's key cannot be read".into());
        };
        if matching(Marker::Revoked).iter().any(|e| e.key == inner) {
            return refuse(format!("its key {} is @revoked", inner.describe()));
        }
        if matching(Marker::Revoked).iter().any(|e| e.key == ca) {
            return refuse(format!("its CA {} is @revoked", ca.describe()));
        }
        if cert.cert_type() != CertType::Host {
            return refuse("it is a user certificate, not a host certificate".into());
        }
        let cas = matching(Marker::CertAuthority);
        if cas.is_empty() {
            return refuse(format!("no @cert-authority line names {name}"));
        }
        if !cas.iter().any(|e| e.key == ca) {
            let listed: Vec<String> = cas.iter().map(|e| e.key.describe()).collect();
            return refuse(format!(
                "it is signed by CA {}, but the @cert-authority lines for {name} name {}",
                ca.describe(),
                listed.join(", ")
            ));
        }
        let (after, before) = (cert.valid_after(), cert.valid_before());
        let window = format!("valid from {} to {}", unix_time(after), unix_time(before));
        if now < after {
            return refuse(format!("it is not valid yet ({window}, now {})", unix_time(now)));
        }
        if now >= before {
            return refuse(format!("it has expired ({window}, now {})", unix_time(now)));
        }
        let fingerprint = cert.signature_key().fingerprint(HashAlg::Sha256);
        if cert.validate_at(now, [&fingerprint]).is_err() {
            return refuse(format!("its signature by CA {} does not verify", ca.describe()));
        }
        if !cert.critical_options().is_empty() {
            let names: Vec<&str> = cert.critical_options().keys().map(String::as_str).collect();
            return refuse(format!(
                "it has critical options ({}), which a host certificate must not have",
                names.join(", ")
            ));
        }
        let principals = cert.valid_principals();
        if principals.is_empty() {
            return refuse("it names no principals (a host certificate must name its hosts)".into());
        }
        if !principals.iter().any(|p| p == principal) {
            return refuse(format!("its principals ({}) do not include {principal}", principals.join(", ")));
        }
        Verdict::Trusted
    }
}

/// The name known_hosts knows a host by: its HostKeyAlias as is when it has one (as OpenSSH
/// does, without the port), else `host` on port 22 and `[host]:port` on others.
pub fn lookup_name(host: &str, port: u16, alias: Option<&str>) -> String {
    match alias {
        Some(alias) => alias.to_string(),
        None => host_name(host, port),
    }
}

/// A key as known_hosts writes it (`None` only for key data ssh-key cannot encode).
pub fn key_of(data: &KeyData) -> Option<HostKey> {
    let openssh = PublicKey::new(data.clone(), "").to_openssh().ok()?;
    let mut fields = openssh.split_whitespace();
    Some(HostKey { algorithm: fields.next()?.to_string(), base64: fields.next()?.to_string() })
}

/// Unix seconds as an RFC 3339 UTC time, "forever" for the largest value (OpenSSH's "no end").
fn unix_time(seconds: u64) -> String {
    if seconds == u64::MAX {
        return "forever".into();
    }
    match i64::try_from(seconds).ok().and_then(|s| jiff::Timestamp::from_second(s).ok()) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => format!("{seconds} (Unix time)"),
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
    let mut marker = Marker::Plain;
    if first.starts_with('@') {
        marker = match first {
            "@revoked" => Marker::Revoked,
            "@cert-authority" => Marker::CertAuthority,
            _ => return None, // unknown markers: skipped, as OpenSSH does
        };
        first = fields.next()?;
    }
    let algorithm = fields.next()?.to_string();
    let base64 = fields.next()?.to_string();
    Base64::decode_vec(&base64).ok()?;
    let patterns = first.split(',').map(str::to_string).collect();
    Some(Entry { marker, patterns, key: HostKey { algorithm, base64 }, line })
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

    mod certificates {
        use super::super::*;
        use russh::keys::PrivateKey;
        use russh::keys::ssh_key::certificate::Builder;
        use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};

        const NOW: u64 = 1_800_000_000;

        fn keypair(seed: u8) -> PrivateKey {
            PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])), "").unwrap()
        }

        fn line_key(key: &PrivateKey) -> String {
            key.public_key().to_openssh().unwrap()
        }

        /// A certificate for host key 1, signed by `ca`, with `change` applied to the builder.
        fn cert(ca: &PrivateKey, change: impl FnOnce(&mut Builder)) -> Certificate {
            let host = keypair(1);
            let mut builder =
                Builder::new([9u8; 16], host.public_key().key_data().clone(), NOW - 60, NOW + 3600).unwrap();
            builder.cert_type(CertType::Host).unwrap();
            builder.key_id("h3").unwrap();
            builder.valid_principal("10.200.0.13").unwrap();
            builder.valid_principal("h3").unwrap();
            change(&mut builder);
            builder.sign(ca).unwrap()
        }

        fn with_window(ca: &PrivateKey, after: u64, before: u64) -> Certificate {
            let host = keypair(1);
            let mut builder =
                Builder::new([9u8; 16], host.public_key().key_data().clone(), after, before).unwrap();
            builder.cert_type(CertType::Host).unwrap();
            builder.valid_principal("10.200.0.13").unwrap();
            builder.sign(ca).unwrap()
        }

        fn file(text: &str) -> KnownHosts {
            KnownHosts::parse(Path::new("kh"), text)
        }

        fn reason(verdict: Verdict) -> String {
            match verdict {
                Verdict::UntrustedCertificate { reason } => reason,
                other => panic!("not refused: {other:?}"),
            }
        }

        const NAME: &str = "[10.200.0.13]:2201";

        #[test]
        fn a_valid_certificate_from_a_listed_ca_is_trusted_and_only_for_matching_hosts() {
            let ca = keypair(7);
            let kh =
                file(&format!("@cert-authority [10.200.0.13]:2201,[10.200.0.13]:2202 {}\n", line_key(&ca)));
            assert!(kh.has_cert_authority_for(NAME));
            assert!(!kh.has_cert_authority_for("10.200.0.13"), "port matters");
            assert!(kh.key_types_for_name(NAME).is_empty(), "a CA is no host key");
            assert_eq!(kh.check_certificate(NAME, "10.200.0.13", &cert(&ca, |_| {}), NOW), Verdict::Trusted);
            assert_eq!(kh.check_certificate(NAME, "h3", &cert(&ca, |_| {}), NOW), Verdict::Trusted);
            let host_key = key_of(keypair(1).public_key().key_data()).unwrap();
            assert_eq!(
                kh.check_name(NAME, &host_key),
                Verdict::Unknown,
                "the CA line does not trust the bare key"
            );
            assert!(
                reason(kh.check_certificate("[10.200.0.13]:2203", "10.200.0.13", &cert(&ca, |_| {}), NOW))
                    .starts_with("no @cert-authority line names [10.200.0.13]:2203")
            );
        }

        #[test]
        fn expired_and_not_yet_valid_certificates_are_refused_with_their_window() {
            let ca = keypair(7);
            let kh = file(&format!("@cert-authority {NAME} {}\n", line_key(&ca)));
            let expired = with_window(&ca, 1_577_836_800, 1_577_923_200); // 2020-01-01..02
            assert_eq!(
                reason(kh.check_certificate(NAME, "10.200.0.13", &expired, NOW)),
                "it has expired (valid from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z, now 2027-01-15T08:00:00Z)"
            );
            let later = with_window(&ca, NOW + 10, u64::MAX);
            assert_eq!(
                reason(kh.check_certificate(NAME, "10.200.0.13", &later, NOW)),
                "it is not valid yet (valid from 2027-01-15T08:00:10Z to forever, now 2027-01-15T08:00:00Z)"
            );
            // The end is exclusive, the start inclusive (PROTOCOL.certkeys).
            assert_eq!(kh.check_certificate(NAME, "10.200.0.13", &later, NOW + 10), Verdict::Trusted);
            assert!(
                reason(kh.check_certificate(NAME, "10.200.0.13", &expired, 1_577_923_200))
                    .starts_with("it has expired")
            );
        }

        #[test]
        fn the_name_must_be_exactly_one_of_the_principals() {
            let ca = keypair(7);
            let kh = file(&format!("@cert-authority * {}\n", line_key(&ca)));
            let other = cert(&ca, |_| {});
            assert_eq!(
                reason(kh.check_certificate(NAME, "10.200.0.130", &other, NOW)),
                "its principals (10.200.0.13, h3) do not include 10.200.0.130"
            );
            assert!(
                reason(kh.check_certificate(NAME, "H3", &other, NOW)).contains("do not include H3"),
                "exact"
            );
            let wildcard = {
                let host = keypair(1);
                let mut b = Builder::new([9u8; 16], host.public_key().key_data().clone(), NOW - 60, NOW + 60)
                    .unwrap();
                b.cert_type(CertType::Host).unwrap();
                b.valid_principal("*").unwrap();
                b.sign(&ca).unwrap()
            };
            assert!(
                reason(kh.check_certificate(NAME, "h3", &wildcard, NOW)).contains("(*) do not include h3"),
                "no wildcards"
            );
            let none = {
                let host = keypair(1);
                let mut b = Builder::new([9u8; 16], host.public_key().key_data().clone(), NOW - 60, NOW + 60)
                    .unwrap();
                b.cert_type(CertType::Host).unwrap();
                b.all_principals_valid().unwrap();
                b.sign(&ca).unwrap()
            };
            assert!(
                reason(kh.check_certificate(NAME, "h3", &none, NOW)).starts_with("it names no principals")
            );
        }

        #[test]
        fn user_certificates_critical_options_and_other_cas_are_refused() {
            let ca = keypair(7);
            let kh = file(&format!("@cert-authority * {}\n", line_key(&ca)));
            let user = cert(&ca, |b| {
                b.cert_type(CertType::User).unwrap_err(); // set once already: build a user one below
            });
            assert_eq!(
                kh.check_certificate(NAME, "h3", &user, NOW),
                Verdict::Trusted,
                "the builder refused a second type"
            );
            let user = {
                let host = keypair(1);
                let mut b = Builder::new([9u8; 16], host.public_key().key_data().clone(), NOW - 60, NOW + 60)
                    .unwrap();
                b.cert_type(CertType::User).unwrap();
                b.valid_principal("h3").unwrap();
                b.sign(&ca).unwrap()
            };
            assert_eq!(
                reason(kh.check_certificate(NAME, "h3", &user, NOW)),
                "it is a user certificate, not a host certificate"
            );
            let forced = cert(&ca, |b| {
                b.critical_option("force-command", "true").unwrap();
            });
            assert_eq!(
                reason(kh.check_certificate(NAME, "h3", &forced, NOW)),
                "it has critical options (force-command), which a host certificate must not have"
            );
            let stranger = keypair(8);
            let by_stranger = cert(&stranger, |_| {});
            let r = reason(kh.check_certificate(NAME, "h3", &by_stranger, NOW));
            assert!(r.starts_with("it is signed by CA ssh-ed25519 SHA256:"), "{r}");
            assert!(
                r.contains("but the @cert-authority lines for [10.200.0.13]:2201 name ssh-ed25519 SHA256:"),
                "{r}"
            );
        }

        #[test]
        fn a_revoked_ca_or_certified_key_is_refused() {
            let ca = keypair(7);
            let good = cert(&ca, |_| {});
            let ca_line = format!("@cert-authority * {}\n", line_key(&ca));
            let kh = file(&format!("{ca_line}@revoked * {}\n", line_key(&ca)));
            let r = reason(kh.check_certificate(NAME, "h3", &good, NOW));
            assert!(r.starts_with("its CA ssh-ed25519 SHA256:") && r.ends_with(" is @revoked"), "{r}");
            let kh = file(&format!("{ca_line}@revoked {NAME} {}\n", line_key(&keypair(1))));
            let r = reason(kh.check_certificate(NAME, "h3", &good, NOW));
            assert!(r.starts_with("its key ssh-ed25519 SHA256:") && r.ends_with(" is @revoked"), "{r}");
            let kh = file(&format!("{ca_line}@revoked other {}\n", line_key(&keypair(1))));
            assert_eq!(
                kh.check_certificate(NAME, "h3", &good, NOW),
                Verdict::Trusted,
                "revoked for another host"
            );
        }

        #[test]
        fn a_forged_signature_is_refused() {
            let ca = keypair(7);
            let kh = file(&format!("@cert-authority * {}\n", line_key(&ca)));
            let good = cert(&ca, |_| {});
            // Same fields, the principal list changed after signing: the CA's signature no longer fits.
            let mut bytes = good.to_bytes().unwrap();
            let at = bytes.windows(2).rposition(|w| w == b"h3").unwrap();
            bytes[at + 1] = b'4';
            let forged = Certificate::from_bytes(&bytes).unwrap();
            assert_eq!(forged.valid_principals(), ["10.200.0.13", "h4"]);
            let r = reason(kh.check_certificate(NAME, "h4", &forged, NOW));
            assert!(
                r.starts_with("its signature by CA ssh-ed25519 SHA256:") && r.ends_with(" does not verify"),
                "{r}"
            );
        }
    }
}
