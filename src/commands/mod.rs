//! One module per subcommand; each wires the pipeline stages together and prints the result.
//!
//! Commands wire stages and hold no logic: planning is [`crate::planning`], what every mutating
//! command shares (confirmation, records, signals, the lock, the event stream) is
//! [`session::Session`], and records are read and written through [`crate::store::Store`]. What
//! is left here is the small wiring several commands share: finding the inventory, its store,
//! the SSH options.

pub mod audit_cmd;
pub mod check;
pub mod deploy;
pub mod diff;
pub mod exec_cmd;
pub mod feed;
pub mod history;
pub mod init;
pub mod lock_cmd;
pub mod logs;
pub mod ls;
pub mod plan;
pub mod promote;
pub mod proxy_cmd;
pub mod prune;
pub mod remove;
pub mod rollback;
pub mod run;
pub mod session;
pub mod state_cmd;
pub mod status;
pub mod trust;
pub mod vars_cmd;
pub mod versions;

use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::{self, Inventory};
use crate::output::OutputFormat;
use crate::request::{Global, Request};

/// Runs a validated request; returns the exit code of a completed command.
pub fn run(global: &Global, request: Request) -> Result<i32, Error> {
    // `init` writes the inventory the other commands read.
    if let Request::Init(r) = &request {
        return init::run(r, global.output);
    }
    let inventory = load_inventory(global.inventory.as_deref())?;
    let output = global.output;
    let shared = shared_store_key(&inventory);
    let result = dispatch(inventory, request, output);
    if let Some(key) = shared {
        report_spooled(&key);
    }
    result
}

/// Runs one command.
fn dispatch(inventory: Inventory, request: Request, output: OutputFormat) -> Result<i32, Error> {
    match request {
        Request::Check(r) => check::run(&inventory, &r, output),
        Request::Plan(r) => plan::run(&inventory, &r, output),
        Request::Vars(r) => vars_cmd::run(&inventory, &r, output),
        Request::Deploy(r) => deploy::run(inventory, &r, output),
        Request::Promote(r) => promote::run(inventory, &r, output),
        Request::Rollback(r) => rollback::run(inventory, &r, output),
        Request::Status(r) => status::run(&inventory, &r, output),
        Request::Remove(r) => remove::run(inventory, &r, output),
        Request::Prune(r) => prune::run(inventory, &r, output),
        Request::Proxy(r) => proxy_cmd::run(inventory, r, output),
        Request::Maintenance(r) => proxy_cmd::maintenance(inventory, r, output),
        Request::Ls => ls::run(&inventory, output),
        // Answered before any inventory is read (see `run`).
        Request::Init(r) => init::run(&r, output),
        Request::Versions(r) => versions::run(&inventory, &r, output),
        Request::Run(r) => run::run(inventory, &r, output),
        Request::Logs(r) => logs::run(&inventory, &r, output),
        Request::Exec(r) => exec_cmd::run(inventory, &r, output),
        Request::Trust(r) => trust::run(&inventory, &r, output),
        Request::History(r) => history::run(&inventory, &r, output),
        Request::Audit(r) => audit_cmd::run(&inventory, &r, output),
        Request::Lock(r) => lock_cmd::run(&inventory, &r, output),
        Request::State(r) => state_cmd::run(&inventory, &r, output),
    }
}

/// Loads `-i FILE`, else `./ferry.toml`, else the only `*.toml` in `./inventories`.
pub fn load_inventory(path: Option<&Path>) -> Result<Inventory, Error> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_inventory()?,
    };
    Ok(Inventory::load(&path)?)
}

fn default_inventory() -> Result<PathBuf, Error> {
    let here = PathBuf::from("ferry.toml");
    if here.is_file() {
        return Ok(here);
    }
    let found: Vec<PathBuf> = std::fs::read_dir("inventories")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Diagnostic::new("no inventory: no ./ferry.toml and no ./inventories/*.toml")
            .help("pass -i FILE or set FERRY_INVENTORY")
            .into()),
        many => Err(Diagnostic::new(format!("{} inventories in ./inventories; which one?", many.len()))
            .help("pass -i FILE or set FERRY_INVENTORY")
            .into()),
    }
}

pub use crate::planning::process_env;

/// The async runtime for commands that reach targets: one worker per core.
///
/// One per process, made on first use: a command that asks the feed, then locks and deploys,
/// or observes targets and then the feed, does it all on the same runtime.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// The SSH options of a run: the inventory's known_hosts and the connect timeout.
pub fn ssh_options(
    inventory: &Inventory,
    connect_timeout: std::time::Duration,
) -> Result<crate::ssh::Options, Error> {
    // Every target's ssh_config resolution is checked before anything connects: a refused
    // directive stops the run here (exit 2) rather than halfway through.
    warn_ssh_config(&crate::host::resolve::check_all(inventory)?);
    let known_hosts = crate::known_hosts::KnownHosts::load(&inventory.defaults.known_hosts).map_err(|e| {
        Diagnostic::new(format!("cannot read {}: {e}", inventory.defaults.known_hosts.display()))
            .help("fix its permissions, or point `known_hosts` in [defaults] at another file")
    })?;
    Ok(crate::ssh::Options { connect_timeout, known_hosts: std::sync::Arc::new(known_hosts) })
}

/// Prints what ssh_config sets that ferry does not apply (once per directive and process).
pub fn warn_ssh_config(reported: &[crate::ssh_config::Reported]) {
    static SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut shown) = SHOWN.lock() else { return };
    for r in reported {
        let line = format!("{}: {}", r.at, r.message);
        if !shown.contains(&line) {
            eprintln!("warning: {line}");
            shown.push(line);
        }
    }
}

/// The state folder: `FERRY_STATE_DIR`, else the inventory's `state_dir`.
pub fn state_dir(inventory: &Inventory) -> std::path::PathBuf {
    process_env("FERRY_STATE_DIR").map_or_else(|| inventory.defaults.state_dir.clone(), Into::into)
}

/// The inventory's records, written as the actor detected from this process: the shared store
/// when `[state] url` (or, without `[state]`, `FERRY_STATE_URL`) names one, else the files in
/// the state folder. A shared store is opened once per process, and refused (before any target
/// is touched) when it cannot be reached or its schema is not this ferry's.
pub fn store(inventory: &Inventory) -> Result<std::sync::Arc<dyn crate::store::Store>, Error> {
    open_store(inventory, crate::store::postgres::Schema::Current)
}

/// [`store`], making or upgrading the shared store's schema first with
/// [`Schema::Migrate`](crate::store::postgres::Schema::Migrate) (`ferry state init`).
pub fn open_store(
    inventory: &Inventory,
    schema: crate::store::postgres::Schema,
) -> Result<std::sync::Arc<dyn crate::store::Store>, Error> {
    use std::sync::{Arc, Mutex};
    let Some((url, from)) = state_url(inventory)? else {
        return Ok(Arc::new(crate::store::FileStore::new(&state_dir(inventory), actor())));
    };
    let key = shared_store_key(inventory).map(|k| k.key).unwrap_or_default();
    let opened = OPENED.get_or_init(Mutex::default);
    if schema != crate::store::postgres::Schema::Migrate
        && let Some(store) = opened.lock().ok().and_then(|o| o.get(&key).cloned())
    {
        return Ok(store);
    }
    tracing::debug!(store = %url.endpoint(), from = %from, "opening the shared store");
    let store = crate::store::postgres::PgStore::open(&url, actor(), &state_dir(inventory), schema)?;
    if store.pushed_from_spool() > 0 {
        eprintln!(
            "note: {} from the local spool {} now in the state store {}",
            crate::output::count(store.pushed_from_spool(), "delayed record"),
            crate::output::are(store.pushed_from_spool()),
            url.endpoint()
        );
    }
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    if let Ok(mut opened) = opened.lock() {
        opened.insert(key, Arc::clone(&store));
    }
    Ok(store)
}

/// Which shared store and state folder [`open_store`] caches a store under, and the spool.
struct SharedKey {
    endpoint: String,
    key: String,
    spool: PathBuf,
}

fn shared_store_key(inventory: &Inventory) -> Option<SharedKey> {
    let (url, _) = state_url(inventory).ok()??;
    let dir = state_dir(inventory);
    Some(SharedKey {
        key: format!("{}/{}", url.endpoint(), dir.display()),
        endpoint: url.endpoint(),
        spool: dir.join("spool.jsonl"),
    })
}

/// Says so when records of this process went to the local spool instead of the shared store.
fn report_spooled(shared: &SharedKey) {
    let Some(opened) = OPENED.get() else { return };
    let spooled = opened.lock().ok().and_then(|o| o.get(&shared.key).map(|s| s.spooled())).unwrap_or(0);
    if spooled > 0 {
        eprintln!(
            "warning: the state store {} was lost during this command: {} {} in the local spool {} (fsynced); the next command that reaches the store pushes them (or `ferry state push`)",
            shared.endpoint,
            crate::output::count(spooled, "record"),
            crate::output::are(spooled),
            crate::diagnostic::display_path(&shared.spool).display()
        );
    }
}

/// The shared stores this process opened, by endpoint and state folder.
static OPENED: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<dyn crate::store::Store>>>,
> = std::sync::OnceLock::new();

/// The shared store's URL and where it came from, when one is set.
fn state_url(inventory: &Inventory) -> Result<Option<(crate::store::state_url::StateUrl, String)>, Error> {
    use crate::store::state_url::StateUrl;
    let (text, from, span) = match &inventory.state_url {
        Some(def) => {
            let secret = crate::vars::read_source(inventory, "[state] url", def, &process_env)?;
            (secret.expose().to_string(), def.source.to_string(), Some(def.span.clone()))
        }
        None => match process_env("FERRY_STATE_URL").filter(|v| !v.trim().is_empty()) {
            Some(text) => (text, "environment variable FERRY_STATE_URL".to_string(), None),
            None => return Ok(None),
        },
    };
    match StateUrl::parse(&text, &process_env) {
        Ok(url) => Ok(Some((url, from))),
        Err(problem) => {
            let diagnostic = Diagnostic::new(format!("the state URL (from {from}): {problem}"));
            let diagnostic = match span {
                Some(span) => diagnostic.at(&inventory.source, span),
                None => diagnostic,
            };
            Err(diagnostic
                .help("write it as postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA.pem")
                .into())
        }
    }
}

/// The inventory's audit log file itself (`ferry audit verify --log`, `ferry audit bench`).
pub fn audit_log(inventory: &Inventory) -> crate::audit::Log {
    crate::audit::Log::new(&state_dir(inventory), actor())
}

/// Who runs this process (user, host, CI job, terminal, cron, systemd or a script).
fn actor() -> crate::audit::Actor {
    use std::io::IsTerminal;
    let terminal = std::io::stdin().is_terminal() || std::io::stderr().is_terminal();
    let under_cron = || crate::audit::cron_ancestor(std::path::Path::new("/proc"), "self").is_some();
    crate::audit::Actor::detect(&process_env, terminal, &under_cron)
}

/// The targets of `env`, in inventory order (locks cover all of them, whatever `--limit` says).
pub fn environment_targets<'a>(
    inventory: &'a Inventory,
    env: &inventory::Environment,
) -> Vec<&'a inventory::Target> {
    env.targets.iter().map(|&i| &inventory.targets[i]).collect()
}

/// A new time-ordered deployment id.
pub fn new_deployment_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// True when the format wants machine output.
pub fn is_json(output: OutputFormat) -> bool {
    output == OutputFormat::Json
}
