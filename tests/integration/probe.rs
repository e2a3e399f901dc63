//! A bounded HTTP probe for the zero-downtime tests (issue 15): it sends requests at a fixed rate
//! (20 a second) to one address with one `Host` header, from the machine running the tests (the
//! lab's host side), each with a short timeout, and records what every request got until it is
//! stopped. A test then asks for the failures (must be none while the proxy switches) and for the
//! sequence of distinct answers (`["ferry web 1.0", "ferry web 1.1"]`: switched exactly once).
//!
//! It is plain tokio TCP and a hand-written HTTP/1.1 request with `Connection: close`: every
//! request is a new connection, as from many separate clients, so a proxy that stops accepting
//! for a moment shows up as a refused or timed-out request, not as a delay hidden in a pool.
//! Requests run concurrently (one task each), so one slow answer does not lower the rate.

// Only the lab tests use the probe outside its own unit tests, and not every helper of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one request got: an HTTP status and body, or why it got none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response: its status code and body (chunked bodies decoded).
    Answer { status: u16, body: String },
    /// No response: refused, reset, timed out, or not HTTP.
    Error(String),
}

/// One request of the probe.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, from the probe's start.
    pub sent: Duration,
    /// How long it took until the answer (or the error).
    pub took: Duration,
    /// What it got.
    pub outcome: Outcome,
}

impl Sample {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Answer { status, .. } if (200..300).contains(&status))
    }

    /// The answer as the sequence shows it: the trimmed body of a 2xx answer, `STATUS body` of
    /// another one; `None` for an error (those are failures, not answers).
    pub fn answer(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Answer { status, body } if (200..300).contains(status) => Some(body.trim().to_string()),
            Outcome::Answer { status, body } => {
                Some(format!("{status} {}", body.trim()).trim_end().to_string())
            }
            Outcome::Error(_) => None,
        }
    }
}

/// What a stopped probe recorded, in the order the requests were sent.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every request, by send time.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Requests without a 2xx answer: errors, timeouts, and any other status.
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !s.ok()).collect()
    }

    /// The distinct answers in send order, each run of equal answers collapsed into one: a switch
    /// from 1.0 to 1.1 exactly once is `["ferry web 1.0", "ferry web 1.1"]`; flapping back and
    /// forth shows as `[1.0, 1.1, 1.0, 1.1]`. Errors are left out (see [`Report::failures`]).
    pub fn sequence(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for answer in self.samples.iter().filter_map(Sample::answer) {
            if out.last() != Some(&answer) {
                out.push(answer);
            }
        }
        out
    }

    /// A short account for assertion messages: counts, the sequence, and the first failures.
    pub fn summary(&self) -> String {
        let failures = self.failures();
        let mut text = format!(
            "{} requests, {} failed, answers {:?}",
            self.samples.len(),
            failures.len(),
            self.sequence()
        );
        for f in failures.iter().take(5) {
            text += &format!("\n  at {:?} (took {:?}): {:?}", f.sent, f.took, f.outcome);
        }
        text
    }
}

/// A running probe; [`Probe::stop`] ends it and returns the [`Report`].
pub struct Probe {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Report>>,
}

impl Probe {
    /// Starts probing `GET path` on `addr` with `Host: host`, `per_second` requests a second,
    /// each allowed `timeout` in all (connect, send, whole answer).
    pub fn start(addr: SocketAddr, host: &str, path: &str, per_second: u32, timeout: Duration) -> Probe {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let period = Duration::from_secs(1) / per_second.max(1);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
                let start = Instant::now();
                let mut tick = tokio::time::interval(period);
                // Behind schedule (a busy machine): go on at the rate, do not burst to catch up.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tasks = Vec::new();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tick.tick() => {
                            let (request, samples) = (request.clone(), samples.clone());
                            tasks.push(tokio::spawn(async move {
                                let sent = start.elapsed();
                                let began = Instant::now();
                                let outcome = match tokio::time::timeout(timeout, fetch(addr, &request)).await {
                                    Ok(outcome) => outcome,
                                    Err(_) => Outcome::Error(format!("no answer within {timeout:?}")),
                                };
                                samples.lock().unwrap().push(Sample { sent, took: began.elapsed(), outcome });
                            }));
                        }
                    }
                }
                // Requests in flight finish (each is bounded by its timeout): a request sent
                // before the stop counts.
                for task in tasks {
                    task.await.unwrap();
                }
                let mut samples = std::mem::take(&mut *samples.lock().unwrap());
                samples.sort_by_key(|s| s.sent);
                Report { samples }
            })
        });
        Probe { stop: Some(stop), thread: Some(thread) }
    }

    /// The lab's usual probe: 20 requests a second to `addr`:80, `GET /`, 2 s per request.
    pub fn lab(ip: &str, host: &str) -> Probe {
        Probe::start(format!("{ip}:80").parse().unwrap(), host, "/", 20, Duration::from_secs(2))
    }

    /// Stops sending, waits for the requests in flight, returns everything recorded.
    pub fn stop(mut self) -> Report {
        self.finish()
    }

    fn finish(&mut self) -> Report {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for Probe {
    /// A test that fails before `stop` still ends the probe's thread.
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.finish();
        } else if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One request on a new connection: the whole response, parsed.
async fn fetch(addr: SocketAddr, request: &str) -> Outcome {
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("connect: {e}")),
    };
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Error(format!("send: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw).await {
        return Outcome::Error(format!("read: {e}"));
    }
    parse_response(&raw)
}

/// Parses a whole HTTP/1.x response read until the server closed: status line, headers, and the
/// body (by `Content-Length`, chunked, or until the close).
pub fn parse_response(raw: &[u8]) -> Outcome {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Outcome::Error(format!("no complete header block in {} bytes", raw.len()));
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let status = match code.parse::<u16>() {
        Ok(s) if version.starts_with("HTTP/1.") => s,
        _ => return Outcome::Error(format!("not an HTTP status line: {status_line:?}")),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        match dechunk(rest) {
            Some(b) => b,
            None => return Outcome::Error("a chunked body cut short".to_string()),
        }
    } else if let Some(n) = length {
        if rest.len() < n {
            return Outcome::Error(format!("body cut short: {} of {n} bytes", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Outcome::Answer { status, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Decodes a chunked body; `None` when it ends before the last (zero) chunk.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, outcome: Outcome) -> Sample {
        Sample { sent: Duration::from_millis(ms), took: Duration::from_millis(1), outcome }
    }

    fn ok(ms: u64, body: &str) -> Sample {
        sample(ms, Outcome::Answer { status: 200, body: format!("{body}\n") })
    }

    #[test]
    fn one_switch_is_two_answers_in_order() {
        let report = Report {
            samples: vec![
                ok(0, "ferry web 1.0"),
                ok(50, "ferry web 1.0"),
                ok(100, "ferry web 1.1"),
                ok(150, "ferry web 1.1"),
            ],
        };
        assert_eq!(report.sequence(), ["ferry web 1.0", "ferry web 1.1"]);
        assert!(report.failures().is_empty());
    }

    #[test]
    fn flapping_shows_every_change_and_errors_are_failures_not_answers() {
        let report = Report {
            samples: vec![
                ok(0, "ferry web 1.0"),
                ok(50, "ferry web 1.1"),
                sample(100, Outcome::Error("connect: refused".into())),
                ok(150, "ferry web 1.0"),
                sample(200, Outcome::Answer { status: 502, body: String::new() }),
                ok(250, "ferry web 1.1"),
            ],
        };
        assert_eq!(
            report.sequence(),
            ["ferry web 1.0", "ferry web 1.1", "ferry web 1.0", "502", "ferry web 1.1"]
        );
        assert_eq!(report.failures().len(), 2);
        assert!(report.summary().starts_with("6 requests, 2 failed"), "{}", report.summary());
    }

    #[test]
    fn maintenance_answers_are_in_the_sequence_with_their_status() {
        let report = Report {
            samples: vec![
                ok(0, "ferry web 1.0"),
                sample(50, Outcome::Answer { status: 503, body: "web is under maintenance".into() }),
                ok(100, "ferry web 1.0"),
            ],
        };
        assert_eq!(report.sequence(), ["ferry web 1.0", "503 web is under maintenance", "ferry web 1.0"]);
        assert_eq!(report.failures().len(), 1);
    }

    #[test]
    fn responses_parse_by_length_chunks_or_close() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nferry web 1.0\nXX";
        assert_eq!(
            parse_response(by_length),
            Outcome::Answer { status: 200, body: "ferry web 1.0\n".into() }
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nferry \r\n8\r\nweb 1.1\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Outcome::Answer { status: 200, body: "ferry web 1.1\n".into() });
        let closed = b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\ndown";
        assert_eq!(parse_response(closed), Outcome::Answer { status: 503, body: "down".into() });
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            Outcome::Error(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            Outcome::Error(_)
        ));
        assert!(matches!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), Outcome::Error(_)));
        assert!(matches!(parse_response(b""), Outcome::Error(_)));
    }

    /// The probe against a real server on loopback that answers "one" for its first requests,
    /// then "two", then refuses (it is gone): the rate, the Host header, the sequence and the
    /// failures all come out of real connections.
    #[test]
    fn a_real_server_that_switches_and_then_goes_away() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let seen = hosts.clone();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for (n, stream) in listener.incoming().take(10).enumerate() {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 1024];
                let len = stream.read(&mut buf).unwrap();
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                seen.lock()
                    .unwrap()
                    .push(head.lines().find(|l| l.starts_with("Host: ")).unwrap_or("").to_string());
                let body = if n < 5 { "one\n" } else { "two\n" };
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
            // The listener drops here: later connections are refused.
        });
        let probe = Probe::start(addr, "web.example.test", "/", 20, Duration::from_millis(500));
        server.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let report = probe.stop();
        assert_eq!(report.sequence(), ["one", "two"], "{}", report.summary());
        assert_eq!(report.samples.iter().filter(|s| s.ok()).count(), 10, "{}", report.summary());
        assert!(!report.failures().is_empty(), "refused after the server went away: {}", report.summary());
        assert!(report.failures().iter().all(|s| s.sent > report.samples[9].sent), "{}", report.summary());
        assert!(hosts.lock().unwrap().iter().all(|h| h == "Host: web.example.test"));
        // 10 answers at 20 a second take about half a second, not far more or less.
        let span = report.samples[9].sent - report.samples[0].sent;
        assert!(span >= Duration::from_millis(400) && span < Duration::from_millis(1500), "{span:?}");
    }
}
