//! The feed client: the Docker Registry HTTP API v2, as Docker itself speaks it.
//!
//! A registry says how it wants to be authenticated when it refuses a request: `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` (get a token from the realm, with Basic
//! credentials or anonymously; the answer carries `token` or `access_token`, cached until it
//! expires) or `Basic realm=…` (send the credentials on every request). The client follows
//! whichever it is told, so one code path serves distribution, Harbor, GHCR and Docker Hub.
//!
//! Tags are listed following `Link: <…>; rel="next"` to the end (registries page at 100 or
//! 1000 tags). Digests come from `Docker-Content-Digest` of a manifest `HEAD` (falling back to a
//! `GET` and hashing the body), with the `Accept` types of OCI indexes and manifests and of
//! Docker manifest lists and v2 manifests, so a multi-arch tag yields the index digest that
//! `docker pull` would record. TLS uses the system roots plus the feed's `ca_file`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64ct::Encoding;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The manifest media types ferry accepts, most specific first.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages a tag listing may have before ferry calls it a loop.
const MAX_PAGES: usize = 10_000;
/// The largest response body ferry reads (a tag page, a token answer, a manifest): a registry
/// that sends more is broken or hostile, and ferry keeps every body in memory.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// The longest a token is cached, whatever `expires_in` says (Docker's own default is 60 s).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// What can go wrong talking to a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No TCP connection, a timeout, or a broken HTTP exchange.
    #[error("registry {registry} cannot be reached: {message}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// Why.
        message: String,
    },
    /// The TLS handshake failed (unknown CA, wrong name, plain HTTP port).
    #[error(
        "registry {registry}: TLS failed: {message} (give the feed's CA certificate as `ca_file`, or check the url's scheme)"
    )]
    Tls {
        /// The registry.
        registry: String,
        /// Why.
        message: String,
    },
    /// The credentials were refused, or none were given where some are needed.
    #[error("registry {registry} refused the credentials: {message}")]
    AuthRefused {
        /// The registry.
        registry: String,
        /// What it said, and what ferry sent.
        message: String,
    },
    /// The repository does not exist (or is hidden from these credentials).
    #[error("repository {repository} not found in registry {registry}")]
    RepositoryNotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
    },
    /// The tag does not exist.
    #[error("tag {tag} not found in {registry}/{repository}")]
    TagNotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The tag.
        tag: String,
    },
    /// The registry answered something ferry does not understand.
    #[error("registry {registry}: {message}")]
    Protocol {
        /// The registry.
        registry: String,
        /// What was wrong.
        message: String,
    },
    /// The client could not be set up (a bad `ca_file`).
    #[error("{0}")]
    Setup(String),
}

/// Registry credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: Secret,
}

/// Where the client connects and how it maps names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host[:port]` (Docker Hub's `docker.io` becomes `https://registry-1.docker.io`).
    pub base: String,
    /// The registry as image references name it (`host[:port]`, `docker.io`).
    pub registry: String,
}

impl Endpoint {
    /// From a feed URL (`https://registry.example.com`, `http://10.200.0.1:5000`,
    /// `https://docker.io`).
    pub fn from_url(url: &str) -> Option<Endpoint> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let registry = rest.trim_end_matches('/').to_string();
        let base = match registry.as_str() {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                "https://registry-1.docker.io".to_string()
            }
            _ => format!("{scheme}://{registry}"),
        };
        Some(Endpoint { base, registry })
    }

    /// The repository path as the registry knows it: Docker Hub's official images live under
    /// `library/`.
    pub fn repository(&self, image: &str) -> String {
        if self.base == "https://registry-1.docker.io" && !image.contains('/') {
            format!("library/{image}")
        } else {
            image.to_string()
        }
    }
}

/// A client for one registry.
#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    endpoint: Endpoint,
    credentials: Option<Credentials>,
    /// Bearer tokens by scope, with their expiry.
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
    /// `Basic realm=…`.
    Basic,
}

impl Registry {
    /// A client for `endpoint`; `ca_file` adds PEM certificates to the system roots.
    pub fn new(
        endpoint: Endpoint,
        credentials: Option<Credentials>,
        ca_file: Option<&Path>,
    ) -> Result<Registry, RegistryError> {
        let tls = tls_config(ca_file)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // A redirect is the registry steering ferry too: only within the origin.
                let first = attempt.previous().first().map(reqwest::Url::to_string).unwrap_or_default();
                if attempt.previous().len() > 10 {
                    attempt.error("too many redirects")
                } else if same_origin(&first, attempt.url().as_str()) {
                    attempt.follow()
                } else {
                    let message =
                        format!("a redirect to {} leaves the feed's origin: refused", attempt.url());
                    attempt.error(message)
                }
            }))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Setup(format!("cannot set up the registry client: {e}")))?;
        Ok(Registry { http, endpoint, credentials, tokens: Arc::new(Mutex::new(HashMap::new())) })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Probes `/v2/` (authenticating if asked): the registry is there and these credentials work.
    pub async fn probe(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.endpoint.base);
        self.send(reqwest::Method::GET, &url, None, "").await.map(|_| ())
    }

    /// Every tag of `repository`, following pagination to the end.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        let scope = format!("repository:{repository}:pull");
        let mut url = format!("{}/v2/{repository}/tags/list", self.endpoint.base);
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            // A page that links back to one already read would loop: the listing ends there.
            if !seen.insert(url.clone()) {
                return Ok(tags);
            }
            let response = self.send_unchecked(reqwest::Method::GET, &url, None, &scope).await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(RegistryError::RepositoryNotFound {
                    registry: self.endpoint.registry.clone(),
                    repository: repository.to_string(),
                });
            }
            let response = self.check(response)?;
            let next = next_link(response.headers());
            let body = self.body(response).await?;
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(format!("the tag list is not JSON ({e})")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = self.on_origin(&self.absolute(&next), "the tag list's next page")?,
                None => return Ok(tags),
            }
        }
        Err(self.protocol(format!("the tag list of {repository} has more than {MAX_PAGES} pages")))
    }

    /// The manifest digest of `repository:tag` (what `docker pull` records).
    pub async fn digest(&self, repository: &str, tag: &str) -> Result<String, RegistryError> {
        let scope = format!("repository:{repository}:pull");
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.endpoint.base);
        let head = self.send_unchecked(reqwest::Method::HEAD, &url, Some(MANIFEST_TYPES), &scope).await?;
        if head.status() == reqwest::StatusCode::NOT_FOUND {
            // A missing tag, if the repository lists tags; else a missing repository.
            return Err(match self.tags(repository).await {
                Ok(_) => RegistryError::TagNotFound {
                    registry: self.endpoint.registry.clone(),
                    repository: repository.to_string(),
                    tag: tag.to_string(),
                },
                Err(e) => e,
            });
        }
        let response = self.check(head)?;
        if let Some(digest) = header_digest(response.headers()) {
            return Ok(digest);
        }
        // Some registries leave the header off HEAD answers: hash the manifest itself.
        let response = self.send(reqwest::Method::GET, &url, Some(MANIFEST_TYPES), &scope).await?;
        if let Some(digest) = header_digest(response.headers()) {
            return Ok(digest);
        }
        let body = self.body(response).await?;
        Ok(format!("sha256:{}", hex(&Sha256::digest(&body))))
    }

    /// Sends a request, answering an authentication challenge once; any other status than
    /// success is an error.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = self.send_unchecked(method, url, accept, scope).await?;
        self.check(response)
    }

    /// Sends a request, answering an authentication challenge once, and returns whatever status
    /// came back after that (a refused authentication is an error), so that a caller can tell a
    /// `404` from other failures by its [`reqwest::StatusCode`].
    async fn send_unchecked(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let cached = self.cached_token(scope);
        let first = self.request(method.clone(), url, accept, cached.as_deref().map(Auth::Bearer)).await?;
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| {
                self.protocol("401 without a WWW-Authenticate challenge ferry understands".into())
            })?;
        let auth = match challenge {
            Challenge::Basic => match &self.credentials {
                Some(c) => Auth::Basic(c),
                None => return Err(self.refused("it asks for a user name and password; the feed has none")),
            },
            Challenge::Bearer { realm, service, scope: asked } => {
                let scope = asked.unwrap_or_else(|| scope.to_string());
                let token = self.token(&realm, service.as_deref(), &scope).await?;
                return self.retry_bearer(method, url, accept, &token).await;
            }
        };
        let second = self.request(method, url, accept, Some(auth)).await?;
        if second.status() == reqwest::StatusCode::UNAUTHORIZED {
            let who = self
                .credentials
                .as_ref()
                .map_or("no credentials".to_string(), |c| format!("user {}", c.username));
            return Err(self.refused(&format!("401 Unauthorized for {who}")));
        }
        Ok(second)
    }

    async fn retry_bearer(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: Option<&str>,
        token: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = self.request(method, url, accept, Some(Auth::Bearer(token))).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.refused("the token it issued was refused"));
        }
        Ok(response)
    }

    fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(self.refused("403 Forbidden: these credentials may not read it"));
        }
        Err(self.protocol(format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("error"))))
    }

    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: Option<&str>,
        auth: Option<Auth<'_>>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.request(method, url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        request = match auth {
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            Some(Auth::Basic(c)) => request.basic_auth(&c.username, Some(c.password.expose())),
            None => request,
        };
        request.send().await.map_err(|e| self.unreachable(&e))
    }

    /// Gets a token from `realm` (with Basic credentials when the feed has them).
    async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, RegistryError> {
        let url = token_url(realm, service, scope)
            .ok_or_else(|| self.protocol(format!("the token realm {realm:?} is not an http(s) URL")))?;
        // The credentials go with the token request, so the realm must be the feed itself: a
        // registry (or whoever answers for it) must not send them to another host, or from an
        // https feed to a plain-http realm. Docker Hub's token service is the one known exception.
        if !same_origin(&self.endpoint.base, url.as_str()) && !docker_hub_realm(&self.endpoint.base, &url) {
            return Err(self.refused(&format!(
                "its token realm {realm} is not on the feed's origin {}: ferry sends credentials only to the feed itself",
                self.endpoint.base
            )));
        }
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.username, Some(c.password.expose()));
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let who =
                self.credentials.as_ref().map_or("anonymous".to_string(), |c| format!("user {}", c.username));
            return Err(self.refused(&format!("its token service refused {who} ({})", status.as_u16())));
        }
        if !status.is_success() {
            return Err(self.protocol(format!("token service answered {}", status.as_u16())));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = self.body(response).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("the token answer is not JSON ({e})")))?;
        let token =
            answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                self.protocol("the token answer has neither `token` nor `access_token`".into())
            })?;
        // Docker's default lifetime is 60 s; renew a little early.
        let lifetime =
            Duration::from_secs(answer.expires_in.unwrap_or(60).max(10) - 5).min(MAX_TOKEN_LIFETIME);
        if let (Ok(mut tokens), Some(until)) = (self.tokens.lock(), Instant::now().checked_add(lifetime)) {
            tokens.insert(scope.to_string(), (token.clone(), until));
        }
        Ok(token)
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// Reads a response body, refusing one over [`MAX_BODY`] (by its `Content-Length` before
    /// reading, or once that much has arrived).
    async fn body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
        let too_big = || self.protocol(format!("a response body is over {} MiB: refused", MAX_BODY >> 20));
        if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `url` if it is on the feed's origin (scheme, host and port), else a clear refusal:
    /// a registry's answer must not send ferry (and its credentials) elsewhere.
    fn on_origin(&self, url: &str, what: &str) -> Result<String, RegistryError> {
        if same_origin(&self.endpoint.base, url) {
            return Ok(url.to_string());
        }
        Err(self
            .protocol(format!("{what} is at {url}, off the feed's origin {}: refused", self.endpoint.base)))
    }

    fn absolute(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else {
            format!("{}{link}", self.endpoint.base)
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> RegistryError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        let registry = self.endpoint.registry.clone();
        let tls = ["certificate", "tls", "TLS", "handshake", "InvalidContentType", "CorruptMessage"];
        if tls.iter().any(|t| message.contains(t)) {
            return RegistryError::Tls { registry, message };
        }
        RegistryError::Unreachable { registry, message }
    }

    fn refused(&self, message: &str) -> RegistryError {
        RegistryError::AuthRefused { registry: self.endpoint.registry.clone(), message: message.to_string() }
    }

    fn protocol(&self, message: String) -> RegistryError {
        RegistryError::Protocol { registry: self.endpoint.registry.clone(), message }
    }
}

enum Auth<'a> {
    Bearer(&'a str),
    Basic(&'a Credentials),
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `k="v", k2=v2` pairs; quoted values may hold commas (`scope="repository:a:pull,push"`).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            value = quoted[..end].to_string();
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',');
        out.push((key, value));
    }
    out
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers.get_all(reqwest::header::LINK).iter().filter_map(|v| v.to_str().ok()).find_map(parse_next_link)
}

/// `<url>; rel="next"` → `url`.
pub fn parse_next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        next.then(|| target.to_string())
    })
}

fn header_digest(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .map(str::to_string)
}

/// The token request for a Bearer challenge: `realm?scope=…&service=…`, the values
/// form-encoded after any query the realm already has.
fn token_url(realm: &str, service: Option<&str>, scope: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(realm).ok().filter(|u| matches!(u.scheme(), "http" | "https"))?;
    url.query_pairs_mut().append_pair("scope", scope);
    if let Some(service) = service {
        url.query_pairs_mut().append_pair("service", service);
    }
    Some(url)
}

/// Whether `url` has the scheme, host and port of `base` (default ports made explicit).
pub fn same_origin(base: &str, url: &str) -> bool {
    let origin = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (u.scheme().to_string(), u.host_str().map(str::to_ascii_lowercase), u.port_or_known_default())
        })
    };
    matches!((origin(base), origin(url)), (Some(a), Some(b)) if a == b && a.1.is_some())
}

/// Docker Hub's registry hands out tokens from `https://auth.docker.io`, another host.
fn docker_hub_realm(base: &str, realm: &reqwest::Url) -> bool {
    base == "https://registry-1.docker.io"
        && realm.scheme() == "https"
        && realm.host_str() == Some("auth.docker.io")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// rustls with ring, the system roots, and the feed's CA file.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: a feed with its own `ca_file` still works.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        crate::tls::add_pem_file(&mut roots, path)
            .map_err(|e| RegistryError::Setup(format!("ca_file {}: {e}", path.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where a Docker client config (`~/.docker/config.json`) keeps a registry's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum DockerAuth {
    /// In `auths`, inline.
    Inline(Credentials),
    /// With a credential helper: run `docker-credential-NAME get` with `key` on stdin.
    Helper {
        /// NAME (from `credHelpers`, else `credsStore`).
        name: String,
        /// The registry as Docker names it to helpers: `host[:port]`, or
        /// `https://index.docker.io/v1/` for Docker Hub.
        key: String,
    },
    /// Nowhere: pull anonymously.
    Nothing,
}

/// The key Docker stores `registry`'s credentials under (docker/cli `ResolveAuthConfig`):
/// `host[:port]`, except Docker Hub's historical URL. Credential helpers match it exactly.
pub fn docker_auth_key(registry: &str) -> String {
    if ["docker.io", "index.docker.io", "registry-1.docker.io"].contains(&registry) {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Where `config` keeps `registry`'s credentials, in Docker's order (docker/cli
/// `getConfiguredCredentialStore`): `credHelpers[registry]`, else `credsStore`, else `auths`.
/// `DOCKER_AUTH_CONFIG` (newer CLIs) is not read. A config that is not JSON is an error (with
/// its line and column), not "no credentials": an anonymous pull's refusal would hide the typo.
pub fn docker_config_credentials(config: &str, registry: &str) -> Result<DockerAuth, serde_json::Error> {
    let value = serde_json::from_str::<serde_json::Value>(config)?;
    let key = docker_auth_key(registry);
    let helper = value
        .get("credHelpers")
        .and_then(|h| h.get(&key).or_else(|| h.get(registry)))
        .or_else(|| value.get("credsStore"))
        .and_then(serde_json::Value::as_str)
        .filter(|name| !name.is_empty());
    if let Some(name) = helper {
        return Ok(DockerAuth::Helper { name: name.to_string(), key });
    }
    Ok(inline_auth(&value, registry).map_or(DockerAuth::Nothing, DockerAuth::Inline))
}

/// `auths` entry of `registry`, under any of the names `docker login` writes.
fn inline_auth(value: &serde_json::Value, registry: &str) -> Option<Credentials> {
    let auths = value.get("auths")?.as_object()?;
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        docker_auth_key(registry),
    ];
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    let auth = entry.get("auth")?.as_str()?;
    let decoded = base64ct::Base64::decode_vec(auth).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials { username: username.to_string(), password: Secret::new(password.to_string()) })
}

/// What a credential helper's `get` printed (docker-credential-helpers `client.Get`):
/// `{"ServerURL":…,"Username":…,"Secret":…}`. `Err` says why it is unusable, never with the
/// secret: not JSON, no `Secret`, or an identity token (`Username` `<token>`: an OAuth refresh
/// token, which ferry's registry client cannot exchange). An empty `Secret` is no entry:
/// Debian's `docker-credential-pass` 0.6.4 answers so, exit 0, for a registry it does not hold.
pub fn parse_helper_answer(stdout: &str) -> Result<Option<Credentials>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer = serde_json::from_str(stdout.trim()).map_err(|e| {
        // Only where and what kind: serde_json's own message may quote the input.
        let kind = match e.classify() {
            serde_json::error::Category::Data => "not the expected fields",
            _ => "not JSON",
        };
        format!(
            "its answer is not the JSON a credential helper prints ({kind}, line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    if answer.username == "<token>" {
        return Err("it holds an identity token (Username \"<token>\"), which ferry cannot use: \
                    only a user name and password (or access token) work"
            .to_string());
    }
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials { username: answer.username, password: Secret::new(answer.secret) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted answer: (status line, extra headers, body).
    type Answer = (&'static str, Vec<String>, Vec<u8>);

    /// A scripted HTTP server on 127.0.0.1, one thread per connection, `Connection: close`.
    /// A fake on purpose: a real registry never sends a foreign `Link` or realm, a self-link,
    /// an absurd `expires_in` or a 9 MiB page, which are the answers these tests are about.
    struct FakeRegistry {
        port: u16,
        /// Each request's head (request line and headers), in arrival order.
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl FakeRegistry {
        /// `answer(port, request head)` gives (status line, extra headers, body).
        fn start(answer: fn(u16, &str) -> Answer) -> FakeRegistry {
            use std::io::{BufRead, BufReader, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&requests);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let log = Arc::clone(&log);
                    std::thread::spawn(move || {
                        let mut head = String::new();
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        log.lock().unwrap().push(head.clone());
                        let (status, headers, body) = answer(port, &head);
                        let mut response = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
                        for h in headers {
                            response.push_str(&format!("{h}\r\n"));
                        }
                        response.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                        let _ = stream.write_all(response.as_bytes());
                        let _ = stream.write_all(&body);
                    });
                }
            });
            FakeRegistry { port, requests }
        }

        fn registry(&self, credentials: bool) -> Registry {
            let endpoint = Endpoint::from_url(&format!("http://127.0.0.1:{}", self.port)).unwrap();
            let credentials =
                credentials.then(|| Credentials { username: "u".into(), password: Secret::new("feed-pw") });
            Registry::new(endpoint, credentials, None).unwrap()
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn json(body: &str) -> Vec<u8> {
        body.as_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_link_off_the_feeds_origin_is_refused_and_not_followed() {
        let feed = FakeRegistry::start(|_, _| {
            let link = "Link: <http://127.0.0.2:9/v2/a/tags/list?last=x>; rel=\"next\"".to_string();
            ("200 OK", vec![link], json(r#"{"tags":["1"]}"#))
        });
        let err = feed.registry(false).tags("a").await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "registry 127.0.0.1:{}: the tag list's next page is at http://127.0.0.2:9/v2/a/tags/list?last=x, \
                 off the feed's origin http://127.0.0.1:{}: refused",
                feed.port, feed.port
            )
        );
        assert_eq!(feed.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_tag_list_that_links_to_itself_stops() {
        let feed = FakeRegistry::start(|_, head| {
            let more = head.starts_with("GET /v2/a/tags/list ");
            // Both pages link to the second one: it links to itself.
            let link = "/v2/a/tags/list?last=1";
            let tags = if more { r#"{"tags":["1"]}"# } else { r#"{"tags":["2"]}"# };
            ("200 OK", vec![format!("Link: <{link}>; rel=\"next\"")], json(tags))
        });
        let tags = feed.registry(false).tags("a").await.unwrap();
        assert_eq!(tags, vec!["1".to_string(), "2".to_string()]);
        assert_eq!(feed.requests().len(), 2, "the second page links to itself: read once");
    }

    #[tokio::test]
    async fn a_token_realm_on_another_host_never_gets_the_credentials() {
        let realm = FakeRegistry::start(|_, _| ("200 OK", vec![], json(r#"{"token":"t"}"#)));
        // The realm's port travels to the feed's answer through the process-wide static.
        static REALM_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        REALM_PORT.store(realm.port, std::sync::atomic::Ordering::SeqCst);
        let feed = FakeRegistry::start(|_, _| {
            let port = REALM_PORT.load(std::sync::atomic::Ordering::SeqCst);
            // 127.0.0.1 with another port is another origin, as another host would be.
            let challenge =
                format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=x");
            ("401 Unauthorized", vec![challenge], json("{}"))
        });
        let err = feed.registry(true).tags("a").await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "registry 127.0.0.1:{feed} refused the credentials: its token realm http://127.0.0.1:{realm}/token \
                 is not on the feed's origin http://127.0.0.1:{feed}: ferry sends credentials only to the feed itself",
                feed = feed.port,
                realm = realm.port
            )
        );
        assert!(realm.requests().is_empty(), "the foreign realm was asked: {:?}", realm.requests());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin("https://r.example", "https://r.example:443/token"));
        assert!(same_origin("http://10.200.0.1:5000", "http://10.200.0.1:5000/v2/x?n=1"));
        assert!(!same_origin("https://r.example", "http://r.example/token"), "https feed, http realm");
        assert!(!same_origin("https://r.example", "https://auth.evil.example/token"));
        assert!(!same_origin("http://10.200.0.1:5000", "http://10.200.0.1:5001/"));
        assert!(!same_origin("https://r.example", "file:///etc/passwd"));
        assert!(!same_origin("https://r.example", "/relative"));
    }

    #[tokio::test]
    async fn a_huge_token_lifetime_does_not_panic_and_is_capped() {
        let feed = FakeRegistry::start(|port, head| {
            if head.starts_with("GET /token") {
                return ("200 OK", vec![], json(r#"{"token":"t","expires_in":18446744073709551615}"#));
            }
            if head.to_ascii_lowercase().contains("authorization: bearer t") {
                return ("200 OK", vec![], json(r#"{"tags":["1"]}"#));
            }
            let challenge = format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\"");
            ("401 Unauthorized", vec![challenge], json("{}"))
        });
        let registry = feed.registry(true);
        assert_eq!(registry.tags("a").await.unwrap(), vec!["1".to_string()]);
        let tokens = registry.tokens.lock().unwrap();
        let (_, until) = tokens.values().next().unwrap();
        assert!(*until <= Instant::now() + MAX_TOKEN_LIFETIME);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused() {
        let feed = FakeRegistry::start(|_, _| ("200 OK", vec![], vec![b' '; MAX_BODY + 1]));
        let err = feed.registry(false).tags("a").await.unwrap_err().to_string();
        assert_eq!(err, format!("registry 127.0.0.1:{}: a response body is over 8 MiB: refused", feed.port));
    }

    #[tokio::test]
    async fn a_redirect_off_the_feeds_origin_is_not_followed() {
        let other = FakeRegistry::start(|_, _| ("200 OK", vec![], json(r#"{"tags":["x"]}"#)));
        static OTHER_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        OTHER_PORT.store(other.port, std::sync::atomic::Ordering::SeqCst);
        let feed = FakeRegistry::start(|_, _| {
            let port = OTHER_PORT.load(std::sync::atomic::Ordering::SeqCst);
            (
                "307 Temporary Redirect",
                vec![format!("Location: http://127.0.0.1:{port}/v2/a/tags/list")],
                vec![],
            )
        });
        let err = feed.registry(true).tags("a").await.unwrap_err().to_string();
        assert!(err.contains("leaves the feed's origin: refused"), "{err}");
        assert!(other.requests().is_empty());
    }

    #[test]
    fn token_requests_encode_scope_and_service() {
        let url = token_url(
            "https://auth.example.com/token",
            Some("registry.example.com"),
            "repository:acme/web:pull,push",
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://auth.example.com/token?scope=repository%3Aacme%2Fweb%3Apull%2Cpush&service=registry.example.com"
        );
        // A realm with a query of its own keeps it; the values are appended after it.
        let url = token_url("http://10.200.0.1:5001/auth?account=ci", None, "a b&c=d").unwrap();
        assert_eq!(url.as_str(), "http://10.200.0.1:5001/auth?account=ci&scope=a+b%26c%3Dd");
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(pairs[1], ("scope".to_string(), "a b&c=d".to_string()), "reads back unchanged");
        // Not a URL a token can come from.
        assert_eq!(token_url("/token", None, "s"), None);
        assert_eq!(token_url("file:///etc/passwd", None, "s"), None);
    }

    #[test]
    fn reads_challenges() {
        let bearer = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#;
        assert_eq!(
            parse_challenge(bearer),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="test-realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a realm is required");
    }

    #[test]
    fn reads_next_links() {
        assert_eq!(
            parse_next_link(r#"</v2/ferry/many/tags/list?n=100&last=1.0.99>; rel="next""#).as_deref(),
            Some("/v2/ferry/many/tags/list?n=100&last=1.0.99")
        );
        assert_eq!(parse_next_link(r#"<https://x/a>; rel="prev""#), None);
    }

    #[test]
    fn maps_docker_hub() {
        let hub = Endpoint::from_url("https://docker.io").unwrap();
        assert_eq!(hub.base, "https://registry-1.docker.io");
        assert_eq!(hub.repository("nginx"), "library/nginx");
        assert_eq!(hub.repository("acme/web"), "acme/web");
        let lab = Endpoint::from_url("http://10.200.0.1:5000/").unwrap();
        assert_eq!((lab.base.as_str(), lab.registry.as_str()), ("http://10.200.0.1:5000", "10.200.0.1:5000"));
        assert_eq!(lab.repository("nginx"), "nginx");
        assert!(Endpoint::from_url("ftp://x").is_none());
    }

    #[test]
    fn reads_docker_config_auths() {
        let config = r#"{"auths":{"10.200.0.1:5001":{"auth":"dGVzdGVyOnMzY3JldA=="},"https://index.docker.io/v1/":{"auth":"aHViOnB3"}}}"#;
        let DockerAuth::Inline(lab) = docker_config_credentials(config, "10.200.0.1:5001").unwrap() else {
            panic!()
        };
        assert_eq!((lab.username.as_str(), lab.password.expose()), ("tester", "s3cret"));
        let DockerAuth::Inline(hub) = docker_config_credentials(config, "docker.io").unwrap() else {
            panic!()
        };
        assert_eq!(hub.username, "hub");
        assert_eq!(docker_config_credentials(config, "other:5000").unwrap(), DockerAuth::Nothing);
        let broken = docker_config_credentials("{\n  \"auths\": {,}\n}", "x").unwrap_err();
        assert_eq!((broken.line(), broken.column()), (2, 13), "the line and column to fix: {broken}");
    }

    #[test]
    fn cred_helpers_win_over_the_store_which_wins_over_auths() {
        let helper = |name: &str, key: &str| DockerAuth::Helper { name: name.into(), key: key.into() };
        let config = r#"{"auths":{"reg:5000":{"auth":"dGVzdGVyOnMzY3JldA=="}},"credsStore":"pass",
                         "credHelpers":{"ecr.example:443":"ecr-login","https://index.docker.io/v1/":"hub"}}"#;
        assert_eq!(
            docker_config_credentials(config, "ecr.example:443").unwrap(),
            helper("ecr-login", "ecr.example:443")
        );
        assert_eq!(docker_config_credentials(config, "reg:5000").unwrap(), helper("pass", "reg:5000"));
        assert_eq!(
            docker_config_credentials(config, "docker.io").unwrap(),
            helper("hub", "https://index.docker.io/v1/")
        );
        let only_helpers = r#"{"auths":{"reg:5000":{"auth":"dGVzdGVyOnMzY3JldA=="}},"credHelpers":{"x:1":"pass"},"credsStore":""}"#;
        assert_eq!(docker_config_credentials(only_helpers, "x:1").unwrap(), helper("pass", "x:1"));
        assert!(matches!(
            docker_config_credentials(only_helpers, "reg:5000").unwrap(),
            DockerAuth::Inline(_)
        ));
    }

    #[test]
    fn a_helper_answer_gives_credentials_or_says_why_not() {
        let ok = parse_helper_answer(r#"{"ServerURL":"reg:5000","Username":"tester","Secret":"s3cret"}"#)
            .unwrap()
            .unwrap();
        assert!(
            parse_helper_answer(r#"{"ServerURL":"reg:5000","Username":"","Secret":""}"#).unwrap().is_none()
        );
        assert_eq!((ok.username.as_str(), ok.password.expose()), ("tester", "s3cret"));
        let token = parse_helper_answer(r#"{"ServerURL":"x","Username":"<token>","Secret":"refresh-xyz"}"#);
        assert!(token.as_ref().unwrap_err().contains("identity token"), "{token:?}");
        assert!(!token.unwrap_err().contains("refresh-xyz"));
        for garbage in ["s3cret-lab is not json", r#""s3cret-lab""#, r#"{"Secret":["s3cret-lab"]}"#] {
            let why = parse_helper_answer(garbage).unwrap_err();
            assert!(why.starts_with("its answer is not the JSON"), "{why}");
            assert!(!why.contains("s3cret-lab"), "{why}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_helper_answer_parser_never_panics(text in ".*", user in ".*", secret in ".*") {
            let _ = parse_helper_answer(&text);
            let json = serde_json::json!({"ServerURL": "r", "Username": user, "Secret": secret}).to_string();
            let parsed = parse_helper_answer(&json);
            if let Ok(Some(c)) = parsed {
                proptest::prop_assert_eq!(c.password.expose(), secret.as_str());
            }
        }
    }
}
