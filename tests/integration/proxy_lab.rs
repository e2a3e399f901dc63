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
    assert_eq!(runtime.block_on(proxy::ensure(host, &image)).unwrap(), proxy::Ensured::Booted);
    let id = on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy");
    assert_eq!(runtime.block_on(proxy::ensure(host, &image)).unwrap(), proxy::Ensured::Running);
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

    // Maintenance on and off for a live app.
    let on = runtime.block_on(proxy::maintenance(host, "pxp-web", "pxp-a", Some("web is resting"))).unwrap();
    assert_eq!(on.maintenance.as_deref(), Some("web is resting"));
    assert_eq!(curl("web.pxp.test", "/", None), (503, "web is resting".into()));
    runtime.block_on(proxy::maintenance(host, "pxp-web", "pxp-a", None)).unwrap();
    assert_eq!(curl("web.pxp.test", "/", None), (200, "ferry web 1.0".into()));
    let err = runtime.block_on(proxy::maintenance(host, "pxp-none", "pxp-a", Some("x"))).unwrap_err();
    assert!(err.to_string().contains("pxp-none has no route in pxp-a here"), "{err}");

    // A reboot recreates the proxy and every route comes back from the files.
    runtime.block_on(proxy::reboot(host, &image)).unwrap();
    assert_ne!(on_host(&lab, 6, "docker inspect -f '{{.Id}}' ferry-proxy"), id);
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
