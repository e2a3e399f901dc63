//! A real HTTP server on loopback for the notification tests (lab and CLI).

use std::io::{Read, Write};

use serde_json::Value;

/// A webhook receiver for the notification tests: a real HTTP/1.1 server on 127.0.0.1 (the
/// runner's loopback) that answers `first` to the first request on each path and 200 after,
/// and keeps (path, body) of every request.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// (path, body) of every request, in order.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    /// Listens on a free loopback port; answers `first` to the first request on each path.
    pub fn start(first: u16) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let record = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let (head, body) = loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string)
                            })
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let status = {
                    let mut seen = record.lock().unwrap();
                    let earlier = seen.iter().filter(|(p, _)| *p == path).count();
                    seen.push((path, body));
                    if earlier == 0 { first } else { 200 }
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Receiver { base, seen }
    }

    /// The JSON bodies sent to `path`, in order.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(p, _)| p == path).map(|(_, b)| serde_json::from_str(b).unwrap()).collect()
    }
}
