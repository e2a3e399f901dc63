//! An app's feed, as commands use it: the registry client with the feed's credentials, the
//! resolution of `--version latest` to the newest allowed version, and of a tag to its digest.

use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::{App, Inventory};
use crate::registry::{self, Credentials, DockerAuth, Endpoint, Registry, RegistryError};
use crate::secret_command;
use crate::vars;

use super::process_env;

/// The word that asks for the newest allowed version.
pub const LATEST: &str = "latest";

/// The app's registry client and repository path; `None` when the app has no feed.
pub fn registry_for(inventory: &Inventory, app: &App) -> Result<Option<(Registry, String)>, Error> {
    let Some((endpoint, credentials, ca_file)) = feed_parts(inventory, app)? else { return Ok(None) };
    let client = Registry::new(endpoint.clone(), credentials, ca_file.as_deref()).map_err(feed_error)?;
    Ok(Some((client, endpoint.repository(&app.image))))
}

/// The `docker login` targets need before they pull the app's image: when its feed has
/// credentials (its own, or this machine's Docker config for that registry).
pub fn login_for(inventory: &Inventory, app: &App) -> Result<Option<crate::docker::Login>, Error> {
    login_named(inventory, app.feed.as_deref())
}

/// The `docker login` targets need before they pull the proxy image: `[proxy] feed`'s
/// credentials, exactly as an app's feed gives them.
pub fn proxy_login(inventory: &Inventory) -> Result<Option<crate::docker::Login>, Error> {
    login_named(inventory, inventory.proxy.feed.as_deref())
}

/// The login of the feed named `feed` (none: no login).
fn login_named(inventory: &Inventory, feed: Option<&str>) -> Result<Option<crate::docker::Login>, Error> {
    let Some((endpoint, credentials, _)) = feed_parts_named(inventory, feed)? else { return Ok(None) };
    Ok(credentials.map(|c| crate::docker::Login {
        registry: endpoint.registry,
        username: c.username,
        password: c.password,
    }))
}

type FeedParts = (Endpoint, Option<Credentials>, Option<std::path::PathBuf>);

fn feed_parts(inventory: &Inventory, app: &App) -> Result<Option<FeedParts>, Error> {
    feed_parts_named(inventory, app.feed.as_deref())
}

fn feed_parts_named(inventory: &Inventory, feed: Option<&str>) -> Result<Option<FeedParts>, Error> {
    let Some(feed) = feed.and_then(|f| inventory.feeds.get(f)) else { return Ok(None) };
    let endpoint = Endpoint::from_url(&feed.url)
        .ok_or_else(|| Diagnostic::new(format!("feed {}: invalid url {}", feed.name, feed.url)))?;
    let credentials = match (&feed.username, &feed.password) {
        (Some(user), Some(password)) => Some(Credentials {
            username: vars::read_source(inventory, "username", user, &process_env)?.expose().to_string(),
            password: vars::read_source(inventory, "password", password, &process_env)?,
        }),
        (None, None) => docker_config(&endpoint.registry)?,
        _ => {
            return Err(Diagnostic::new(format!(
                "feed {} has a username or a password, not both",
                feed.name
            ))
            .help("give both `username` and `password`, or neither (then ~/.docker/config.json is used)")
            .into());
        }
    };
    Ok(Some((endpoint, credentials, feed.ca_file.clone())))
}

/// Credentials from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, as Docker finds
/// them: the registry's credential helper (`credHelpers`, else `credsStore`), else `auths`.
/// No config, or no entry: none (anonymous pulls).
fn docker_config(registry: &str) -> Result<Option<Credentials>, Error> {
    let Some(dir) = process_env("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| process_env("HOME").map(|h| std::path::Path::new(&h).join(".docker")))
    else {
        return Ok(None);
    };
    let file = dir.join("config.json");
    // Only a missing config means no credentials; an unreadable or broken one is a mistake
    // to fix, not a reason to pull anonymously.
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Input(
                Diagnostic::new(format!("cannot read the Docker config {}: {e}", file.display()))
                    .help("make it readable by the user running ferry, or point DOCKER_CONFIG elsewhere"),
            ));
        }
    };
    let auth = registry::docker_config_credentials(&text, registry).map_err(|e| {
        Error::Input(
            Diagnostic::new(format!("the Docker config {} is not valid JSON: {e}", file.display()))
                .help("fix it (or move it away) and run again; `docker login` rewrites it"),
        )
    })?;
    match auth {
        DockerAuth::Nothing => Ok(None),
        DockerAuth::Inline(credentials) => Ok(Some(credentials)),
        DockerAuth::Helper { name, key } => helper_credentials(
            &format!("docker-credential-{name}"),
            &key,
            &file,
            secret_command::DEFAULT_TIMEOUT,
        ),
    }
}

/// Asks `program get` (`docker-credential-NAME`) for `key`'s credentials, as Docker does (the key on stdin,
/// JSON on stdout), through the secret commands' runner (timeout, masking, one run per run).
/// "credentials not found" is no credentials; anything unusable is exit 2 naming the helper.
fn helper_credentials(
    program: &str,
    key: &str,
    file: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<Option<Credentials>, Error> {
    let argv = [program.to_string(), "get".to_string()];
    let invocation =
        secret_command::Invocation { argv: &argv, stdin: Some(key.as_bytes()), dir: None, timeout };
    let refuse = |why: String| {
        Error::Input(
            Diagnostic::new(format!("registry {key}: credential helper {program} (named in {}) {why}", file.display()))
                .help(format!(
                    "check `echo {key} | {program} get` as the user that runs ferry, or give the feed `username` and `password`"
                )),
        )
    };
    let known = secret_command::cached_values();
    match secret_command::output(invocation, &known) {
        Ok(stdout) => {
            let answer = registry::parse_helper_answer(stdout.expose()).map_err(refuse)?;
            // The password by itself, not only the helper's whole JSON answer, is what masks it.
            if let Some(credentials) = &answer {
                secret_command::remember(&credentials.password);
            }
            Ok(answer)
        }
        // Helpers print their errors on stdout (docker-credential-helpers `client.Get`).
        Err(secret_command::Failure::Exited { stdout, .. })
            if stdout.expose().contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(secret_command::Failure::Exited { code, errors, stdout }) if errors.is_empty() => {
            let said = secret_command::shown(stdout.expose(), &known);
            Err(refuse(if said.is_empty() {
                format!("exited {code}")
            } else {
                format!("exited {code}: {said}")
            }))
        }
        Err(failure) => Err(refuse(failure.to_string())),
    }
}

/// A registry error as a command error: setup problems are input errors (exit 2), the rest
/// are failures (exit 1).
pub fn feed_error(e: RegistryError) -> Error {
    match e {
        RegistryError::Setup(_) => Error::Input(Diagnostic::new(e.to_string())),
        RegistryError::AuthRefused { .. } => Error::Failed(
            Diagnostic::new(e.to_string())
                .help("check the feed's username and password sources (or `docker login`)"),
        ),
        other => Error::Failed(Diagnostic::new(other.to_string())),
    }
}

/// What a deployment runs: the tag (`latest` resolved to the newest allowed version) and its
/// digest. Without a feed: the tag as given, and no digest (the first pull pins it).
pub async fn resolve(
    inventory: &Inventory,
    app: &App,
    version: &str,
) -> Result<(String, Option<String>), Error> {
    let Some((client, repository)) = registry_for(inventory, app)? else {
        if version == LATEST {
            return Err(Diagnostic::new(format!("--version latest needs a feed: app {} has none", app.name))
                .help("name the tag, or give the app a `feed`")
                .into());
        }
        return Ok((version.to_string(), None));
    };
    let tag = if version == LATEST {
        let tags = client.tags(&repository).await.map_err(feed_error)?;
        let newest = crate::version::newest_first(tags.iter().map(String::as_str), &app.versions);
        newest.into_iter().next().map(|v| v.tag).ok_or_else(|| {
            Error::Failed(
                Diagnostic::new(format!(
                    "no tag of {}/{repository} is a version the app allows ({})",
                    client.endpoint().registry,
                    crate::output::count(tags.len(), "tag")
                ))
                .help("`ferry versions APP` lists them; check the app's `versions` pattern and prerelease setting"),
            )
        })?
    } else {
        version.to_string()
    };
    let digest = client.digest(&repository, &tag).await.map_err(|e| tag_error(app, e))?;
    Ok((tag, Some(digest)))
}

/// A registry error on looking up a tag: a tag the registry does not have is bad input (exit 2,
/// pointing to the versions it has); anything else is as [`feed_error`] says.
pub fn tag_error(app: &App, e: RegistryError) -> Error {
    match e {
        RegistryError::TagNotFound { .. } => Error::Input(
            Diagnostic::new(e.to_string())
                .help(format!("`ferry versions {}` lists the versions the feed has", app.name)),
        ),
        other => feed_error(other),
    }
}

/// What `plan --version TAG` learnt from the app's feed about the tag.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedCheck {
    /// The feed's name.
    pub feed: String,
    /// The tag looked up.
    pub tag: String,
    /// The digest the feed has for it; `None` when the feed could not be asked.
    pub digest: Option<String>,
    /// Why the feed could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FeedCheck {
    /// The line `plan` shows.
    pub fn describe(&self) -> String {
        match (&self.digest, &self.error) {
            (Some(digest), _) => format!("feed {} has {} ({digest})", self.feed, self.tag),
            (None, error) => format!(
                "feed {} cannot be asked ({}): whether it has {} is not checked",
                self.feed,
                error.as_deref().unwrap_or("no answer"),
                self.tag
            ),
        }
    }
}

/// Asks the app's feed (if it has one) whether it has `tag`: the digest when it does, exit 2
/// when the registry says it does not, and a check without digest when the feed cannot be asked
/// (`plan` stays usable offline).
pub async fn check_tag(inventory: &Inventory, app: &App, tag: &str) -> Result<Option<FeedCheck>, Error> {
    let Some(feed) = app.feed.clone() else { return Ok(None) };
    let client = match registry_for(inventory, app) {
        Ok(Some(client)) => client,
        Ok(None) => return Ok(None),
        // The feed's credentials are not on this machine (a laptop, a PR's CI job): the plan
        // is made without the feed's word, as when it is down.
        Err(e) => {
            let why = e.diagnostics().first().map_or_else(|| e.to_string(), |d| d.message.clone());
            return Ok(Some(FeedCheck { feed, tag: tag.to_string(), digest: None, error: Some(why) }));
        }
    };
    let (client, repository) = client;
    let (digest, error) = match client.digest(&repository, tag).await {
        Ok(digest) => (Some(digest), None),
        Err(e @ RegistryError::TagNotFound { .. }) => return Err(tag_error(app, e)),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Some(FeedCheck { feed, tag: tag.to_string(), digest, error }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// A stub credential helper answering with `body` (a shell script; its stdin is the key).
    fn helper(body: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-credential-stub");
        std::fs::write(&path, format!("#!/bin/sh\n[ \"$1\" = get ] || exit 9\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = path.display().to_string();
        (dir, program)
    }

    fn ask(body: &str, key: &str, timeout: Duration) -> (String, Result<Option<Credentials>, Error>) {
        let (_dir, program) = helper(body);
        let answer = helper_credentials(&program, key, std::path::Path::new("/cfg/config.json"), timeout);
        (program, answer)
    }

    fn message(e: &Error) -> String {
        e.diagnostics().first().map(|d| d.message.clone()).unwrap()
    }

    #[test]
    fn a_found_entry_is_the_credentials_for_exactly_the_key_sent() {
        let body = r#"key=$(cat); [ "$key" = "10.200.0.1:5001" ] || exit 7
printf '{"ServerURL":"%s","Username":"tester","Secret":"s3cret-lab"}' "$key""#;
        let (_, answer) = ask(body, "10.200.0.1:5001", Duration::from_secs(10));
        let c = answer.unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("tester", "s3cret-lab"));
    }

    #[test]
    fn not_found_is_no_credentials() {
        let (_, answer) = ask(
            "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
            "a:1",
            Duration::from_secs(10),
        );
        assert!(answer.unwrap().is_none());
    }

    #[test]
    fn identity_tokens_garbage_failures_and_hangs_are_exit_2_naming_the_helper() {
        let cases = [
            (
                r#"printf '{"ServerURL":"b:1","Username":"<token>","Secret":"refresh-s3cret"}'"#,
                "b:1",
                "holds an identity token",
            ),
            (
                "echo 'refresh-s3cret, not json'",
                "c:1",
                "its answer is not the JSON a credential helper prints (not JSON, line 1 column 1)",
            ),
            (
                "echo 'gpg: decryption failed: No secret key'; exit 1",
                "d:1",
                "exited 1: gpg: decryption failed: No secret key",
            ),
            ("sleep 30", "e:1", "was still running after 500ms"),
        ];
        for (body, key, expected) in cases {
            let started = std::time::Instant::now();
            let (program, answer) = ask(body, key, Duration::from_millis(500));
            assert!(started.elapsed() < Duration::from_millis(1500));
            let e = answer.unwrap_err();
            assert_eq!(e.exit_code(), 2, "{body}");
            let text = message(&e);
            assert!(
                text.starts_with(&format!(
                    "registry {key}: credential helper {program} (named in /cfg/config.json) "
                )),
                "{text}"
            );
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("refresh-s3cret"), "{text}");
        }
    }

    #[test]
    fn a_feed_login_may_have_a_plain_username_and_a_password_from_a_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.sh"), "printf 'ecr-token-x1\\n'\n").unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/web.j2"), "docker run {{ image }}\n").unwrap();
        let text = "[feeds.ecr]\nurl = \"https://1234.dkr.ecr.example:443\"\nusername = \"AWS\"\n\
                    password = { command = [\"sh\", \"token.sh\"] }\n\n\
                    [apps.web]\nfeed = \"ecr\"\nimage = \"web\"\ntemplate = \"web.j2\"\n";
        let source = crate::diagnostic::SourceFile::new("feed.toml", text.to_string());
        let inventory = Inventory::parse(source, dir.path()).unwrap();
        let login = login_for(&inventory, &inventory.apps[0]).unwrap().unwrap();
        assert_eq!(login.registry, "1234.dkr.ecr.example:443");
        assert_eq!((login.username.as_str(), login.password.expose()), ("AWS", "ecr-token-x1"));
    }
}
