//! The proxy on each target: Caddy in a container (`ferry-proxy`), its route table, and the
//! scripts that change it.
//!
//! Why Caddy: a zero-downtime switch needs a proxy that loads a new configuration gracefully
//! (in-flight requests finish on the old one, new ones take the new one; with the kernel's
//! help, see [`MIGRATE_SYSCTL`], no connection is refused or reset),
//! can be driven without an agent, and is maintained by others. Caddy does all of it from one
//! static binary: a JSON config loaded in one step (`caddy reload`), an admin API that tells how
//! many requests an upstream still serves (the drain), active health checks, and automatic TLS
//! (its own internal CA, or ACME). ferry runs no proxy code of its own.
//!
//! Why the route table lives in files on the target (`~/.ferry/proxy/routes/APP@ENV.route.json`
//! and `APP@ENV.meta`): the target must be able to rebuild its whole configuration alone. A
//! runner that dies mid-deploy, a proxy container that is recreated (`ferry proxy reboot`, a
//! new image), or a second runner deploying another app on the same host all read the same
//! files, so no app's route is ever lost because another one changed (Kamal #1552). Caddy's own
//! live config is never the record: it is always assembled from the files.
//!
//! Why the assembly is POSIX `sh` (see [`FUNCTIONS`]): the switch runs inside the detached
//! replace script on the target (it must finish when the runner's link drops), so writing a
//! route, assembling `caddy.json` and loading it cannot need ferry. The functions take the
//! lock `~/.ferry/proxy/lock` (`flock`), write every file as tmp + `mv`, and put the previous
//! route files and `caddy.json` back when Caddy refuses the new config, printing Caddy's error.
//!
//! Everything ferry reads back from a target (the meta files, the admin API's upstreams) is
//! parsed strictly: a malformed or unknown meta line makes that route unreadable, reported and
//! never acted upon. The admin API is reached only through `docker exec ferry-proxy` (no admin
//! port is published).
//!
//! The API, for the deploy flow:
//! - [`Route`]: one app's route in one environment; [`Route::validate`], [`Route::caddy_route`],
//!   [`Route::meta`], [`Route::parse_meta`].
//! - [`ensure`] / [`ensure_script`]: network `ferry` and the proxy container, booted on first need.
//! - [`switch`] / [`switch_call`]: write the route and load it (one config load);
//!   [`switch_call`] is the line that a script which embeds [`FUNCTIONS`] runs.
//! - [`remove`], [`maintenance`], [`reboot`], [`read`] (the table and the proxy's state).
//! - [`in_flight`] / [`upstreams_script`] + [`parse_upstreams`]: in-flight requests of an upstream.
//! - [`gate_probe_script`]: the health probe through the `ferry` network from inside the proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::docker::{DockerError, Login};
use crate::exec::Capture;
use crate::host::Host;

/// The Docker network the proxy and every proxied app join.
pub const NETWORK: &str = "ferry";
/// The proxy container's name on every target.
pub const CONTAINER: &str = "ferry-proxy";
/// The proxy image when the inventory names none: the public Caddy 2 image (Alpine: it has the
/// `sh` and `wget` ferry needs inside the proxy).
pub const DEFAULT_IMAGE: &str = "caddy:2";
/// The route table's folder, relative to the target user's home.
pub const ROUTES_DIR: &str = ".ferry/proxy/routes";
/// The default maintenance message, `{app}` replaced by the app's name.
pub const DEFAULT_MESSAGE: &str = "{app} is under maintenance";
/// The longest maintenance message ferry accepts (it is a response body, not a page).
pub const MESSAGE_MAX: usize = 4096;

/// How long a proxy step may take (a pull is not one of them).
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// How long a reboot may take: it pulls the image.
const REBOOT_DEADLINE: Duration = Duration::from_secs(600);

/// How a route serves TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Caddy's internal CA issues the certificate (for private networks and tests).
    Internal,
    /// Caddy's default ACME issuers (Let's Encrypt, ZeroSSL); needs public DNS and :80/:443.
    Acme,
}

impl Tls {
    /// The word in the inventory and the meta file.
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Internal => "internal",
            Tls::Acme => "acme",
        }
    }

    /// Reads the word back.
    pub fn parse(word: &str) -> Option<Tls> {
        match word {
            "internal" => Some(Tls::Internal),
            "acme" => Some(Tls::Acme),
            _ => None,
        }
    }
}

/// One app's route in one environment on one target: what the meta file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// The host name requests carry (`Host:`).
    pub host: String,
    /// A path prefix (`/api`), or none: the whole host.
    pub path: Option<String>,
    /// The container's port.
    pub port: u16,
    /// The health path (answers 2xx when the app is ready).
    pub health: String,
    /// TLS on :443, or plain HTTP on :80.
    pub tls: Option<Tls>,
    /// The container's network alias on `ferry` (unique per deployment): the upstream's host.
    pub upstream: String,
    /// The container's name.
    pub container: String,
    /// The deployment that set the route.
    pub deployment: String,
    /// While in maintenance: the 503 answer's body.
    pub maintenance: Option<String>,
}

/// The keys of a meta file, each exactly once.
const META_KEYS: [&str; 11] = [
    "app",
    "environment",
    "host",
    "path",
    "port",
    "health",
    "tls",
    "upstream",
    "container",
    "deployment",
    "maintenance",
];

impl Route {
    /// `APP@ENV`: the route files' name on the target.
    pub fn key(&self) -> String {
        key(&self.app, &self.environment)
    }

    /// `UPSTREAM:PORT`, the address Caddy dials (and the admin API lists).
    pub fn dial(&self) -> String {
        format!("{}:{}", self.upstream, self.port)
    }

    /// Checks every field: names are plain words, the host a lower-case DNS name, paths start
    /// with `/` and hold only URL path characters, the message has no NUL and fits. The sh
    /// functions put host, path and tls into JSON and file names unescaped, so nothing else may
    /// reach a target.
    pub fn validate(&self) -> Result<(), String> {
        for (what, value) in [
            ("app", &self.app),
            ("environment", &self.environment),
            ("upstream", &self.upstream),
            ("container", &self.container),
            ("deployment", &self.deployment),
        ] {
            if !is_name(value) {
                return Err(format!(
                    "{what} {value:?} is not a plain name (letters, digits, '.', '_', '-'; not starting with '.' or '-')"
                ));
            }
        }
        if !is_host(&self.host) {
            return Err(format!(
                "host {:?} is not a lower-case DNS name (letters, digits, '-' and '.')",
                self.host
            ));
        }
        if let Some(path) = &self.path
            && !is_prefix(path)
        {
            return Err(format!(
                "path {path:?} must start with '/', not end with '/', and hold only letters, digits and -._~/"
            ));
        }
        if !is_health(&self.health) {
            return Err(format!(
                "health {:?} must start with '/' and hold only URL path characters (no spaces or quotes)",
                self.health
            ));
        }
        if self.port == 0 {
            return Err("port 0 is not a port".into());
        }
        if let Some(message) = &self.maintenance {
            check_message(message)?;
        }
        Ok(())
    }

    /// The Caddy route object: host (and path prefix) matcher, then a reverse proxy to the
    /// upstream with an active health check, or, in maintenance, a 503 with the message.
    pub fn caddy_route(&self) -> Value {
        let mut matcher = json!({ "host": [self.host] });
        if let Some(path) = &self.path {
            matcher["path"] = json!([path, format!("{path}/*")]);
        }
        let handle = match &self.maintenance {
            Some(message) => json!([{
                "handler": "static_response",
                "status_code": 503,
                "headers": {
                    "Content-Type": ["text/plain; charset=utf-8"],
                    "Retry-After": ["60"],
                    "Cache-Control": ["no-store"]
                },
                "body": format!("{message}\n"),
            }]),
            // No keep-alive to the container: the drain counts the proxy's open connections
            // to the old container as its requests in flight, and Caddy keeps the old config's
            // idle connections open after a switch (measured: a keep-alive app's drain always
            // waited out `drain`). A connection per request on the local bridge costs little.
            None => json!([{
                "handler": "reverse_proxy",
                "upstreams": [{ "dial": self.dial() }],
                "transport": { "protocol": "http", "keep_alive": { "enabled": false } },
                "health_checks": {
                    "active": { "uri": self.health, "interval": "5s", "timeout": "3s" }
                },
            }]),
        };
        json!({ "match": [matcher], "handle": handle, "terminal": true })
    }

    /// The meta file: `key=value` lines, the message as a JSON string (one line, any text).
    pub fn meta(&self) -> String {
        let maintenance = self
            .maintenance
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_default())
            .unwrap_or_default();
        format!(
            "app={}\nenvironment={}\nhost={}\npath={}\nport={}\nhealth={}\ntls={}\nupstream={}\ncontainer={}\ndeployment={}\nmaintenance={}\n",
            self.app,
            self.environment,
            self.host,
            self.path.as_deref().unwrap_or(""),
            self.port,
            self.health,
            self.tls.map(Tls::as_str).unwrap_or(""),
            self.upstream,
            self.container,
            self.deployment,
            maintenance,
        )
    }

    /// Reads a meta file back, trusting nothing: every key exactly once, no other line, every
    /// value valid ([`Route::validate`]).
    pub fn parse_meta(text: &str) -> Result<Route, String> {
        let mut values: BTreeMap<&str, &str> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: not key=value", n + 1));
            };
            if !META_KEYS.contains(&key) {
                return Err(format!("line {}: unknown key {key:?}", n + 1));
            }
            if values.insert(key, value).is_some() {
                return Err(format!("line {}: {key} given twice", n + 1));
            }
        }
        let get = |key: &str| values.get(key).copied().ok_or_else(|| format!("{key}= is missing"));
        let optional = |value: &str| (!value.is_empty()).then(|| value.to_string());
        let tls = match get("tls")? {
            "" => None,
            word => Some(Tls::parse(word).ok_or_else(|| format!("tls {word:?} is not internal or acme"))?),
        };
        let port = get("port")?;
        let port = if port.bytes().all(|b| b.is_ascii_digit()) && !port.starts_with('0') {
            port.parse::<u16>().map_err(|_| format!("port {port:?} is not a port"))?
        } else {
            return Err(format!("port {port:?} is not a port"));
        };
        let maintenance = match get("maintenance")? {
            "" => None,
            json => Some(
                serde_json::from_str::<String>(json)
                    .map_err(|_| "maintenance is not a JSON string".to_string())?,
            ),
        };
        let route = Route {
            app: get("app")?.to_string(),
            environment: get("environment")?.to_string(),
            host: get("host")?.to_string(),
            path: optional(get("path")?),
            port,
            health: get("health")?.to_string(),
            tls,
            upstream: get("upstream")?.to_string(),
            container: get("container")?.to_string(),
            deployment: get("deployment")?.to_string(),
            maintenance,
        };
        route.validate()?;
        Ok(route)
    }
}

/// `APP@ENV`.
pub fn key(app: &str, environment: &str) -> String {
    format!("{app}@{environment}")
}

/// A maintenance message ferry can serve.
pub fn check_message(message: &str) -> Result<(), String> {
    if message.contains('\0') {
        return Err("the maintenance message contains a NUL byte".into());
    }
    if message.len() > MESSAGE_MAX {
        return Err(format!("the maintenance message is longer than {MESSAGE_MAX} bytes"));
    }
    if message.trim().is_empty() {
        return Err("the maintenance message is empty".into());
    }
    Ok(())
}

/// A plain name: safe in a file name, a label and JSON without escaping.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A lower-case DNS name (what the sh functions match with `[a-z0-9.-]`).
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A path prefix: `/` then unreserved characters and `/`, no trailing `/` (the matcher adds
/// `/*`), no `..` segment.
fn is_prefix(s: &str) -> bool {
    s.len() > 1
        && s.len() <= 256
        && s.starts_with('/')
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.split('/').any(|seg| seg == "." || seg == "..")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'))
}

/// A health path (a query is allowed): no byte that needs quoting in a URL or a shell word.
fn is_health(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~' | b'?' | b'=' | b'%' | b'+' | b',')
        })
}

/// Why the proxy runs with `net.ipv4.tcp_migrate_req=1` (a per-network-namespace sysctl, Linux
/// 5.14+): since 2.6, Caddy binds a new listening socket with `SO_REUSEPORT` on every config
/// load and closes the old one, and the kernel resets the connections that were queued on the
/// closed socket and not yet accepted. Measured with Debian's Caddy 2.6.2 on loopback, 300
/// connections a second and 40 loads: 2 to 5 connections reset per run without it, none in
/// four runs with it (the kernel moves them to the new socket). That is the difference between
/// "a switch drops nothing" and "a switch drops a request now and then".
pub const MIGRATE_SYSCTL: &str = "net.ipv4.tcp_migrate_req";

/// What ferry says of a proxy that runs without `tcp_migrate_req`.
/// The remedy names `--recreate`: a plain reboot reloads a proxy labelled `2-nomigrate` in place
/// (it would otherwise recreate it on every reboot of an old kernel), so after a kernel upgrade
/// only `--recreate` brings the sysctl in.
pub const NO_MIGRATE: &str = "no tcp_migrate_req in its network namespace (Linux < 5.14, or a proxy created by an \
     older ferry or before a kernel upgrade: `ferry proxy reboot --recreate`): a config load may reset a \
     connection that arrives at that moment";

/// The sh functions every proxy script starts with (and the detached replace script embeds).
///
/// - `ferry_proxy_assemble`: `caddy.json` from the route files (tmp + mv; caller holds the lock).
///   A route whose meta file has a line that is not one of ferry's keys is left out, as ferry
///   leaves it alone when it reads the table back.
/// - `ferry_proxy_load`: `caddy reload --force` inside the proxy; Caddy's error on stderr.
/// - `ferry_proxy_set KEY ROUTE_JSON META [offline | keep PREFIX SUFFIX]`: under the lock,
///   writes (or with both empty, removes) the route files, assembles and loads; on failure puts
///   the previous files back and fails. With `offline`, a proxy that is not running is not an
///   error (the files are what it loads when it starts). With `keep`, a route in maintenance
///   stays in maintenance: the message from its meta file goes between PREFIX and SUFFIX (the
///   maintenance variant of the new route) and into the new meta file, only when it is one JSON
///   string (read back from the target, so not trusted: anything else would splice into the
///   route's JSON); otherwise the step fails and nothing changes.
/// - `ferry_proxy_ensure IMAGE`: network and proxy, created or started when missing.
/// - `ferry_proxy_create IMAGE NAME [nomigrate]`: creates the proxy container with
///   `net.ipv4.tcp_migrate_req=1` in its network namespace (see [`MIGRATE_SYSCTL`]), labelled
///   with the way it was created (`ferry.proxy.boot`), or without it with `nomigrate`.
/// - `ferry_proxy_start NAME [IMAGE]`: starts the created proxy; when it cannot (another
///   container or process holds :80 or :443), removes it (a created proxy that cannot bind would
///   be started again and fail again) and names the container that publishes the port. A kernel
///   without `tcp_migrate_req` (Linux < 5.14): with IMAGE, creates it again without and prints
///   `proxy: no tcp_migrate_req`.
/// - `ferry_proxy_reboot IMAGE [recreate]`: assembles the table and, when the running proxy
///   already runs IMAGE the way this ferry creates it, loads it (one graceful config load:
///   nothing is refused; when Caddy refuses it and still answers, `caddy.json` is put back as the
///   proxy runs it, so that a restart of the container does not start from a table it refused;
///   when Caddy does not answer, e.g. crash-looping on a bad `caddy.json`, the table stays for
///   its next start); otherwise (another
///   image, not running, created by another ferry version, or `recreate`) recreates the proxy and prints
///   why. The new container is created before the
///   old one is removed, so that the outage is only the old one's kill, the new one's start and
///   Caddy's config load: a recreate cannot be seamless (one container at a time holds a
///   published port).
pub const FUNCTIONS: &str = r#"
ferry_proxy_dir="$HOME/.ferry/proxy"
ferry_proxy_assemble() {
  fp_r="$ferry_proxy_dir/routes"
  fp_list=$(cd "$fp_r" 2>/dev/null && for fp_m in *.meta; do
      [ -f "$fp_m" ] && [ -f "${fp_m%.meta}.route.json" ] || continue
      grep -Evq '^(app|environment|host|path|port|health|tls|upstream|container|deployment|maintenance)=' "$fp_m" && continue
      fp_h=$(sed -n 's/^host=//p' "$fp_m" | head -n 1)
      fp_p=$(sed -n 's/^path=//p' "$fp_m" | head -n 1)
      fp_t=$(sed -n 's/^tls=//p' "$fp_m" | head -n 1)
      case "$fp_h" in ''|*[!a-z0-9.-]*) continue ;; esac
      case "$fp_t" in '') fp_t=none ;; internal|acme) ;; *) continue ;; esac
      printf '%s %s %s %s\n' "${#fp_p}" "$fp_t" "$fp_h" "${fp_m%.meta}.route.json"
    done | sort -k1,1nr -k3,3 -k4,4)
  fp_plain=; fp_tls=; fp_pol=; fp_seen=' '
  while read -r fp_len fp_t fp_h fp_j; do
    [ -n "$fp_j" ] || continue
    fp_body=$(cat "$fp_r/$fp_j") || return 1
    [ -n "$fp_body" ] || continue
    if [ "$fp_t" = none ]; then
      fp_plain="$fp_plain${fp_plain:+,}$fp_body"
    else
      fp_tls="$fp_tls${fp_tls:+,}$fp_body"
      case "$fp_seen" in *" $fp_h "*) ;; *)
        fp_seen="$fp_seen$fp_h "
        if [ "$fp_t" = internal ]; then
          fp_pol="$fp_pol${fp_pol:+,}{\"subjects\":[\"$fp_h\"],\"issuers\":[{\"module\":\"internal\"}]}"
        else
          fp_pol="$fp_pol${fp_pol:+,}{\"subjects\":[\"$fp_h\"]}"
        fi ;;
      esac
    fi
  done <<FERRY_PROXY_LIST
$fp_list
FERRY_PROXY_LIST
  {
    printf '{"admin":{"listen":"localhost:2019"},"apps":{"http":{"servers":{"ferry_http":{"listen":[":80"],"routes":[%s]}' "$fp_plain"
    [ -z "$fp_tls" ] || printf ',"ferry_https":{"listen":[":443"],"routes":[%s]}' "$fp_tls"
    printf '}}'
    [ -z "$fp_pol" ] || printf ',"tls":{"automation":{"policies":[%s]}}' "$fp_pol"
    printf ',"pki":{"certificate_authorities":{"local":{"install_trust":false}}}}}\n'
  } > "$ferry_proxy_dir/.caddy.json.tmp" && mv -f "$ferry_proxy_dir/.caddy.json.tmp" "$ferry_proxy_dir/caddy.json"
}
ferry_proxy_running() {
  [ "$(docker inspect -f '{{.State.Running}}' ferry-proxy 2>/dev/null)" = true ]
}
ferry_proxy_load() {
  fp_out=$(docker exec ferry-proxy caddy reload --config /etc/ferry-proxy/caddy.json --force 2>&1) && return 0
  printf '%s\n' "$fp_out" | grep -v '^{"level":"info"' | tail -n 5 >&2
  return 1
}
ferry_proxy_set() {
  mkdir -p "$ferry_proxy_dir/routes" || return 1
  (
    flock -w 120 9 || { echo "the proxy's route table is locked (~/.ferry/proxy/lock)" >&2; exit 1; }
    fp_r="$ferry_proxy_dir/routes"; fp_b="$ferry_proxy_dir/.previous"
    rm -rf "$fp_b" && mkdir "$fp_b" || exit 1
    for fp_f in "$fp_r/$1.route.json" "$fp_r/$1.meta" "$ferry_proxy_dir/caddy.json"; do
      [ ! -f "$fp_f" ] || cp -p "$fp_f" "$fp_b/" || exit 1
    done
    fp_json=$2; fp_meta=$3
    if [ "${4:-}" = keep ] && [ -f "$fp_r/$1.meta" ]; then
      fp_m=$(sed -n 's/^maintenance=//p' "$fp_r/$1.meta" | head -n 1)
      if [ -z "$fp_m" ]; then :
      elif printf '%s\n' "$fp_m" | grep -Eqx '"([^"\\[:cntrl:]]|\\(["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'; then
        fp_json="$5${fp_m%\"}\\n\"$6"
        fp_meta="${3%maintenance=*}maintenance=$fp_m
"
        echo "proxy: kept maintenance"
      else
        rm -rf "$fp_b"
        echo "the route file $1.meta has a maintenance line that is not a JSON string; nothing changed" >&2
        exit 1
      fi
    fi
    if [ -n "$2" ]; then
      printf '%s\n' "$fp_json" > "$fp_r/.$1.route.json.tmp" && printf '%s' "$fp_meta" > "$fp_r/.$1.meta.tmp" &&
        mv -f "$fp_r/.$1.route.json.tmp" "$fp_r/$1.route.json" && mv -f "$fp_r/.$1.meta.tmp" "$fp_r/$1.meta" || exit 1
    else
      rm -f "$fp_r/$1.route.json" "$fp_r/$1.meta" || exit 1
    fi
    if ferry_proxy_assemble; then
      if [ "${4:-}" = offline ] && ! ferry_proxy_running; then
        echo "proxy: not running"; rm -rf "$fp_b"; exit 0
      fi
      if ferry_proxy_load; then echo "proxy: loaded"; rm -rf "$fp_b"; exit 0; fi
    fi
    rm -f "$fp_r/$1.route.json" "$fp_r/$1.meta"
    for fp_f in "$1.route.json" "$1.meta"; do [ ! -f "$fp_b/$fp_f" ] || mv -f "$fp_b/$fp_f" "$fp_r/$fp_f"; done
    [ ! -f "$fp_b/caddy.json" ] || mv -f "$fp_b/caddy.json" "$ferry_proxy_dir/caddy.json"
    rm -rf "$fp_b"
    echo "the proxy refused the new route; the previous routes are back in place" >&2
    exit 1
  ) 9> "$ferry_proxy_dir/lock"
}
ferry_proxy_boot=2
ferry_proxy_create() {
  fp_sysctl="--sysctl net.ipv4.tcp_migrate_req=1"; fp_boot=$ferry_proxy_boot
  [ "${3:-}" != nomigrate ] || { fp_sysctl=; fp_boot="$ferry_proxy_boot-nomigrate"; }
  docker create --name "$2" --restart unless-stopped --network ferry -p 80:80 -p 443:443 $fp_sysctl \
    -v ferry-proxy-data:/data -v ferry-proxy-config:/config -v "$ferry_proxy_dir:/etc/ferry-proxy:ro" \
    --label ferry.proxy=1 --label "ferry.proxy.image=$1" --label "ferry.proxy.boot=$fp_boot" "$1" \
    caddy run --config /etc/ferry-proxy/caddy.json > /dev/null
}
ferry_proxy_start() {
  fp_err=$(docker start "$1" 2>&1 > /dev/null) && return 0
  docker rm -f "$1" > /dev/null 2>&1
  case "$fp_err" in *tcp_migrate_req*)
    if [ -n "${2:-}" ]; then
      echo "proxy: no tcp_migrate_req"
      ferry_proxy_create "$2" "$1" nomigrate && ferry_proxy_start "$1"
      return
    fi ;;
  esac
  printf '%s\n' "$fp_err" | tail -n 2 >&2
  case "$fp_err" in *ddress\ already\ in\ use*|*already\ allocated*|*:80*|*:443*)
    fp_hold=$(docker ps --format '{{.Names}} {{.Ports}}' | grep -E ':(80|443)->' | cut -d' ' -f1 | grep -vx "$1" | tr '\n' ' ')
    if [ -n "$fp_hold" ]; then
      echo "the proxy needs the target's ports 80 and 443, which container(s) ${fp_hold% } publish: put that app behind the proxy or move it off :80/:443" >&2
    else
      echo "the proxy needs the target's ports 80 and 443; another process on the target holds one of them" >&2
    fi ;;
  esac
  return 1
}
ferry_proxy_run() {
  ferry_proxy_create "$1" ferry-proxy && ferry_proxy_start ferry-proxy "$1"
}
ferry_proxy_wait() {
  fp_i=0
  while [ "$fp_i" -lt 150 ]; do
    fp_err=$(docker exec ferry-proxy wget -q -O /dev/null http://localhost:2019/config/ 2>&1) && return 0
    case "$fp_err" in *executable\ file\ not\ found*)
      echo "the proxy image has no wget (ferry needs caddy, sh, wget and timeout in it): $fp_err" >&2
      return 1 ;;
    esac
    ferry_proxy_running || break
    fp_i=$((fp_i + 1)); sleep 0.2
  done
  echo "the proxy did not answer on its admin API; its last log lines:" >&2
  docker logs --tail 5 ferry-proxy 2>&1 | sed 's/^/  /' >&2
  return 1
}
ferry_proxy_network() {
  docker network inspect ferry > /dev/null 2>&1 && return 0
  docker network create --label ferry.managed=true ferry > /dev/null && { echo "network: created"; return 0; }
  docker network inspect ferry > /dev/null 2>&1
}
ferry_proxy_ensure() {
  mkdir -p "$ferry_proxy_dir/routes" || return 1
  (
    flock -w 120 9 || { echo "the proxy's route table is locked (~/.ferry/proxy/lock)" >&2; exit 1; }
    ferry_proxy_network || exit 1
    fp_st=$(docker inspect -f '{{.State.Running}}' ferry-proxy 2>/dev/null)
    if [ "$fp_st" = true ]; then echo "proxy: running"; exit 0; fi
    ferry_proxy_assemble || exit 1
    if [ "$fp_st" = false ]; then
      ferry_proxy_start ferry-proxy || exit 1; echo "proxy: started"
    else
      ferry_proxy_run "$1" || exit 1; echo "proxy: booted"
    fi
    ferry_proxy_wait
  ) 9> "$ferry_proxy_dir/lock"
}
ferry_proxy_reboot() {
  mkdir -p "$ferry_proxy_dir/routes" || return 1
  (
    flock -w 120 9 || { echo "the proxy's route table is locked (~/.ferry/proxy/lock)" >&2; exit 1; }
    ferry_proxy_network || exit 1
    fp_prev="$ferry_proxy_dir/.caddy.json.previous"; rm -f "$fp_prev" || exit 1
    [ ! -f "$ferry_proxy_dir/caddy.json" ] || cp -p "$ferry_proxy_dir/caddy.json" "$fp_prev" || exit 1
    ferry_proxy_assemble || exit 1
    fp_why=
    if [ "${2:-}" = recreate ]; then fp_why="--recreate"
    elif ! ferry_proxy_running; then fp_why="it was not running"
    elif [ "$(docker inspect -f '{{.Image}}' ferry-proxy)" != "$(docker image inspect -f '{{.Id}}' "$1")" ]; then
      fp_why="it ran another image"
    else
      case "$(docker inspect -f '{{index .Config.Labels "ferry.proxy.boot"}}' ferry-proxy)" in
        "$ferry_proxy_boot"|"$ferry_proxy_boot-nomigrate") ;;
        *) fp_why="created by another ferry version" ;;
      esac
    fi
    if [ -z "$fp_why" ]; then
      if ferry_proxy_load; then rm -f "$fp_prev"; echo "proxy: reloaded"; exit 0; fi
      if docker exec ferry-proxy wget -q -O /dev/null http://localhost:2019/config/ > /dev/null 2>&1; then
        [ ! -f "$fp_prev" ] || mv -f "$fp_prev" "$ferry_proxy_dir/caddy.json"
        echo "the proxy did not load the route table; its previous configuration stays in place" >&2
      else
        rm -f "$fp_prev"
        echo "the proxy did not load the route table and its admin API does not answer: ferry proxy reboot --recreate" >&2
      fi
      exit 1
    fi
    rm -f "$fp_prev"
    docker rm -f ferry-proxy-next > /dev/null 2>&1
    ferry_proxy_create "$1" ferry-proxy-next || exit 1
    docker rm -f ferry-proxy > /dev/null 2>&1
    ferry_proxy_start ferry-proxy-next "$1" || exit 1
    docker rename ferry-proxy-next ferry-proxy || exit 1
    echo "proxy: recreated ($fp_why)"
    ferry_proxy_wait
  ) 9> "$ferry_proxy_dir/lock"
}
"#;

/// Quotes a value for a script (values here are validated or JSON; none holds a NUL).
fn q(value: &str) -> String {
    crate::shell::quote(value).unwrap_or_else(|_| "''".into())
}

/// The line that switches `route` in (a script that embeds [`FUNCTIONS`] runs it): writes its
/// files, assembles, loads; fails with Caddy's error and the previous routes back in place. A
/// deploy switches with this: when the app is in maintenance on the target, it stays in
/// maintenance (same message) with the new upstream recorded, so that `maintenance off` then
/// sends requests to the new container (maintenance → deploy with migrations → check → off).
pub fn switch_call(route: &Route) -> Result<String, String> {
    route.validate()?;
    let json = serde_json::to_string(&route.caddy_route()).map_err(|e| e.to_string())?;
    let placeholder = Route { maintenance: Some(BODY_PLACEHOLDER.into()), ..route.clone() };
    let variant = serde_json::to_string(&placeholder.caddy_route()).map_err(|e| e.to_string())?;
    let body = format!("\"{BODY_PLACEHOLDER}\\n\"");
    let Some((prefix, suffix)) = variant.split_once(&body) else {
        return Err("the maintenance route has no body".into());
    };
    Ok(format!(
        "ferry_proxy_set {} {} {} keep {} {}",
        q(&route.key()),
        q(&json),
        q(&route.meta()),
        q(prefix),
        q(suffix)
    ))
}

/// Stands for the maintenance message in the route that [`switch_call`] hands to the target.
const BODY_PLACEHOLDER: &str = "@@FERRY_BODY@@";

/// The line that sets `route` exactly as given (maintenance on or off as it says).
fn set_call(route: &Route) -> Result<String, String> {
    route.validate()?;
    let json = serde_json::to_string(&route.caddy_route()).map_err(|e| e.to_string())?;
    Ok(format!("ferry_proxy_set {} {} {}", q(&route.key()), q(&json), q(&route.meta())))
}

/// The whole script that ensures the network and the proxy (`image`), booting it when missing.
/// When the proxy must be created and its image is not on the target, the image is pulled
/// first, logged in with `login` (`[proxy] feed`) when given: the password on stdin.
pub fn ensure_script(image: &str, login: Option<&Login>) -> String {
    format!(
        "{FUNCTIONS}\nif ! docker inspect ferry-proxy > /dev/null 2>&1 && ! docker image inspect {i} > /dev/null 2>&1; then\n\
         {login}docker pull {i} > /dev/null || exit 1\n{logout}fi\nferry_proxy_ensure {i}\n",
        i = q(image),
        login = login.map(crate::docker::login_script).unwrap_or_default(),
        logout = crate::docker::LOGOUT,
    )
}

/// The whole script that pulls `image` (logged in with `login` when given) and loads every
/// route in the table, recreating the proxy when it must (or `recreate`); it ends by printing
/// `migrate=` and the proxy's `tcp_migrate_req`.
pub fn reboot_script(image: &str, login: Option<&Login>, recreate: bool) -> String {
    format!(
        "{FUNCTIONS}\n{login}docker pull {i} > /dev/null || exit 1\n{logout}ferry_proxy_reboot {i}{r} || exit 1\n\
         printf 'migrate=%s\\n' \"$(docker exec {CONTAINER} cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null)\"\n",
        i = q(image),
        r = if recreate { " recreate" } else { "" },
        login = login.map(crate::docker::login_script).unwrap_or_default(),
        logout = crate::docker::LOGOUT,
    )
}

/// The probe for the deploy's gate: from inside the proxy, through the `ferry` network, the
/// health path of the new container answers 2xx (busybox and Alpine `wget` fail on 4xx/5xx).
/// Exit 0: healthy; 125: no proxy container; anything else: not (yet) healthy. The time limit is
/// busybox `timeout`, not `wget -T`: Debian's static busybox crashes on `-T`.
pub fn gate_probe_script(alias: &str, port: u16, health: &str, timeout_secs: u32) -> String {
    format!(
        "docker exec {CONTAINER} timeout {timeout_secs} wget -q -O /dev/null {}",
        q(&format!("http://{alias}:{port}{health}"))
    )
}

/// Prints the admin API's upstreams (JSON) from inside the proxy.
pub fn upstreams_script() -> String {
    format!("docker exec {CONTAINER} wget -q -O - http://localhost:2019/reverse_proxy/upstreams")
}

/// One upstream as Caddy's admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    /// `HOST:PORT` as dialled.
    pub address: String,
    /// Requests it serves right now.
    pub num_requests: u64,
    /// Recent failures (passive health).
    pub fails: u64,
    /// Caddy's health verdict, when the version reports one.
    pub healthy: Option<bool>,
}

/// Reads `GET /reverse_proxy/upstreams`: a JSON array of objects with `address` and
/// `num_requests` (`fails`, `healthy` when present); anything else is an error.
pub fn parse_upstreams(text: &str) -> Result<Vec<Upstream>, String> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("not a JSON array".into());
    };
    items
        .iter()
        .map(|item| {
            let address =
                item.get("address").and_then(Value::as_str).ok_or("an upstream without address")?.to_string();
            let num_requests = item.get("num_requests").and_then(Value::as_u64).ok_or("no num_requests")?;
            Ok(Upstream {
                address,
                num_requests,
                fails: item.get("fails").and_then(Value::as_u64).unwrap_or(0),
                healthy: item.get("healthy").and_then(Value::as_bool),
            })
        })
        .collect()
}

/// Runs `script`; a non-zero exit is a [`DockerError::Failed`] with the last stderr lines.
async fn sh(
    host: &dyn Host,
    step: &'static str,
    script: &str,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<String, DockerError> {
    let mut out = Capture::default();
    let status = host.exec(script, stdin, Some(deadline), &mut out).await?;
    if status.success() {
        return Ok(out.text());
    }
    let errors = out.errors();
    let lines: Vec<&str> = errors.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let message =
        if lines.is_empty() { status.to_string() } else { lines[lines.len().saturating_sub(4)..].join("; ") };
    Err(DockerError::Failed { step, message })
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensured {
    /// It was running.
    Running,
    /// It existed, stopped; it was started.
    Started,
    /// There was none; it was created.
    Booted,
}

/// Ensures network `ferry` and a running `ferry-proxy` (from `image` when it must be created),
/// whose admin API answers. Idempotent; serialised with every route change on the target.
pub async fn ensure(host: &dyn Host, image: &str, login: Option<&Login>) -> Result<Ensured, DockerError> {
    let stdin = login.map(|l| l.password.expose().as_bytes());
    let out = sh(host, "proxy boot", &ensure_script(image, login), stdin, REBOOT_DEADLINE).await?;
    Ok(if out.contains("proxy: booted") {
        Ensured::Booted
    } else if out.contains("proxy: started") {
        Ensured::Started
    } else {
        Ensured::Running
    })
}

/// Sets `route` exactly as given (its maintenance too) with one config load; on failure the
/// previous route files and config stay in place and the error carries Caddy's words.
pub async fn switch(host: &dyn Host, route: &Route) -> Result<(), DockerError> {
    let call = set_call(route).map_err(|message| DockerError::Failed { step: "proxy route", message })?;
    sh(host, "proxy route", &format!("{FUNCTIONS}\n{call}\n"), None, STEP_DEADLINE).await.map(|_| ())
}

/// Makes the route table send `route` to the running container `container` (a no-op deploy
/// of a proxied app): the upstream is the alias of the deployment that container was started
/// by (its `ferry.deployment` label), so a route file that was removed, or that points at
/// another container or an older host/path/port, is written again; a route in maintenance stays
/// in maintenance. `Some(why)`: it was repaired, and why; `None`: it was right already.
pub async fn converge(
    host: &dyn Host,
    route: &Route,
    container: &str,
) -> Result<Option<String>, DockerError> {
    let read = format!(
        "docker inspect -f '{{{{index .Config.Labels \"ferry.deployment\"}}}}' {c} || exit 1\n\
         echo '--- meta'; cat \"$HOME/{ROUTES_DIR}/\"{k}.meta 2>/dev/null; exit 0",
        c = q(container),
        k = q(&route.key())
    );
    let text = sh(host, "proxy route", &read, None, STEP_DEADLINE).await?;
    let (deployment, meta) = text.split_once("--- meta\n").unwrap_or((&text, ""));
    let deployment = deployment.trim();
    if deployment.is_empty() || deployment == "<no value>" {
        return Err(DockerError::Failed {
            step: "proxy route",
            message: format!("{container} has no ferry.deployment label: its alias is unknown"),
        });
    }
    let want = Route {
        upstream: crate::plan::alias(container, deployment),
        container: container.to_string(),
        deployment: deployment.to_string(),
        maintenance: None,
        ..route.clone()
    };
    let why = match Route::parse_meta(meta) {
        _ if meta.trim().is_empty() => "the route file was missing".to_string(),
        Err(e) => format!("the route file was unreadable ({e})"),
        Ok(have) if Route { maintenance: None, ..have.clone() } == want => return Ok(None),
        Ok(have) if have.upstream != want.upstream => {
            format!("it pointed at {} ({})", have.upstream, have.container)
        }
        Ok(_) => "it differed from the planned route".to_string(),
    };
    let call = switch_call(&want).map_err(|message| DockerError::Failed { step: "proxy route", message })?;
    sh(host, "proxy route", &format!("{FUNCTIONS}\n{call}\n"), None, STEP_DEADLINE).await?;
    Ok(Some(why))
}

/// The route of `app` in `environment` as the target's table records it: `None` when there is
/// no meta file, `Some(Err)` when it is unreadable.
pub async fn read_route(
    host: &dyn Host,
    app: &str,
    environment: &str,
) -> Result<Option<Result<Route, String>>, DockerError> {
    let script = format!("cat \"$HOME/{ROUTES_DIR}/\"{}.meta 2>/dev/null; exit 0", q(&key(app, environment)));
    let text = sh(host, "proxy route", &script, None, STEP_DEADLINE).await?;
    Ok((!text.trim().is_empty()).then(|| Route::parse_meta(&text)))
}

/// Removes the route of `app` in `environment` (none there: nothing to do). A proxy that is not
/// running is no error: its config file no longer has the route when it starts.
pub async fn remove(host: &dyn Host, app: &str, environment: &str) -> Result<bool, DockerError> {
    let key = key(app, environment);
    let script = format!(
        "{FUNCTIONS}\n[ -f \"$ferry_proxy_dir/routes/\"{k}.meta ] || [ -f \"$ferry_proxy_dir/routes/\"{k}.route.json ] || {{ echo 'proxy: no route'; exit 0; }}\n\
         ferry_proxy_set {k} '' '' offline\n",
        k = q(&key)
    );
    let out = sh(host, "proxy route", &script, None, STEP_DEADLINE).await?;
    Ok(!out.contains("proxy: no route"))
}

/// What [`reboot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebooted {
    /// `None`: the running proxy had the image and loaded the table gracefully; `Some(why)`: it
    /// was recreated (`it ran another image`, `it was not running`, `created by another ferry version`,
    /// `--recreate`).
    pub recreated: Option<String>,
    /// Whether the proxy runs with `tcp_migrate_req` (see [`MIGRATE_SYSCTL`]), read back from it;
    /// `None` when it did not answer `0` or `1` (unknown is neither "it has it" nor "it has not").
    pub migrate: Option<bool>,
}

/// Pulls `image` and loads every route in the table (all apps and environments on the host):
/// gracefully when the running proxy already runs `image` as this ferry creates it, otherwise
/// (or with `recreate`) by recreating the container.
pub async fn reboot(
    host: &dyn Host,
    image: &str,
    login: Option<&Login>,
    recreate: bool,
) -> Result<Rebooted, DockerError> {
    let stdin = login.map(|l| l.password.expose().as_bytes());
    let script = reboot_script(image, login, recreate);
    let out = sh(host, "proxy reboot", &script, stdin, REBOOT_DEADLINE).await?;
    Ok(parse_rebooted(&out))
}

/// Reads [`reboot_script`]'s output: `proxy: reloaded` or `proxy: recreated (WHY)`, and the
/// `migrate=0|1` line the script ends with.
pub fn parse_rebooted(out: &str) -> Rebooted {
    let recreated = out.lines().find_map(|l| {
        l.strip_prefix("proxy: recreated (").and_then(|w| w.strip_suffix(')')).map(str::to_string)
    });
    let migrate = out.lines().find_map(|l| match l.trim() {
        "migrate=1" => Some(true),
        "migrate=0" => Some(false),
        _ => None,
    });
    Rebooted { recreated, migrate }
}

/// In-flight requests of the upstream `dial` (`ALIAS:PORT`) per the admin API; `None` when Caddy
/// no longer lists it (no config references it and no request holds it).
pub async fn in_flight(host: &dyn Host, dial: &str) -> Result<Option<u64>, DockerError> {
    let text = sh(host, "proxy upstreams", &upstreams_script(), None, STEP_DEADLINE).await?;
    let upstreams = parse_upstreams(&text)
        .map_err(|message| DockerError::Failed { step: "read proxy upstreams", message })?;
    Ok(upstreams.iter().find(|u| u.address == dial).map(|u| u.num_requests))
}

/// Turns maintenance on (with `message`) or off (`None`) for the route of `app` in
/// `environment`: the route is read back from the table, changed, and switched in. A target
/// with no readable route for the app fails (there is nothing to put in maintenance).
pub async fn maintenance(
    host: &dyn Host,
    app: &str,
    environment: &str,
    message: Option<&str>,
) -> Result<Route, DockerError> {
    let failed = |message: String| DockerError::Failed { step: "maintenance", message };
    let table = read(host).await?;
    let wanted = key(app, environment);
    if let Some(bad) = table.unreadable.iter().find(|u| u.key == wanted) {
        return Err(failed(format!(
            "the route file {}.meta is unreadable ({}); nothing changed",
            bad.key, bad.error
        )));
    }
    let Some(route) = table.routes.into_iter().find(|r| r.key() == wanted) else {
        return Err(failed(format!(
            "{app} has no route in {environment} here: deploy it behind the proxy first"
        )));
    };
    if !table.proxy.as_ref().is_some_and(|p| p.running) {
        return Err(failed("the proxy is not running: `ferry proxy boot` first".into()));
    }
    let mut route = route;
    route.maintenance = message.map(str::to_string);
    switch(host, &route).await?;
    Ok(route)
}

/// The proxy container as `docker inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyContainer {
    /// Whether it runs.
    pub running: bool,
    /// Its image.
    pub image: String,
    /// `caddy version`'s first word, when it answered.
    pub version: Option<String>,
    /// Its network namespace's `tcp_migrate_req` (see [`MIGRATE_SYSCTL`]), when it answered.
    pub migrate: Option<bool>,
}

/// A route file that could not be read: reported, never acted upon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The file's name without `.meta`.
    pub key: String,
    /// Why.
    pub error: String,
}

/// The proxy's state on one target, read back by [`read`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// The container, if there is one.
    pub proxy: Option<ProxyContainer>,
    /// Whether network `ferry` exists.
    pub network: bool,
    /// The readable routes, by key.
    pub routes: Vec<Route>,
    /// The unreadable route files.
    pub unreadable: Vec<Unreadable>,
    /// The admin API's upstreams (empty when it did not answer).
    pub upstreams: Vec<Upstream>,
    /// Every container name on the target, with whether it runs.
    pub containers: BTreeMap<String, bool>,
}

/// The script behind [`read`]: sections separated by `--- ` lines; meta lines are prefixed with
/// `| ` so that no file content can forge a section.
pub fn read_script() -> String {
    format!(
        "echo '--- proxy'; docker inspect -f '{{{{.State.Running}}}} {{{{.Config.Image}}}}' {CONTAINER} 2>/dev/null\n\
         echo '--- version'; docker exec {CONTAINER} caddy version 2>/dev/null | head -n 1\n\
         echo '--- migrate'; docker exec {CONTAINER} cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null\n\
         echo '--- network'; docker network inspect -f '{{{{.Name}}}}' {NETWORK} 2>/dev/null\n\
         echo '--- upstreams'; {up} 2>/dev/null | tr -d '\\n'; echo\n\
         echo '--- containers'; docker ps -a --format '{{{{.Names}}}} {{{{.State}}}}' || exit 1\n\
         for m in \"$HOME/{ROUTES_DIR}\"/*.meta; do [ -f \"$m\" ] || continue; n=${{m##*/}}; \
         printf -- '--- route %s\\n' \"$n\" | tr -c 'A-Za-z0-9@._ \\n-' '?'; sed 's/^/| /' \"$m\"; echo; done\n",
        up = upstreams_script()
    )
}

/// Reads [`read_script`]'s output.
pub fn parse_table(text: &str) -> Table {
    let mut table = Table {
        proxy: None,
        network: false,
        routes: Vec::new(),
        unreadable: Vec::new(),
        upstreams: Vec::new(),
        containers: BTreeMap::new(),
    };
    let mut section = String::new();
    let mut meta: Vec<(String, String)> = Vec::new();
    let (mut version, mut migrate) = (None, None);
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("--- ") {
            section = name.to_string();
            if let Some(file) = name.strip_prefix("route ") {
                meta.push((file.to_string(), String::new()));
            }
            continue;
        }
        match section.as_str() {
            "proxy" => {
                if let Some((running, image)) = line.split_once(' ') {
                    table.proxy = Some(ProxyContainer {
                        running: running == "true",
                        image: image.to_string(),
                        version: None,
                        migrate: None,
                    });
                }
            }
            "version" => {
                version = line.split_whitespace().next().map(str::to_string).filter(|v| !v.is_empty());
            }
            "migrate" => {
                migrate = match line.trim() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            "network" => table.network |= line.trim() == NETWORK,
            "upstreams" if !line.trim().is_empty() => {
                table.upstreams = parse_upstreams(line).unwrap_or_default();
            }
            "containers" => {
                if let Some((name, state)) = line.split_once(' ') {
                    table.containers.insert(name.to_string(), state == "running");
                }
            }
            _ if section.starts_with("route ") => {
                if let (Some((_, body)), Some(content)) = (meta.last_mut(), line.strip_prefix("| ")) {
                    body.push_str(content);
                    body.push('\n');
                }
            }
            _ => {}
        }
    }
    if let Some(proxy) = table.proxy.as_mut() {
        proxy.version = version;
        proxy.migrate = migrate;
    }
    let mut seen = BTreeSet::new();
    for (file, body) in meta {
        let key = file.strip_suffix(".meta").unwrap_or(&file).to_string();
        match Route::parse_meta(&body) {
            Ok(route) if route.key() == key && seen.insert(key.clone()) => table.routes.push(route),
            Ok(route) => table.unreadable.push(Unreadable {
                error: format!("it describes {} (the file name must match)", route.key()),
                key,
            }),
            Err(error) => table.unreadable.push(Unreadable { key, error }),
        }
    }
    table
}

/// Reads the proxy's state, its route table and the upstreams on one target.
pub async fn read(host: &dyn Host) -> Result<Table, DockerError> {
    let text = sh(host, "read proxy", &read_script(), None, STEP_DEADLINE).await?;
    Ok(parse_table(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            app: "web".into(),
            environment: "prod".into(),
            host: "web.example.com".into(),
            path: Some("/api".into()),
            port: 8080,
            health: "/up".into(),
            tls: Some(Tls::Internal),
            upstream: "web-prod-0193abcd".into(),
            container: "web-prod".into(),
            deployment: "0193abcd-1234".into(),
            maintenance: None,
        }
    }

    #[test]
    fn the_route_proxies_host_and_path_to_the_upstream_with_a_health_check() {
        let json = route().caddy_route();
        assert_eq!(json["match"][0]["host"], json!(["web.example.com"]));
        assert_eq!(json["match"][0]["path"], json!(["/api", "/api/*"]));
        assert_eq!(json["terminal"], json!(true));
        let handler = &json["handle"][0];
        assert_eq!(handler["handler"], "reverse_proxy");
        assert_eq!(handler["upstreams"], json!([{ "dial": "web-prod-0193abcd:8080" }]));
        assert_eq!(handler["health_checks"]["active"]["uri"], "/up");
        assert_eq!(handler["transport"]["keep_alive"]["enabled"], false, "the drain counts connections");
    }

    #[test]
    fn a_host_only_route_has_no_path_matcher() {
        let json = Route { path: None, ..route() }.caddy_route();
        assert_eq!(json["match"], json!([{ "host": ["web.example.com"] }]));
    }

    #[test]
    fn maintenance_answers_503_with_the_message_escaped() {
        let message = "back at 5 \"o'clock\"\n<b>$(rm -rf /)</b> \\ ü";
        let json = Route { maintenance: Some(message.into()), ..route() }.caddy_route();
        let handler = &json["handle"][0];
        assert_eq!(handler["handler"], "static_response");
        assert_eq!(handler["status_code"], 503);
        assert_eq!(handler["body"], format!("{message}\n"));
        assert_eq!(handler["headers"]["Content-Type"], json!(["text/plain; charset=utf-8"]));
        // And through the meta file and back.
        let r = Route { maintenance: Some(message.into()), ..route() };
        assert_eq!(r.meta().lines().count(), 11);
        assert_eq!(Route::parse_meta(&r.meta()).unwrap(), r);
    }

    #[test]
    fn meta_round_trips_every_field() {
        for r in
            [route(), Route { path: None, tls: None, ..route() }, Route { tls: Some(Tls::Acme), ..route() }]
        {
            assert_eq!(Route::parse_meta(&r.meta()), Ok(r));
        }
    }

    #[test]
    fn the_meta_parser_trusts_nothing() {
        let good = route().meta();
        let cases = [
            (good.replace("port=8080", "port=08080"), "port"),
            (good.replace("port=8080", "port=70000"), "port"),
            (good.replace("port=8080", "port=0"), "port"),
            (good.replace("tls=internal", "tls=self"), "tls"),
            (good.replace("host=web.example.com", "host=Web.example.com"), "host"),
            (good.replace("host=web.example.com", "host=a\",\"b"), "host"),
            (good.replace("path=/api", "path=/api/"), "path"),
            (good.replace("path=/api", "path=/../x"), "path"),
            (good.replace("app=web", "app=../web"), "app"),
            (good.replace("health=/up", "health=up"), "health"),
            (good.replace("health=/up", "health=/up'x"), "health"),
            (good.replace("maintenance=", "maintenance=not json"), "maintenance"),
            (format!("{good}extra=1\n"), "unknown key"),
            (format!("{good}app=web\n"), "twice"),
            (format!("{good}garbage\n"), "key=value"),
            (good.replace("deployment=0193abcd-1234\n", ""), "deployment= is missing"),
        ];
        for (text, why) in cases {
            let err = Route::parse_meta(&text).expect_err(&text);
            assert!(err.contains(why), "{why:?} not in {err:?}");
        }
    }

    #[test]
    fn the_set_call_quotes_the_route_for_sh() {
        let r = Route { maintenance: Some("it's 'down'".into()), ..route() };
        let call = set_call(&r).unwrap();
        assert!(call.starts_with("ferry_proxy_set web@prod '{"), "{call}");
        let words = crate::shell::split(&call).unwrap();
        assert_eq!(words.len(), 4);
        let json: Value = serde_json::from_str(&words[2].text).unwrap();
        assert_eq!(json, r.caddy_route());
        assert_eq!(words[3].text, r.meta());
        assert!(set_call(&Route { host: "a b".into(), ..route() }).is_err());
        assert!(switch_call(&Route { host: "a b".into(), ..route() }).is_err());
    }

    #[test]
    fn the_deploy_switch_carries_the_maintenance_variant_around_the_message() {
        let call = switch_call(&route()).unwrap();
        let words: Vec<String> = crate::shell::split(&call).unwrap().into_iter().map(|w| w.text).collect();
        assert_eq!(words.len(), 7);
        assert_eq!(words[4], "keep");
        // What the target puts together from the meta file's JSON message: the maintenance route.
        let message = "back \"soon\" é";
        let stored = serde_json::to_string(message).unwrap();
        let assembled = format!("{}{}\\n\"{}", words[5], &stored[..stored.len() - 1], words[6]);
        let json: Value = serde_json::from_str(&assembled).unwrap();
        assert_eq!(json, Route { maintenance: Some(message.into()), ..route() }.caddy_route());
    }

    #[test]
    fn upstreams_are_read_strictly() {
        let text = r#"[{"address":"web-prod-1:80","num_requests":2,"fails":0},{"address":"x:80","num_requests":0,"healthy":true}]"#;
        let ups = parse_upstreams(text).unwrap();
        assert_eq!(
            ups[0],
            Upstream { address: "web-prod-1:80".into(), num_requests: 2, fails: 0, healthy: None }
        );
        assert_eq!(ups[1].healthy, Some(true));
        assert_eq!(parse_upstreams("null\n"), Err("not a JSON array".into()));
        assert!(parse_upstreams("[{\"address\":\"a\"}]").is_err());
        assert!(parse_upstreams("").is_err());
    }

    #[test]
    fn the_table_reports_unreadable_and_misnamed_route_files() {
        let good = route().meta().lines().map(|l| format!("| {l}\n")).collect::<String>();
        let text = format!(
            "--- proxy\ntrue caddy:2\n--- version\nv2.6.2 h1:abc\n--- network\nferry\n--- upstreams\n\
             [{{\"address\":\"web-prod-0193abcd:8080\",\"num_requests\":1}}]\n--- containers\nweb-prod running\nferry-proxy running\n\
             --- route web@prod.meta\n{good}\n--- route other@prod.meta\n{good}\n--- route bad@x.meta\n| app=bad\n| --- route forged\n\n"
        );
        let table = parse_table(&text);
        assert_eq!(
            table.proxy,
            Some(ProxyContainer {
                running: true,
                image: "caddy:2".into(),
                version: Some("v2.6.2".into()),
                migrate: None
            })
        );
        assert!(table.network);
        assert_eq!(table.routes, vec![route()]);
        assert_eq!(table.upstreams.len(), 1);
        assert_eq!(table.containers.get("web-prod"), Some(&true));
        let bad: Vec<&str> = table.unreadable.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(bad, ["other@prod", "bad@x"]);
        assert!(table.unreadable[0].error.contains("describes web@prod"));
    }

    #[test]
    fn the_gate_probe_goes_through_the_proxy() {
        assert_eq!(
            gate_probe_script("web-prod-1", 80, "/up", 2),
            "docker exec ferry-proxy timeout 2 wget -q -O /dev/null http://web-prod-1:80/up"
        );
    }

    #[test]
    fn the_proxy_image_is_pulled_with_the_feeds_login_and_the_password_stays_off_the_script() {
        let login = Login {
            registry: "registry.example.com".into(),
            username: "deploy".into(),
            password: crate::secret::Secret::new("pa55-word"),
        };
        for script in [
            ensure_script("registry.example.com/caddy:2", Some(&login)),
            reboot_script("registry.example.com/caddy:2", Some(&login), false),
        ] {
            assert!(!script.contains("pa55-word"), "{script}");
            let login_at =
                script.find("docker login --username deploy --password-stdin registry.example.com").unwrap();
            let pull_at = script.find("docker pull registry.example.com/caddy:2").unwrap();
            let logout_at = script.find(crate::docker::LOGOUT).unwrap();
            assert!(login_at < pull_at && pull_at < logout_at, "{script}");
        }
        // Without a login: no login step, the pull and the rest as before.
        for script in [ensure_script("caddy:2", None), reboot_script("caddy:2", None, true)] {
            assert!(!script.contains("docker login"), "{script}");
            assert!(script.contains("docker pull caddy:2 > /dev/null || exit 1"), "{script}");
        }
    }

    #[test]
    fn a_reboot_says_whether_it_reloaded_or_recreated_and_why() {
        assert_eq!(
            parse_rebooted("proxy: reloaded\nmigrate=1\n"),
            Rebooted { recreated: None, migrate: Some(true) }
        );
        assert_eq!(
            parse_rebooted("network: created\nproxy: recreated (it ran another image)\nmigrate=0\n"),
            Rebooted { recreated: Some("it ran another image".into()), migrate: Some(false) }
        );
        // No answer from the proxy's namespace is neither "it has it" nor "it has not".
        assert_eq!(parse_rebooted("proxy: reloaded\nmigrate=\n").migrate, None);
        assert_eq!(parse_rebooted("proxy: reloaded\nmigrate=yes\n").migrate, None);
        assert!(
            reboot_script("caddy:2", None, true).contains("ferry_proxy_reboot caddy:2 recreate || exit 1")
        );
        assert!(reboot_script("caddy:2", None, false).contains("ferry_proxy_reboot caddy:2 || exit 1"));
    }

    #[test]
    fn the_proxy_is_created_with_tcp_migrate_req_and_falls_back_without_it() {
        assert!(FUNCTIONS.contains(&format!("--sysctl {MIGRATE_SYSCTL}=1")));
        let table = parse_table("--- proxy\ntrue caddy:2\n--- migrate\n0\n--- network\nferry\n");
        assert_eq!(table.proxy.unwrap().migrate, Some(false));
        let table = parse_table("--- proxy\ntrue caddy:2\n--- migrate\n1\n");
        assert_eq!(table.proxy.unwrap().migrate, Some(true));
        let table = parse_table("--- proxy\ntrue caddy:2\n--- migrate\nyes\n");
        assert_eq!(table.proxy.unwrap().migrate, None, "read strictly");
    }

    /// A `docker` for [`FUNCTIONS`] on this machine, for a fault the lab's kernel cannot produce
    /// (it has `tcp_migrate_req`): `start` fails as runc does on Linux < 5.14 when the container
    /// was created with the sysctl. Logs every call to `$FAKE/calls`.
    const OLD_KERNEL_DOCKER: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE/calls"
case "$1" in
  create) case "$*" in *tcp_migrate_req*) touch "$FAKE/sysctl" ;; *) rm -f "$FAKE/sysctl" ;; esac ;;
  start) if [ -f "$FAKE/sysctl" ]; then
      echo 'Error response from daemon: failed to create task for container: runc create failed: open /proc/sys/net/ipv4/tcp_migrate_req: no such file or directory: unknown' >&2
      exit 1
    fi ;;
esac
exit 0
"#;

    /// A temporary home with a fake `docker` (the script `docker`) first on `PATH`.
    fn fake_home(docker: &str) -> tempfile::TempDir {
        let fake = tempfile::tempdir().unwrap();
        let bin = fake.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("docker"), docker).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(bin.join("docker")).status().unwrap();
        fake
    }

    /// Runs `call` after [`FUNCTIONS`] in `fake` (from [`fake_home`]).
    fn run_functions(fake: &tempfile::TempDir, call: &str) -> std::process::Output {
        let bin = fake.path().join("bin");
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{FUNCTIONS}\n{call}"))
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("HOME", fake.path())
            .env("FAKE", fake.path())
            .output()
            .unwrap()
    }

    #[test]
    fn on_a_kernel_without_tcp_migrate_req_the_proxy_is_created_again_without_it() {
        let fake = fake_home(OLD_KERNEL_DOCKER);
        let out = run_functions(&fake, "ferry_proxy_run img:1");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout, "proxy: no tcp_migrate_req\n");
        let calls = std::fs::read_to_string(fake.path().join("calls")).unwrap();
        let calls: Vec<&str> = calls.lines().map(|l| l.split(" -v ").next().unwrap_or(l)).collect();
        assert_eq!(
            calls,
            [
                "create --name ferry-proxy --restart unless-stopped --network ferry -p 80:80 -p 443:443 \
                 --sysctl net.ipv4.tcp_migrate_req=1",
                "start ferry-proxy",
                "rm -f ferry-proxy",
                "create --name ferry-proxy --restart unless-stopped --network ferry -p 80:80 -p 443:443",
                "start ferry-proxy",
            ]
        );
        let created = std::fs::read_to_string(fake.path().join("calls")).unwrap();
        assert!(created.contains("--label ferry.proxy.boot=2-nomigrate img:1"), "{created}");
    }

    /// A `docker` for [`FUNCTIONS`]'s reboot on this machine: the proxy's state comes from
    /// `$FAKE/state` (`RUNNING`, `CID`: the container's image id, `IID`: the pulled image's id,
    /// empty when `image inspect` fails, `LABEL`, `RELOAD`: `caddy reload`'s exit code). Logs
    /// every call to `$FAKE/calls` and the config each reload read to `$FAKE/loaded`; `ADMIN`: the
    /// admin API's answer (`wget`'s exit code, 0 when unset).
    const REBOOT_DOCKER: &str = r#"#!/bin/sh
. "$FAKE/state"
echo "$*" >> "$FAKE/calls"
case "$1 $2 $3" in
  "inspect -f {{.State.Running}}") echo "$RUNNING" ;;
  "inspect -f {{.Image}}") echo "$CID" ;;
  "inspect -f {{index .Config.Labels \"ferry.proxy.boot\"}}") echo "$LABEL" ;;
  "image inspect -f") [ -n "$IID" ] || { echo "Error: No such image" >&2; exit 1; }; echo "$IID" ;;
  "exec ferry-proxy caddy") cat "$HOME/.ferry/proxy/caddy.json" > "$FAKE/loaded"; exit "$RELOAD" ;;
  "exec ferry-proxy wget") exit "${ADMIN:-0}" ;;
esac
exit 0
"#;

    /// Runs `ferry_proxy_reboot img:1 ARGS` with [`REBOOT_DOCKER`] in `state`, a route table of
    /// one route and a `caddy.json` that says `previous`: (success, stdout, stderr, calls).
    fn fake_reboot(state: &str, args: &str) -> (bool, String, String, String, tempfile::TempDir) {
        let fake = fake_home(REBOOT_DOCKER);
        let routes = fake.path().join(".ferry/proxy/routes");
        std::fs::create_dir_all(&routes).unwrap();
        std::fs::write(fake.path().join("state"), state).unwrap();
        std::fs::write(routes.join("web@prod.meta"), "app=web\nenvironment=prod\nhost=web.example.com\n")
            .unwrap();
        std::fs::write(routes.join("web@prod.route.json"), "{\"ROUTE\":\"web\"}\n").unwrap();
        std::fs::write(fake.path().join(".ferry/proxy/caddy.json"), "previous\n").unwrap();
        let out = run_functions(&fake, &format!("ferry_proxy_reboot img:1 {args}"));
        let calls = std::fs::read_to_string(fake.path().join("calls")).unwrap_or_default();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr), calls, fake)
    }

    const SAME: &str = "RUNNING=true CID=sha256:a IID=sha256:a LABEL=2 RELOAD=0\n";

    #[test]
    fn a_reboot_of_a_proxy_that_runs_the_image_loads_the_whole_table_in_the_same_container() {
        for label in ["2", "2-nomigrate"] {
            let state = SAME.replace("LABEL=2", &format!("LABEL={label}"));
            let (ok, stdout, stderr, calls, fake) = fake_reboot(&state, "");
            assert!(ok, "{stdout}{stderr}");
            assert_eq!(stdout, "proxy: reloaded\n", "{label}");
            assert!(
                calls.contains("exec ferry-proxy caddy reload --config /etc/ferry-proxy/caddy.json --force")
            );
            assert!(!calls.contains("create") && !calls.contains("rm -f ferry-proxy"), "{calls}");
            // What was loaded is the table assembled again, not the caddy.json that was there.
            let loaded = std::fs::read_to_string(fake.path().join("loaded")).unwrap();
            assert!(loaded.contains("{\"ROUTE\":\"web\"}") && !loaded.contains("previous"), "{loaded}");
            assert!(!fake.path().join(".ferry/proxy/.caddy.json.previous").exists());
        }
    }

    #[test]
    fn a_reboot_recreates_the_proxy_and_says_why_when_it_must() {
        for (state, args, why) in [
            (SAME.to_string(), "recreate", "--recreate"),
            (SAME.replace("RUNNING=true", "RUNNING=false"), "", "it was not running"),
            (SAME.replace("RUNNING=true", "RUNNING="), "", "it was not running"),
            (SAME.replace("CID=sha256:a", "CID=sha256:b"), "", "it ran another image"),
            (SAME.replace("IID=sha256:a", "IID="), "", "it ran another image"),
            (SAME.replace("LABEL=2", "LABEL='<no value>'"), "", "created by another ferry version"),
            (SAME.replace("LABEL=2", "LABEL=3"), "", "created by another ferry version"),
        ] {
            let (ok, stdout, stderr, calls, fake) = fake_reboot(&state, args);
            assert!(ok, "{why}: {stdout}{stderr}");
            assert_eq!(stdout, format!("proxy: recreated ({why})\n"), "{state}");
            let steps: Vec<&str> = calls
                .lines()
                .filter(|l| !l.starts_with("inspect") && !l.starts_with("image") && !l.starts_with("network"))
                .collect();
            assert_eq!(steps.len(), 6, "{calls}");
            assert!(
                steps[1].starts_with("create --name ferry-proxy-next") && steps[1].contains("--sysctl"),
                "{calls}"
            );
            assert!(steps[1].contains("--label ferry.proxy.boot=2 img:1"), "{calls}");
            assert_eq!(
                &steps[2..5],
                ["rm -f ferry-proxy", "start ferry-proxy-next", "rename ferry-proxy-next ferry-proxy"]
            );
            assert!(steps[5].starts_with("exec ferry-proxy wget"), "waits for the admin API: {calls}");
            let config = std::fs::read_to_string(fake.path().join(".ferry/proxy/caddy.json")).unwrap();
            assert!(
                config.contains("{\"ROUTE\":\"web\"}"),
                "the new container starts from the table: {config}"
            );
        }
    }

    #[test]
    fn a_reload_the_proxy_refuses_fails_and_puts_back_the_config_it_runs() {
        let (ok, stdout, stderr, _, fake) = fake_reboot(&SAME.replace("RELOAD=0", "RELOAD=1"), "");
        assert!(!ok, "{stdout}");
        assert_eq!(stdout, "");
        assert!(
            stderr.ends_with(
                "the proxy did not load the route table; its previous configuration stays in place\n"
            ),
            "{stderr}"
        );
        // A restart of the container must not start from a table the proxy refused.
        let config = std::fs::read_to_string(fake.path().join(".ferry/proxy/caddy.json")).unwrap();
        assert_eq!(config, "previous\n");
        // A proxy that does not answer (crash-looping on a bad caddy.json, say) gets the table
        // for its next start, not the config it could not run.
        let state = SAME.replace("RELOAD=0", "RELOAD=1 ADMIN=1");
        let (ok, stdout, stderr, _, fake) = fake_reboot(&state, "");
        assert!(!ok, "{stdout}");
        assert!(
            stderr.ends_with("its admin API does not answer: ferry proxy reboot --recreate\n"),
            "{stderr}"
        );
        let config = std::fs::read_to_string(fake.path().join(".ferry/proxy/caddy.json")).unwrap();
        assert!(config.contains("{\"ROUTE\":\"web\"}"), "{config}");
        assert!(!fake.path().join(".ferry/proxy/.caddy.json.previous").exists());
    }

    #[test]
    fn messages_are_checked() {
        assert!(check_message("ok").is_ok());
        assert!(check_message(" ").is_err());
        assert!(check_message("a\0b").is_err());
        assert!(check_message(&"x".repeat(MESSAGE_MAX + 1)).is_err());
    }
}
