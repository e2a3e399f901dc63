//! `ferry trust`: first contact with targets, made explicit.
//!
//! Fetches each target's host key (without authenticating), shows its SHA256 fingerprint, and
//! records new keys in the inventory's known_hosts file only after `--yes` or a confirmed
//! prompt. A key that differs from the recorded one is never replaced without
//! `--replace TARGET`: that is what a man in the middle would look like.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use super::{runtime, ssh_options, store};
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::host::endpoint;
use crate::inventory::{Inventory, Target, Transport};
use crate::known_hosts::{self, HostKey, Verdict};
use crate::output::{self, OutputFormat, table};
use crate::records;
use crate::request::Trust;
use crate::select;

use super::run::EXIT_REFUSED;

/// What trust found for one target.
#[derive(Debug, serde::Serialize)]
struct Finding {
    target: String,
    address: String,
    algorithm: Option<String>,
    fingerprint: Option<String>,
    /// `trusted`, `new`, `changed`, `replace`, `revoked`, `error`, `local`.
    state: &'static str,
    error: Option<String>,
    #[serde(skip)]
    key: Option<HostKey>,
    /// The known_hosts file this target's key is checked against and recorded in (the
    /// inventory's, or ssh_config's `UserKnownHostsFile` for it).
    #[serde(skip)]
    file: std::path::PathBuf,
}

/// Runs `ferry trust`.
pub fn run(inventory: &Inventory, args: &Trust, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.reach.environment)?;
    let targets = select::select_environment(inventory, env, &[], &args.reach.limits)?;
    for name in &args.replace {
        if !targets.iter().any(|t| &t.name == name) {
            return Err(Diagnostic::new(format!(
                "--replace {name}: not a target of environment {}",
                env.name
            ))
            .into());
        }
    }
    let options = ssh_options(inventory, args.reach.connect_timeout)?;
    let findings = runtime()?.block_on(fetch_all(inventory, &targets, &options, &args.replace));
    if output == OutputFormat::Json {
        output::print_json(&serde_json::json!({ "schema": 1, "type": "trust", "targets": &findings }))?;
    } else {
        output::print(&render(&findings))?;
    }
    let to_write: Vec<&Finding> = findings.iter().filter(|f| matches!(f.state, "new" | "replace")).collect();
    let refused = findings.iter().any(|f| matches!(f.state, "changed" | "revoked" | "refused"));
    let failed = findings.iter().any(|f| f.state == "error");
    if !to_write.is_empty() {
        if !confirmed(args.yes, to_write.len())? {
            eprintln!("nothing recorded: not confirmed (pass --yes to record without asking)");
            return Ok(EXIT_REFUSED);
        }
        // Each key goes to the file it is checked against: ssh_config may name another one.
        let mut files: Vec<&Path> = to_write.iter().map(|f| f.file.as_path()).collect();
        files.sort();
        files.dedup();
        for file in files {
            let these: Vec<&Finding> = to_write.iter().copied().filter(|f| f.file == file).collect();
            record(file, &these)?;
            let keys: Vec<serde_json::Value> = these
                .iter()
                .map(|f| serde_json::json!({ "target": f.target, "address": f.address, "fingerprint": f.fingerprint, "replaced": f.state == "replace" }))
                .collect();
            let detail = serde_json::json!({ "known_hosts": file, "keys": keys });
            store(inventory)?.append(&crate::audit::Entry {
                run: super::new_deployment_id(),
                command: "trust".into(),
                environment: Some(env.name.clone()),
                targets: these.iter().map(|f| f.target.clone()).collect(),
                ..records::entry(records::Kind::TrustRecorded, &detail)
            })?;
            eprintln!("recorded {} in {}", crate::output::count(these.len(), "host key"), file.display());
        }
    }
    Ok(if refused {
        EXIT_REFUSED
    } else if failed {
        1
    } else {
        0
    })
}

/// Asks one target for its host key and says how it compares with known_hosts.
async fn fetch_one(
    endpoint: crate::ssh::Endpoint,
    local: bool,
    replace: bool,
    options: &crate::ssh::Options,
) -> Finding {
    let mut finding = Finding {
        target: endpoint.name.clone(),
        // Connections check a HostKeyAlias, so the key is recorded (and replaced) under it too.
        address: known_hosts::lookup_name(&endpoint.host, endpoint.port, endpoint.host_key_alias.as_deref()),
        algorithm: None,
        fingerprint: None,
        state: "local",
        error: None,
        key: None,
        file: endpoint.known_hosts(options).path.clone(),
    };
    if local {
        return finding;
    }
    match crate::ssh::fetch_host_key(&endpoint, options).await {
        Ok((key, verdict)) => {
            finding.state = match verdict {
                Verdict::Trusted => "trusted",
                Verdict::Unknown => "new",
                Verdict::Changed { .. } if replace => "replace",
                Verdict::Changed { known } => {
                    let known: Vec<String> = known.iter().map(HostKey::describe).collect();
                    finding.error = Some(format!(
                        "recorded: {}; pass --replace {} if the host was rebuilt",
                        known.join(", "),
                        endpoint.name
                    ));
                    "changed"
                }
                Verdict::Revoked => "revoked",
                // A host under an @cert-authority line is trusted through its CA: trust never
                // records its plain key beside the CA (that would bypass the certificate's
                // checks); the CA line, or the certificate, is what must change.
                Verdict::UntrustedCertificate { reason } => {
                    finding.error = Some(format!(
                        "certificate refused: {reason}; trust records no key for a host under an \
                         @cert-authority line (fix the certificate or the CA line)"
                    ));
                    "refused"
                }
            };
            finding.algorithm = Some(key.algorithm.clone());
            finding.fingerprint = Some(key.fingerprint());
            finding.key = Some(key);
        }
        Err(e) => {
            finding.state = "error";
            finding.error = Some(e.to_string());
        }
    }
    finding
}

async fn fetch_all(
    inventory: &Inventory,
    targets: &[&Target],
    options: &crate::ssh::Options,
    replace: &[String],
) -> Vec<Finding> {
    let parts: Vec<_> = targets
        .iter()
        .map(|t| {
            let endpoint = endpoint(inventory, t).map_err(|e| failed(t.name.clone(), e.to_string()));
            (endpoint, t.transport == Transport::Local, replace.contains(&t.name))
        })
        .collect();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let limits = crate::fanout::Limits::parallel(targets.len());
    let outcomes = crate::fanout::ordered(
        parts,
        limits,
        |_, (endpoint, local, replace)| {
            let options = options.clone();
            async move {
                match endpoint {
                    Ok(endpoint) => fetch_one(endpoint, local, replace, &options).await,
                    Err(finding) => finding,
                }
            }
        },
        |_, _| {},
    )
    .await;
    names
        .into_iter()
        .zip(outcomes)
        .map(|(target, outcome)| outcome.unwrap_or_else(|e| failed(target, e.to_string())))
        .collect()
}

/// The finding for a target that could not be asked at all.
fn failed(target: String, error: String) -> Finding {
    Finding {
        address: String::new(),
        algorithm: None,
        fingerprint: None,
        state: "error",
        error: Some(error),
        key: None,
        file: Default::default(),
        target,
    }
}

fn render(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                f.target.clone(),
                f.address.clone(),
                f.state.to_uppercase(),
                f.algorithm.clone().unwrap_or_default(),
                f.fingerprint.clone().unwrap_or_default(),
                f.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["TARGET", "ADDRESS", "STATE", "KEY", "FINGERPRINT", "DETAIL"], &rows)
}

/// `--yes`, or a `y` typed at a prompt on a terminal; no terminal and no `--yes` is a refusal.
fn confirmed(yes: bool, count: usize) -> Result<bool, Error> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!(
        "Record {}? Compare the fingerprints with the hosts' own (ssh-keygen -lf) first. [y/N] ",
        crate::output::count(count, "host key")
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Appends new keys and replaces changed ones: only the replaced hosts' own entries go (see
/// [`known_hosts::without_host`]); the write is locked, fsynced and atomic
/// ([`known_hosts::update`]).
fn record(path: &Path, findings: &[&Finding]) -> Result<(), Error> {
    known_hosts::update(path, |current| {
        let mut text = current.to_string();
        for f in findings.iter().filter(|f| f.state == "replace") {
            text = known_hosts::without_name(&text, &f.address);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for f in findings {
            if let Some(key) = &f.key {
                text += &known_hosts::entry_line_for(&f.address, key);
                text.push('\n');
            }
        }
        text
    })?;
    Ok(())
}
