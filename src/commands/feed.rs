//! An app's feed, as commands use it: the registry client with the feed's credentials, the
//! resolution of `--version latest` to the newest allowed version, and of a tag to its digest.

use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::{App, Inventory};
use crate::registry::{self, Credentials, Endpoint, Registry, RegistryError};
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
        (None, None) => docker_config(&endpoint.registry),
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

/// Credentials from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` (its `auths`;
/// credential helpers are not run).
fn docker_config(registry: &str) -> Option<Credentials> {
    let dir = process_env("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| process_env("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    registry::docker_config_credentials(&text, registry)
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
