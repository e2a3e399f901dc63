//! Issue 15's cross-cutting acceptance in the lab: apps behind the proxy answer throughout
//! deploys and proxy reboots, measured from the lab's host side with the [`Probe`].
//!
//! Everything here runs on host h7 (10.200.0.17) with environment names `pxt-*`: the proxy
//! publishes the host's :80 and :443, so the other helpers' proxy tests (h5, h6) never meet these.
//! Sequences that reboot the proxy live in one test function, so no other test of this file is
//! probing h7 while its proxy restarts. Plain container ports (no proxy): 18430-18449.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::lab;

/// The lab host these tests use.
const HOST: usize = 7;

/// Runs `script` inside lab host `n`'s network and mount namespaces (its dockerd, its /root);
/// returns its stdout, and fails the test with both outputs when the script fails.
fn on_host(n: usize, script: &str) -> String {
    let lab = lab();
    let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
    let out =
        Command::new("nsenter").args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "on h{n}: {script}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` from the lab's host side: (status, body, seconds it took).
fn get(url: &str) -> (u16, String, f64) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code} %{time_total}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, time) = tail.split_once(' ').unwrap();
    (code.parse().unwrap(), body.to_string(), time.parse().unwrap())
}

/// The lab's ferry/web versions (tests/lab/lab.sh) as the proxy tests need them: every version
/// whose httpd runs answers its index and `/cgi-bin/slow` (after 3 s) with its version, and
/// `/up` answers 2xx in all of them but `noup`, whose `/up` is a 404.
#[test]
fn the_web_image_has_health_paths_and_a_slow_endpoint_in_every_version() {
    let versions = ["1.0", "1.1", "2.0", "health", "sick", "noup"];
    let script: String = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "docker rm -f pxt-img-{i} > /dev/null 2>&1; docker run -d --name pxt-img-{i} --stop-timeout 1 \
                 -p {}:80 10.200.0.1:5000/ferry/web:{v} > /dev/null || exit 1\n",
                18430 + i
            )
        })
        .collect();
    on_host(HOST, &script);
    let checks: Vec<_> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (v, base) = (v.to_string(), format!("http://10.200.0.17:{}", 18430 + i));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while get(&format!("{base}/")).0 != 200 {
                    assert!(Instant::now() < deadline, "{v}: httpd never answered");
                    std::thread::sleep(Duration::from_millis(200));
                }
                let (status, body, _) = get(&format!("{base}/"));
                assert_eq!((status, body.as_str()), (200, format!("ferry web {v}\n").as_str()), "{v}: index");
                let (status, body, _) = get(&format!("{base}/up"));
                if v == "noup" {
                    assert_eq!(status, 404, "{v}: /up must not answer: {body}");
                } else {
                    assert_eq!((status, body.as_str()), (200, format!("up {v}\n").as_str()), "{v}: /up");
                }
                let (status, body, took) = get(&format!("{base}/cgi-bin/slow"));
                assert_eq!((status, body.as_str()), (200, format!("ferry web {v}\n").as_str()), "{v}: slow");
                assert!((3.0..6.0).contains(&took), "{v}: /cgi-bin/slow took {took} s, not about 3");
            })
        })
        .collect();
    let results: Vec<_> = checks.into_iter().map(|c| c.join()).collect();
    on_host(
        HOST,
        &format!(
            "docker rm -f {} > /dev/null",
            (0..versions.len()).map(|i| format!("pxt-img-{i}")).collect::<Vec<_>>().join(" ")
        ),
    );
    for r in results {
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }
}
