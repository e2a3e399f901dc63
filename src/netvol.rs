//! Networks and volumes of an app (issue 16, part 5): `networks = ["backend"]` and
//! `volumes = { data = "/var/lib/app" }`.
//!
//! Why it is built this way:
//!
//! - They are part of the container's config, so they go into the stable argv (and with it into
//!   the config hash: adding a network replaces the container) as one block that starts with the
//!   `ferry.networks` / `ferry.volumes` labels. A template cannot write `ferry.*` labels, so the
//!   block is recognised without doubt in a recorded argv, and a rollback runs today's block
//!   (like today's proxy route): a volume added since that deployment stays mounted.
//! - A network that already exists with other options (another driver, `--internal`, another
//!   scope) is never recreated: containers may run in it. Before any target changes, a
//!   preflight asks every target about its networks in one round trip ([`preflight`]); a
//!   mismatch anywhere stops the whole run as bad input (exit 2), with nothing created anywhere.
//! - Missing networks and volumes are created on each target inside its replace step, right
//!   before the container is created ([`ensure_script`]): idempotent, labelled
//!   `ferry.managed=true`, `ferry.app=APP`. Volumes are never removed by ferry.
//! - `docker run --network` takes several networks only from API 1.44 (Docker 25); the lab's
//!   engines are 20.10 (API 1.41). A container with more than one network is therefore created
//!   with its first one, connected to the others, then started ([`run_command`]), which every
//!   engine version accepts.

use std::sync::Arc;

use crate::diagnostic::Diagnostic;
use crate::exec::Capture;
use crate::host::Host;
use crate::report::{Event, Events};

/// Docker's own networks: an app joins networks that ferry manages, not these.
pub const PREDEFINED: &[&str] = &["bridge", "host", "none", "default"];

/// The driver, `internal` and scope of every network ferry creates.
pub const DRIVER: &str = "bridge";
/// The scope a `bridge` network has.
pub const SCOPE: &str = "local";

/// Label whose value lists the networks of the block (comma-separated).
const NETWORKS_LABEL: &str = "ferry.networks=";
/// Label whose value lists the block's volumes as `NAME:PATH` (comma-separated).
const VOLUMES_LABEL: &str = "ferry.volumes=";

/// A named volume mounted at an absolute container path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// The volume's name on the target.
    pub name: String,
    /// Where the container sees it.
    pub path: String,
}

/// Why `name` is not a Docker network or volume name, if it is not one: Docker's rule
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (a volume name needs two characters; networks keep the same
/// rule so one list of names fits both).
pub fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!valid).then(|| format!("\"{name}\" is not a valid Docker name"))
}

/// Why `path` cannot be a volume's container path, if it cannot.
pub fn path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!("the container path \"{path}\" is not absolute"));
    }
    if path.trim_end_matches('/').is_empty() {
        return Some("a volume cannot be mounted over the container's root \"/\"".into());
    }
    if path.contains([':', ',']) || path.chars().any(char::is_control) {
        return Some(format!("the container path \"{path}\" contains `:`, `,` or a control character"));
    }
    None
}

/// The same container path however it is written (`/data/` is `/data`).
pub fn same_path(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The managed block of the stable argv: labels naming the networks and volumes, then
/// `--network NAME` for each network and `--volume NAME:PATH` for each volume. Empty when the
/// app has neither (its argv and config hash stay what they were before issue 16).
pub fn block(networks: &[String], volumes: &[Volume]) -> Vec<String> {
    let mut out = Vec::new();
    if !networks.is_empty() {
        out.extend(["--label".to_string(), format!("{NETWORKS_LABEL}{}", networks.join(","))]);
        for n in networks {
            out.extend(["--network".to_string(), n.clone()]);
        }
    }
    if !volumes.is_empty() {
        let list: Vec<String> = volumes.iter().map(|v| format!("{}:{}", v.name, v.path)).collect();
        out.extend(["--label".to_string(), format!("{VOLUMES_LABEL}{}", list.join(","))]);
        for v in volumes {
            out.extend(["--volume".to_string(), format!("{}:{}", v.name, v.path)]);
        }
    }
    out
}

/// The length of a block (as [`block`] writes it) at the start of `argv`; 0 when none is there.
pub fn block_len(argv: &[String]) -> usize {
    let mut at = 0;
    if let [flag, label, ..] = argv
        && flag == "--label"
        && let Some(list) = label.strip_prefix(NETWORKS_LABEL)
    {
        let networks: Vec<&str> = list.split(',').collect();
        let pairs = argv.get(2..2 + 2 * networks.len()).unwrap_or_default();
        if pairs.len() != 2 * networks.len()
            || pairs.chunks(2).zip(&networks).any(|(p, n)| p[0] != "--network" || p[1] != *n)
        {
            return 0;
        }
        at = 2 + pairs.len();
    }
    if let [flag, label, ..] = argv.get(at..).unwrap_or_default()
        && flag == "--label"
        && let Some(list) = label.strip_prefix(VOLUMES_LABEL)
    {
        let volumes: Vec<&str> = list.split(',').collect();
        let start = at + 2;
        let pairs = argv.get(start..start + 2 * volumes.len()).unwrap_or_default();
        if pairs.len() == 2 * volumes.len()
            && pairs.chunks(2).zip(&volumes).all(|(p, v)| p[0] == "--volume" && p[1] == *v)
        {
            at = start + pairs.len();
        }
    }
    at
}

/// The networks and volumes a container's `ferry.networks` and `ferry.volumes` labels name.
pub fn from_labels(networks: Option<&str>, volumes: Option<&str>) -> (Vec<String>, Vec<Volume>) {
    let networks = networks.unwrap_or_default().split(',').filter(|n| !n.is_empty()).map(str::to_string);
    let volumes = volumes.unwrap_or_default().split(',').filter_map(|v| {
        let (name, path) = v.split_once(':')?;
        Some(Volume { name: name.to_string(), path: path.to_string() })
    });
    (networks.collect(), volumes.collect())
}

/// The networks a container's labels name (`ferry.networks`), as a string for messages.
pub fn describe_networks(networks: &[String]) -> String {
    if networks.is_empty() { "none".into() } else { networks.join(", ") }
}

/// The volumes as `NAME:PATH` (as `--volume` writes them) for messages.
pub fn describe_volumes(volumes: &[Volume]) -> String {
    if volumes.is_empty() {
        return "none".into();
    }
    volumes.iter().map(|v| format!("{}:{}", v.name, v.path)).collect::<Vec<_>>().join(", ")
}

/// Quotes a value for a script; names and paths here were validated (no NUL).
fn q(value: &str) -> String {
    crate::shell::quote(value).unwrap_or_else(|_| "''".into())
}

/// The shell command that starts the container of `argv` (a `docker run --detach` argv) and
/// prints its id. With more networks than `docker run` may name (`keep`: 1 for an app whose first
/// network is its own, 0 behind the proxy, whose `ferry` network comes first), it creates the
/// container with the first network, connects it to the others, then starts it.
pub fn run_command(argv: &[String], networks: &[String], behind_proxy: bool) -> Result<String, String> {
    let keep = usize::from(!behind_proxy);
    let later: Vec<&String> = networks.iter().skip(keep).collect();
    if later.is_empty() {
        return crate::shell::join(argv).map_err(|e| e.to_string());
    }
    let mut create: Vec<String> = Vec::with_capacity(argv.len());
    let mut words = argv.iter().enumerate().peekable();
    // Only the `--network` flags of ferry's own block (right after its `ferry.networks` label)
    // move to `docker network connect`: the same words among the container's own arguments
    // after the image are the app's.
    let mut in_block = false;
    while let Some((i, word)) = words.next() {
        match (i, word.as_str()) {
            (1, "run") => create.push("create".into()),
            (2, "--detach") => {}
            (_, "--network") if in_block && words.peek().is_some_and(|(_, n)| later.contains(n)) => {
                words.next();
            }
            (_, "--network") if in_block => {
                create.push(word.clone());
                if let Some((_, n)) = words.next() {
                    create.push(n.clone());
                }
            }
            _ => {
                in_block = word.starts_with("ferry.networks=");
                create.push(word.clone());
            }
        }
    }
    let create = crate::shell::join(&create).map_err(|e| e.to_string())?;
    let connect: String =
        later.iter().map(|n| format!(" && docker network connect {} \"$cid\"", q(n))).collect();
    Ok(format!(
        "{{ cid=$({create}) && cid=$(printf '%s\\n' \"$cid\" | tail -n 1){connect} && docker start \"$cid\" > /dev/null && printf '%s\\n' \"$cid\"; }}"
    ))
}

/// Script lines that make sure the networks and volumes exist on the target, creating the
/// missing ones with ferry's labels; a network that exists with other options stops it. It
/// needs `say`, `errs` and `$dir` of the replace scripts, and ends a failed step untouched.
pub fn ensure_script(app: &str, networks: &[String], volumes: &[Volume]) -> String {
    if networks.is_empty() && volumes.is_empty() {
        return String::new();
    }
    let labels = format!("--label ferry.managed=true --label {}", q(&format!("ferry.app={app}")));
    let mut out = String::new();
    for n in networks {
        out += &format!(
            "n={n}; o=$(docker network inspect -f {INSPECT} \"$n\" 2> /dev/null) && [ \"${{o%% *}}\" = \"$n\" ] \
             || {{ o=; docker network create --driver {DRIVER} {labels} \"$n\" > /dev/null 2> \"$dir/err\"; }} \
             || {{ o=$(docker network inspect -f {INSPECT} \"$n\" 2>> \"$dir/err\") && [ \"${{o%% *}}\" = \"$n\" ]; }} \
             || {{ errs; say \"notstarted cannot create network $n\"; say 'done untouched'; exit 0; }}\n\
             o=${{o#\"$n \"}}; case ${{o:-{DRIVER} false {SCOPE}}} in '{DRIVER} false {SCOPE}') ;; *) say \"notstarted network $n exists with other options ($o)\"; say 'done untouched'; exit 0 ;; esac\n",
            n = q(n),
        );
    }
    for v in volumes {
        out += &format!(
            "v={v}; docker volume inspect \"$v\" > /dev/null 2>&1 \
             || docker volume create {labels} \"$v\" > /dev/null 2> \"$dir/err\" \
             || {{ errs; say \"notstarted cannot create volume $v\"; say 'done untouched'; exit 0; }}\n",
            v = q(&v.name),
        );
    }
    out
}

/// What the preflight found of one network or volume on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A network with its driver, `internal` and scope.
    Network {
        /// Its name.
        name: String,
        /// Its driver.
        driver: String,
        /// `true` or `false`.
        internal: String,
        /// `local`, `swarm`, `global`.
        scope: String,
    },
    /// A network or volume that is not there (ferry creates it).
    Missing {
        /// `network` or `volume`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A volume that is there (used as is).
    Volume(String),
    /// Docker could not say (the message's last line).
    Unknown {
        /// The network's name.
        name: String,
        /// What docker said.
        error: String,
    },
}

impl Found {
    /// What differs from the network ferry would create, if this is a network that differs.
    pub fn differs(&self) -> Option<String> {
        let Found::Network { driver, internal, scope, .. } = self else { return None };
        let mut what = Vec::new();
        if driver != DRIVER {
            what.push(format!("driver {driver} (ferry: {DRIVER})"));
        }
        if internal != "false" {
            what.push(format!("internal {internal} (ferry: false)"));
        }
        if scope != SCOPE {
            what.push(format!("scope {scope} (ferry: {SCOPE})"));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// What `docker network inspect` prints for a network: its name first, because Docker also
/// finds a network by a prefix of its id, so `db` could name a foreign network whose id starts
/// with `db`: only a network whose name is the one asked for counts as it.
const INSPECT: &str = "'{{.Name}} {{.Driver}} {{.Internal}} {{.Scope}}'";

/// The preflight's script: one line per network and volume (read by [`parse_preflight`]).
pub fn preflight_script(networks: &[String], volumes: &[Volume]) -> String {
    let names = |list: Vec<&str>| list.iter().map(|n| q(n)).collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    if !networks.is_empty() {
        out += &format!(
            "for n in {}; do\n\
               if o=$(docker network inspect -f {INSPECT} \"$n\" 2>&1); then\n\
                 if [ \"${{o%% *}}\" = \"$n\" ]; then echo \"network $n ${{o#\"$n \"}}\"; else echo \"network $n missing\"; fi\n\
               else case $o in *'No such network'*|*'not found'*) echo \"network $n missing\" ;; *) echo \"unknown $n $(printf '%s\\n' \"$o\" | tail -n 1)\" ;; esac; fi\n\
             done\n",
            names(networks.iter().map(String::as_str).collect())
        );
    }
    if !volumes.is_empty() {
        out += &format!(
            "for v in {}; do if docker volume inspect \"$v\" > /dev/null 2>&1; then echo \"volume $v\"; else echo \"volume $v missing\"; fi; done\n",
            names(volumes.iter().map(|v| v.name.as_str()).collect())
        );
    }
    out + "true"
}

/// Reads what [`preflight_script`] printed; unknown lines are ignored.
pub fn parse_preflight(text: &str) -> Vec<Found> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.splitn(3, ' ');
            let (kind, name, rest) = (words.next()?, words.next()?, words.next().unwrap_or(""));
            let name = name.to_string();
            Some(match (kind, rest) {
                ("network", "missing") => Found::Missing { kind: "network", name },
                ("network", rest) => {
                    let mut parts = rest.split_whitespace();
                    let (driver, internal, scope) = (parts.next()?, parts.next()?, parts.next()?);
                    Found::Network {
                        name,
                        driver: driver.into(),
                        internal: internal.into(),
                        scope: scope.into(),
                    }
                }
                ("volume", "missing") => Found::Missing { kind: "volume", name },
                ("volume", "") => Found::Volume(name),
                ("unknown", rest) => Found::Unknown { name, error: rest.to_string() },
                _ => return None,
            })
        })
        .collect()
}

/// The preflight of a deployment: every connected target of `plan` with networks or volumes is
/// asked about them in one round trip (at most `parallel` at once) before any target changes.
/// A network that exists with other options on any target is exit 2 naming every such target
/// and network; what was found otherwise is reported as a step of each target.
pub async fn preflight(
    plan: &crate::plan::Plan,
    connections: &crate::apply::Connections,
    parallel: usize,
    events: &Events,
) -> Result<(), Diagnostic> {
    let items: Vec<(String, String, Arc<dyn Host>)> = plan
        .targets
        .iter()
        .filter(|t| !t.networks.is_empty() || !t.volumes.is_empty())
        .filter_map(|t| {
            let host = connections.get(&t.target)?;
            Some((t.target.clone(), preflight_script(&t.networks, &t.volumes), Arc::clone(host)))
        })
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = items.iter().map(|(n, _, _)| n.clone()).collect();
    let outcomes = crate::fanout::ordered(
        items,
        crate::fanout::Limits::parallel(parallel),
        |_, (_, script, host)| async move {
            let mut out = Capture::default();
            let status = host.exec(&script, None, Some(std::time::Duration::from_secs(60)), &mut out).await;
            status.map(|_| out.text()).map_err(|e| e.to_string())
        },
        |_, _| {},
    )
    .await;
    let mut problems: Vec<(String, String, String)> = Vec::new();
    for (target, outcome) in names.iter().zip(outcomes) {
        // A target that cannot answer now fails its own step later; it does not stop the rest.
        let Ok(Ok(text)) = outcome else { continue };
        for found in parse_preflight(&text) {
            let said = match &found {
                Found::Network { name, .. } => match found.differs() {
                    Some(what) => {
                        problems.push((target.clone(), name.clone(), what));
                        continue;
                    }
                    None => format!("network {name} exists"),
                },
                Found::Missing { kind, name } => {
                    format!("{kind} {name} is missing: created before the container")
                }
                Found::Volume(name) => format!("volume {name} exists (used as is)"),
                Found::Unknown { name, error } => format!("network {name}: docker did not say ({error})"),
            };
            let _ = events.send(Event::TargetStep { target: target.clone(), step: said });
        }
    }
    mismatch(&problems).map_or(Ok(()), Err)
}

/// The exit-2 diagnostic for networks that exist with other options: (target, network, what
/// differs) each; `None` when there are none.
fn mismatch(problems: &[(String, String, String)]) -> Option<Diagnostic> {
    let message = match problems {
        [] => return None,
        [(target, name, what)] => format!(
            "network {name} on target {target} exists with {what}; ferry never recreates a network \
             under running containers: nothing was changed on any target"
        ),
        many => {
            let lines: Vec<String> =
                many.iter().map(|(t, n, w)| format!("network {n} on target {t} exists with {w}")).collect();
            format!(
                "{} networks exist with other options than ferry creates; ferry never recreates a \
                 network under running containers: nothing was changed on any target\n  {}",
                many.len(),
                lines.join("\n  ")
            )
        }
    };
    let remove = match problems {
        [(target, name, _)] => format!("on {target}, `docker network rm {name}` once no container uses it"),
        _ => "on each target, `docker network rm NAME` once no container uses it".into(),
    };
    Some(Diagnostic::new(message).help(format!(
        "{remove}, and ferry creates it as it creates its networks (driver {DRIVER}, not internal); \
         or name another network in the app's `networks`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["backend", "nv-data", "a1", "x.y_z"] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", "a", "-x", ".x", "a b", "a/b", "ä1", "a:b"] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(path_problem("/var/lib/app"), None);
        for bad in ["data", "/", "//", "/a:b", "/a,b", "/a\nb"] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_block_is_recognised_exactly_and_nothing_else_is() {
        let volumes = vec![Volume { name: "data".into(), path: "/data".into() }];
        let block = block(&["a".into(), "b".into()], &volumes);
        assert_eq!(
            block.join(" "),
            "--label ferry.networks=a,b --network a --network b --label ferry.volumes=data:/data --volume data:/data"
        );
        let mut argv = block.clone();
        argv.extend(strings("-p 80:80 img"));
        assert_eq!(block_len(&argv), block.len());
        assert_eq!(block_len(&strings("--network a --volume data:/data img")), 0, "a template's own flags");
        assert_eq!(block_len(&strings("--label ferry.networks=a,b --network a img")), 0, "incomplete");
        let only_volumes = super::block(&[], &volumes);
        assert_eq!(block_len(&only_volumes), 4);
        assert!(super::block(&[], &[]).is_empty());
    }

    #[test]
    fn several_networks_are_connected_before_the_start() {
        let argv =
            strings("docker run --detach --name web --label ferry.networks=a,b --network a --network b img");
        let networks = vec!["a".to_string(), "b".to_string()];
        let run = run_command(&argv, &networks, false).unwrap();
        assert!(
            run.starts_with("{ cid=$(docker create --name web --label ferry.networks=a,b --network a img)"),
            "{run}"
        );
        assert!(run.contains("docker network connect b \"$cid\" && docker start"), "{run}");
        let proxied = run_command(&argv, &networks, true).unwrap();
        assert!(proxied.contains("--label ferry.networks=a,b img)"), "{proxied}");
        assert!(proxied.contains("connect a \"$cid\" && docker network connect b"), "{proxied}");
        let one = vec!["a".to_string()];
        assert_eq!(run_command(&argv[..8], &one, false).unwrap(), crate::shell::join(&argv[..8]).unwrap());
        for script in [
            run,
            proxied,
            ensure_script("web", &networks, &[Volume { name: "d1".into(), path: "/d".into() }]),
        ] {
            let script = format!("dir=/tmp; say() {{ :; }}; errs() {{ :; }}\n{script}");
            let out = std::process::Command::new("/bin/sh").args(["-n", "-c", &script]).output().unwrap();
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn reads_the_preflight_and_names_what_differs() {
        let found = parse_preflight(
            "network a bridge false local\nnetwork b bridge true local\nnetwork c missing\n\
             network d macvlan false swarm\nvolume v\nvolume w missing\nunknown e Cannot connect\nbogus\n",
        );
        assert_eq!(found.len(), 7);
        let differs: Vec<Option<String>> = found.iter().map(Found::differs).collect();
        assert_eq!(differs[0], None);
        assert_eq!(differs[1].as_deref(), Some("internal true (ferry: false)"));
        assert_eq!(differs[3].as_deref(), Some("driver macvlan (ferry: bridge), scope swarm (ferry: local)"));
        assert_eq!(found[4], Found::Volume("v".into()));
        assert_eq!(found[5], Found::Missing { kind: "volume", name: "w".into() });
        let script = preflight_script(&["a".into()], &[Volume { name: "v1".into(), path: "/v".into() }]);
        let out = std::process::Command::new("/bin/sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{script}");
    }

    #[test]
    fn a_mismatch_names_the_target_the_network_and_what_to_do() {
        assert!(mismatch(&[]).is_none());
        let one = [("h5".to_string(), "nv-x".to_string(), "internal true (ferry: false)".to_string())];
        let d = mismatch(&one).unwrap();
        assert_eq!(
            d.message,
            "network nv-x on target h5 exists with internal true (ferry: false); ferry never recreates a \
             network under running containers: nothing was changed on any target"
        );
        assert!(d.help.unwrap().starts_with("on h5, `docker network rm nv-x` once no container uses it"));
        let two = [one[0].clone(), ("h6".into(), "nv-y".into(), "driver macvlan (ferry: bridge)".into())];
        let d = mismatch(&two).unwrap();
        assert!(d.message.starts_with("2 networks exist with other options"), "{}", d.message);
        assert!(
            d.message.ends_with("\n  network nv-y on target h6 exists with driver macvlan (ferry: bridge)")
        );
    }

    proptest::proptest! {
        /// Whatever a target prints, reading it never panics.
        #[test]
        fn the_preflight_parser_takes_any_text(text in "\\PC*(\n\\PC*){0,4}") {
            let _ = parse_preflight(&text);
        }

        /// Any argv is read without a panic, and a block made from any valid lists is found
        /// again whole in front of whatever follows.
        #[test]
        fn block_len_finds_exactly_the_block(
            words in proptest::collection::vec("[-a-z.=,:/]{0,12}", 0..10),
            networks in proptest::collection::btree_set("[a-z][a-z0-9-]{1,6}", 0..3),
            volumes in proptest::collection::btree_map("[a-z][a-z0-9-]{1,6}", "/[a-z]{1,6}", 0..3),
        ) {
            let _ = block_len(&words);
            let networks: Vec<String> = networks.into_iter().collect();
            let volumes: Vec<Volume> =
                volumes.into_iter().map(|(name, path)| Volume { name, path }).collect();
            let made = block(&networks, &volumes);
            let mut argv = made.clone();
            argv.extend(["img".to_string()]);
            proptest::prop_assert_eq!(block_len(&argv), made.len());
            let labels = |prefix: &str| made.iter().find_map(|w| w.strip_prefix(prefix).map(str::to_string));
            let read = from_labels(labels(NETWORKS_LABEL).as_deref(), labels(VOLUMES_LABEL).as_deref());
            proptest::prop_assert_eq!(read, (networks, volumes));
        }

        /// Labels of any text are read without a panic.
        #[test]
        fn from_labels_takes_any_text(n in "\\PC*", v in "\\PC*") {
            let _ = from_labels(Some(&n), Some(&v));
        }
    }
}
