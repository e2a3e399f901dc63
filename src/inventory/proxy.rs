//! The proxy settings of an inventory (issue 15): `[proxy]` and the apps' `proxy = {…}` routes.
//!
//! A route is written on the app and overridden key by key per environment; the two layers are
//! merged here, once, into a complete [`Route`] per environment, so nothing later has to know
//! about layers or about optional keys. Every value ends up in a shell script on the target and
//! in the proxy's JSON config: the checks below keep them to the characters a host name or a URL
//! path needs, so neither quoting nor JSON escaping has to carry the weight alone.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawRoute;

/// The public Caddy 2 image (`docker.io/library/caddy:2`), the default proxy image.
pub const DEFAULT_IMAGE: &str = crate::proxy::DEFAULT_IMAGE;
/// How long ferry waits at most for in-flight requests to the old container after a switch.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// `[proxy]`: the proxy container ferry runs on each target of a proxied app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The image reference, with its tag.
    pub image: String,
    /// A feed whose credentials pull the image.
    pub feed: Option<String>,
    /// The longest wait for in-flight requests to the old container after a switch.
    pub drain: Duration,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy { image: DEFAULT_IMAGE.to_string(), feed: None, drain: DEFAULT_DRAIN }
    }
}

/// How the proxy terminates TLS for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Caddy's internal CA (self-signed root; clients must trust it).
    Internal,
    /// A public ACME CA (Let's Encrypt by default): the host name must resolve to the target.
    Acme,
}

impl Tls {
    /// The word the inventory uses.
    pub fn word(self) -> &'static str {
        match self {
            Tls::Internal => "internal",
            Tls::Acme => "acme",
        }
    }
}

/// An app's route through the proxy in one environment, complete and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Route {
    /// The host name the proxy matches (lower case).
    pub host: String,
    /// The container's port the proxy forwards to.
    pub port: u16,
    /// A path that answers 2xx when the container is ready; starts with `/`.
    pub health: String,
    /// A path prefix the route is limited to (starts with `/`, no trailing `/`); `None`: all.
    pub path: Option<String>,
    /// TLS on :443, or plain HTTP on :80 only.
    pub tls: Option<Tls>,
}

impl Route {
    /// The route in one line, for plans and reports:
    /// `web.example.com/api → :80, health /up, tls internal`.
    pub fn describe(&self) -> String {
        let tls = self.tls.map_or_else(|| "plain http".to_string(), |t| format!("tls {}", t.word()));
        format!(
            "{}{} → :{}, health {}, {tls}",
            self.host,
            self.path.as_deref().unwrap_or(""),
            self.port,
            self.health
        )
    }

    /// `host` + `path` as the proxy matches them: two routes with the same key collide.
    pub fn key(&self) -> (String, String) {
        (self.host.clone(), self.path.clone().unwrap_or_default())
    }
}

/// A route as written in one layer, each key with its span (checked, not yet merged).
#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    pub host: Option<(String, Range<usize>)>,
    pub port: Option<(u16, Range<usize>)>,
    pub health: Option<(String, Range<usize>)>,
    /// `Some((None, _))`: `path = "/"`, everything (it overrides an app's prefix).
    pub path: Option<(Option<String>, Range<usize>)>,
    pub tls: Option<(Tls, Range<usize>)>,
    /// The whole inline table.
    pub span: Range<usize>,
}

/// A problem in a route: (span, message, help).
pub(super) type Problem = (Range<usize>, String, Option<String>);

/// Checks each key of one layer; problems are collected, bad keys are left out.
pub(super) fn layer(raw: Spanned<RawRoute>, problems: &mut Vec<Problem>) -> Layer {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut out = Layer { span, ..Layer::default() };
    if let Some(host) = raw.host {
        match check_host(host.get_ref()) {
            Ok(h) => out.host = Some((h, host.span())),
            Err((message, help)) => problems.push((host.span(), message, Some(help))),
        }
    }
    if let Some(port) = raw.port {
        match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => out.port = Some((p, port.span())),
            _ => problems.push((
                port.span(),
                format!("port {} is out of range", port.get_ref()),
                Some("the container's port the proxy forwards to, 1 to 65535".into()),
            )),
        }
    }
    if let Some(health) = raw.health {
        match check_path(health.get_ref(), "health") {
            Ok(h) => out.health = Some((h, health.span())),
            Err((message, help)) => problems.push((health.span(), message, Some(help))),
        }
    }
    if let Some(path) = raw.path {
        match check_path(path.get_ref(), "path") {
            Ok(p) if p == "/" => out.path = Some((None, path.span())),
            Ok(p) => out.path = Some((Some(p.trim_end_matches('/').to_string()), path.span())),
            Err((message, help)) => problems.push((path.span(), message, Some(help))),
        }
    }
    if let Some(tls) = raw.tls {
        match tls.get_ref().as_str() {
            "internal" => out.tls = Some((Tls::Internal, tls.span())),
            "acme" => out.tls = Some((Tls::Acme, tls.span())),
            other => problems.push((
                tls.span(),
                format!("unknown tls \"{other}\""),
                Some("use \"internal\" (Caddy's own CA) or \"acme\" (a public CA); leave it out for plain HTTP".into()),
            )),
        }
    }
    out
}

/// Merges an environment's layer over the app's, key by key; `None` when neither has a route.
/// A merged route missing a required key is a problem at the place that started the route.
pub(super) fn merge(app: Option<&Layer>, env: Option<&Layer>, problems: &mut Vec<Problem>) -> Option<Route> {
    let at = env.or(app)?.span.clone();
    let pick = |f: fn(&Layer) -> bool| env.filter(|l| f(l)).or(app.filter(|l| f(l)));
    let host = pick(|l| l.host.is_some()).and_then(|l| l.host.clone());
    let port = pick(|l| l.port.is_some()).and_then(|l| l.port.clone());
    let health = pick(|l| l.health.is_some()).and_then(|l| l.health.clone());
    let path = pick(|l| l.path.is_some()).and_then(|l| l.path.clone());
    let tls = pick(|l| l.tls.is_some()).and_then(|l| l.tls.clone());
    let missing: Vec<&str> =
        [("host", host.is_none()), ("port", port.is_none()), ("health", health.is_none())]
            .into_iter()
            .filter_map(|(k, missing)| missing.then_some(k))
            .collect();
    let (Some(host), Some(port), Some(health)) = (host, port, health) else {
        // A key that was refused above is already reported; say nothing twice.
        let refused = problems.iter().any(|p| p.0.start >= at.start && p.0.end <= at.end);
        if !refused {
            problems.push((
                at,
                format!("the proxy route needs {}", missing.join(", ")),
                Some(
                    "write proxy = { host = \"web.example.com\", port = 80, health = \"/up\" } on the app \
                     (an environment's proxy overrides it key by key)"
                        .into(),
                ),
            ));
        }
        return None;
    };
    Some(Route {
        host: host.0,
        port: port.0,
        health: health.0,
        path: path.and_then(|p| p.0),
        tls: tls.map(|t| t.0),
    })
}

/// A host name the proxy can match: DNS labels (letters, digits, `-`), optionally a leading
/// `*.` wildcard label; lower-cased. Template syntax is refused with the way to do it instead.
fn check_host(text: &str) -> Result<String, (String, String)> {
    if text.contains("{{") || text.contains("{%") {
        return Err((
            "the proxy host is not a template".into(),
            "give each environment its own host: [apps.APP.environments.ENV] proxy = { host = \"…\" }".into(),
        ));
    }
    let host = text.to_ascii_lowercase();
    let labels = host.strip_prefix("*.").unwrap_or(&host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !labels.split('.').all(label_ok) {
        return Err((
            format!("\"{text}\" is not a host name"),
            "write a DNS name such as \"web.example.com\" (letters, digits, `-` and `.`; no scheme, port or path)"
                .into(),
        ));
    }
    Ok(host)
}

/// A URL path for `health` or `path`: starts with `/`, and holds only characters that need no
/// escaping in a URL, a shell word or JSON.
fn check_path(text: &str, key: &str) -> Result<String, (String, String)> {
    let ok = text.starts_with('/')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "/-._~!$&'()+,;=:@%".contains(c))
        && !text.contains("//")
        && !text.split('/').any(|s| s == "..");
    if ok {
        Ok(text.to_string())
    } else {
        let example = if key == "health" { "\"/up\"" } else { "\"/api\"" };
        Err((
            format!("the proxy {key} \"{text}\" is not a plain URL path"),
            format!(
                "write a path that starts with `/`, e.g. {key} = {example} (no query, `*`, spaces or `..`)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_paths() {
        assert_eq!(check_host("Web.Example.com"), Ok("web.example.com".into()));
        assert_eq!(check_host("*.example.com"), Ok("*.example.com".into()));
        for bad in ["", "http://x", "x:80", "a b", "-a.com", "a..b", "x/y", "{{ environment }}.x"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(check_path("/up", "health").is_ok());
        assert!(check_path("/api/v1", "path").is_ok());
        for bad in ["up", "/a b", "/a?b", "/a/*", "/../x", "//x", "/a\"b"] {
            assert!(check_path(bad, "path").is_err(), "{bad}");
        }
    }

    #[test]
    fn describes_a_route_in_one_line() {
        let route = Route {
            host: "web.example.com".into(),
            port: 80,
            health: "/up".into(),
            path: Some("/api".into()),
            tls: Some(Tls::Internal),
        };
        assert_eq!(route.describe(), "web.example.com/api → :80, health /up, tls internal");
        let plain = Route { path: None, tls: None, ..route };
        assert_eq!(plain.describe(), "web.example.com → :80, health /up, plain http");
    }
}
