//! Image retention (`retention = { images = N }`, `ferry prune`): which of an app's images a
//! target keeps, and the target-side step that removes the others.
//!
//! Every deployment pulls an image and nothing ever removed one, so a host that deploys daily
//! fills its disk. What to keep is decided from the RECORDS, not from image dates on the
//! target: the images of the last N successful deployments of the app in the environment (a run
//! in progress counts as one), the image of the deployment a rollback would go back to (so a
//! rollback needs no pull), the last N of every other environment (and every other app of the
//! same repository) that the target also belongs to, and any image any container on the target
//! uses, running or stopped. Only images of the app's repository are candidates, so another
//! app's images are never touched; an image is removed by its `repo@digest` reference (plus the
//! repository's tags of it), never by `-f`, so Docker itself refuses to drop an image a
//! container still uses. Volumes are never touched. The step also removes ferry's leftover
//! stopped containers of the app in the environment (never the running one, never another
//! environment's), before the images, so the images only they used can go too.
//!
//! Images loaded from an archive (`deploy --archive`) have no repository digest, only their
//! archive's tags: [`decide`] never picks an image without one, so retention never removes
//! them (neither the ones the records keep, by image id, nor older ones; `docker image prune`
//! on the target is the way to drop those by hand).
//!
//! The decision is two pure functions ([`keep`]: records in, a set of digests out; [`decide`]:
//! that set and the target's listing in, what to remove out), unit-tested; the target is asked
//! twice at most: one script lists, one removes (none for a dry run, or with nothing to remove).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deployments::Deployment;
use crate::docker::DockerError;
use crate::host::Host;

/// How many deployments' images a target keeps when the app does not say.
pub const DEFAULT_IMAGES: usize = 5;

/// How long the listing or the removal may take on a target.
const DEADLINE: Duration = Duration::from_secs(300);

/// The digests to keep, each with the version it was deployed as (for messages).
pub type Keep = BTreeMap<String, String>;

/// The digest a deployment ran: its recorded digest, or the one in its `repo@digest` image.
pub fn digest_of(deployment: &Deployment) -> Option<String> {
    deployment
        .digest
        .clone()
        .or_else(|| deployment.recorded.image.split_once('@').map(|(_, d)| d.to_string()))
        .filter(|d| d.starts_with("sha256:"))
}

/// The digests that one app in one environment keeps, from its deployments on record (oldest
/// first): the images of the last successful deployments, newest first, until `images` distinct
/// ones (`current`, the run in progress with its digest and version, is the first), and the
/// images a rollback would return to: `ferry rollback`'s pick, and the newest success that ran
/// other bytes than the newest one.
pub fn keep(history: &[Deployment], images: usize, current: Option<(&str, &str)>) -> Keep {
    let mut kept = Keep::new();
    let successes: Vec<&Deployment> = history.iter().filter(|d| d.recorded.succeeded).collect();
    let wanted = images.max(1);
    if let Some((digest, version)) = current {
        kept.insert(digest.to_string(), version.to_string());
    }
    // Distinct images, newest first: a cron job that deploys the same version every few
    // minutes must not push the previous version out.
    for d in successes.iter().rev() {
        if kept.len() >= wanted {
            break;
        }
        if let Some(digest) = digest_of(d) {
            kept.entry(digest).or_insert_with(|| d.version.clone());
        }
    }
    // What a rollback returns to: the one `rollback` picks from the record (without a run in
    // progress), and the newest success that runs other bytes than the newest kept one (the
    // version an operator rolls back to after redeploys of the same one).
    let newest = current.map(|(d, _)| d.to_string()).or_else(|| successes.last().and_then(|d| digest_of(d)));
    let other = successes.iter().rev().find(|d| digest_of(d).is_some_and(|g| Some(&g) != newest.as_ref()));
    let picked =
        if current.is_none() { crate::deployments::rollback_target(history, None).ok() } else { None };
    for d in other.copied().into_iter().chain(picked) {
        if let Some(digest) = digest_of(d) {
            kept.entry(digest).or_insert_with(|| d.version.clone());
        }
    }
    kept
}

/// One image of the target, as `docker image inspect` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:…` image id.
    pub id: String,
    /// Bytes (`Size`).
    pub size: u64,
    /// Its `repo:tag` references.
    pub tags: Vec<String>,
    /// Its `repo@sha256:…` references.
    pub digests: Vec<String>,
}

/// One container of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name (without the leading `/`).
    pub name: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// The id of the image it runs.
    pub image: String,
    /// Its `ferry.app` label (empty without one).
    pub app: String,
    /// Its `ferry.environment` label.
    pub environment: String,
}

/// What the target has: the repository's images and every container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Images of the app's repository.
    pub images: Vec<Image>,
    /// Every container, of any app.
    pub containers: Vec<Container>,
    /// A replace step of the app in the environment still runs there (its deployment id):
    /// its stopped containers are its to restore, not leftovers.
    pub busy: Option<String>,
    /// Images deployments pulled (or found present) on the target lately, as (app,
    /// environment, reference) (see [`crate::docker::PULLED_DIR`]): another app's or
    /// environment's are kept, whatever the records say.
    pub recent: BTreeSet<(String, String, String)>,
}

/// An image to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Image id.
    pub id: String,
    /// The repository's references to remove, digests first.
    pub refs: Vec<String>,
    /// Its digest in the repository (the first one).
    pub digest: String,
    /// The version it was deployed as, when a record says.
    pub version: Option<String>,
    /// Bytes.
    pub size: u64,
    /// Removing the references deletes the image (no other repository names it).
    pub frees: bool,
}

/// What the removal step does on one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals {
    /// Stopped containers of the app in the environment: (id, name).
    pub containers: Vec<(String, String)>,
    /// Images of the repository.
    pub images: Vec<Doomed>,
}

/// `repo` without a `docker.io/` or `library/` prefix, as Docker shows it.
fn familiar(repo: &str) -> &str {
    let repo =
        repo.strip_prefix("docker.io/").or_else(|| repo.strip_prefix("index.docker.io/")).unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo)
}

/// The repository of a `repo:tag` or `repo@digest` reference.
fn repository_of(reference: &str) -> &str {
    if let Some((repo, _)) = reference.split_once('@') {
        return repo;
    }
    match reference.rsplit_once(':') {
        // A colon after the last slash is a tag's; before it, a registry's port.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

/// Whether `reference` names an image of `repository`.
fn of_repository(reference: &str, repository: &str) -> bool {
    familiar(repository_of(reference)) == familiar(repository)
}

/// What to remove on a target, given what it keeps (`keep`, from [`keep`] for every
/// environment and app the target serves) and what it has: stopped containers of `app` in
/// `environment` (unless a replace step of theirs still runs), then every image of
/// `repository` that has a digest there, no kept digest, and no container left using it.
pub fn decide(repository: &str, app: &str, environment: &str, keep: &Keep, listing: &Listing) -> Removals {
    // Only what a replace step left: the old container kept aside (`NAME-ferry-old-…`) or a new
    // one that never took over (`NAME-next`). The app's own container, even stopped (crashed, or
    // stopped by an operator), is the deployment: its logs and layer stay.
    let leftover = |c: &Container| {
        listing.busy.is_none()
            && c.app == app
            && c.environment == environment
            && (c.name.contains("-ferry-old-") || c.name.ends_with("-next"))
            && matches!(c.state.as_str(), "exited" | "created" | "dead")
    };
    let containers: Vec<(String, String)> =
        listing.containers.iter().filter(|c| leftover(c)).map(|c| (c.id.clone(), c.name.clone())).collect();
    let in_use: BTreeSet<&str> =
        listing.containers.iter().filter(|c| !leftover(c)).map(|c| c.image.as_str()).collect();
    let images = listing
        .images
        .iter()
        .filter_map(|image| {
            let ours: Vec<&String> = image.digests.iter().filter(|r| of_repository(r, repository)).collect();
            let digest = ours.first()?.split_once('@')?.1.to_string();
            // An archive's deployment records the image id (`deploy --archive`); the same image
            // may carry a repository digest from an earlier pull, and is kept all the same.
            let kept = keep.contains_key(&image.id)
                || ours.iter().any(|r| r.split_once('@').is_some_and(|(_, d)| keep.contains_key(d)));
            // Pulled lately for a run that has not started its container yet (another
            // environment's deployment on this host, under its own lock): not ours to remove.
            let fresh = image.tags.iter().chain(&image.digests).any(|r| {
                listing
                    .recent
                    .iter()
                    .any(|(a, e, n)| (a != app || e != environment) && familiar(n) == familiar(r))
            });
            if kept || fresh || in_use.contains(image.id.as_str()) {
                return None;
            }
            let tags: Vec<&String> = image.tags.iter().filter(|r| of_repository(r, repository)).collect();
            let others = image.tags.len() + image.digests.len() - tags.len() - ours.len();
            Some(Doomed {
                id: image.id.clone(),
                refs: ours.iter().chain(&tags).map(|r| (*r).clone()).collect(),
                version: None,
                digest,
                size: image.size,
                frees: others == 0,
            })
        })
        .collect();
    Removals { containers, images }
}

/// One image as `prune` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedImage {
    /// `sha256:…` (the manifest digest).
    pub digest: String,
    /// The version a deployment on record ran it as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its size.
    pub bytes: u64,
}

/// What retention did (or, for a dry run, would do) on one target: the `pruned` event, and
/// the target's entry in `run_finished`'s `retention`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// The target.
    pub target: String,
    /// Nothing was removed: this is what would be.
    #[serde(default)]
    pub dry_run: bool,
    /// Images removed.
    #[serde(default)]
    pub images: Vec<PrunedImage>,
    /// Stopped containers removed (names).
    #[serde(default)]
    pub containers: Vec<String>,
    /// Bytes freed: the sizes of the images that are gone (an image another repository still
    /// names stays, and frees nothing).
    #[serde(default)]
    pub bytes: u64,
    /// What could not be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Pruned {
    /// One line: `removed 2 images (0123456789ab 1.0, …), 1 container; 12.3 MB freed`.
    pub fn describe(&self) -> String {
        let images: Vec<String> = self
            .images
            .iter()
            .map(|i| {
                let short: String = i.digest.trim_start_matches("sha256:").chars().take(12).collect();
                match &i.version {
                    Some(v) => format!("{short} {v}"),
                    None => short,
                }
            })
            .collect();
        let mut said = crate::output::count(self.images.len(), "image");
        if !images.is_empty() {
            said += &format!(" ({})", images.join(", "));
        }
        said += &format!(", {}", crate::output::count(self.containers.len(), "container"));
        let verb = if self.dry_run { "would remove" } else { "removed" };
        let freed = if self.dry_run { "would be freed" } else { "freed" };
        let mut line = format!("{verb} {said}; {} {freed}", bytes(self.bytes));
        if let Some(error) = &self.error {
            line += &format!("; {error}");
        }
        line
    }
}

/// Bytes as Docker shows sizes (SI units): `0 B`, `512 B`, `12.3 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Where retention runs: the app, its environment and repository.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// The app's image repository as targets pull it (`registry/repo`).
    pub repository: String,
}

/// Lists what the target has, decides, and (unless `dry_run`) removes; see the module docs.
/// `keep` comes from the records ([`keep`] for each environment and app the target serves);
/// `known` names the versions of every digest on record ([`versions`]), for the report.
pub async fn run(
    host: &dyn Host,
    scope: &Scope,
    keep: &Keep,
    known: &Keep,
    dry_run: bool,
) -> Result<Pruned, DockerError> {
    let listed = crate::docker::sh(host, "list images", &list_script(scope), None, DEADLINE).await?;
    let listing = parse_listing(&listed.text())
        .map_err(|message| DockerError::Failed { step: "read the image listing", message })?;
    let mut removals = decide(&scope.repository, &scope.app, &scope.environment, keep, &listing);
    for doomed in &mut removals.images {
        doomed.version = known.get(&doomed.digest).cloned();
    }
    let mut pruned = Pruned { target: host.name().to_string(), dry_run, ..Pruned::default() };
    if dry_run {
        pruned.containers = removals.containers.iter().map(|(_, name)| name.clone()).collect();
        pruned.bytes = removals.images.iter().filter(|d| d.frees).fold(0, |n, d| n.saturating_add(d.size));
        pruned.images = removals.images.iter().map(reported).collect();
        return Ok(pruned);
    }
    if removals.containers.is_empty() && removals.images.is_empty() {
        return Ok(pruned);
    }
    let out = crate::docker::sh(host, "remove images", &remove_script(&removals), None, DEADLINE).await?;
    let mut failures = Vec::new();
    for line in out.text().lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["rm", id, "0", ..] => {
                if let Some((_, name)) = removals.containers.iter().find(|(c, _)| c == id) {
                    pruned.containers.push(name.clone());
                }
            }
            ["rm", id, _, why @ ..] => failures.push(format!("container {}: {}", short(id), why.join(" "))),
            ["img", id, ok, gone, why @ ..] => {
                let Some(doomed) = removals.images.iter().find(|d| d.id == *id) else { continue };
                if *gone == "1" {
                    pruned.bytes = pruned.bytes.saturating_add(doomed.size);
                }
                if *ok == "0" {
                    pruned.images.push(reported(doomed));
                } else {
                    failures.push(format!("image {}: {}", short(&doomed.digest), why.join(" ")));
                }
            }
            _ => {}
        }
    }
    if !failures.is_empty() {
        pruned.error = Some(format!("not removed: {}", failures.join("; ")));
    }
    Ok(pruned)
}

/// Every digest deployments on record ran, with the version it was deployed as (the last one).
pub fn versions(history: &[Deployment]) -> Keep {
    history.iter().filter_map(|d| Some((digest_of(d)?, d.version.clone()))).collect()
}

fn reported(doomed: &Doomed) -> PrunedImage {
    PrunedImage { digest: doomed.digest.clone(), version: doomed.version.clone(), bytes: doomed.size }
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The listing script: a replace step of the app still running, the repository's images with
/// their sizes and references, and every container with its image and ferry labels.
fn list_script(scope: &Scope) -> String {
    let q = crate::docker::q;
    format!(
        "{busy}echo '--- recent'\n\
         [ ! -d \"$HOME\"/{pulled} ] || find \"$HOME\"/{pulled} -type f -mmin -{minutes} -exec cat {{}} + || exit 1\n\
         [ ! -d \"$HOME\"/{pulled} ] || find \"$HOME\"/{pulled} -type f -mmin +1440 -exec rm -f {{}} + || true\n\
         echo '--- images'\n\
         ids=$(docker image ls -q --no-trunc {repo} | sort -u) || exit 1\n\
         [ -z \"$ids\" ] || docker image inspect --format '{{{{.Id}}}}\t{{{{.Size}}}}\t{{{{range .RepoTags}}}}{{{{.}}}} {{{{end}}}}\t{{{{range .RepoDigests}}}}{{{{.}}}} {{{{end}}}}' $ids || exit 1\n\
         echo '--- containers'\n\
         cs=$(docker ps -aq --no-trunc) || exit 1\n\
         n=0; for c in $cs; do n=$((n+1)); done; echo \"count=$n\"\n\
         [ -z \"$cs\" ] || docker inspect --format '{{{{.Id}}}}\t{{{{.Name}}}}\t{{{{.State.Status}}}}\t{{{{.Image}}}}\t{{{{index .Config.Labels \"ferry.app\"}}}}\t{{{{index .Config.Labels \"ferry.environment\"}}}}' $cs || exit 1\n\
         echo '--- end'\n",
        busy = crate::docker::replace_busy_script(&scope.app, &scope.environment),
        pulled = crate::docker::PULLED_DIR,
        minutes = crate::docker::PULLED_FRESH_MINUTES,
        repo = q(familiar(&scope.repository)),
    )
}

/// Reads [`list_script`]'s answer. Nothing read back is trusted unchecked: an answer cut
/// short, a line that is not what the script prints, or fewer containers than it counted is an
/// error, since a container missing from the listing would make its image look unused.
pub fn parse_listing(text: &str) -> Result<Listing, String> {
    let mut listing = Listing::default();
    let Some((head, rest)) = text.split_once("--- recent\n") else {
        // A replace step still runs: the script stops right after saying so.
        if let Some((_, busy)) = text.split_once("--- busy\n") {
            let deployment = busy.lines().find_map(|l| l.strip_prefix("deployment=")).unwrap_or("?");
            listing.busy = Some(deployment.to_string());
            return Ok(listing);
        }
        return Err("the listing ended early".into());
    };
    if head.contains("--- busy\n") {
        return Err("the listing is not what ferry's script prints".into());
    }
    let (recent, rest) = rest.split_once("--- images\n").ok_or("the listing ended early")?;
    for line in recent.lines().filter(|l| !l.trim().is_empty()) {
        let [app, environment, image] = line.split('\t').collect::<Vec<_>>()[..] else {
            return Err(format!("a pull note is not what ferry writes: {line:?}"));
        };
        listing.recent.insert((app.to_string(), environment.to_string(), image.to_string()));
    }
    let (images, rest) = rest.split_once("--- containers\n").ok_or("the listing ended early")?;
    let (containers, _) = rest.split_once("--- end\n").ok_or("the listing ended early")?;
    let (count, containers) = containers.split_once('\n').unwrap_or((containers, ""));
    let count: usize =
        count.strip_prefix("count=").and_then(|n| n.parse().ok()).ok_or("no container count")?;
    for line in images.lines() {
        let mut fields = line.split('\t');
        let (Some(id), Some(size)) = (fields.next(), fields.next()) else {
            return Err(format!("an image line is not what ferry asked for: {line:?}"));
        };
        let Ok(size) = size.trim().parse() else {
            return Err(format!("an image size is not a number: {line:?}"));
        };
        let words = |f: Option<&str>| -> Vec<String> {
            f.unwrap_or_default().split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect()
        };
        let (tags, digests) = (words(fields.next()), words(fields.next()));
        listing.images.push(Image { id: id.to_string(), size, tags, digests });
    }
    for line in containers.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [id, name, state, image, app, environment] = fields.as_slice() else {
            return Err(format!("a container line is not what ferry asked for: {line:?}"));
        };
        let label = |v: &str| if v == "<no value>" { String::new() } else { v.to_string() };
        listing.containers.push(Container {
            id: (*id).to_string(),
            name: name.trim_start_matches('/').to_string(),
            state: (*state).to_string(),
            image: (*image).to_string(),
            app: label(app),
            environment: label(environment),
        });
    }
    if listing.containers.len() != count {
        return Err(format!("{count} containers counted, {} listed", listing.containers.len()));
    }
    Ok(listing)
}

/// The removal script: each container (`docker rm`, no `-f`: a running one stays), then each
/// image's references (`docker rmi`, no `-f`), one answer line per container and image:
/// `rm ID CODE WHY`, `img ID CODE GONE WHY`.
fn remove_script(removals: &Removals) -> String {
    let q = crate::docker::q;
    let mut script = String::from(
        "e=$(mktemp) || exit 1; trap 'rm -f \"$e\"' EXIT\n\
         rmc() { docker rm \"$1\" > /dev/null 2> \"$e\"; printf 'rm\\t%s\\t%s\\t%s\\n' \"$1\" \"$?\" \"$(tail -n 1 \"$e\" | tr '\\t' ' ')\"; }\n\
         rmi() { id=$1; shift; docker rmi \"$@\" > /dev/null 2> \"$e\"; code=$?; gone=0\n\
           docker image inspect \"$id\" > /dev/null 2>&1 || gone=1\n\
           printf 'img\\t%s\\t%s\\t%s\\t%s\\n' \"$id\" \"$code\" \"$gone\" \"$(tail -n 1 \"$e\" | tr '\\t' ' ')\"; }\n",
    );
    for (id, _) in &removals.containers {
        script += &format!("rmc {}\n", q(id));
    }
    for doomed in &removals.images {
        let refs: Vec<String> = doomed.refs.iter().map(|r| q(r)).collect();
        script += &format!("rmi {} {}\n", q(&doomed.id), refs.join(" "));
    }
    script
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::deployments::Recorded;

    const REPO: &str = "10.200.0.1:5000/ferry/web";

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    fn deployment(n: u32, succeeded: bool) -> Deployment {
        Deployment {
            id: format!("run-{n}"),
            command: "deploy".into(),
            time: String::new(),
            version: format!("v{n}"),
            digest: Some(digest(n)),
            recorded: Recorded {
                image: format!("{REPO}@{}", digest(n)),
                succeeded,
                rollback_to: None,
                targets: BTreeMap::new(),
            },
        }
    }

    fn kept(keep: &Keep) -> Vec<String> {
        keep.values().cloned().collect()
    }

    fn image(n: u32, id: &str) -> Image {
        Image {
            id: id.into(),
            size: 1000 * u64::from(n),
            tags: Vec::new(),
            digests: vec![format!("{REPO}@{}", digest(n))],
        }
    }

    /// A container as a replace step leaves the old one aside (`APP-ENV-ferry-old-ID`).
    fn container(id: &str, image: &str, state: &str, app: &str, env: &str) -> Container {
        Container {
            id: id.into(),
            name: format!("{app}-{env}-ferry-old-{id}"),
            state: state.into(),
            image: image.into(),
            app: app.into(),
            environment: env.into(),
        }
    }

    #[test]
    fn n_counts_distinct_images_of_successful_deployments_and_the_run_in_progress_is_one() {
        let history: Vec<Deployment> = (1..=7).map(|n| deployment(n, true)).collect();
        assert_eq!(kept(&keep(&history, 3, None)), ["v5", "v6", "v7"], "the last 3 (v6 is the rollback's)");
        let current = digest(8);
        assert_eq!(kept(&keep(&history, 3, Some((&current, "v8")))), ["v6", "v7", "v8"]);
        // The same bytes deployed again and again (cron) push nothing out: N counts images.
        let mut again = history.clone();
        for n in 0..5 {
            again.push(Deployment { id: format!("run-again-{n}"), ..deployment(7, true) });
        }
        assert_eq!(kept(&keep(&again, 3, None)), ["v5", "v6", "v7"]);
        let current = digest(7);
        assert_eq!(kept(&keep(&again, 1, Some((&current, "v7")))), ["v6", "v7"], "v6: what a rollback wants");
        // A failed deployment is none of the N.
        let mut failed = history.clone();
        failed.push(deployment(8, false));
        assert_eq!(kept(&keep(&failed, 2, None)), ["v6", "v7"]);
        assert!(keep(&[], 5, None).is_empty());
    }

    #[test]
    fn the_image_a_rollback_returns_to_is_kept_even_with_one_image() {
        let history: Vec<Deployment> = (1..=4).map(|n| deployment(n, true)).collect();
        let current = digest(5);
        assert_eq!(kept(&keep(&history, 1, Some((&current, "v5")))), ["v4", "v5"], "v4: rollback after v5");
        assert_eq!(kept(&keep(&history, 1, None)), ["v3", "v4"], "prune: v4 runs, rollback goes to v3");
        // After a failed attempt, rollback goes to the last success (v4); the version before
        // it stays too.
        let mut failed = history;
        failed.push(deployment(5, false));
        assert_eq!(kept(&keep(&failed, 1, None)), ["v3", "v4"]);
        // images = 0 never reaches here (the inventory refuses it), and would keep one.
        assert_eq!(kept(&keep(&failed, 0, None)), ["v3", "v4"]);
    }

    #[test]
    fn another_environments_images_and_images_in_use_are_kept() {
        let mut keep_all = keep(&[deployment(1, true), deployment(2, true)], 1, None);
        // Staging on the same target keeps its last one, v3.
        keep_all.extend(keep(&[deployment(3, true)], 1, None));
        let listing = Listing {
            images: (1..=6).map(|n| image(n, &format!("id{n}"))).collect(),
            containers: vec![
                container("c1", "id4", "exited", "worker", "prod"),
                container("c2", "id5", "running", "web", "qa"),
                container("c3", "id6", "exited", "web", "prod"),
            ],
            busy: None,
            recent: BTreeSet::new(),
        };
        let removals = decide(REPO, "web", "prod", &keep_all, &listing);
        let gone: Vec<&str> = removals.images.iter().map(|d| d.id.as_str()).collect();
        // id1, id2: prod's (kept), id3: staging's, id4: a stopped container of another app
        // uses it, id5: a running one; id6 was only the leftover's, which goes first.
        assert_eq!(gone, ["id6"]);
        assert_eq!(removals.containers, [("c3".to_string(), "web-prod-ferry-old-c3".to_string())]);
        assert_eq!(removals.images[0].refs, [format!("{REPO}@{}", digest(6))]);
        assert!(removals.images[0].frees);
        // While a replace step of the app runs there, its stopped containers are its own.
        let busy = Listing { busy: Some("run-9".into()), ..listing };
        let removals = decide(REPO, "web", "prod", &keep_all, &busy);
        assert!(removals.containers.is_empty());
        assert!(removals.images.is_empty(), "id6 is in use by the stopped container");
    }

    #[test]
    fn an_image_an_archive_deployment_keeps_by_its_id_stays_though_it_has_a_digest() {
        // `deploy --archive` records the image id; the image also has a repository digest.
        let id = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let mut archived = deployment(2, true);
        archived.digest = Some(id.into());
        archived.recorded.image = id.into();
        let keep_all = keep(&[deployment(1, true), archived], 1, None);
        assert!(keep_all.contains_key(id), "{keep_all:?}");
        let listing = Listing { images: vec![image(2, id), image(3, "sha256:other")], ..Listing::default() };
        let removals = decide(REPO, "web", "prod", &keep_all, &listing);
        let gone: Vec<&str> = removals.images.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(gone, ["sha256:other"], "the archive's image is the rollback's and stays");
    }

    #[test]
    fn only_the_repositorys_images_with_a_digest_are_candidates() {
        let other = Image {
            id: "other".into(),
            size: 5,
            tags: vec!["10.200.0.1:5000/ferry/many:0.0.0".into()],
            digests: vec![format!("10.200.0.1:5000/ferry/many@{}", digest(9))],
        };
        let built =
            Image { id: "built".into(), size: 5, tags: vec![format!("{REPO}:dev")], digests: Vec::new() };
        let shared = Image {
            id: "shared".into(),
            size: 7,
            tags: vec![format!("{REPO}:1.0"), "ferry/many:0.0.0".into()],
            digests: vec![format!("{REPO}@{}", digest(1))],
        };
        let listing = Listing { images: vec![other, built, shared], ..Listing::default() };
        let removals = decide(REPO, "web", "prod", &Keep::new(), &listing);
        assert_eq!(removals.images.len(), 1, "{removals:?}");
        let doomed = &removals.images[0];
        assert_eq!(doomed.refs, [format!("{REPO}@{}", digest(1)), format!("{REPO}:1.0")], "digest first");
        assert!(!doomed.frees, "another repository still names it");
        // A registry's port is not a tag; Docker Hub's names are compared as Docker shows them.
        assert!(of_repository("10.200.0.1:5000/ferry/web", REPO));
        assert!(!of_repository("10.200.0.1:5000/ferry/web2:1", REPO));
        assert!(of_repository("nginx@sha256:00", "docker.io/library/nginx"));
    }

    #[test]
    fn the_listing_reads_back_and_anything_short_or_strange_is_an_error() {
        let text = format!(
            "--- recent\nweb\tstaging\t{REPO}@{}\n--- images\nsha256:aa\t1234\t{REPO}:1.0\t{REPO}@{}\nsha256:bb\t99\t\t\n--- containers\ncount=2\n\
             c1\t/web-prod\trunning\tsha256:aa\tweb\tprod\nc2\t/x\texited\tsha256:bb\t<no value>\t<no value>\n--- end\n",
            digest(7),
            digest(1)
        );
        let listing = parse_listing(&text).unwrap();
        assert_eq!(listing.images.len(), 2);
        assert_eq!(listing.images[0].size, 1234);
        assert_eq!(listing.images[0].tags, [format!("{REPO}:1.0")]);
        assert!(listing.images[1].digests.is_empty());
        assert_eq!(listing.containers[0].name, "web-prod");
        assert_eq!((listing.containers[1].app.as_str(), listing.busy.as_deref()), ("", None));
        assert!(listing.recent.contains(&("web".into(), "staging".into(), format!("{REPO}@{}", digest(7)))));
        let busy = parse_listing("--- busy\napp=web\ndeployment=run-3\n").unwrap();
        assert_eq!(busy.busy.as_deref(), Some("run-3"));
        // A container the listing lost (docker inspect failed half-way) would make its image
        // look unused: the count says so, and nothing is removed.
        let lost = text.replace("c2\t/x\texited\tsha256:bb\t<no value>\t<no value>\n", "");
        assert_eq!(parse_listing(&lost).unwrap_err(), "2 containers counted, 1 listed");
        assert!(parse_listing(&text.replace("--- end\n", "")).is_err(), "cut short");
        assert!(parse_listing(&text.replace("\t99\t", "\tlots\t")).is_err());
        assert!(parse_listing(&text.replace("--- containers\n", "--- containers\nnot a line\n")).is_err());
    }

    #[test]
    fn a_recent_pull_and_the_apps_own_stopped_container_stay() {
        let image = |id: &str, n: u32| Image {
            id: id.into(),
            size: 10,
            tags: Vec::new(),
            digests: vec![format!("{REPO}@{}", digest(n))],
        };
        let container = |name: &str, image: &str| Container {
            id: format!("id-{name}"),
            name: name.into(),
            state: "exited".into(),
            image: image.into(),
            app: "web".into(),
            environment: "prod".into(),
        };
        let listing = Listing {
            images: vec![image("i1", 1), image("i2", 2), image("i3", 3)],
            containers: vec![container("web-prod", "i1"), container("web-prod-ferry-old-0193", "i2")],
            busy: None,
            recent: [
                ("web".to_string(), "staging".to_string(), format!("{REPO}@{}", digest(3))),
                ("web".to_string(), "prod".to_string(), format!("{REPO}@{}", digest(2))),
            ]
            .into(),
        };
        let removals = decide(REPO, "web", "prod", &Keep::new(), &listing);
        assert_eq!(
            removals.containers,
            [("id-web-prod-ferry-old-0193".to_string(), "web-prod-ferry-old-0193".to_string())]
        );
        let ids: Vec<&str> = removals.images.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["i2"],
            "i1: the app's own (stopped) container; i3: staging pulled it lately; prod's own note on i2 does not count"
        );
    }

    #[test]
    fn sizes_read_as_docker_shows_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1234), "1.2 kB");
        assert_eq!(bytes(12_345_678), "12.3 MB");
        assert_eq!(bytes(999_960), "1.0 MB");
    }

    proptest::proptest! {
        #[test]
        fn any_listing_is_read_without_panicking(text in "\\PC*") {
            if let Ok(listing) = parse_listing(&text) {
                let _ = decide(REPO, "web", "prod", &Keep::new(), &listing);
            }
        }
    }
}
