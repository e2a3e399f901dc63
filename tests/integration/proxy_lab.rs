//! The proxy (issue 15) against the lab: a real `ferry-proxy` (the lab's `ferry/caddy:2.6.2`,
//! Debian's Caddy) on host h6, driven through ferry's library over real SSH, and probed from
//! the lab's host side with `curl` and Host headers, over HTTP and HTTPS (Caddy's internal CA).
//!
//! Host h6 (10.200.0.16) is this file's alone (environment names `pxp-*`): tests here reboot the
//! proxy, so they hold [`H6`] and run one at a time.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::host::Host;
use ferry::proxy::{self, Route, Tls};

use crate::lab::{Lab, lab};

/// Held by every test that uses h6's proxy.
pub static H6: Mutex<()> = Mutex::new(());

/// h6's address: its :80 and :443 are the proxy's.
const H6_ADDR: &str = "10.200.0.16";

/// The proxy image the lab built (`FERRY_LAB_PROXY_IMAGE` in lab.env).
pub fn proxy_image(lab: &Lab) -> String {
    let env = std::fs::read_to_string(lab.dir.join("lab.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix("FERRY_LAB_PROXY_IMAGE="))
        .expect("lab.env has FERRY_LAB_PROXY_IMAGE: the lab is older than the proxy image")
        .to_string()
}

/// Runs `script` inside host `n`'s namespaces (its dockerd, its /root); returns stdout and fails
/// the test when it fails.
pub fn on_host(lab: &Lab, n: usize, script: &str) -> String {
    let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
    let out =
        Command::new("nsenter").args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "on h{n}: {script}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts h6 clean: no proxy, no route table, no container of this file's environments.
pub fn clean_h6(lab: &Lab) {
    on_host(
        lab,
        6,
        "docker ps -aq --filter name=pxp- | xargs -r docker rm -f > /dev/null; \
         docker rm -f ferry-proxy > /dev/null 2>&1; docker volume rm ferry-proxy-data ferry-proxy-config > /dev/null 2>&1; \
         rm -rf /root/.ferry/proxy /root/.ferry/locks/pxp-*; true",
    );
}

/// An SSH connection to h6 as ferry opens it.
async fn connect(lab: &Lab) -> Arc<dyn Host> {
    let inventory = ferry::inventory::Inventory::load(&lab.dir.join("lab.toml")).unwrap();
    let options = ferry::commands::ssh_options(&inventory, Duration::from_secs(10)).unwrap();
    ferry::host::open(&inventory, inventory.target("h6").unwrap(), &options).await.unwrap()
}

/// `curl` from the lab's host side: status code and body, for `url` with `Host: host` (HTTP) or
/// resolved to h6 (HTTPS, trusting `ca`).
pub fn curl(host: &str, url_path: &str, https_ca: Option<&std::path::Path>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
    match https_ca {
        Some(ca) => {
            command
                .args(["--resolve", &format!("{host}:443:{H6_ADDR}")])
                .arg("--cacert")
                .arg(ca)
                .arg(format!("https://{host}{url_path}"));
        }
        None => {
            command.args(["-H", &format!("Host: {host}"), &format!("http://{H6_ADDR}{url_path}")]);
        }
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim_end_matches('\n').to_string())
}

/// Starts `ferry/web:VERSION` as `name` on network ferry with alias `alias` on h6.
pub fn start_app(lab: &Lab, name: &str, alias: &str, version: &str) {
    on_host(
        lab,
        6,
        &format!(
            "docker run -d --name {name} --network ferry --network-alias {alias} --stop-timeout 1 \
             10.200.0.1:5000/ferry/web:{version} httpd -f -p 80 -h /www > /dev/null"
        ),
    );
}

/// A route on h6 for the tests (health `/`: every ferry/web version serves it).
fn route(app: &str, env: &str, host: &str, tls: Option<Tls>) -> Route {
    Route {
        app: app.into(),
        environment: env.into(),
        host: host.into(),
        path: None,
        port: 80,
        health: "/".into(),
        tls,
        upstream: format!("{app}-{env}-1"),
        container: format!("{app}-{env}"),
        deployment: "pxp-test".into(),
        maintenance: None,
    }
}

/// Polls `check` for up to 10 s (Caddy issues the internal certificate right after a load).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("not within 10 s: {what}");
}

#[test]
fn a_real_caddy_serves_two_apps_tls_internal_and_maintenance_from_the_route_table() {
    let _h6 = H6.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab();
    clean_h6(&lab);
    let image = proxy_image(&lab);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let host = runtime.block_on(connect(&lab));
    let host = &*host;

    // Booted on first need, then left alone.
    assert_eq!(runtime.block_on(proxy::ensure(host, &image, None)).unwrap(), proxy::Ensured::Booted);
    let id = on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy");
    assert_eq!(runtime.block_on(proxy::ensure(host, &image, None)).unwrap(), proxy::Ensured::Running);
    assert_eq!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    assert_eq!(
        on_host(&lab, 6, "docker network inspect -f '{{.Labels}}' ferry").trim(),
        "map[ferry.managed:true]"
    );

    // Two apps, one of them on HTTPS with the internal CA, one in maintenance.
    start_app(&lab, "pxp-web-pxp-a", "pxp-web-pxp-a-1", "1.0");
    start_app(&lab, "pxp-api-pxp-b", "pxp-api-pxp-b-1", "2.0");
    let web = route("pxp-web", "pxp-a", "web.pxp.test", None);
    let api = route("pxp-api", "pxp-b", "api.pxp.test", Some(Tls::Internal));
    let message = "back at 5 \"o'clock\" $(touch /tmp/x) \\ <b>ü</b>";
    let down =
        Route { maintenance: Some(message.into()), ..route("pxp-down", "pxp-a", "down.pxp.test", None) };
    for r in [&web, &api, &down] {
        runtime.block_on(proxy::switch(host, r)).unwrap();
    }
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    assert_eq!(curl("down.pxp.test", "/anything", None), (503, message.into()));
    let ca = tempfile::NamedTempFile::new().unwrap();
    eventually("the internal CA's root exists", || {
        let root = on_host(
            &lab,
            6,
            "docker exec ferry-proxy cat /data/caddy/pki/authorities/local/root.crt 2>/dev/null || true",
        );
        std::fs::write(ca.path(), &root).unwrap();
        root.contains("BEGIN CERTIFICATE")
    });
    eventually("api.pxp.test answers on HTTPS", || {
        curl("api.pxp.test", "/", Some(ca.path())) == (200, "ferry web 2.0".into())
    });
    // Plain HTTP to a TLS host is redirected to HTTPS, not served.
    assert_eq!(curl("api.pxp.test", "/", None).0, 308);

    // The table reads back, every route readable, the upstreams listed.
    let table = runtime.block_on(proxy::read(host)).unwrap();
    assert_eq!(table.proxy.as_ref().map(|p| (p.running, p.image.as_str())), Some((true, image.as_str())));
    assert_eq!(table.proxy.as_ref().unwrap().version.as_deref(), Some("2.6.2"));
    assert!(table.network);
    let mut keys: Vec<String> = table.routes.iter().map(Route::key).collect();
    keys.sort();
    assert_eq!(keys, ["pxp-api@pxp-b", "pxp-down@pxp-a", "pxp-web@pxp-a"]);
    assert_eq!(table.unreadable, []);
    assert_eq!(runtime.block_on(proxy::in_flight(host, &web.dial())).unwrap(), Some(0));

    // A config Caddy refuses: nothing changes, Caddy's error is told, the files are back.
    let before = on_host(&lab, 6, "cat /root/.ferry/proxy/caddy.json; ls /root/.ferry/proxy/routes");
    let mut out = ferry::exec::Capture::default();
    let script = format!(
        "{}\nferry_proxy_set pxp-bad@pxp-a '{{\"handle\":[{{\"handler\":\"no_such_handler\"}}]}}' 'host=bad.pxp.test'",
        proxy::FUNCTIONS
    );
    let status = runtime.block_on(host.exec(&script, None, Some(Duration::from_secs(60)), &mut out)).unwrap();
    assert!(!status.success());
    assert!(out.errors().contains("no_such_handler"), "{}", out.errors());
    assert!(out.errors().contains("the previous routes are back in place"), "{}", out.errors());
    assert_eq!(on_host(&lab, 6, "cat /root/.ferry/proxy/caddy.json; ls /root/.ferry/proxy/routes"), before);
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));

    // An unreadable meta file is reported and left alone.
    on_host(&lab, 6, "printf 'app=x\\nbogus=1\\n' > /root/.ferry/proxy/routes/pxp-junk@pxp-a.meta");
    let table = runtime.block_on(proxy::read(host)).unwrap();
    assert_eq!(table.unreadable.len(), 1, "{:?}", table.unreadable);
    assert_eq!(table.unreadable[0].key, "pxp-junk@pxp-a");
    assert!(table.unreadable[0].error.contains("unknown key \"bogus\""), "{:?}", table.unreadable);
    on_host(&lab, 6, "rm /root/.ferry/proxy/routes/pxp-junk@pxp-a.meta");
    // Nor is such a route loaded into Caddy, though its route file is fine.
    let junk =
        Route { upstream: "pxp-web-pxp-a-1".into(), ..route("pxp-junk", "pxp-a", "junk.pxp.test", None) };
    let junk_json = serde_json::to_string(&junk.caddy_route()).unwrap();
    on_host(
        &lab,
        6,
        &format!(
            "cd /root/.ferry/proxy/routes && printf '%s\\n' '{junk_json}' > pxp-junk@pxp-a.route.json && \
             printf '%sbogus=1\\n' '{}' > pxp-junk@pxp-a.meta",
            junk.meta()
        ),
    );
    runtime.block_on(proxy::switch(host, &web)).unwrap();
    assert_ne!(curl("junk.pxp.test", "/", None).1, "ferry web 1.0");
    on_host(&lab, 6, "sed -i '/^bogus=/d' /root/.ferry/proxy/routes/pxp-junk@pxp-a.meta");
    runtime.block_on(proxy::switch(host, &web)).unwrap();
    assert_eq!(
        curl("junk.pxp.test", "/", None),
        (200, "ferry web 1.0".into()),
        "the same route, readable, is served"
    );
    on_host(&lab, 6, "rm /root/.ferry/proxy/routes/pxp-junk@pxp-a.*");

    // Maintenance on and off for a live app.
    let on = runtime.block_on(proxy::maintenance(host, "pxp-web", "pxp-a", Some("web is resting"))).unwrap();
    assert_eq!(on.maintenance.as_deref(), Some("web is resting"));
    assert_eq!(curl("web.pxp.test", "/", None), (503, "web is resting".into()));
    runtime.block_on(proxy::maintenance(host, "pxp-web", "pxp-a", None)).unwrap();
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    let err = runtime.block_on(proxy::maintenance(host, "pxp-none", "pxp-a", Some("x"))).unwrap_err();
    assert!(err.to_string().contains("pxp-none has no route in pxp-a here"), "{err}");

    // A reboot of a proxy that runs the image loads the table again in the same container; with
    // `recreate`, a new container, and every route comes back from the files. First the running
    // Caddy loses every route (its config changed behind ferry's back, Kamal #1552): a reload
    // that only kept what runs would leave them lost.
    on_host(
        &lab,
        6,
        "printf '%s' '{\"admin\":{\"listen\":\"localhost:2019\"}}' | docker exec -i ferry-proxy sh -c \
         'cat > /tmp/bare.json && caddy reload --config /tmp/bare.json --force' > /dev/null 2>&1",
    );
    assert_ne!(curl("web.pxp.test", "/", None).0, 200, "the running Caddy lost its routes");
    let rebooted = runtime.block_on(proxy::reboot(host, &image, None, false)).unwrap();
    assert_eq!(rebooted, proxy::Rebooted { recreated: None, migrate: Some(true) });
    assert_eq!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    assert_eq!(curl("down.pxp.test", "/", None), (503, message.into()));
    let rebooted = runtime.block_on(proxy::reboot(host, &image, None, true)).unwrap();
    assert_eq!(rebooted, proxy::Rebooted { recreated: Some("--recreate".into()), migrate: Some(true) });
    assert_ne!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    assert_eq!(
        on_host(&lab, 6, "docker inspect -f '{{index .Config.Labels \"ferry.proxy.boot\"}}' ferry-proxy"),
        "2\n",
        "labelled with the way this ferry creates it"
    );
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    assert_eq!(curl("down.pxp.test", "/", None), (503, message.into()));
    eventually("api.pxp.test answers on HTTPS after the reboot", || {
        curl("api.pxp.test", "/", Some(ca.path())) == (200, "ferry web 2.0".into())
    });

    // Removing one route leaves the others.
    assert!(runtime.block_on(proxy::remove(host, "pxp-web", "pxp-a")).unwrap());
    assert!(!runtime.block_on(proxy::remove(host, "pxp-web", "pxp-a")).unwrap());
    assert_ne!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    assert_eq!(curl("down.pxp.test", "/", None), (503, message.into()));
    assert_eq!(on_host(&lab, 6, "ls /root/.ferry/proxy/routes").split_whitespace().count(), 4);

    // The gate probe reaches an app through the network, and fails on a 404.
    let probe = |path: &str| {
        on_host(
            &lab,
            6,
            &format!(
                "{} 2>&1 && echo ok || echo no",
                proxy::gate_probe_script("pxp-api-pxp-b-1", 80, path, 2)
            ),
        )
        .trim()
        .to_string()
    };
    assert_eq!(probe("/"), "ok");
    let missing = probe("/nope");
    assert!(missing.ends_with("no") && missing.contains("404"), "{missing}");
    runtime.block_on(host.close());
    clean_h6(&lab);
}

/// An inventory in `dir` for host h6: two proxied apps in two environments (`pxp-a`, `pxp-b`),
/// each with its own host name, the lab's proxy image.
fn commands_inventory(lab: &Lab, dir: &std::path::Path) -> String {
    let ssh = lab.dir.join("ssh/client_key").display().to_string();
    let known = lab.dir.join("known_hosts").display().to_string();
    let text = format!(
        "[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n\n\
         [targets.h6]\nhost = \"{H6_ADDR}\"\n\n\
         [feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n\
         [proxy]\nimage = \"{image}\"\ndrain = \"2s\"\n\n\
         [environments.pxp-a]\ntargets = [\"h6\"]\n\n[environments.pxp-b]\ntargets = [\"h6\"]\n\n\
         [apps.pxp-web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
         proxy = {{ host = \"web.pxp.test\", port = 80, health = \"/up\" }}\n\
         [apps.pxp-web.environments.pxp-b]\nproxy = {{ host = \"web-b.pxp.test\" }}\n\n\
         [apps.pxp-api]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
         proxy = {{ host = \"api.pxp.test\", port = 80, health = \"/up\", tls = \"internal\" }}\n\
         [apps.pxp-api.environments.pxp-b]\nproxy = {{ host = \"api-b.pxp.test\" }}\n",
        image = proxy_image(lab)
    );
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/web.j2"),
        "docker run --restart unless-stopped --stop-timeout 1\n  {{ image }}\n",
    )
    .unwrap();
    dir.join("ferry.toml").display().to_string()
}

/// Runs the built `ferry -i INVENTORY ARGS` with its own state folder; returns (exit code,
/// stdout, stderr).
fn ferry_in(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(crate::test::binary())
        .args(["-i", &dir.join("ferry.toml").display().to_string()])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_STATE_DIR", dir.join("state"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`ferry_in`] that must exit 0; returns stdout.
fn ferry_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = ferry_in(dir, args);
    assert_eq!(code, 0, "ferry {args:?}:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_commands_boot_reboot_and_maintain_what_deploys_routed_and_remove_drops_one_route() {
    let _h6 = H6.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab();
    clean_h6(&lab);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    commands_inventory(&lab, dir);

    // Boot: idempotent.
    let out = ferry_ok(dir, &["proxy", "boot", "--env", "pxp-a", "--yes", "--output", "plain"]);
    assert!(out.contains(&format!("proxy booted ({})", proxy_image(&lab))), "{out}");
    let id = on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy");
    let out = ferry_ok(dir, &["proxy", "boot", "--env", "pxp-b", "--yes", "--output", "plain"]);
    assert!(out.contains("proxy already running"), "{out}");
    assert_eq!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);

    // Two apps in two environments on one host, each with its own host name.
    for (app, env, version) in [
        ("pxp-web", "pxp-a", "1.0"),
        ("pxp-api", "pxp-a", "1.1"),
        ("pxp-web", "pxp-b", "2.0"),
        ("pxp-api", "pxp-b", "1.0"),
    ] {
        ferry_ok(dir, &["deploy", app, "--env", env, "--version", version, "--yes", "--output", "plain"]);
    }
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        ca.path(),
        on_host(&lab, 6, "docker exec ferry-proxy cat /data/caddy/pki/authorities/local/root.crt"),
    )
    .unwrap();
    let all_answer = |why: &str| {
        assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()), "{why}");
        assert_eq!(curl("web-b.pxp.test", "/", None), (200, "ferry web 2.0".into()), "{why}");
        eventually(why, || curl("api.pxp.test", "/", Some(ca.path())) == (200, "ferry web 1.1".into()));
        eventually(why, || curl("api-b.pxp.test", "/", Some(ca.path())) == (200, "ferry web 1.0".into()));
    };
    all_answer("after the deploys");

    // Status shows every route on the host, whatever its environment.
    let out = ferry_ok(dir, &["proxy", "status", "--env", "pxp-a", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["problems"], false, "{out}");
    let routes = status["targets"][0]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 4, "{out}");
    assert!(routes.iter().all(|r| r["container_state"] == "running" && r["maintenance"].is_null()), "{out}");
    let out = ferry_ok(dir, &["proxy", "status", "--env", "pxp-b"]);
    assert!(out.contains("h6      pxp-api  pxp-b  api-b.pxp.test (tls internal)"), "{out}");

    // Maintenance on: 503 with the message for that app in that environment only; off: the app.
    let message = "Back at 10:00 UTC — \"sorry\" $(nothing) 'here'";
    ferry_ok(dir, &["maintenance", "on", "pxp-web", "--env", "pxp-a", "--yes", "--message", message]);
    assert_eq!(curl("web.pxp.test", "/", None), (503, message.into()));
    assert_eq!(curl("web-b.pxp.test", "/", None), (200, "ferry web 2.0".into()));
    let out = ferry_ok(dir, &["proxy", "status", "--env", "pxp-a", "--output", "plain"]);
    assert!(out.contains("route\th6\tpxp-web\tpxp-a\tweb.pxp.test\t"), "{out}");
    assert!(out.contains(&format!("maintenance: {message:?}")), "{out}");
    ferry_ok(dir, &["maintenance", "off", "pxp-web", "--env", "pxp-a", "--yes"]);
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    // A proxy removed by hand is booted again by maintenance, with every route from the table.
    on_host(&lab, 6, "docker rm -f ferry-proxy > /dev/null");
    let out =
        ferry_ok(dir, &["maintenance", "on", "pxp-api", "--env", "pxp-b", "--yes", "--output", "plain"]);
    assert!(out.contains("proxy booted"), "{out}");
    assert_eq!(curl("api-b.pxp.test", "/", Some(ca.path())), (503, "pxp-api is under maintenance".into()));
    ferry_ok(dir, &["maintenance", "off", "pxp-api", "--env", "pxp-b", "--yes"]);
    // Both on the record, with the action and the message.
    let audit = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    let started: Vec<serde_json::Value> = crate::lab::json_lines(&audit)
        .into_iter()
        .filter(|r| r["command"] == "maintenance" && r["kind"] == "run_started")
        .collect();
    assert_eq!(started.len(), 4, "{audit}");
    assert_eq!(started[0]["app"], "pxp-web");
    assert_eq!(started[0]["environment"], "pxp-a");
    assert_eq!(
        started[0]["detail"]["notes"],
        serde_json::json!({ "action": "on", "message": message }),
        "{audit}"
    );
    assert_eq!(started[1]["detail"]["notes"], serde_json::json!({ "action": "off" }), "{audit}");
    let finished = crate::lab::json_lines(&audit)
        .into_iter()
        .filter(|r| r["command"] == "maintenance" && r["kind"] == "run_finished")
        .count();
    assert_eq!(finished, 4, "{audit}");

    let history = ferry_ok(dir, &["history", "pxp-web", "--env", "pxp-a"]);
    assert!(history.contains("maintenance"), "{history}");

    // A reboot from one environment re-applies every route on the host from its files.
    ferry_ok(dir, &["proxy", "reboot", "--env", "pxp-b", "--yes"]);
    let history = ferry_ok(dir, &["history", "--env", "pxp-b"]);
    assert!(history.contains("proxy reboot"), "{history}");
    assert_ne!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    all_answer("after the reboot");

    // Remove drops that app's route in that environment, before its container; others stay.
    let out = ferry_ok(dir, &["remove", "pxp-api", "--env", "pxp-b", "--yes", "--output", "plain"]);
    assert!(out.contains("removed its route from the proxy"), "{out}");
    assert_ne!(curl("api-b.pxp.test", "/", Some(ca.path())).0, 200);
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    assert_eq!(curl("api.pxp.test", "/", Some(ca.path())), (200, "ferry web 1.1".into()));
    let files = on_host(&lab, 6, "ls /root/.ferry/proxy/routes");
    assert!(!files.contains("pxp-api@pxp-b"), "{files}");
    assert_eq!(files.split_whitespace().count(), 6, "{files}");

    // Maintenance survives a deploy (maintenance, deploy with migrations, check, off) and off
    // then reaches the new version.
    ferry_ok(dir, &["maintenance", "on", "pxp-web", "--env", "pxp-a", "--yes", "--message", message]);
    ferry_ok(dir, &["deploy", "pxp-web", "--env", "pxp-a", "--version", "1.1", "--yes", "--output", "plain"]);
    assert_eq!(curl("web.pxp.test", "/", None), (503, message.into()));
    ferry_ok(dir, &["maintenance", "off", "pxp-web", "--env", "pxp-a", "--yes"]);
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.1".into()));

    // A route whose container is gone makes status exit 1, naming it.
    on_host(&lab, 6, "docker rm -f pxp-web-pxp-b > /dev/null");
    let (code, out, _) = ferry_in(dir, &["proxy", "status", "--env", "pxp-a"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("! h6: route pxp-web@pxp-b points at container pxp-web-pxp-b, which is gone"),
        "{out}"
    );
    clean_h6(&lab);
}

/// Runs the built ferry with the secure registry's credentials in its environment; returns
/// (exit code, stdout, stderr), after checking that the password is nowhere in them.
fn ferry_secure(dir: &std::path::Path, password: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(crate::test::binary())
        .args(["-i", &dir.join("ferry.toml").display().to_string()])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env("REG_USER", "tester")
        .env("REG_PASSWORD", password)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stdout.contains(password) && !stderr.contains(password),
        "the password leaked:\n{stdout}\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// One request to h6's :80 over a fresh connection: whether the proxy answered it.
fn answered() -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([10, 200, 0, 16], 80)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET / HTTP/1.1\r\nHost: nobody.pxp.test\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

#[test]
fn the_proxy_image_is_pulled_with_the_proxy_feeds_login_a_reboot_is_short_and_a_held_port_is_named() {
    let _h6 = H6.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab();
    clean_h6(&lab);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let env = std::fs::read_to_string(lab.dir.join("lab.env")).unwrap();
    let secure = env.lines().find_map(|l| l.strip_prefix("FERRY_LAB_SECURE_REGISTRY=")).unwrap().to_string();
    // The lab's proxy image, from the registry that wants a login (same storage as :5000).
    let image = proxy_image(&lab).replace("10.200.0.1:5000", &secure);
    assert_ne!(image, proxy_image(&lab));
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n\n\
             [targets.h6]\nhost = \"{H6_ADDR}\"\n\n\
             [feeds.secure]\nurl = \"https://{secure}\"\nca_file = \"{ca}\"\n\
             username = {{ env = \"REG_USER\" }}\npassword = {{ env = \"REG_PASSWORD\" }}\n\n\
             [proxy]\nimage = \"{image}\"\nfeed = \"secure\"\n\n\
             [environments.pxp-s]\ntargets = [\"h6\"]\n",
            ssh = lab.dir.join("ssh/client_key").display(),
            known = lab.dir.join("known_hosts").display(),
            ca = lab.dir.join("registry2/ca.crt").display(),
        ),
    )
    .unwrap();
    on_host(&lab, 6, &format!("docker rmi -f {image} > /dev/null 2>&1; true"));

    // A wrong password: the pull is refused, nothing is created.
    let (code, _, stderr) = ferry_secure(dir, "wrong", &["proxy", "boot", "--env", "pxp-s", "--yes"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(on_host(&lab, 6, "docker ps -aq --filter name=^/?ferry-proxy$"), "");
    // Boot pulls the image with the feed's login (the password through stdin) and logs out.
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "boot", "--env", "pxp-s", "--yes", "--output", "plain"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("proxy booted ({image})")), "{stdout}");
    let logins = "ls -d /root/.ferry/docker-config-* 2>/dev/null | wc -l";
    assert_eq!(on_host(&lab, 6, logins).trim(), "0");

    // A reboot with the image the proxy runs pulls it with the login and reloads in place.
    let id = on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy");
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "reboot", "--env", "pxp-s", "--yes", "--output", "plain"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("proxy reloaded, same container ({image}); ")), "{stdout}");
    assert_eq!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    assert!(!stdout.contains("s3cret-lab") && !stderr.contains("s3cret-lab"));

    // Reboot pulls again (the registry wants the login for the manifest too); `--recreate` swaps
    // the container fast: the longest time h6's :80 did not answer while it was recreated.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut last_ok, mut longest) = (Instant::now(), Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if answered() {
                    longest = longest.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            longest
        })
    };
    let id = on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy");
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "reboot", "--env", "pxp-s", "--yes", "--recreate"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let gap = probe.join().unwrap();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("proxy recreated: --recreate ({image}); ")), "{stdout}");
    assert_ne!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
    assert_eq!(on_host(&lab, 6, "docker ps -aq --filter name=ferry-proxy-next"), "");
    assert_eq!(on_host(&lab, 6, logins).trim(), "0");
    eprintln!("proxy reboot: h6's :80 did not answer for at most {} ms", gap.as_millis());
    assert!(gap < Duration::from_secs(3), "the reboot's outage: {gap:?}");

    // Another container publishing :80: boot fails naming it, and leaves no proxy behind that
    // would fail again on every start.
    on_host(
        &lab,
        6,
        "docker rm -f ferry-proxy > /dev/null; docker run -d --name pxp-hold80 -p 80:80 \
         10.200.0.1:5000/ferry/web:1.0 httpd -f -p 80 -h /www > /dev/null",
    );
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "boot", "--env", "pxp-s", "--yes"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("the proxy needs the target's ports 80 and 443, which container(s) pxp-hold80 publish"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(on_host(&lab, 6, "docker ps -aq --filter name=^/?ferry-proxy$"), "");
    on_host(&lab, 6, "docker rm -f pxp-hold80 > /dev/null");
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "boot", "--env", "pxp-s", "--yes", "--output", "plain"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("proxy booted"), "{stdout}");

    // A deploy's switch keeps a route in maintenance with the message read back from the target;
    // a maintenance line that is not one JSON string is not spliced into Caddy's config.
    start_app(&lab, "pxp-keep-pxp-s", "pxp-keep-pxp-s-1", "1.0");
    let r = Route {
        app: "pxp-keep".into(),
        environment: "pxp-s".into(),
        ..route("pxp-keep", "pxp-s", "keep.pxp.test", None)
    };
    let switch = format!("{}\n{}\n", proxy::FUNCTIONS, proxy::switch_call(&r).unwrap());
    on_host(&lab, 6, &format!("HOME=/root\n{switch}"));
    assert_eq!(curl("keep.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    let meta = "/root/.ferry/proxy/routes/pxp-keep@pxp-s.meta";
    on_host(
        &lab,
        6,
        &format!("sed -i 's/^maintenance=.*/maintenance=\"a\",\"status_code\":200,\"x\":\"b\"/' {meta}"),
    );
    let tampered = on_host(&lab, 6, &format!("cat {meta} /root/.ferry/proxy/caddy.json"));
    let holder = std::fs::read_to_string(lab.dir.join("net/h6/holder.pid")).unwrap();
    let out = Command::new("nsenter")
        .args(["-t", holder.trim(), "-m", "-n", "sh", "-c", &format!("HOME=/root\n{switch}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the tampered maintenance line was spliced in: {err}");
    assert!(err.contains("has a maintenance line that is not a JSON string; nothing changed"), "{err}");
    assert_eq!(on_host(&lab, 6, &format!("cat {meta} /root/.ferry/proxy/caddy.json")), tampered);
    assert_eq!(curl("keep.pxp.test", "/", None), (200, "ferry web 1.0".into()));

    // An image without wget: the reboot says so at once instead of waiting 30 s for the admin API.
    let nowget = "10.200.0.1:5000/pxp/nowget:1";
    on_host(
        &lab,
        6,
        &format!(
            "docker rm -f pxp-nowget > /dev/null 2>&1; docker run --name pxp-nowget {image} rm /bin/wget && \
             docker commit pxp-nowget {nowget} > /dev/null && docker rm pxp-nowget > /dev/null && \
             docker push {nowget} > /dev/null"
        ),
    );
    let started = Instant::now();
    let (code, stdout, stderr) =
        ferry_secure(dir, "s3cret-lab", &["proxy", "reboot", "--env", "pxp-s", "--yes", "--image", nowget]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("the proxy image has no wget (ferry needs caddy, sh, wget and timeout in it)"),
        "{stdout}\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    clean_h6(&lab);
}
