//! Feeds against the lab's real registry (distribution 2.8): plain HTTP on 10.200.0.1:5000 and
//! the same storage behind TLS (a CA of the lab's own) and htpasswd on 10.200.0.1:5001.
//!
//! Two behaviours the real registry cannot show on demand are played by a small in-process
//! proxy in front of it (this is the fake the issue allows, and only these two answers are
//! faked; everything else is forwarded to the real registry unchanged):
//! * tag paging: Debian's registry ignores `n`/`last` and sends no `Link`; the proxy answers
//!   tags/list per the OCI distribution spec (sorted, `n`, `last`, `Link: <…>; rel="next"`);
//! * token auth: the proxy demands a Bearer token, issues one at `/token` for Basic
//!   credentials, and forwards authorised requests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::lab::{json_lines, lab};
use crate::test::Test;

const UPSTREAM: &str = "10.200.0.1:5000";
const TOKEN: &str = "lab-token-7c1d";

/// What the proxy plays.
#[derive(Clone, Copy)]
enum Mode {
    /// Pages tags/list `n` at a time.
    Paginate(usize),
    /// Requires a Bearer token for user tester / password `s3cret-token`.
    Token,
}

/// The proxy: one thread per connection, one request per connection (`Connection: close`).
struct Proxy {
    port: u16,
    tag_pages: Arc<AtomicUsize>,
    tokens_issued: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tag_pages, tokens_issued) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (pages, tokens) = (Arc::clone(&tag_pages), Arc::clone(&tokens_issued));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (pages, tokens) = (Arc::clone(&pages), Arc::clone(&tokens));
                std::thread::spawn(move || serve(stream, mode, port, &pages, &tokens));
            }
        });
        Proxy { port, tag_pages, tokens_issued }
    }
}

fn serve(mut client: TcpStream, mode: Mode, port: u16, pages: &AtomicUsize, tokens: &AtomicUsize) {
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    let (method, target) = (request[0], request.get(1).copied().unwrap_or("/"));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if let Mode::Token = mode {
        if target.starts_with("/token") {
            let good = format!("Basic {}", base64(b"tester:s3cret-token"));
            if header("authorization").as_deref() != Some(good.as_str()) {
                return respond(&mut client, "401 Unauthorized", &[], "{\"errors\":[]}");
            }
            tokens.fetch_add(1, Ordering::SeqCst);
            // `access_token`, not `token`: the client must accept either.
            return respond(
                &mut client,
                "200 OK",
                &[],
                &format!("{{\"access_token\":\"{TOKEN}\",\"expires_in\":300}}"),
            );
        }
        if header("authorization").as_deref() != Some(format!("Bearer {TOKEN}").as_str()) {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"lab\",scope=\"repository:ferry/many:pull\""
            );
            return respond(
                &mut client,
                "401 Unauthorized",
                &[&challenge],
                "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
            );
        }
    }
    let tags_list = target.strip_prefix("/v2/").and_then(|rest| rest.split_once("/tags/list"));
    if let (Mode::Paginate(n), Some((name, query)), "GET") = (mode, tags_list, method) {
        pages.fetch_add(1, Ordering::SeqCst);
        return paginate(&mut client, name, query, n);
    }
    let accept = header("accept").map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let response = upstream(&format!("{method} {target} HTTP/1.0\r\nHost: {UPSTREAM}\r\n{accept}\r\n"));
    let _ = client.write_all(&response);
}

/// tags/list per the OCI spec: lexically sorted, after `last`, at most `n` (or the page size).
fn paginate(client: &mut TcpStream, name: &str, query: &str, page: usize) {
    let response = upstream(&format!("GET /v2/{name}/tags/list HTTP/1.0\r\nHost: {UPSTREAM}\r\n\r\n"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let all: Value = serde_json::from_str(body).unwrap();
    let mut tags: Vec<String> =
        all["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    tags.sort();
    let param = |key: &str| {
        query
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let n = param("n").and_then(|n| n.parse().ok()).unwrap_or(page).min(page);
    let after: Vec<String> = match param("last") {
        Some(last) => tags.into_iter().filter(|t| *t > last).collect(),
        None => tags,
    };
    let chunk: Vec<&String> = after.iter().take(n).collect();
    let mut headers = Vec::new();
    if after.len() > n {
        let last = chunk.last().unwrap();
        headers.push(format!("Link: </v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""));
    }
    let body = serde_json::json!({ "name": name, "tags": chunk }).to_string();
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    respond(client, "200 OK", &refs, &body);
}

fn upstream(request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(UPSTREAM).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    response
}

fn respond(client: &mut TcpStream, status: &str, headers: &[&str], body: &str) {
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        text += h;
        text += "\r\n";
    }
    text += "\r\n";
    text += body;
    let _ = client.write_all(text.as_bytes());
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An inventory with one app on `feed` (TOML of a `[feeds.lab]` table body) and the lab hosts.
fn inventory(dir: &std::path::Path, feed: &str, image: &str, env: &str) -> String {
    let lab = lab();
    let text = format!(
        "[defaults]\nuser = \"root\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n\n\
         [targets.h1]\nhost = \"10.200.0.11\"\n[targets.h2]\nhost = \"10.200.0.12\"\n[targets.h3]\nhost = \"10.200.0.13\"\n\n\
         [feeds.lab]\n{feed}\n\n[environments.{env}]\ntargets = [\"h1\", \"h2\", \"h3\"]\n\n\
         [apps.many]\nfeed = \"lab\"\nimage = \"{image}\"\ntemplate = \"web.j2\"\nhealth = {{ grace = \"1s\" }}\n",
        key = lab.dir.join("ssh/client_key").display(),
        known = lab.dir.join("known_hosts").display(),
    );
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/web.j2"),
        format!("docker run --stop-timeout 1 -p {}:80 {{{{ image }}}}\n", 18300 + env.len()),
    )
    .unwrap();
    dir.join("ferry.toml").display().to_string()
}

/// The 250 version tags of ferry/many (tests/lab/lab.sh), newest first.
fn expected_order() -> Vec<String> {
    let mut out: Vec<String> = (0..25).rev().map(|i| format!("21.0.0.{i}")).collect();
    out.extend((0..25).rev().map(|i| format!("v20.{i}")));
    out.extend((0..200).rev().map(|i| format!("{}.{}.0", i / 10, i % 10)));
    out
}

fn versions(doc: &Value) -> Vec<String> {
    doc["versions"].as_array().unwrap().iter().map(|v| v["tag"].as_str().unwrap().to_string()).collect()
}

#[test]
fn versions_follows_link_pages_to_all_250_tags_in_version_order() {
    let proxy = Proxy::start(Mode::Paginate(20));
    let dir = tempfile::tempdir().unwrap();
    let inv =
        inventory(dir.path(), &format!("url = \"http://127.0.0.1:{}\"", proxy.port), "ferry/many", "f-page");
    let doc = Test::bare()
        .args(["-i", &inv, "versions", "many", "--digests", "2", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert_eq!(versions(&doc), expected_order());
    let ignored: Vec<&str> = doc["ignored"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ignored, ["22.0.0-rc.1", "latest", "main", "sha-3f9a1c7"]);
    assert!(doc["versions"][0]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(doc["versions"][2]["digest"].is_null(), "digests only for the newest --digests");
    // 254 tags at 20 a page: 13 pages, each asked for.
    assert_eq!(proxy.tag_pages.load(Ordering::SeqCst), 13);
}

#[test]
fn tls_and_basic_auth_feed_lists_resolves_and_deploys_and_a_wrong_password_is_refused() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let feed = format!(
        "url = \"https://10.200.0.1:5001\"\nca_file = \"{}\"\nusername = {{ env = \"REG_USER\" }}\npassword = {{ env = \"REG_PASSWORD\" }}",
        lab.dir.join("registry2/ca.crt").display()
    );
    let inv = inventory(dir.path(), &feed, "ferry/web", "f-tls");
    let state = dir.path().join("state").display().to_string();
    let ferry = |args: &[&str], password: &str| {
        Test::bare()
            .args(["-i", &inv])
            .args(args.iter().copied())
            .env("REG_USER", "tester")
            .env("REG_PASSWORD", password)
            .env("FERRY_STATE_DIR", &state)
            .never_prints("s3cret-lab")
    };
    let doc = ferry(&["versions", "many", "--output", "json"], "s3cret-lab").stdout_json().run().json();
    assert_eq!(versions(&doc), ["2.0", "1.1", "1.0"]);
    let wrong = "error: registry 10.200.0.1:5001 refused the credentials: 401 Unauthorized for user tester\n  \
                 = help: check the feed's username and password sources (or `docker login`)\n";
    let refused = ferry(&["versions", "many"], "wrong").code(1).stderr(wrong).run();
    assert!(refused.stderr.contains("refused the credentials"), "{}", refused.stderr);
    let failed = ferry(&["deploy", "many", "--env", "f-tls", "--version", "1.0", "--yes"], "wrong")
        .code(1)
        .stderr(wrong)
        .run();
    assert!(failed.stderr.contains("refused the credentials"), "{}", failed.stderr);
    assert!(!failed.stdout.contains("created"), "nothing was deployed");
    // Without the CA the handshake fails, clearly.
    let no_ca = inventory(dir.path(), "url = \"https://10.200.0.1:5001\"", "ferry/web", "f-tls");
    let tls = Test::bare()
        .args(["-i", &no_ca, "versions", "many"])
        .code(1)
        .stderr_contains("error: registry 10.200.0.1:5001: TLS failed: ")
        .stderr_contains("invalid peer certificate: UnknownIssuer")
        .stderr_contains(" (give the feed's CA certificate as `ca_file`, or check the url's scheme)\n")
        .run();
    assert!(tls.stderr.contains("TLS failed") && tls.stderr.contains("ca_file"), "{}", tls.stderr);
    // With the right password: the targets log in (password through stdin) and pull by digest.
    let inv2 = inventory(dir.path(), &feed, "ferry/web", "f-tls");
    assert_eq!(inv, inv2);
    let mut child = std::process::Command::new(crate::test::binary())
        .args([
            "-i",
            &inv,
            "deploy",
            "many",
            "--env",
            "f-tls",
            "--version",
            "latest",
            "--yes",
            "--output",
            "json",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REG_USER", "tester")
        .env("REG_PASSWORD", "s3cret-lab")
        .env("FERRY_STATE_DIR", &state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                assert!(
                    !String::from_utf8_lossy(&cmdline).contains("s3cret-lab"),
                    "the password is on a command line"
                );
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("s3cret-lab") && !String::from_utf8_lossy(&out.stderr).contains("s3cret-lab"));
    let events = json_lines(&stdout);
    let finished: Vec<&Value> = events.iter().filter(|e| e["type"] == "target_finished").collect();
    assert_eq!(finished.len(), 3);
    let digest = doc["versions"][0]["digest"].as_str().unwrap();
    for e in finished {
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(
            e["container"]["image"],
            format!("10.200.0.1:5001/ferry/web@{digest}"),
            "latest = 2.0, by digest"
        );
    }
}

#[test]
fn a_token_registry_is_answered_with_a_bearer_token() {
    let proxy = Proxy::start(Mode::Token);
    let dir = tempfile::tempdir().unwrap();
    let feed = format!(
        "url = \"http://127.0.0.1:{}\"\nusername = {{ env = \"REG_USER\" }}\npassword = {{ env = \"REG_PASSWORD\" }}",
        proxy.port
    );
    let inv = inventory(dir.path(), &feed, "ferry/many", "f-token");
    let ok = Test::bare()
        .args(["-i", &inv, "versions", "many", "--digests", "3", "--output", "json"])
        .env("REG_USER", "tester")
        .env("REG_PASSWORD", "s3cret-token")
        .never_prints("s3cret-token")
        .stdout_json()
        .run();
    let doc = ok.json();
    assert_eq!(versions(&doc).len(), 250);
    assert!(doc["versions"][2]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(proxy.tokens_issued.load(Ordering::SeqCst), 1, "the token is cached for its lifetime");
    let refused = Test::bare()
        .args(["-i", &inv, "versions", "many"])
        .env("REG_USER", "tester")
        .env("REG_PASSWORD", "nope")
        .code(1)
        .stderr(&format!(
            "error: registry 127.0.0.1:{} refused the credentials: its token service refused user tester (401)\n  \
             = help: check the feed's username and password sources (or `docker login`)\n",
            proxy.port
        ))
        .run();
    assert!(refused.stderr.contains("token service refused user tester"), "{}", refused.stderr);
}

/// An inventory with the lifecycle dev → staging → prod, one lab host per phase.
fn lifecycle_inventory(dir: &std::path::Path, suffix: &str, rollout: &str) -> String {
    let lab = lab();
    let mut text = format!(
        "[defaults]\nuser = \"root\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\n\n\
         [lifecycle]\nphases = [\"dev-{suffix}\", \"staging-{suffix}\", \"prod-{suffix}\"]\n\n\
         [feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n",
        lab.dir.join("ssh/client_key").display(),
        lab.dir.join("known_hosts").display(),
    );
    for n in 1..=3 {
        text += &format!("\n[targets.h{n}]\nhost = \"10.200.0.{}\"\n", 10 + n);
    }
    // Each phase its own host port: dev and prod share h1.
    let base = if suffix == "lc" { 18410 } else { 18420 };
    for (i, (env, hosts)) in
        [("dev", "\"h1\""), ("staging", "\"h2\""), ("prod", "\"h1\", \"h2\", \"h3\"")].iter().enumerate()
    {
        text += &format!(
            "\n[environments.{env}-{suffix}]\ntargets = [{hosts}]\nvars = {{ port = {} }}\n{rollout}\n",
            base + i
        );
        for n in 1..=3 {
            // A lab kept up between runs may hold this test's containers from the last run.
            let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
            let _ = std::process::Command::new("nsenter")
                .args(["-t", holder.trim(), "-m", "-n", "sh", "-c"])
                .arg(format!("docker rm -f web-{env}-{suffix} > /dev/null 2>&1; rm -rf /root/.ferry/locks/{env}-{suffix}"))
                .status();
        }
    }
    text += "\n[apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\nhealth = { grace = \"1s\" }\n";
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/web.j2"),
        "docker run --stop-timeout 1 -p {{ port }}:80 {{ image }}\n",
    )
    .unwrap();
    dir.join("ferry.toml").display().to_string()
}

fn image_on(n: usize, container: &str) -> String {
    let lab = lab();
    let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
    let out = std::process::Command::new("nsenter")
        .args(["-t", holder.trim(), "-m", "-n", "docker", "inspect", "-f", "{{.Config.Image}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn promote_moves_one_digest_through_the_lifecycle_and_skipping_a_phase_is_refused_or_audited() {
    let dir = tempfile::tempdir().unwrap();
    let inv = lifecycle_inventory(dir.path(), "lc", "");
    let state = dir.path().join("state").display().to_string();
    let ferry = |args: &[&str]| {
        Test::bare().args(["-i", &inv]).args(args.iter().copied()).env("FERRY_STATE_DIR", &state)
    };
    // Digests are the lab's own build's: messages are checked around them.
    let no_staging = ") has no successful deployment to staging-lc, the phase before prod-lc\n  = help: deploy it to \
             staging-lc first (or `ferry promote web --to staging-lc`); to override, pass --skip-lifecycle --reason \
             TEXT (audited)\n";
    let refused = ferry(&["deploy", "web", "--env", "prod-lc", "--version", "1.0", "--yes"])
        .code(4)
        .stderr_contains("error: lifecycle: web 1.0 (sha256:")
        .stderr_contains(no_staging)
        .run();
    assert!(refused.stderr.contains("no successful deployment to staging-lc"), "{}", refused.stderr);
    ferry(&["deploy", "web", "--env", "dev-lc", "--version", "1.0", "--yes"])
        .stdout_contains("\ndeploy web 1.0 to dev-lc: 1.0 (sha256:")
        .stdout_contains("\nh1      ok      created  ")
        .run();
    let early = ferry(&["promote", "web", "--to", "prod-lc", "--yes"])
        .code(4)
        .stderr(
            "error: cannot promote web to prod-lc: no successful deployment to staging-lc on record\n  = help: \
             deploy to the earlier phase first; `ferry history` shows what is on record\n",
        )
        .run();
    assert!(early.stderr.contains("no successful deployment to staging-lc"), "{}", early.stderr);
    ferry(&["promote", "web", "--to", "staging-lc", "--yes"])
        .stdout_contains("\npromote web 1.0 to staging-lc: 1.0 (sha256:")
        .stdout_contains("\nh2      ok      created  ")
        .stderr_contains("promote: web 1.0 (sha256:")
        .stderr_contains(") from dev-lc (deployment ")
        .stderr_contains(") to staging-lc\n")
        .run();
    ferry(&["promote", "web", "--to", "prod-lc", "--yes"])
        .stdout_contains("\npromote web 1.0 to prod-lc: 1.0 (sha256:")
        .stdout_contains("\nh1      ok      created  ")
        .stdout_contains("\nh2      ok      created  ")
        .stdout_contains("\nh3      ok      created  ")
        .stderr_contains("promote: web 1.0 (sha256:")
        .stderr_contains(") from staging-lc (deployment ")
        .stderr_contains(") to prod-lc\n")
        .run();
    let dev_image = image_on(1, "web-dev-lc");
    assert!(dev_image.contains("@sha256:"), "{dev_image}");
    for n in 1..=3 {
        assert_eq!(image_on(n, "web-prod-lc"), dev_image, "prod runs the bytes that passed dev and staging");
    }
    // 2.0 never ran in staging: refused, unless skipped with a reason, which is audited.
    ferry(&["deploy", "web", "--env", "prod-lc", "--version", "2.0", "--yes"])
        .code(4)
        .stderr_contains("error: lifecycle: web 2.0 (sha256:")
        .stderr_contains(no_staging)
        .run();
    ferry(&[
        "deploy",
        "web",
        "--env",
        "prod-lc",
        "--version",
        "2.0",
        "--yes",
        "--skip-lifecycle",
        "--reason",
        "hotfix INC-7",
    ])
    .stdout_contains("\ndeploy web 2.0 to prod-lc: 2.0 (sha256:")
    .stdout_contains("\nh1      ok      replaced  ")
    .stdout_contains("\nh2      ok      replaced  ")
    .stdout_contains("\nh3      ok      replaced  ")
    .stderr_contains("warning: lifecycle skipped: web 2.0 (sha256:")
    .stderr_contains(") never succeeded in staging-lc; reason: hotfix INC-7\n")
    .run();
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    let started: Vec<Value> = json_lines(&audit).into_iter().filter(|r| r["kind"] == "run_started").collect();
    let last = started.last().unwrap();
    assert_eq!(last["detail"]["notes"]["skip_lifecycle"], "hotfix INC-7");
    assert!(
        started
            .iter()
            .any(|r| r["command"] == "promote" && r["detail"]["notes"]["promoted_from"].is_string())
    );
}

#[test]
fn a_tag_moved_during_the_rollout_does_not_change_what_later_batches_run() {
    let dir = tempfile::tempdir().unwrap();
    let inv = lifecycle_inventory(dir.path(), "mv", "rollout = { batch = 1 }");
    let tag = format!("moving-{}", std::process::id());
    let manifest = |t: &str| {
        let out = std::process::Command::new("curl")
            .args(["-fsS", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json"])
            .arg(format!("http://10.200.0.1:5000/v2/ferry/web/manifests/{t}"))
            .output()
            .unwrap();
        out.stdout
    };
    let put = |body: &[u8]| {
        let file = dir.path().join("manifest.json");
        std::fs::write(&file, body).unwrap();
        let status = std::process::Command::new("curl")
            .args([
                "-fsS",
                "-o",
                "/dev/null",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/vnd.docker.distribution.manifest.v2+json",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://10.200.0.1:5000/v2/ferry/web/manifests/{tag}"))
            .status()
            .unwrap();
        assert!(status.success());
    };
    put(&manifest("1.0"));
    let child = std::process::Command::new(crate::test::binary())
        .args([
            "-i",
            &inv,
            "deploy",
            "web",
            "--env",
            "prod-mv",
            "--version",
            &tag,
            "--yes",
            "--skip-lifecycle",
        ])
        .args(["--reason", "test", "--output", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_STATE_DIR", dir.path().join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // batch 1 is running
    put(&manifest("2.0"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let first = image_on(1, "web-prod-mv");
    assert!(first.contains("@sha256:"));
    for n in 2..=3 {
        assert_eq!(image_on(n, "web-prod-mv"), first, "h{n} runs what h1 runs, not the moved tag");
    }
    // The tag now names other bytes: status warns (what runs is still what was deployed).
    let status = Test::bare()
        .args(["-i", &inv, "status", "web", "--env", "prod-mv", "--output", "json"])
        .env("FERRY_STATE_DIR", &dir.path().join("state").display().to_string())
        .stdout_json()
        .stderr_contains(&format!("warning: h1: tag {tag} now points at sha256:"))
        .stderr_contains(&format!("warning: h2: tag {tag} now points at sha256:"))
        .stderr_contains(&format!("warning: h3: tag {tag} now points at sha256:"))
        .stderr_contains(" in the feed; this target runs sha256:")
        .run();
    let report = status.json();
    assert_eq!(report["drift"], false, "{report}");
    assert!(
        report["warnings"][0].as_str().unwrap().contains(&format!("tag {tag} now points at")),
        "{report}"
    );
    assert!(status.stderr.contains("now points at"), "{}", status.stderr);
}

#[test]
fn registry_failures_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let plain = "url = \"http://10.200.0.1:5000\"";
    let inv = inventory(dir.path(), plain, "ferry/nope", "f-err");
    let repo = Test::bare()
        .args(["-i", &inv, "versions", "many"])
        .code(1)
        .stderr("error: repository ferry/nope not found in registry 10.200.0.1:5000\n")
        .run();
    assert!(
        repo.stderr.contains("repository ferry/nope not found in registry 10.200.0.1:5000"),
        "{}",
        repo.stderr
    );
    let inv = inventory(dir.path(), plain, "ferry/web", "f-err");
    let tag = Test::bare()
        .args(["-i", &inv, "deploy", "many", "--env", "f-err", "--version", "9.9.9", "--yes"])
        .env("FERRY_STATE_DIR", &dir.path().join("state").display().to_string())
        .code(2)
        .stderr(
            "error: tag 9.9.9 not found in 10.200.0.1:5000/ferry/web\n  = help: `ferry versions many` lists the versions the feed has\n",
        )
        .run();
    assert!(tag.stderr.contains("tag 9.9.9 not found in 10.200.0.1:5000/ferry/web"), "{}", tag.stderr);
    // Nothing listens on port 1 of this machine's loopback.
    let inv = inventory(dir.path(), "url = \"http://127.0.0.1:1\"", "ferry/web", "f-err");
    let down = Test::bare()
        .args(["-i", &inv, "versions", "many"])
        .code(1)
        .stderr_contains("error: registry 127.0.0.1:1 cannot be reached: ")
        .stderr_contains("Connection refused")
        .run();
    assert!(down.stderr.contains("registry 127.0.0.1:1 cannot be reached"), "{}", down.stderr);
}
