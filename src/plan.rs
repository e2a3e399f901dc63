//! Stage 5: the plan, plain data saying exactly what would run on which target.
//!
//! For each target: the final `docker run` argv (template arguments plus the flags ferry manages),
//! its masked display form, and a config hash. The hash covers what defines the running container
//! (the argv without per-deployment labels, the image, and a *keyed* hash of each secret value),
//! so an unchanged deployment is recognised as a no-op on any machine, rotating a secret changes
//! the hash, and the hash reveals nothing about the secret. Version and deployment id are not
//! part of it: the same digest with the same config is the same container, whatever tag was asked.
//!
//! An app behind the proxy (issue 15) also gets `--network ferry`, the `ferry.proxy.host` and
//! `ferry.proxy.path` labels and its route in the hash (changing the route is a change), and a
//! per-deployment `--network-alias` that the hash leaves out: the proxy must be able to tell the
//! new container from the old one while both run, so the alias cannot be the same twice.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::diagnostic::Diagnostic;
use crate::inventory::{Rollout, Route, Target, Transport};
use crate::render::Rendered;
use crate::secret::{Secret, mask};
use crate::shell;
use crate::vars::Secrets;

/// Version of the JSON shape of [`Plan`]; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Where `docker run` reads the secrets env file: its own stdin, a pipe from ferry's channel, so
/// the values never touch the target's disk.
pub const ENV_FILE_STDIN: &str = "/dev/stdin";

/// Where ferry before 0.x wrote the env file on a target (relative to the login directory):
/// records of those deployments still name it, and a rollback to one reads the pipe instead.
const LEGACY_ENV_FILE_DIR: &str = ".ferry/env/";

/// What a deployment would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// The tag requested.
    pub version: String,
    /// The image reference the containers run.
    pub image: String,
    /// The manifest digest, once a feed has resolved it.
    pub digest: Option<String>,
    /// This deployment's id (a time-ordered UUID).
    pub deployment: String,
    /// The environment's rollout policy.
    pub rollout: Rollout,
    /// One entry per selected target, in inventory order.
    pub targets: Vec<TargetPlan>,
    /// Problems that did not stop planning (secrets unavailable under a placeholder policy).
    #[serde(skip)]
    pub problems: Vec<Diagnostic>,
}

/// What runs on one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlan {
    /// Target name.
    pub target: String,
    /// Its address.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// SSH user, when set.
    pub user: Option<String>,
    /// SSH or local.
    pub transport: Transport,
    /// The container name.
    pub container: String,
    /// The full argv, secrets masked (they are never in it; masking is defense in depth).
    pub argv: Vec<String>,
    /// The argv as one shell-quoted line, masked.
    pub display: String,
    /// Hash of what defines the container (see the module docs).
    pub config_hash: String,
    /// Names of the secrets delivered through the env file (values never shown).
    pub secrets: Vec<String>,
    /// The rendered health command, if the app has one.
    pub health_cmd: Option<String>,
    /// The argv without the per-deployment labels, unmasked: what the config hash covers, and
    /// what the audit record keeps so a rollback can run exactly this again.
    #[serde(skip)]
    pub stable_argv: Vec<String>,
    /// The env file with the secret values; never serialized.
    #[serde(skip)]
    pub env_file: Option<EnvFile>,
    /// The unmasked argv for execution (equal to `argv` unless a secret value leaked into it).
    #[serde(skip)]
    pub exec_argv: Vec<String>,
    /// The app's route through the proxy on this target (issue 15); `None`: no proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The container's name on the `ferry` network for this deployment, which the proxy's route
    /// points at (`CONTAINER-SHORTID`); set with `route`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The networks the container joins, created where missing (issue 16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// The named volumes it mounts, created where missing, never removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::netvol::Volume>,
}

/// The secrets env file for one container, sent to `docker run --env-file /dev/stdin` through
/// the channel's stdin.
#[derive(Debug, Clone)]
pub struct EnvFile {
    /// `NAME=value` lines.
    pub content: Secret,
}

/// Inputs for one target's plan besides the rendered template.
#[derive(Debug, Clone)]
pub struct TargetInput<'a> {
    /// The target.
    pub target: &'a Target,
    /// App name.
    pub app: &'a str,
    /// Environment name.
    pub environment: &'a str,
    /// Container name.
    pub container: &'a str,
    /// Image reference.
    pub image: &'a str,
    /// Version requested.
    pub version: &'a str,
    /// Digest, when known.
    pub digest: Option<&'a str>,
    /// Deployment id.
    pub deployment: &'a str,
    /// The environment's secrets.
    pub secrets: &'a Secrets,
    /// Keyed hashes of the secrets, from [`secret_hashes`] (once per plan, not per target).
    pub secret_hashes: &'a BTreeMap<String, String>,
    /// The app's route through the proxy in this environment, if it has one.
    pub route: Option<&'a Route>,
    /// The networks the container joins (besides `ferry` behind the proxy).
    pub networks: &'a [String],
    /// The named volumes it mounts.
    pub volumes: &'a [crate::netvol::Volume],
}

/// The Docker network ferry puts the proxy and every proxied container on.
pub const NETWORK: &str = "ferry";

/// The name of a proxied container on the `ferry` network for one deployment: unique per
/// deployment, so that old and new can run side by side and the route names exactly one.
pub fn alias(container: &str, deployment: &str) -> String {
    let hex: String = deployment.chars().filter(char::is_ascii_hexdigit).collect();
    format!("{container}-{}", &hex[hex.len().saturating_sub(12)..])
}

/// The managed flags of a proxied container that stay the same across deployments.
fn proxy_block(route: &Route) -> [String; 6] {
    [
        "--network".into(),
        NETWORK.into(),
        "--label".into(),
        format!("ferry.proxy.host={}", route.host),
        "--label".into(),
        format!("ferry.proxy.path={}", route.path.as_deref().unwrap_or("")),
    ]
}

/// Where the proxy block goes in a stable argv: after the labels and the managed env file.
fn proxy_at(stable: &[String]) -> usize {
    if stable.get(LABELS_END).is_some_and(|f| f == "--env-file") { LABELS_END + 2 } else { LABELS_END }
}

/// The stable argv with the proxy block of `route` (and only it): a recorded block (from the
/// route of that day) is replaced, since the route is the inventory's today, not the record's.
fn routed(mut stable: Vec<String>, route: Option<&Route>) -> Vec<String> {
    let at = proxy_at(&stable).min(stable.len());
    let recorded = stable.get(at..at + 6).is_some_and(|block| {
        block[0] == "--network"
            && block[1] == NETWORK
            && block[2] == "--label"
            && block[3].starts_with("ferry.proxy.host=")
            && block[4] == "--label"
            && block[5].starts_with("ferry.proxy.path=")
    });
    if recorded {
        stable.drain(at..at + 6);
    }
    if let Some(route) = route {
        stable.splice(at..at, proxy_block(route));
    }
    stable
}

/// The stable argv with today's networks and volumes block ([`crate::netvol::block`]) right
/// after the proxy block: a recorded one is replaced, as the route is (a volume added since the
/// recorded deployment stays mounted after a rollback to it).
fn attached(mut stable: Vec<String>, input: &TargetInput<'_>) -> Vec<String> {
    let at = (proxy_at(&stable) + if input.route.is_some() { 6 } else { 0 }).min(stable.len());
    let recorded = crate::netvol::block_len(&stable[at..]);
    stable.splice(at..at + recorded, crate::netvol::block(input.networks, input.volumes));
    stable
}

/// Builds one target's plan from its rendered template.
pub fn target_plan(input: &TargetInput<'_>, rendered: Rendered) -> TargetPlan {
    let mut stable = managed_prefix(input);
    stable.extend(rendered.args);
    finish(input, stable, rendered.health_cmd)
}

/// The flags ferry manages that do not change per deployment: `docker run --detach --name C`,
/// the `ferry.app` / `ferry.environment` labels and the env file.
fn managed_prefix(input: &TargetInput<'_>) -> Vec<String> {
    let mut argv = vec![
        "docker".to_string(),
        "run".into(),
        "--detach".into(),
        "--name".into(),
        input.container.to_string(),
        "--label".into(),
        format!("ferry.app={}", input.app),
        "--label".into(),
        format!("ferry.environment={}", input.environment),
    ];
    if !input.secrets.is_empty() {
        argv.extend(["--env-file".to_string(), ENV_FILE_STDIN.to_string()]);
    }
    argv
}

/// Checks an argv read back from a record the way a rendered one is checked: ferry's own flags
/// for this container first (the env file optional: secrets may have been added or removed
/// since), then exactly one acceptable `docker run` of the recorded `image`. A record is data
/// from disk; only what ferry itself would have produced is run again.
pub fn check_recorded(input: &TargetInput<'_>, argv: &[String], image: &str) -> Result<(), String> {
    let mut prefix = managed_prefix(input);
    prefix.truncate(LABELS_END);
    let Some(mut rest) = argv.strip_prefix(prefix.as_slice()) else {
        return Err(format!(
            "its argv does not start with ferry's own flags for container {}",
            input.container
        ));
    };
    // The env file: the pipe, or (a record written before it) the file it once was.
    if let [flag, path, after @ ..] = rest
        && flag == "--env-file"
        && (path == ENV_FILE_STDIN || *path == format!("{LEGACY_ENV_FILE_DIR}{}.env", input.container))
    {
        rest = after;
    }
    // The proxy block of the day of the record (its route may differ from today's).
    if let [network, name, l1, host, l2, path, after @ ..] = rest
        && network == "--network"
        && name == NETWORK
        && l1 == "--label"
        && host.starts_with("ferry.proxy.host=")
        && l2 == "--label"
        && path.starts_with("ferry.proxy.path=")
    {
        rest = after;
    }
    // The networks and volumes block of the day of the record (today's replaces it).
    rest = &rest[crate::netvol::block_len(rest)..];
    let words: Vec<shell::Word> = ["docker", "run"]
        .into_iter()
        .map(str::to_string)
        .chain(rest.iter().cloned())
        .enumerate()
        .map(|(offset, text)| shell::Word { text, offset, starts_line: offset == 0 })
        .collect();
    let managed = crate::docker_run::Managed {
        proxied: input.route.is_some(),
        networks: !input.networks.is_empty(),
        volumes: input.volumes,
    };
    crate::docker_run::check(&words, image, &managed).map(|_| ()).map_err(|(_, message, help)| match help {
        Some(help) if input.route.is_some() => format!("{message} ({help})"),
        _ => message,
    })
}

/// Where the labels that change per deployment go in the argv: after the two stable ones.
const LABELS_END: usize = 9;

/// Builds a target's plan from a stable argv (as [`target_plan`] makes it, or as an audit
/// record kept it, for a rollback): adds the per-deployment labels and computes the hash.
pub fn finish(input: &TargetInput<'_>, stable: Vec<String>, health_cmd: Option<String>) -> TargetPlan {
    let stable = attached(routed(piped_env_file(stable), input.route), input);
    let env_file = env_file(input);
    let config_hash = config_hash(input, &stable);
    let mut volatile = vec![format!("ferry.version={}", input.version)];
    if let Some(digest) = input.digest {
        volatile.push(format!("ferry.digest={digest}"));
    }
    volatile.push(format!("ferry.deployment={}", input.deployment));
    volatile.push(format!("ferry.config-hash={config_hash}"));
    let split = LABELS_END.min(stable.len());
    let mut exec_argv = stable[..split].to_vec();
    for label in volatile {
        exec_argv.extend(["--label".to_string(), label]);
    }
    let alias = input.route.map(|_| alias(input.container, input.deployment));
    if let Some(alias) = &alias {
        exec_argv.extend(["--network-alias".to_string(), alias.clone()]);
    }
    exec_argv.extend_from_slice(&stable[split..]);
    let values: Vec<&Secret> = input.secrets.values().map(|s| &s.value).collect();
    let masked =
        |args: &[String]| -> Vec<String> { args.iter().map(|a| mask(a, values.iter().copied())).collect() };
    let argv = masked(&exec_argv);
    let display = shell::join(&argv).unwrap_or_else(|_| argv.join(" "));
    TargetPlan {
        target: input.target.name.clone(),
        host: input.target.host.clone(),
        port: input.target.port,
        user: input.target.user.clone(),
        transport: input.target.transport,
        container: input.container.to_string(),
        argv,
        display,
        config_hash,
        secrets: input.secrets.keys().cloned().collect(),
        health_cmd: health_cmd.map(|c| mask(&c, values.iter().copied())),
        // The argv itself: secrets never enter it by construction (they travel in the env
        // file), and a rollback must run what ran, not its masked display form.
        stable_argv: stable,
        env_file,
        exec_argv,
        route: input.route.cloned(),
        alias,
        networks: input.networks.to_vec(),
        volumes: input.volumes.to_vec(),
    }
}

/// A recorded argv from before secrets went through a pipe names an env file on the target's
/// disk (`--env-file .ferry/env/C.env`, among ferry's managed flags); it reads the pipe now.
fn piped_env_file(mut stable: Vec<String>) -> Vec<String> {
    // The managed `--env-file` comes right after the stable labels (see `managed_prefix`).
    if stable.get(LABELS_END).is_some_and(|flag| flag == "--env-file")
        && let Some(path) = stable.get_mut(LABELS_END + 1)
        && path.starts_with(LEGACY_ENV_FILE_DIR)
    {
        *path = ENV_FILE_STDIN.to_string();
    }
    stable
}

fn env_file(input: &TargetInput<'_>) -> Option<EnvFile> {
    if input.secrets.is_empty() {
        return None;
    }
    let content: String = input.secrets.iter().map(|(k, s)| format!("{k}={}\n", s.value.expose())).collect();
    Some(EnvFile { content: Secret::new(content) })
}

/// SHA-256 over a canonical JSON of the stable argv, the image and keyed secret hashes.
fn config_hash(input: &TargetInput<'_>, stable_argv: &[String]) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        v: u32,
        argv: &'a [String],
        image: &'a str,
        digest: Option<&'a str>,
        secrets: BTreeMap<&'a str, String>,
        // Absent for an app without a proxy: its hash stays what it was before issue 15.
        #[serde(skip_serializing_if = "Option::is_none")]
        route: Option<&'a Route>,
    }
    let secrets = input.secret_hashes.iter().map(|(name, hash)| (name.as_str(), hash.clone())).collect();
    let canonical = Canonical {
        v: 1,
        argv: stable_argv,
        image: input.image,
        digest: input.digest,
        secrets,
        route: input.route,
    };
    // Serializing plain strings and maps cannot fail; an empty fallback would still hash stably.
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}

/// HMAC-SHA256 of each secret value, keyed per app, environment and secret name (and by
/// `FERRY_HASH_KEY` when set), so equal values in different places hash differently and a
/// precomputed table of common passwords is useless.
pub fn secret_hashes(
    app: &str,
    environment: &str,
    secrets: &Secrets,
    hash_key: Option<&[u8]>,
) -> BTreeMap<String, String> {
    let hash = |name: &str, value: &Secret| {
        let mut key = Sha256::new();
        let parts = [
            b"ferry.secret.v1".as_slice(),
            hash_key.unwrap_or_default(),
            app.as_bytes(),
            environment.as_bytes(),
            name.as_bytes(),
        ];
        for part in parts {
            key.update((part.len() as u64).to_be_bytes());
            key.update(part);
        }
        hex(&hmac_sha256(&key.finalize(), value.expose().as_bytes()))
    };
    secrets.iter().map(|(name, s)| (name.clone(), hash(name, &s.value))).collect()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length (a longer one is hashed first): this cannot fail.
    let Ok(mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return [0; 32] };
    mac.chain_update(message).finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    /// A rollback's recorded argv gets today's networks and volumes: the recorded block is
    /// replaced (or one is added to a record from before them), and the record still passes the
    /// check of what ferry would have rendered.
    #[test]
    fn a_recorded_block_is_replaced_by_todays_networks_and_volumes() {
        let target = Target {
            name: "t".into(),
            name_span: 0..0,
            host: "h".into(),
            port: 22,
            user: None,
            identity: None,
            roles: Vec::new(),
            vars: Default::default(),
            transport: Transport::Ssh,
            jump: None,
            spans: Default::default(),
        };
        let (secrets, hashes) = (Secrets::new(), BTreeMap::new());
        let networks = vec!["nv-new".to_string()];
        let volumes = vec![crate::netvol::Volume { name: "data".into(), path: "/data".into() }];
        let input = TargetInput {
            target: &target,
            app: "web",
            environment: "prod",
            container: "web-prod",
            image: "img",
            version: "1",
            digest: None,
            deployment: "d",
            secrets: &secrets,
            secret_hashes: &hashes,
            route: None,
            networks: &networks,
            volumes: &volumes,
        };
        let prefix =
            "docker run --detach --name web-prod --label ferry.app=web --label ferry.environment=prod";
        let today = format!(
            "{prefix} --label ferry.networks=nv-new --network nv-new --label ferry.volumes=data:/data --volume data:/data -p 80:80 img"
        );
        for recorded in [
            format!("{prefix} --label ferry.networks=nv-old --network nv-old -p 80:80 img"),
            format!("{prefix} -p 80:80 img"),
        ] {
            check_recorded(&input, &words(&recorded), "img").unwrap();
            assert_eq!(finish(&input, words(&recorded), None).stable_argv, words(&today), "{recorded}");
        }
        // A record whose template chose a network is refused once the app has `networks`.
        let own = words(&format!("{prefix} --network host img"));
        assert!(check_recorded(&input, &own, "img").unwrap_err().contains("chooses a network"));
    }

    #[test]
    fn a_recorded_env_file_on_disk_becomes_the_pipe_and_nothing_else_changes() {
        let prefix =
            "docker run --detach --name web-prod --label ferry.app=web --label ferry.environment=prod";
        let legacy = words(&format!("{prefix} --env-file .ferry/env/web-prod.env -p 80:8080 img"));
        assert_eq!(piped_env_file(legacy), words(&format!("{prefix} --env-file /dev/stdin -p 80:8080 img")));
        // A template's own --env-file (after the managed flags) is the user's business.
        let own = words(&format!("{prefix} -p 80:8080 --env-file .ferry/env/mine.env img"));
        assert_eq!(piped_env_file(own.clone()), own);
    }
}
