//! The replace step as one detached script on the target, so that it survives the runner.
//!
//! Stop the old container → rename it aside → run the new one → gate it → restore the old one
//! or remove it: when these steps ran one by one over the SSH session, a link that dropped or a
//! runner that was killed in the middle could leave a target with no running container. Now
//! the whole step is one script that ferry starts with `setsid`, detached from the session, its
//! output in a private folder `~/.ferry/replace/CONTAINER/` (0700). It restores the old
//! container by itself when the new one fails, and also when nobody collects its result:
//!
//! - ferry follows it by polling its `status` file over the session (a long poll that returns
//!   as soon as a line is added), and every poll touches `seen`, a heartbeat;
//! - once the new container passed its gate, the script waits for ferry's decision (`commit`
//!   once `post_deploy` passed, or `restore`); without one, and with no heartbeat for
//!   [`ABANDON_AFTER`], it restores the old container (or, with none to restore, keeps the new
//!   healthy one) and says so in `status`;
//! - ferry removes the folder once it has read the outcome; an outcome nobody read stays, and the
//!   next `ferry deploy` (which reports it, then clears it) or `ferry status` (which reports it)
//!   reads it.
//!
//! An app behind the proxy (issue 15) gets another script, [`proxied_script`]: the old container
//! is never stopped before the new one serves. The new one starts as `NAME-next` beside it, is
//! gated through the `ferry` network from inside the proxy (plus its HEALTHCHECK), and only after
//! ferry's `commit` (after `post_deploy`; an app without one switches as soon as its gate passes
//! while ferry's heartbeat is fresh) does the script switch the route (one config load), wait for the old
//! upstream's in-flight requests (at most `drain`), stop and remove the old container and rename
//! `NAME-next` to `NAME`. Before the switch, every failure and a missing decision remove the new
//! container and nothing else: the old one was never touched, the route never changed. A stray
//! `NAME-next` (a step killed before it could clean up) is removed when the next step starts.
//!
//! Secrets reach the script through a pipe that it reads once into memory, and `docker run`
//! through another (`--env-file /dev/stdin`): never a file. The script's protocol is one line
//! per event in `status`, parsed by [`parse`].

use std::time::Duration;

use crate::docker::{self, DockerError, Gate, GateResult};
use crate::exec::Capture;
use crate::host::Host;
use crate::shell;

/// With no heartbeat from ferry for this long after the gate passed, the script decides alone.
pub const ABANDON_AFTER: Duration = Duration::from_secs(15);
/// How often ferry touches the heartbeat while it runs `post_deploy` (polls touch it too).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The longest a poll waits on the target for a new line.
const POLL_WAIT_TENTHS: u32 = 20;
/// A poll that does not answer in this time means the link is gone.
const POLL_DEADLINE: Duration = Duration::from_secs(30);
/// How long a bookkeeping command (launch, decide, collect) may take.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// What the records say about the replacement, kept beside its outcome for whoever reads it.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// The app.
    pub app: &'a str,
    /// The environment.
    pub environment: &'a str,
    /// The deployment id.
    pub deployment: &'a str,
    /// The version being deployed.
    pub version: &'a str,
}

/// What the replace step needs on the target.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The name the new container gets.
    pub name: &'a str,
    /// The container to keep aside (by id) and whether it was running.
    pub old: Option<(&'a str, bool)>,
    /// The name the old container is kept under until the new one is healthy.
    pub keep_as: &'a str,
    /// The secrets env file's content, piped into `docker run --env-file /dev/stdin`.
    pub env: Option<&'a [u8]>,
    /// The `docker run` argv.
    pub argv: &'a [String],
    /// The health gate.
    pub gate: Gate<'a>,
    /// Who asked for it.
    pub meta: Meta<'a>,
    /// The proxy's part, for an app behind the proxy: start beside the old one, then switch.
    pub proxy: Option<ProxyStep<'a>>,
    /// The networks the container joins: created where missing right before it is
    /// (see [`crate::netvol`]).
    pub networks: &'a [String],
    /// The named volumes it mounts: created where missing.
    pub volumes: &'a [crate::netvol::Volume],
}

/// What the proxied replace step needs besides [`Request`].
#[derive(Debug, Clone)]
pub struct ProxyStep<'a> {
    /// The new container's alias on the `ferry` network (the route's upstream).
    pub alias: &'a str,
    /// The container's port.
    pub port: u16,
    /// The health path that must answer 2xx through the network.
    pub health: &'a str,
    /// The route table's key (`APP@ENV`): the old upstream is read from its meta file.
    pub key: &'a str,
    /// The line that switches the route in ([`crate::proxy::switch_call`]).
    pub switch: &'a str,
    /// The longest wait for the old upstream's in-flight requests.
    pub drain: Duration,
    /// The app has no `post_deploy`, so there is nothing for ferry to decide after the gate: the
    /// script switches as soon as the gate passes (while ferry's heartbeat is fresh) instead of
    /// waiting a round trip for `commit`. This is most of the switch's cost above the gate.
    pub auto_commit: bool,
}

/// The name the new container runs under beside the old one until the switch.
pub fn next_name(container: &str) -> String {
    format!("{container}-next")
}

/// A replace step that ended with nobody to read its outcome, as a later command finds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leftover {
    /// The deployment that started it.
    pub deployment: String,
    /// The version it deployed.
    pub version: String,
    /// How it ended, in words.
    pub outcome: String,
}

/// How launching went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    /// The script runs; the previous step's unread outcome, if one was there (now cleared).
    Running(Option<Leftover>),
    /// A replace step of another run is still going on there (its deployment id).
    Busy(String),
}

/// One line of the script's `status` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The old container is stopped.
    Stopped,
    /// An error line of the step that failed next.
    Error(String),
    /// A step before `docker run` failed: nothing changed.
    NotStarted(String),
    /// `docker run` failed with this status.
    RunFailed(String),
    /// The new container runs (its id); the gate starts.
    Started(String),
    /// A line of the gate's output.
    Gate(String),
    /// The gate ended: passed or not.
    Gated(bool),
    /// A log line of the failed new container.
    Log(String),
    /// Something worth saying that changes nothing (the old container could not be removed).
    Warning(String),
    /// A step of the proxied replacement worth reporting (switched, drained).
    Step(String),
    /// The route could not be switched (the errors are in the `err` lines before it).
    SwitchFailed,
    /// The step is over.
    Done(Outcome),
}

/// How the step ended on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was changed (stop or rename failed).
    Untouched,
    /// The new container runs; the old one is removed.
    Committed,
    /// The new container is removed, the old one runs again (or, with none, nothing runs).
    Restored,
    /// The new container is removed but the old one could not be brought back.
    RestoreFailed,
    /// Nobody decided in time: the old container was restored by the script itself.
    AbandonedRestored,
    /// Nobody decided in time and the old container could not be brought back.
    AbandonedRestoreFailed,
    /// Nobody decided in time and there was no old container: the new healthy one stays.
    AbandonedKept,
    /// The script is gone without an outcome (killed, or its folder removed by hand).
    Vanished,
    /// Behind the proxy: the new container failed (or was refused) before the switch and was
    /// removed; the old one served throughout.
    Discarded,
    /// Behind the proxy: nobody decided in time, so the new container was removed before any
    /// switch; the old one served throughout.
    AbandonedDiscarded,
}

impl Outcome {
    fn read(word: &str) -> Option<Outcome> {
        Some(match word {
            "untouched" => Outcome::Untouched,
            "committed" => Outcome::Committed,
            "restored" => Outcome::Restored,
            "restore-failed" => Outcome::RestoreFailed,
            "abandoned-restored" => Outcome::AbandonedRestored,
            "abandoned-restore-failed" => Outcome::AbandonedRestoreFailed,
            "abandoned-kept" => Outcome::AbandonedKept,
            "vanished" => Outcome::Vanished,
            "discarded" => Outcome::Discarded,
            "abandoned-discarded" => Outcome::AbandonedDiscarded,
            _ => return None,
        })
    }

    /// What happened, for a report that comes later than the step.
    pub fn describe(&self) -> &'static str {
        match self {
            Outcome::Untouched => "nothing was changed",
            Outcome::Committed => "the new container passed its gate and runs; the old one was removed",
            Outcome::Restored => "the new container failed; the old one runs again",
            Outcome::RestoreFailed => "the new container failed and the old one could not be restored",
            Outcome::AbandonedRestored => {
                "nobody collected the result: the script restored the old container by itself"
            }
            Outcome::AbandonedRestoreFailed => {
                "nobody collected the result and the old container could not be restored"
            }
            Outcome::AbandonedKept => {
                "nobody collected the result: the new container passed its gate and was kept (there was no old one)"
            }
            Outcome::Vanished => "its script ended without an outcome (killed, or its folder removed)",
            Outcome::Discarded => {
                "the new container failed before the switch and was removed; the old one kept serving"
            }
            Outcome::AbandonedDiscarded => {
                "nobody collected the result: the script removed the new container before the switch; the old one kept serving"
            }
        }
    }
}

/// Reads the script's `status` lines (complete lines only).
pub fn parse(text: &str) -> Vec<Line> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    Some(match word {
        "stopped" => Line::Stopped,
        "err" => Line::Error(rest.to_string()),
        "notstarted" => Line::NotStarted(rest.to_string()),
        "runfailed" => Line::RunFailed(rest.to_string()),
        "started" => Line::Started(rest.trim().to_string()),
        "g" => Line::Gate(rest.to_string()),
        "gated" => Line::Gated(rest.trim() == "0"),
        "log" => Line::Log(rest.to_string()),
        "warn" => Line::Warning(rest.to_string()),
        "step" => Line::Step(rest.to_string()),
        "switchfailed" => Line::SwitchFailed,
        "done" => Line::Done(Outcome::read(rest.trim())?),
        "" => return None,
        _ => return None,
    })
}

/// Quotes a value for a script. Values here are names, ids and paths that ferry produced or
/// validated; a NUL (the only thing `quote` refuses) cannot be in them.
fn q(value: &str) -> String {
    shell::quote(value).unwrap_or_else(|_| "''".into())
}

/// The step's folder on the target, as a shell expression.
fn dir(name: &str) -> String {
    format!("\"$HOME/.ferry/replace/\"{}", q(name))
}

/// The script that runs detached; `$1` is its folder.
fn detached_script(request: &Request<'_>, run: &str) -> String {
    let (old, old_running) = request.old.map_or(("", false), |(id, running)| (id, running));
    let (read_env, feed) = match request.env {
        // `printf` is a shell builtin: the values are on no command line.
        Some(_) => ("env=$(cat)\n", "printf '%s\\n' \"$env\" | "),
        None => ("", ""),
    };
    format!(
        "dir=$1; c={name}; old={old}; keep={keep}; old_running={old_running}; abandon={abandon}\n\
         echo $$ > \"$dir/pid\"\n\
         say() {{ printf '%s\\n' \"$*\" >> \"$dir/status\"; }}\n\
         errs() {{ grep -v '^[[:space:]]*$' \"$dir/err\" | tail -n 3 | sed 's/^/err /' >> \"$dir/status\"; }}\n\
         logs() {{ docker logs --tail {lines} \"$c\" 2>&1 | tail -n {lines} | sed 's/^/log /' >> \"$dir/status\"; }}\n\
         restore() {{\n\
           docker rm -f \"$c\" > /dev/null 2>&1\n\
           if [ -z \"$old\" ]; then say \"done $1\"; exit 0; fi\n\
           if docker rename \"$old\" \"$c\" 2> \"$dir/err\" && {{ [ \"$old_running\" = 0 ] || docker start \"$old\" > /dev/null 2> \"$dir/err\"; }}; then\n\
             say \"done $1\"; else errs; say \"done $2\"; fi\n\
           exit 0\n\
         }}\n\
         alive() {{ [ $(( $(date +%s) - $(stat -c %Y \"$dir/seen\" 2>/dev/null || echo 0) )) -lt \"$abandon\" ]; }}\n\
         {read_env}exec < /dev/null\n\
         {ensure}\
         if [ -n \"$old\" ]; then\n\
           docker stop \"$old\" > /dev/null 2> \"$dir/err\" || {{ errs; say 'notstarted cannot stop the old container'; say 'done untouched'; exit 0; }}\n\
           say stopped\n\
           docker rename \"$old\" \"$keep\" 2> \"$dir/err\" || {{ errs; docker start \"$old\" > /dev/null 2>&1; say 'notstarted cannot rename the old container'; say 'done untouched'; exit 0; }}\n\
         fi\n\
         id=$({feed}{run} 2> \"$dir/err\"); rc=$?\n\
         if [ \"$rc\" != 0 ]; then errs; say \"runfailed exit $rc\"; logs; restore restored restore-failed; fi\n\
         say \"started $(printf '%s\\n' \"$id\" | tail -n 1)\"\n\
         ( {gate} ) > \"$dir/gate\" 2>&1; rc=$?\n\
         sed 's/^/g /' \"$dir/gate\" >> \"$dir/status\"; say \"gated $rc\"\n\
         if [ \"$rc\" != 0 ]; then logs; restore restored restore-failed; fi\n\
         while [ ! -s \"$dir/decision\" ] && alive; do sleep 0.2; done\n\
         case $(cat \"$dir/decision\" 2>/dev/null) in\n\
           commit) if [ -n \"$old\" ] && ! docker rm -f \"$old\" > /dev/null 2> \"$dir/err\"; then\n\
                     say \"warn the old container $old could not be removed: $(tail -n 1 \"$dir/err\")\"; fi\n\
                   say 'done committed' ;;\n\
           restore) logs; restore restored restore-failed ;;\n\
           *) if [ -n \"$old\" ]; then restore abandoned-restored abandoned-restore-failed; fi; say 'done abandoned-kept' ;;\n\
         esac\n",
        name = q(request.name),
        old = q(old),
        keep = q(request.keep_as),
        old_running = u8::from(old_running),
        abandon = ABANDON_AFTER.as_secs(),
        lines = docker::LOG_LINES,
        gate = docker::gate_script(request.name, &request.gate),
        ensure = crate::netvol::ensure_script(request.meta.app, request.networks, request.volumes),
    )
}

/// The detached script for an app behind the proxy (see the module docs); `$1` is its folder.
fn proxied_script(request: &Request<'_>, proxy: &ProxyStep<'_>, run: &str) -> String {
    let old = request.old.map_or("", |(id, _)| id);
    let (read_env, feed) = match request.env {
        Some(_) => ("env=$(cat)\n", "printf '%s\\n' \"$env\" | "),
        None => ("", ""),
    };
    let next = next_name(request.name);
    let probe = crate::proxy::gate_probe_script(proxy.alias, proxy.port, proxy.health, 3);
    let timeout = request.gate.timeout.as_secs().max(1);
    // The image's HEALTHCHECK (or health.cmd) after the probe; without either, the probe
    // itself is the check, so no grace period is waited on top.
    let gate = docker::Gate { cmd: Some(request.gate.cmd.unwrap_or(&probe)), ..request.gate.clone() };
    format!(
        "dir=$1; c={name}; next={next}; old={old}; abandon={abandon}; key={key}; drain={drain}; kept=''\n\
         echo $$ > \"$dir/pid\"\n\
         say() {{ printf '%s\\n' \"$*\" >> \"$dir/status\"; }}\n\
         errs() {{ grep -v '^[[:space:]]*$' \"$dir/err\" | tail -n 3 | sed 's/^/err /' >> \"$dir/status\"; }}\n\
         logs() {{ docker logs --tail {lines} \"$next\" 2>&1 | tail -n {lines} | sed 's/^/log /' >> \"$dir/status\"; }}\n\
         discard() {{ docker rm -f \"$next\" > /dev/null 2>&1; say \"done $1\"; exit 0; }}\n\
         alive() {{ [ $(( $(date +%s) - $(stat -c %Y \"$dir/seen\" 2>/dev/null || echo 0) )) -lt \"$abandon\" ]; }}\n\
         {read_env}exec < /dev/null\n\
         {functions}\n\
         if stray=$(docker inspect -f '{{{{index .Config.Labels \"ferry.deployment\"}}}}' \"$next\" 2>/dev/null); then\n\
           if [ -n \"$stray\" ] && grep -qxF \"deployment=$stray\" \"$ferry_proxy_dir/routes/$key.meta\" 2>/dev/null; then\n\
             say \"notstarted $next serves the route (an earlier rename failed): rename it to $c by hand\"; say 'done untouched'; exit 0\n\
           fi\n\
           docker rm -f \"$next\" > /dev/null 2>&1 && say \"warn removed a stray $next (a replace step that ended without cleaning up)\"\n\
         fi\n\
         {ensure}\
         id=$({feed}{run} 2> \"$dir/err\"); rc=$?\n\
         if [ \"$rc\" != 0 ]; then errs; say \"runfailed exit $rc\"; logs; discard discarded; fi\n\
         say \"started $(printf '%s\\n' \"$id\" | tail -n 1)\"\n\
         (\n\
           start=$(date +%s)\n\
           until said=$({probe} 2>&1); do\n\
             [ \"$(docker inspect -f '{{{{.State.Running}}}}' \"$next\" 2>/dev/null)\" = true ] || {{ echo 'gate: the container is not running (it exited)'; exit 1; }}\n\
             [ $(( $(date +%s) - start )) -lt {timeout} ] || {{ echo 'gate: '{health_q}' did not answer 2xx through the proxy network within {timeout}s'; printf '%s\\n' \"$said\" | tail -n 2; exit 1; }}\n\
             sleep {interval:.3}\n\
           done\n\
           ( ferry_gate_start=$start; {gate} )\n\
         ) > \"$dir/gate\" 2>&1; rc=$?\n\
         sed 's/^/g /' \"$dir/gate\" >> \"$dir/status\"; say \"gated $rc\"\n\
         if [ \"$rc\" != 0 ]; then logs; discard discarded; fi\n\
         if [ {auto_commit} = 1 ] && alive; then decision=commit; else\n\
           while [ ! -s \"$dir/decision\" ] && alive; do sleep 0.2; done\n\
           decision=$(cat \"$dir/decision\" 2>/dev/null)\n\
         fi\n\
         case $decision in\n\
           commit) ;;\n\
           restore) logs; discard discarded ;;\n\
           *) [ -z \"$old\" ] || discard abandoned-discarded; kept=1 ;;\n\
         esac\n\
         old_up=$(sed -n 's/^upstream=//p' \"$ferry_proxy_dir/routes/$key.meta\" 2>/dev/null | head -n 1)\n\
         old_port=$(sed -n 's/^port=//p' \"$ferry_proxy_dir/routes/$key.meta\" 2>/dev/null | head -n 1)\n\
         old_ip=$(docker inspect -f '{{{{with index .NetworkSettings.Networks \"ferry\"}}}}{{{{.IPAddress}}}}{{{{end}}}}' \"$c\" 2>/dev/null)\n\
         {switch} > /dev/null 2> \"$dir/err\" || {{ errs; say switchfailed; discard discarded; }}\n\
         say \"step switched the route to {alias}:{port}\"\n\
         if [ -n \"$old_up\" ] && [ \"$old_up\" != {alias_q} ]; then\n\
           {drain_loop}\n\
         fi\n\
         if [ -n \"$old\" ]; then\n\
           docker stop \"$old\" > /dev/null 2> \"$dir/err\" && docker rm \"$old\" > /dev/null 2>> \"$dir/err\" \\\n\
             || say \"warn the old container $old could not be removed: $(tail -n 1 \"$dir/err\")\"\n\
         fi\n\
         docker rename \"$next\" \"$c\" 2> \"$dir/err\" || say \"warn the new container runs as $next: the rename failed: $(tail -n 1 \"$dir/err\")\"\n\
         if [ -n \"$kept\" ]; then say 'done abandoned-kept'; else say 'done committed'; fi\n",
        name = q(request.name),
        next = q(&next),
        old = q(old),
        abandon = ABANDON_AFTER.as_secs(),
        key = q(proxy.key),
        drain = proxy.drain.as_secs().max(1),
        auto_commit = u8::from(proxy.auto_commit),
        lines = docker::LOG_LINES,
        functions = crate::proxy::FUNCTIONS,
        health_q = q(proxy.health),
        interval = request.gate.interval.as_secs_f64().max(0.2),
        gate = docker::gate_script(&next, &gate),
        switch = proxy.switch,
        alias = proxy.alias,
        alias_q = q(proxy.alias),
        port = proxy.port,
        drain_loop = DRAIN_LOOP,
        ensure = crate::netvol::ensure_script(request.meta.app, request.networks, request.volumes),
    )
}

/// The drain after the switch (needs `$old_up`, `$old_port`, `$old_ip`, `$drain`, `say`): waits,
/// at most `$drain` seconds, while the proxy still has requests in flight to the old container.
///
/// Two counts, because neither alone is enough. The admin API's `num_requests` of the old
/// upstream is exact while Caddy lists it, but Caddy drops an upstream from
/// `/reverse_proxy/upstreams` as soon as the loaded config no longer names it, i.e. right at the
/// switch, while the old config still proxies its in-flight requests to it (measured in the
/// lab: slow requests in flight were cut by `docker stop` when only the API was asked). So the
/// loop also counts the proxy's established TCP connections to the old container's address on
/// the `ferry` network (`/proc/net/tcp{,6}` inside the proxy: its own network namespace; an
/// IPv4 peer shows as `HEX:PORT`, also in the IPv4-mapped tcp6 form). The routes turn off
/// keep-alive to the containers ([`crate::proxy::Route::caddy_route`]), so each such connection
/// is a request in flight, not an idle one the old config keeps.
const DRAIN_LOOP: &str = r#"ferry_peer() { printf '%02X%02X%02X%02X:%04X' "$4" "$3" "$2" "$1" "$5"; }
           peer=''; case $old_ip in *.*.*.*) peer=$(IFS=.; ferry_peer $old_ip $old_port) ;; esac
           start=$(date +%s); n=''; k=0
           while [ $(( $(date +%s) - start )) -lt "$drain" ]; do
             n=$(docker exec ferry-proxy wget -q -O - http://localhost:2019/reverse_proxy/upstreams 2>/dev/null | tr '{' '
'                | grep -F ""address":"$old_up:$old_port"" | sed -n 's/.*"num_requests":\([0-9]*\).*//p' | head -n 1)
             k=0; [ -z "$peer" ] || k=$(docker exec ferry-proxy cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -c " [0-9A-F]*$peer 01 ")
             [ "${n:-0}" != 0 ] || [ "${k:-0}" != 0 ] || break
             sleep 0.2
           done
           if [ "${n:-0}" != 0 ] || [ "${k:-0}" != 0 ]; then say "step drain: ${n:-0} requests and ${k:-0} connections still open after ${drain}s"
           else say "step drained after $(( $(date +%s) - start ))s"; fi"#;

/// The command that starts the detached script: it reports (and clears) an earlier step's
/// unread outcome, or refuses while one still runs, then starts the script with `setsid` (its
/// output to a private file, the secrets through a pipe).
fn launcher(request: &Request<'_>) -> Result<String, DockerError> {
    let run = crate::netvol::run_command(request.argv, request.networks, request.proxy.is_some())
        .map_err(|message| DockerError::Failed { step: "docker run", message })?;
    let script = match &request.proxy {
        Some(proxy) => proxied_script(request, proxy, &run),
        None => detached_script(request, &run),
    };
    let meta = format!(
        "app={}\nenvironment={}\ndeployment={}\nversion={}",
        request.meta.app, request.meta.environment, request.meta.deployment, request.meta.version
    );
    let (read_env, feed, stdin) = match request.env {
        Some(_) => ("env=$(cat)\n", "printf '%s\\n' \"$env\" | ", ""),
        None => ("", "", "< /dev/null "),
    };
    Ok(format!(
        "dir={dir}; umask 077; mkdir -p \"$HOME/.ferry/replace\" || exit 1\n\
         if [ -d \"$dir\" ]; then\n\
           if [ -s \"$dir/pid\" ] && kill -0 \"$(cat \"$dir/pid\")\" 2>/dev/null && ! grep -q '^done ' \"$dir/status\" 2>/dev/null; then\n\
             echo '--- busy'; cat \"$dir/meta\"; exit 0\n\
           fi\n\
           echo '--- leftover'; cat \"$dir/meta\"; echo; grep '^done ' \"$dir/status\"; rm -rf \"$dir\"\n\
         fi\n\
         mkdir \"$dir\" && printf '%s\\n' {meta} > \"$dir/meta\" && : > \"$dir/status\" && touch \"$dir/seen\" || exit 1\n\
         {read_env}\
         if command -v setsid > /dev/null; then detach=setsid; else detach=nohup; fi\n\
         {feed}$detach sh -c {script} ferry-replace \"$dir\" {stdin}> \"$dir/log\" 2>&1 &\n\
         echo '--- launched'",
        dir = dir(request.name),
        meta = q(&meta),
        script = q(&script),
    ))
}

/// Starts the replace step on the target, detached from the session.
pub async fn launch(host: &dyn Host, request: &Request<'_>) -> Result<Launched, DockerError> {
    let launcher = launcher(request)?;
    let mut out = Capture::default();
    let status = host.exec(&launcher, request.env, Some(STEP_DEADLINE), &mut out).await?;
    if !status.success() {
        let errors = out.errors();
        let message = if errors.is_empty() { status.to_string() } else { errors };
        return Err(DockerError::Failed { step: "start the replace step", message });
    }
    let text = out.text();
    if let Some((_, busy)) = text.split_once("--- busy\n") {
        return Ok(Launched::Busy(meta_field(busy, "deployment").unwrap_or("?").to_string()));
    }
    let leftover = text
        .split_once("--- leftover\n")
        .map(|(_, rest)| rest.split_once("--- launched").map_or(rest, |(l, _)| l))
        .and_then(leftover_of);
    Ok(Launched::Running(leftover))
}

fn meta_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A leftover from its `meta` lines and `done` line.
fn leftover_of(text: &str) -> Option<Leftover> {
    let outcome = text.lines().find_map(|l| match parse_line(l) {
        Some(Line::Done(outcome)) => Some(outcome),
        _ => None,
    });
    Some(Leftover {
        deployment: meta_field(text, "deployment")?.to_string(),
        version: meta_field(text, "version").unwrap_or("?").to_string(),
        outcome: outcome.map_or("it ended without an outcome (killed?)", |o| o.describe()).to_string(),
    })
}

/// Follows a launched replace step.
#[derive(Debug)]
pub struct Follower {
    name: String,
    /// Bytes of complete lines already read.
    known: usize,
}

impl Follower {
    /// Follows the step of container `name`.
    pub fn new(name: &str) -> Follower {
        Follower { name: name.to_string(), known: 0 }
    }

    /// The lines added since the last call (waits on the target up to two seconds for one);
    /// also the heartbeat.
    pub async fn next(&mut self, host: &dyn Host) -> Result<Vec<Line>, DockerError> {
        let script = format!(
            "dir={dir}; [ -d \"$dir\" ] || {{ echo 'done vanished'; exit 0; }}; touch \"$dir/seen\"\n\
             i=0; while [ \"$(wc -c < \"$dir/status\")\" -le {known} ] && [ $i -lt {POLL_WAIT_TENTHS} ]; do sleep 0.1; i=$((i + 1)); done\n\
             p=$(cat \"$dir/pid\" 2>/dev/null); cat \"$dir/status\"\n\
             if [ -n \"$p\" ] && ! kill -0 \"$p\" 2>/dev/null && ! grep -q '^done ' \"$dir/status\"; then echo 'done vanished'; fi",
            dir = dir(&self.name),
            known = self.known,
        );
        let mut out = Capture::default();
        let status = host.exec(&script, None, Some(POLL_DEADLINE), &mut out).await?;
        if !status.success() {
            return Err(DockerError::Failed { step: "follow the replace step", message: out.errors() });
        }
        let text = out.text();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        if complete.len() < self.known {
            return Ok(parse(complete));
        }
        let new = &complete[self.known..];
        self.known = complete.len();
        Ok(parse(new))
    }

    /// Tells the script to keep the new container (`commit`) or restore the old one.
    pub async fn decide(&self, host: &dyn Host, commit: bool) -> Result<(), DockerError> {
        let word = if commit { "commit" } else { "restore" };
        let script = format!(
            "dir={dir}; printf '%s\\n' {word} > \"$dir/decision.new\" && mv \"$dir/decision.new\" \"$dir/decision\"",
            dir = dir(&self.name)
        );
        sh(host, "decide the replace step", &script).await
    }

    /// Says ferry is still there.
    pub async fn heartbeat(&self, host: &dyn Host) -> Result<(), DockerError> {
        sh(host, "heartbeat", &format!("touch {}/seen", dir(&self.name))).await
    }

    /// Removes the step's folder once its outcome is read.
    pub async fn collect(&self, host: &dyn Host) -> Result<(), DockerError> {
        sh(host, "clear the replace step", &format!("rm -rf {}", dir(&self.name))).await
    }
}

async fn sh(host: &dyn Host, step: &'static str, script: &str) -> Result<(), DockerError> {
    let mut out = Capture::default();
    let status = host.exec(script, None, Some(STEP_DEADLINE), &mut out).await?;
    if status.success() { Ok(()) } else { Err(DockerError::Failed { step, message: out.errors() }) }
}

/// The gate's verdict from the `g` lines of `status`.
pub fn gate_result(passed: bool, lines: &[String]) -> Result<GateResult, DockerError> {
    docker::read_gate(passed, &lines.join("\n"), "exit 1")
}

/// A script listing the finished replace steps of `app` in `environment` on a target, each as
/// `--- step`, its `meta` lines and its `done` line; `clear` removes them once listed.
fn leftovers_script(app: &str, environment: &str, clear: bool) -> String {
    format!(
        "for d in \"$HOME\"/.ferry/replace/*/; do\n\
           [ -f \"$d/meta\" ] && grep -qxF app={app} \"$d/meta\" && grep -qxF environment={env} \"$d/meta\" \
             && grep -q '^done ' \"$d/status\" 2>/dev/null || continue\n\
           echo '--- step'; cat \"$d/meta\"; echo; grep '^done ' \"$d/status\"{clear}\n\
         done; true",
        app = q(app),
        env = q(environment),
        clear = if clear { "; rm -rf \"$d\"" } else { "" },
    )
}

/// [`leftovers_script`] that clears what it lists: for the deployment's first round trip.
pub fn collect_leftovers_script(app: &str, environment: &str) -> String {
    leftovers_script(app, environment, true)
}

/// Reads what [`leftovers_script`] printed.
pub fn parse_leftovers(text: &str) -> Vec<Leftover> {
    text.split("--- step\n").filter(|s| !s.trim().is_empty()).filter_map(leftover_of).collect()
}

/// Removes a stray `NAME-next` of a proxied app on a target (a replace step killed before it
/// could clean up) unless a step for `container` still runs there, or the route points at it
/// (an earlier rename failed: it is what serves). Returns it as a [`Leftover`] (its deployment
/// and version from its labels) when one was removed.
pub async fn remove_stray_next(
    host: &dyn Host,
    app: &str,
    environment: &str,
    container: &str,
) -> Result<Option<Leftover>, DockerError> {
    let next = next_name(container);
    let script = format!(
        "d={dir}; n={n}; meta=\"$HOME/.ferry/proxy/routes/\"{key}.meta\n\
         if [ -s \"$d/pid\" ] && kill -0 \"$(cat \"$d/pid\")\" 2>/dev/null && ! grep -q '^done ' \"$d/status\" 2>/dev/null; then exit 0; fi\n\
         dep=$(docker inspect -f '{{{{index .Config.Labels \"ferry.deployment\"}}}}' \"$n\" 2>/dev/null) || exit 0\n\
         ! grep -qxF \"deployment=$dep\" \"$meta\" 2>/dev/null || exit 0\n\
         ver=$(docker inspect -f '{{{{index .Config.Labels \"ferry.version\"}}}}' \"$n\" 2>/dev/null)\n\
         docker rm -f \"$n\" > /dev/null && printf 'deployment=%s\\nversion=%s\\n' \"$dep\" \"$ver\"",
        dir = dir(container),
        n = q(&next),
        key = q(&crate::proxy::key(app, environment)),
    );
    let mut out = Capture::default();
    let status = host.exec(&script, None, Some(STEP_DEADLINE), &mut out).await?;
    if !status.success() {
        return Err(DockerError::Failed { step: "remove a stray container", message: out.errors() });
    }
    let text = out.text();
    Ok(meta_field(&text, "deployment").map(|deployment| Leftover {
        deployment: deployment.to_string(),
        version: meta_field(&text, "version").unwrap_or("?").to_string(),
        outcome: format!(
            "its new container {next} was left behind before the switch (the step was stopped); removed it now"
        ),
    }))
}

/// The unread outcomes of replace steps of `app` in `environment` on a target, left in place
/// (`status` changes nothing; the next deployment clears them).
pub async fn leftovers(host: &dyn Host, app: &str, environment: &str) -> Result<Vec<Leftover>, DockerError> {
    let mut out = Capture::default();
    host.exec(&leftovers_script(app, environment, false), None, Some(STEP_DEADLINE), &mut out).await?;
    Ok(parse_leftovers(&out.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(argv: &'a [String], env: Option<&'a [u8]>) -> Request<'a> {
        Request {
            name: "web-dev",
            old: Some(("old1", true)),
            keep_as: "web-dev-ferry-old-1",
            env,
            argv,
            gate: Gate {
                cmd: Some("wget -q -O /dev/null http://127.0.0.1/"),
                timeout: Duration::from_secs(5),
                interval: Duration::from_secs(1),
                grace: Duration::from_secs(1),
                since_start: false,
            },
            meta: Meta { app: "web", environment: "dev", deployment: "d1", version: "1.0" },
            proxy: None,
            networks: &[],
            volumes: &[],
        }
    }

    /// `sh -n`: the scripts parse (dash here, as on Debian targets), with and without secrets.
    #[test]
    fn the_launcher_and_the_detached_script_are_valid_sh() {
        let argv: Vec<String> =
            ["docker", "run", "--detach", "--env-file", "/dev/stdin", "--name", "web-dev", "img"]
                .map(String::from)
                .to_vec();
        for env in [None, Some(&b"TOKEN=x"[..])] {
            let request = request(&argv, env);
            let detached = detached_script(&request, &shell::join(&argv).unwrap());
            for script in [launcher(&request).unwrap(), detached] {
                let out = std::process::Command::new("/bin/sh").args(["-n", "-c", &script]).output().unwrap();
                assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // Behind the proxy: the other script, valid too.
        let switch = "ferry_proxy_set web@dev '{}' 'app=web'";
        let proxy = ProxyStep {
            alias: "web-dev-0123",
            port: 8080,
            health: "/up",
            key: "web@dev",
            switch,
            drain: Duration::from_secs(10),
            auto_commit: false,
        };
        for (env, auto_commit) in [(None, false), (Some(&b"TOKEN=x"[..]), true)] {
            let proxy = ProxyStep { auto_commit, ..proxy.clone() };
            let request = Request { proxy: Some(proxy.clone()), ..request(&argv, env) };
            let proxied = proxied_script(&request, &proxy, &shell::join(&argv).unwrap());
            assert!(proxied.contains(switch) && proxied.contains("web-dev-next"));
            for script in [launcher(&request).unwrap(), proxied] {
                let out = std::process::Command::new("/bin/sh").args(["-n", "-c", &script]).output().unwrap();
                assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // With networks and volumes: ensured first, and several networks connected before the start.
        let networks = ["back".to_string(), "cache".to_string()];
        let volumes = [crate::netvol::Volume { name: "data".into(), path: "/data".into() }];
        for proxied in [None, Some(proxy.clone())] {
            let request =
                Request { networks: &networks, volumes: &volumes, proxy: proxied, ..request(&argv, None) };
            let script = launcher(&request).unwrap();
            assert!(
                script.contains("docker volume create") && script.contains("docker network connect"),
                "{script}"
            );
            let out = std::process::Command::new("/bin/sh").args(["-n", "-c", &script]).output().unwrap();
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
        let with_env = launcher(&request(&argv, Some(b"TOKEN=x"))).unwrap();
        assert!(!with_env.contains("TOKEN=x"), "the secrets travel on stdin only");
    }

    #[test]
    fn reads_the_status_protocol() {
        let text = "stopped\nstarted abc\ng gate: healthy (image HEALTHCHECK)\ngated 0\nwarn x y\ndone committed\nbogus\n";
        assert_eq!(
            parse(text),
            [
                Line::Stopped,
                Line::Started("abc".into()),
                Line::Gate("gate: healthy (image HEALTHCHECK)".into()),
                Line::Gated(true),
                Line::Warning("x y".into()),
                Line::Done(Outcome::Committed),
            ]
        );
        let left =
            leftover_of("app=web\nenvironment=dev\ndeployment=d1\nversion=2.0\n\ndone abandoned-restored\n");
        assert_eq!(
            left,
            Some(Leftover {
                deployment: "d1".into(),
                version: "2.0".into(),
                outcome: Outcome::AbandonedRestored.describe().into()
            })
        );
    }

    /// A `docker` for running the proxied script on this machine: it logs its arguments to
    /// `$FAKE/calls`; the gate probe passes once `$FAKE/healthy` exists (made `$FAKE_AFTER`
    /// seconds after the first probe), the image's HEALTHCHECK says `$FAKE_HEALTH`.
    const FAKE_DOCKER: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE/calls"
case "$1 $2" in
  'exec ferry-proxy')
    case "$*" in
      *wget*http://web-dev-*) [ -f "$FAKE/first" ] || { date +%s > "$FAKE/first"; }
        [ $(( $(date +%s) - $(cat "$FAKE/first") )) -ge "$FAKE_AFTER" ] ;;
      *upstreams*) echo '[]' ;;
      *) exit 0 ;;
    esac ;;
  inspect*)
    case "$*" in
      *State.Status*) printf 'running 0 %s\n{}\n' "$FAKE_HEALTH" ;;
      *State.Running*) echo true ;;
      *Health.Log*) echo 'still starting' ;;
      *) exit 1 ;;
    esac ;;
  run*) echo new1 ;;
  *) exit 0 ;;
esac
"#;

    /// Runs the proxied script with the fake `docker`: `old` or none, HEALTHCHECK `health`,
    /// the probe passing after `after` s; nobody decides (the runner is gone). The status lines,
    /// the docker calls, and how long it took.
    fn run_proxied(old: bool, health: &str, after: u32, timeout: u64) -> (String, String, Duration) {
        let fake = tempfile::tempdir().unwrap();
        let bin = fake.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("docker"), FAKE_DOCKER).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", &bin.join("docker").display().to_string()])
            .status()
            .unwrap();
        let dir = fake.path().join("step");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), "").unwrap();
        std::fs::write(dir.join("seen"), "").unwrap();
        // The runner's heartbeat is long gone.
        std::process::Command::new("touch")
            .args(["-d", "@0", &dir.join("seen").display().to_string()])
            .status()
            .unwrap();
        let argv: Vec<String> =
            ["docker", "run", "--detach", "--name", "web-dev-next", "img"].map(String::from).to_vec();
        let route = crate::proxy::Route {
            app: "web".into(),
            environment: "dev".into(),
            host: "web.test".into(),
            path: None,
            port: 8080,
            health: "/up".into(),
            tls: None,
            upstream: "web-dev-0123".into(),
            container: "web-dev".into(),
            deployment: "d1".into(),
            maintenance: None,
        };
        let switch = crate::proxy::switch_call(&route).unwrap();
        let proxy = ProxyStep {
            alias: "web-dev-0123",
            port: 8080,
            health: "/up",
            key: "web@dev",
            switch: &switch,
            drain: Duration::from_secs(1),
            auto_commit: false,
        };
        let base = request(&argv, None);
        let gate = Gate {
            cmd: None,
            timeout: Duration::from_secs(timeout),
            interval: Duration::from_millis(200),
            ..base.gate
        };
        let request =
            Request { old: old.then_some(("old1", true)), gate, proxy: Some(proxy.clone()), ..base };
        let script = proxied_script(&request, &proxy, &shell::join(&argv).unwrap());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let began = std::time::Instant::now();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script, "ferry-replace", &dir.display().to_string()])
            .env("PATH", path)
            .env("HOME", fake.path())
            .env("FAKE", fake.path())
            .env("FAKE_HEALTH", health)
            .env("FAKE_AFTER", after.to_string())
            .output()
            .unwrap();
        let took = began.elapsed();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let calls = std::fs::read_to_string(fake.path().join("calls")).unwrap_or_default();
        (status, calls, took)
    }

    /// A first deploy behind the proxy whose runner is lost after the gate: there is no old
    /// container to fall back on, so the script switches to the healthy new one and keeps it
    /// (as the plain path's `abandoned-kept`) instead of leaving nothing to serve. With an old
    /// container, the new one is removed and the old one serves on.
    #[test]
    fn an_abandoned_first_deploy_behind_the_proxy_keeps_the_healthy_container() {
        let (status, calls, _) = run_proxied(false, "none", 0, 5);
        assert!(status.ends_with("done abandoned-kept\n"), "{status}");
        assert!(status.contains("step switched the route to web-dev-0123:8080\n"), "{status}");
        assert!(calls.contains("rename web-dev-next web-dev"), "{calls}");
        assert!(!calls.contains("rm -f web-dev-next"), "{calls}");

        let (status, calls, _) = run_proxied(true, "none", 0, 5);
        assert!(status.ends_with("done abandoned-discarded\n"), "{status}");
        assert!(!status.contains("switched"), "{status}");
        assert!(calls.contains("rm -f web-dev-next") && !calls.contains("stop old1"), "{calls}");
    }

    /// The gate is the probe and then the image's HEALTHCHECK, both within one timeout: a
    /// probe that passes late leaves the HEALTHCHECK only the rest (not a second timeout).
    #[test]
    fn the_proxied_gate_keeps_within_one_timeout() {
        let (status, _, took) = run_proxied(true, "starting", 3, 4);
        assert!(status.contains("g gate: not healthy after 4s\n"), "{status}");
        assert!(status.ends_with("done discarded\n"), "{status}");
        assert!(took < Duration::from_millis(5800), "the gate took {took:?} with a 4 s timeout");
    }
}
