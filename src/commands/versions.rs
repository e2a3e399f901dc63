//! `ferry versions APP`: the app's tags in its feed that are versions it allows, newest first,
//! with the digests of the newest few.

use serde::Serialize;

use super::feed::{feed_error, registry_for};
use super::runtime;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::request::Versions;

#[derive(Serialize)]
struct Listed {
    tag: String,
    prerelease: bool,
    digest: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    app: &'a str,
    repository: String,
    versions: Vec<Listed>,
    /// Tags that are not versions, or that the app's rules exclude.
    ignored: Vec<String>,
}

/// Runs `ferry versions`.
pub fn run(inventory: &Inventory, args: &Versions, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?;
    let (client, repository) = registry_for(inventory, app)?.ok_or_else(|| {
        Diagnostic::new(format!("app {} has no feed: there is no registry to list", app.name))
            .help("give the app `feed = \"NAME\"` and a [feeds.NAME] with the registry's url")
    })?;
    let (tags, digests) = runtime()?.block_on(async {
        let tags = client.tags(&repository).await.map_err(feed_error)?;
        let newest = crate::version::newest_first(tags.iter().map(String::as_str), &app.versions);
        let mut digests = Vec::new();
        for v in newest.iter().take(args.digests) {
            digests.push(client.digest(&repository, &v.tag).await.map_err(feed_error)?);
        }
        Ok::<_, Error>((tags, digests))
    })?;
    let newest = crate::version::newest_first(tags.iter().map(String::as_str), &app.versions);
    let kept: std::collections::HashSet<&str> = newest.iter().map(|v| v.tag.as_str()).collect();
    let mut ignored: Vec<String> = tags.iter().filter(|t| !kept.contains(t.as_str())).cloned().collect();
    ignored.sort();
    let versions: Vec<Listed> = newest
        .iter()
        .enumerate()
        .map(|(i, v)| Listed {
            tag: v.tag.clone(),
            prerelease: v.is_prerelease(),
            digest: digests.get(i).cloned(),
        })
        .collect();
    let repository = format!("{}/{repository}", client.endpoint().registry);
    match output {
        OutputFormat::Json => {
            output::print_json(&Report { schema: 1, app: &app.name, repository, versions, ignored })?;
        }
        OutputFormat::Plain => output::print(
            &versions
                .iter()
                .map(|v| format!("{}\t{}\n", v.tag, v.digest.as_deref().unwrap_or("-")))
                .collect::<String>(),
        )?,
        OutputFormat::Human => {
            let rows: Vec<Vec<String>> =
                versions.iter().map(|v| vec![v.tag.clone(), v.digest.clone().unwrap_or_default()]).collect();
            let mut out =
                format!("{repository}: {}, newest first\n\n", output::count(versions.len(), "version"));
            out += &table(&["VERSION", "DIGEST"], &rows);
            if !ignored.is_empty() {
                out += &format!("\nignored ({}): {}\n", ignored.len(), ignored.join(", "));
            }
            output::print(&out)?;
        }
    }
    Ok(0)
}
