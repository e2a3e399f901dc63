//! Notifications (issue 16): a deployment's start and end, sent to a chat or an event bus.
//!
//! Three formats, each in the shape its receiver documents:
//! - **Slack** incoming webhooks: a JSON object with `text` (the fallback shown in
//!   notifications) and `blocks` (a `section` with the headline and a `context` with the run).
//! - **Microsoft Teams** through a Workflows ("When a Teams webhook request is received") URL:
//!   a `message` whose one attachment is an Adaptive Card (`application/vnd.microsoft.card.adaptive`,
//!   schema version 1.4). The old Office 365 connector URLs are retired, and their MessageCard
//!   format with them.
//! - **CloudEvents 1.0**, structured content mode: `specversion`, `id`, `source`, `type`
//!   (`dev.ferry.deploy.started|succeeded|failed`), `time`, `subject`, `datacontenttype` and
//!   `data`, sent as `application/cloudevents+json`.
//!
//! Why a notifier never fails a deployment: the deployment already happened (or failed) on the
//! targets; a chat that is down must not turn a good deploy into an exit 1 that a CI job retries.
//! So [`send`] returns a [`Delivery`] (how many attempts, the last error) for the caller to show
//! and record, never an error.
//!
//! Why the URL is a secret: a Slack or Teams webhook URL is a bearer credential (whoever has it
//! posts into the channel). It is a [`Secret`], and every error message is built from
//! `reqwest::Error::without_url` and the notifier's name, so the URL appears nowhere ferry
//! prints or records. Redirects are not followed (a redirect would send the payload somewhere
//! the inventory did not name).
//!
//! Retries: a connection error, a timeout, a 5xx or a 429 is retried, at most [`ATTEMPTS`] times
//! in all with a growing pause between; another 4xx is the receiver refusing this payload, and
//! retrying it would only repeat the refusal.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::secret::Secret;

/// Attempts per notification, the first one included.
pub const ATTEMPTS: u32 = 3;
/// The pause before the second attempt; doubled before each later one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest failure line a chat message shows.
const FAILURE_CHARS: usize = 200;

/// Slack's mrkdwn control characters escaped (`&`, `<`, `>`), so that a target's error can
/// neither ping a channel (`<!channel>`) nor render a link.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Text for an Adaptive Card `TextBlock`, which renders Markdown: a target's output must not
/// become a link, emphasis or a list in the channel, so Markdown's characters are escaped.
fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '[' | ']' | '(' | ')' | '*' | '_' | '`' | '#' | '~' | '<' | '>' | '!' | '-' | '+'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The pieces of a webhook URL that grant access, each masked wherever it could be shown: the
/// whole URL, its path and query, and each path segment and query value long enough to be a
/// token (Slack's `/services/T…/B…/TOKEN`, a Workflows URL's `sig=…`), also percent-decoded. A
/// receiver that echoes the path in an error ("Cannot POST /services/…") shows none of them.
pub fn url_secrets(url: &Secret) -> Vec<Secret> {
    let mut pieces = vec![url.expose().to_string()];
    if let Ok(parsed) = url::Url::parse(url.expose()) {
        let path_and_query = match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_string(),
        };
        pieces.push(path_and_query);
        let segments = parsed.path_segments().into_iter().flatten().map(String::from);
        // Each query value as written (percent-encoded) and as decoded.
        let raw: Vec<String> = parsed
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.to_string()))
            .collect();
        let values = parsed.query_pairs().map(|(_, v)| v.into_owned()).chain(raw);
        for piece in segments.chain(values) {
            if let Ok(decoded) = percent_encoding::percent_decode_str(&piece).decode_utf8() {
                pieces.push(decoded.into_owned());
            }
            pieces.push(piece);
        }
    }
    let mut secrets: Vec<Secret> = Vec::new();
    for piece in pieces {
        // Short pieces (`services`, `hooks`, `v1`) are not secret, and masking them would blank
        // ordinary words in every message.
        if piece.len() >= TOKEN_CHARS && !secrets.iter().any(|s| s.expose() == piece) {
            secrets.push(Secret::new(piece));
        }
    }
    // The longest first, so a whole URL is masked before a piece of it is.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
    secrets
}

/// A URL piece or value shorter than this is not masked (see [`url_secrets`]).
const TOKEN_CHARS: usize = 12;

/// One attempt's limit (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a receiver wants its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Slack incoming webhook.
    Slack,
    /// Microsoft Teams Workflows webhook (Adaptive Card).
    Teams,
    /// CloudEvents 1.0, structured JSON.
    CloudEvents,
}

impl Format {
    /// Reads the inventory's `format` word.
    pub fn parse(word: &str) -> Option<Format> {
        match word {
            "slack" => Some(Format::Slack),
            "teams" => Some(Format::Teams),
            "cloudevents" => Some(Format::CloudEvents),
            _ => None,
        }
    }
}

/// Which moment of a deployment a notification tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Moment {
    /// The run took the lock and is about to change targets.
    Started,
    /// Every target ended well.
    Succeeded,
    /// At least one target did not.
    Failed,
}

impl Moment {
    /// The word the inventory's `on` list and the payloads use.
    pub fn as_str(self) -> &'static str {
        match self {
            Moment::Started => "started",
            Moment::Succeeded => "succeeded",
            Moment::Failed => "failed",
        }
    }

    /// Reads one word of the inventory's `on` list.
    pub fn parse(word: &str) -> Option<Moment> {
        match word {
            "started" => Some(Moment::Started),
            "succeeded" => Some(Moment::Succeeded),
            "failed" => Some(Moment::Failed),
            _ => None,
        }
    }
}

/// One target's end, as a notification tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetOutcome {
    /// The target's name.
    pub target: String,
    /// `ok`, `failed`, `error`, `skipped`, … (the run's report words).
    pub status: String,
    /// What went wrong, already masked by the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a notification is about: facts of the run, no secret among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// Started, succeeded or failed.
    pub moment: Moment,
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// The version (tag) deployed.
    pub version: String,
    /// The image digest, when the feed pinned one.
    pub digest: Option<String>,
    /// The run's id.
    pub run: String,
    /// Who ran it: `user@host via VIA`.
    pub actor: String,
    /// When this moment happened, RFC 3339 UTC.
    pub time: String,
    /// Per-target outcomes (empty for `started`).
    pub targets: Vec<TargetOutcome>,
    /// Why the run was refused before any target (its freeze re-check, a failing `pre_deploy`
    /// hook), already masked: a `failed` notice then says so instead of counting targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Notice {
    /// The one-line headline every format starts with.
    pub fn headline(&self) -> String {
        let what = format!("{} {} to {}", self.app, self.version, self.environment);
        match self.moment {
            Moment::Started => format!("Deploying {what}"),
            Moment::Succeeded => format!("Deployed {what}"),
            Moment::Failed if self.refused.is_some() => {
                format!("Deploy of {what} refused: {}", self.refused.as_deref().unwrap_or_default())
            }
            Moment::Failed => {
                let bad = self.targets.iter().filter(|t| t.status != "ok").count();
                format!("Deploy of {what} failed on {bad} of {} targets", self.targets.len())
            }
        }
    }

    /// `run RUN by ACTOR`, with the digest when there is one.
    fn context(&self) -> String {
        let digest = self.digest.as_deref().map(|d| format!(", {d}")).unwrap_or_default();
        format!("run {} by {}{digest}", self.run, self.actor)
    }

    /// The failed targets as lines `target: error`, at most `limit` of them, each the first
    /// line of its error cut to [`FAILURE_CHARS`] (a chat message, not a log: Slack refuses a
    /// section over 3000 characters, and a refused failure notice is lost when it matters).
    fn failures(&self, limit: usize) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.status != "ok")
            .take(limit)
            .map(|t| {
                let error = t.error.as_deref().unwrap_or(&t.status);
                let first = error.lines().next().unwrap_or_default();
                let mut line: String = format!("{}: {first}", t.target).chars().take(FAILURE_CHARS).collect();
                if line.chars().count() == FAILURE_CHARS || error.lines().nth(1).is_some() {
                    line.push('…');
                }
                line
            })
            .collect()
    }
}

/// The JSON body `format` wants for `notice`. `source` is the CloudEvents `source` (a URI
/// naming this ferry: `ferry://HOST`).
pub fn payload(format: Format, notice: &Notice, source: &str, id: &str) -> Value {
    match format {
        Format::Slack => slack(notice),
        Format::Teams => teams(notice),
        Format::CloudEvents => cloudevent(notice, source, id),
    }
}

/// Slack: `text` plus `blocks` (Block Kit).
fn slack(notice: &Notice) -> Value {
    let mut text = format!("*{}*", slack_escape(&notice.headline()));
    for line in notice.failures(10) {
        text += &format!("\n• {}", slack_escape(&line));
    }
    json!({
        "text": slack_escape(&notice.headline()),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": text } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": slack_escape(&notice.context()) } ] },
        ],
    })
}

/// Teams Workflows: a message with one Adaptive Card attachment.
fn teams(notice: &Notice) -> Value {
    let mut facts = vec![
        json!({ "title": "App", "value": notice.app }),
        json!({ "title": "Environment", "value": notice.environment }),
        json!({ "title": "Version", "value": notice.version }),
        json!({ "title": "Run", "value": notice.run }),
        json!({ "title": "By", "value": notice.actor }),
    ];
    if let Some(digest) = &notice.digest {
        facts.push(json!({ "title": "Digest", "value": digest }));
    }
    let mut body = vec![
        json!({ "type": "TextBlock", "text": markdown_escape(&notice.headline()), "weight": "Bolder", "size": "Medium", "wrap": true }),
        json!({ "type": "FactSet", "facts": facts }),
    ];
    for line in notice.failures(10) {
        let text = markdown_escape(&line);
        body.push(json!({ "type": "TextBlock", "text": text, "wrap": true, "color": "Attention" }));
    }
    json!({
        "type": "message",
        "attachments": [ {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        } ],
    })
}

/// CloudEvents 1.0, structured mode.
fn cloudevent(notice: &Notice, source: &str, id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": format!("dev.ferry.deploy.{}", notice.moment.as_str()),
        "time": notice.time,
        "subject": format!("{}/{}", notice.app, notice.environment),
        "datacontenttype": "application/json",
        "data": {
            "app": notice.app,
            "environment": notice.environment,
            "version": notice.version,
            "digest": notice.digest,
            "run": notice.run,
            "actor": notice.actor,
            "outcome": notice.moment.as_str(),
            "targets": notice.targets,
        },
    })
}

/// How one notification went: shown and recorded, never an error of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The notifier's name (`[notify.NAME]`).
    pub notifier: String,
    /// Attempts made.
    pub attempts: u32,
    /// Whether the receiver took it (2xx).
    pub delivered: bool,
    /// Why not, without the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The HTTP client notifiers share: a timeout per attempt, no redirects, rustls with the
/// system's roots.
pub fn client() -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(TIMEOUT.min(Duration::from_secs(5)))
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// Sends `body` to `url` for notifier `name` (content type by `format`), retrying as the module
/// docs say; `backoff` is the first pause (tests shorten it).
pub async fn send(
    client: &reqwest::Client,
    name: &str,
    url: &Secret,
    format: Format,
    body: &Value,
    backoff: Duration,
) -> Delivery {
    let content_type = match format {
        Format::CloudEvents => "application/cloudevents+json; charset=utf-8",
        Format::Slack | Format::Teams => "application/json",
    };
    let text = body.to_string();
    let mut delivery = Delivery { notifier: name.to_string(), attempts: 0, delivered: false, error: None };
    let mut pause = backoff;
    while delivery.attempts < ATTEMPTS {
        if delivery.attempts > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        delivery.attempts += 1;
        let sent = client
            .post(url.expose())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::USER_AGENT, concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .body(text.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(response) if response.status().is_success() => {
                delivery.delivered = true;
                delivery.error = None;
                return delivery;
            }
            Ok(mut response) => {
                let status = response.status();
                // Only the start is shown: a receiver's endless answer is not read to its end.
                let mut read = Vec::new();
                while read.len() < ANSWER_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                // Masked before it is cut: a URL cut in half would no longer match.
                let answer = crate::secret::mask(&String::from_utf8_lossy(&read), &url_secrets(url));
                let answer: String = answer.chars().filter(|c| !c.is_control()).take(200).collect();
                delivery.error = Some(format!(
                    "the receiver answered {status}{}",
                    if answer.is_empty() { String::new() } else { format!(": {answer}") }
                ));
                status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(e) => {
                let e = e.without_url();
                delivery.error = Some(if e.is_timeout() {
                    format!("no answer within {}", crate::duration::format(TIMEOUT))
                } else {
                    crate::secret::mask(&error_chain(&e), &url_secrets(url))
                });
                true
            }
        };
        if !retry {
            break;
        }
    }
    delivery
}

/// At most this much of a refusing receiver's answer is read (its first 200 characters are
/// shown).
const ANSWER_BYTES: usize = 4096;

/// An error and its causes on one line (reqwest's own message is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn notice(moment: Moment) -> Notice {
        Notice {
            moment,
            app: "web".into(),
            environment: "prod".into(),
            version: "1.4.2".into(),
            digest: Some("sha256:0123abcd".into()),
            run: "0193a1b2c3d4".into(),
            actor: "ana@ci-7 via github-actions".into(),
            time: "2026-12-07T09:00:00Z".into(),
            targets: vec![
                TargetOutcome { target: "web-1".into(), status: "ok".into(), error: None },
                TargetOutcome {
                    target: "web-2".into(),
                    status: "failed".into(),
                    error: Some("health gate: no answer".into()),
                },
            ],
            refused: None,
        }
    }

    #[test]
    fn slack_has_text_and_blocks() {
        let body = payload(Format::Slack, &notice(Moment::Failed), "ferry://runner", "id-1");
        assert_eq!(body["text"], "Deploy of web 1.4.2 to prod failed on 1 of 2 targets");
        assert_eq!(body["blocks"][0]["type"], "section");
        assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
        let section = body["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("• web-2: health gate: no answer"), "{section}");
        assert_eq!(body["blocks"][1]["type"], "context");
        assert_eq!(
            body["blocks"][1]["elements"][0]["text"],
            "run 0193a1b2c3d4 by ana@ci-7 via github-actions, sha256:0123abcd"
        );
    }

    #[test]
    fn slack_text_from_a_target_cannot_ping_or_link_and_stays_short() {
        let mut n = notice(Moment::Failed);
        n.targets[1].error =
            Some(format!("<!channel> see <http://x|here> & {}\nsecond line", "y".repeat(500)));
        let body = payload(Format::Slack, &n, "ferry://runner", "id");
        let section = body["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("&lt;!channel&gt; see &lt;http://x|here&gt; &amp; yyy"), "{section}");
        assert!(!section.contains("second line") && !section.contains('<'), "{section}");
        assert!(section.chars().count() < 400, "{}", section.chars().count());
    }

    #[test]
    fn teams_is_one_adaptive_card_attachment() {
        let body = payload(Format::Teams, &notice(Moment::Succeeded), "ferry://runner", "id-1");
        assert_eq!(body["type"], "message");
        let attachments = body["attachments"].as_array().unwrap();
        assert_eq!(attachments.len(), 1);
        assert_eq!(attachments[0]["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &attachments[0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
        assert_eq!(card["body"][0]["text"], "Deployed web 1.4.2 to prod");
        let facts = card["body"][1]["facts"].as_array().unwrap();
        assert!(facts.contains(&json!({ "title": "Digest", "value": "sha256:0123abcd" })), "{facts:?}");
    }

    #[test]
    fn cloudevents_has_the_required_attributes() {
        let body = payload(Format::CloudEvents, &notice(Moment::Failed), "ferry://runner", "id-1");
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], "id-1");
        assert_eq!(body["source"], "ferry://runner");
        assert_eq!(body["type"], "dev.ferry.deploy.failed");
        assert_eq!(body["time"], "2026-12-07T09:00:00Z");
        assert_eq!(body["subject"], "web/prod");
        assert_eq!(body["data"]["digest"], "sha256:0123abcd");
        assert_eq!(
            body["data"]["targets"][1],
            json!({"target": "web-2", "status": "failed", "error": "health gate: no answer"})
        );
        assert_eq!(body["data"]["targets"][0], json!({"target": "web-1", "status": "ok"}));
    }

    /// One request as the loopback receiver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: String,
    }

    /// A real HTTP/1.1 server on 127.0.0.1 that answers the statuses in `answers` in turn (the
    /// last one again once they run out) and records every request.
    async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/T000/B000/s3cretPath", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let (head, body) = loop {
                    let read = stream.read(&mut buf).await.unwrap_or(0);
                    if read == 0 {
                        break (String::new(), String::new());
                    }
                    data.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string)
                            })
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                // A refusal echoes the path, as Express's "Cannot POST /…" does.
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                record.lock().unwrap().push(Seen { head, body });
                let status = answers.get(n).or(answers.last()).copied().unwrap_or(200);
                n += 1;
                let text = if status < 300 { "ok".to_string() } else { format!("Cannot POST {path}") };
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_500_then_200_is_delivered_once_after_one_retry() {
        let (url, seen) = receiver(vec![500, 200]).await;
        let body = payload(Format::CloudEvents, &notice(Moment::Started), "ferry://runner", "id-2");
        let delivery = send(
            &client().unwrap(),
            "bus",
            &Secret::new(url),
            Format::CloudEvents,
            &body,
            Duration::from_millis(10),
        )
        .await;
        assert_eq!(delivery, Delivery { notifier: "bus".into(), attempts: 2, delivered: true, error: None });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "one retry");
        assert!(seen[1].head.starts_with("POST /hooks/T000/B000/s3cretPath HTTP/1.1"), "{}", seen[1].head);
        assert!(
            seen[1].head.to_ascii_lowercase().contains("content-type: application/cloudevents+json"),
            "{}",
            seen[1].head
        );
        let sent: Value = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(sent, body, "the body is the payload, byte for byte as JSON");
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried_and_no_error_names_the_url() {
        let (url, seen) = receiver(vec![404]).await;
        let body = payload(Format::Slack, &notice(Moment::Failed), "ferry://runner", "id-3");
        let delivery = send(
            &client().unwrap(),
            "chat",
            &Secret::new(url),
            Format::Slack,
            &body,
            Duration::from_millis(10),
        )
        .await;
        assert_eq!((delivery.attempts, delivery.delivered), (1, false));
        assert_eq!(
            delivery.error.as_deref(),
            Some("the receiver answered 404 Not Found: Cannot POST ***"),
            "the receiver's answer is shown, the URL's path masked"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_dead_url_is_tried_three_times_and_reported_without_the_url() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/hooks/s3cretPath");
        let body = payload(Format::Teams, &notice(Moment::Succeeded), "ferry://runner", "id-4");
        let delivery = send(
            &client().unwrap(),
            "team",
            &Secret::new(url),
            Format::Teams,
            &body,
            Duration::from_millis(10),
        )
        .await;
        assert_eq!((delivery.attempts, delivery.delivered), (ATTEMPTS, false));
        let error = delivery.error.unwrap();
        assert!(!error.contains("s3cretPath") && !error.contains(&port.to_string()), "{error}");
        assert!(error.to_lowercase().contains("connect"), "{error}");
    }

    #[test]
    fn the_pieces_of_a_webhook_url_that_grant_access_are_secrets() {
        let url = Secret::new("https://hooks.slack.com/services/T0123ABCD/B0123ABCD/xoxTOKENxox12345");
        let shown: Vec<String> = url_secrets(&url).iter().map(|s| s.expose().to_string()).collect();
        assert_eq!(shown[0], url.expose(), "the whole URL first");
        assert!(shown.contains(&"xoxTOKENxox12345".to_string()), "{shown:?}");
        assert!(
            !shown.iter().any(|s| s == "services" || s == "T0123ABCD"),
            "short pieces are words: {shown:?}"
        );
        let flow = Secret::new(
            "https://x.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=Zm9v%2BYmFyYmF6cXV4",
        );
        let shown: Vec<String> = url_secrets(&flow).iter().map(|s| s.expose().to_string()).collect();
        assert!(shown.contains(&"Zm9v+YmFyYmF6cXV4".to_string()), "decoded too: {shown:?}");
        assert!(shown.contains(&"Zm9v%2BYmFyYmF6cXV4".to_string()), "{shown:?}");
        let said = crate::secret::mask(
            "Cannot POST /services/T0123ABCD/B0123ABCD/xoxTOKENxox12345/x",
            &url_secrets(&url),
        );
        assert!(!said.contains("xoxTOKEN"), "{said}");
    }

    #[test]
    fn teams_text_from_a_target_cannot_link_or_format() {
        let mut n = notice(Moment::Failed);
        n.targets[1].error = Some("see [here](https://evil.example) *now*".into());
        let card = payload(Format::Teams, &n, "ferry://runner", "id").to_string();
        assert!(card.contains(r"see \\[here\\]\\(https://evil.example\\) \\*now\\*"), "{card}");
    }

    #[test]
    fn formats_and_moments_parse_by_their_documented_names() {
        assert_eq!(Format::parse("teams"), Some(Format::Teams));
        assert_eq!(Format::parse("msteams"), None);
        assert_eq!(Moment::parse("failed"), Some(Moment::Failed));
        assert_eq!(Moment::parse("done"), None);
    }

    /// What a receiver answers is arbitrary bytes from the network: any answer (a status line
    /// or not, cut anywhere, endless headers) ends in a delivery or an error, never a panic,
    /// and counts as delivered only after a 2xx status line.
    #[test]
    fn any_answer_of_a_receiver_ends_in_a_delivery_or_an_error() {
        use proptest::prelude::*;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = client().unwrap();
        let answers = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (100u16..1000, "[ -~\r\n]{0,300}")
                .prop_map(|(code, rest)| format!("HTTP/1.1 {code} X\r\n{rest}").into_bytes()),
        ];
        let config =
            proptest::test_runner::Config { cases: 48, failure_persistence: None, ..Default::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&answers, |answer| {
            let delivery = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}/hook", listener.local_addr().unwrap());
                let reply = answer.clone();
                let server = tokio::spawn(async move {
                    // Every attempt gets the same answer, then the connection closes.
                    while let Ok((mut stream, _)) = listener.accept().await {
                        let mut buf = [0u8; 4096];
                        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
                        let _ = stream.write_all(&reply).await;
                        let _ = stream.shutdown().await;
                    }
                });
                let body = payload(Format::Slack, &notice(Moment::Started), "ferry://runner", "id");
                let delivery =
                    send(&client, "chat", &Secret::new(url), Format::Slack, &body, Duration::from_millis(1))
                        .await;
                server.abort();
                delivery
            });
            let status_2xx = answer.starts_with(b"HTTP/1.1 2");
            prop_assert!(!delivery.delivered || status_2xx, "{delivery:?}");
            prop_assert!(delivery.delivered || delivery.error.is_some(), "{delivery:?}");
            prop_assert!((1..=ATTEMPTS).contains(&delivery.attempts));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

#[cfg(test)]
mod inventory_tests {
    use crate::diagnostic::SourceFile;
    use crate::inventory::Inventory;
    use crate::notify::{Format, Moment};

    const BASE: &str = "[defaults]\nknown_hosts = \"known_hosts\"\n\n[targets.a]\nhost = \"127.0.0.1\"\n\
                        transport = \"local\"\n\n[environments.dev]\ntargets = [\"a\"]\n\n\
                        [environments.prod]\ntargets = [\"a\"]\n";

    fn parse(extra: &str) -> Result<Inventory, String> {
        let dir = tempfile::tempdir().unwrap();
        let source = SourceFile::new("ferry.toml", format!("{BASE}{extra}"));
        Inventory::parse(source, dir.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_notifier_is_read_with_its_defaults() {
        let inventory = parse(
            "\n[notify.chat]\nurl = { env = \"SLACK_URL\" }\nformat = \"slack\"\n\n\
             [notify.bus]\nurl = { env = \"BUS\" }\nformat = \"cloudevents\"\non = [\"failed\"]\n\
             environments = [\"prod\"]\n",
        )
        .unwrap();
        let chat = inventory.notifiers.iter().find(|n| n.name == "chat").unwrap();
        assert_eq!(chat.format, Format::Slack);
        assert_eq!(chat.on, [Moment::Started, Moment::Succeeded, Moment::Failed]);
        assert!(chat.wants("dev", Moment::Started));
        let bus = inventory.notifiers.iter().find(|n| n.name == "bus").unwrap();
        assert!(bus.wants("prod", Moment::Failed));
        assert!(!bus.wants("prod", Moment::Succeeded) && !bus.wants("dev", Moment::Failed));
    }

    #[test]
    fn bad_notifiers_are_refused_with_where_and_what_to_write() {
        let error = parse(
            "\n[notify.chat]\nurl = { env = \"U\" }\nformat = \"msteams\"\n\n\
             [notify.bus]\nurl = { env = \"U\" }\nformat = \"teams\"\non = [\"done\"]\nenvironments = [\"prd\"]\n",
        )
        .unwrap_err();
        for want in [
            "notifier \"chat\" has an unknown format \"msteams\"",
            "write \"slack\", \"teams\" or \"cloudevents\"",
            "unknown moment \"done\" in `on`",
            "unknown environment \"prd\"",
            "ferry.toml:",
        ] {
            assert!(error.contains(want), "{want:?} not in:\n{error}");
        }
        let error = parse("\n[notify.chat]\nformat = \"slack\"\n").unwrap_err();
        assert!(error.contains("url"), "{error}");
    }
}
