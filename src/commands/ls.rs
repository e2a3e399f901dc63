//! `ferry ls` (or `ferry apps`): the apps, their environments and targets, from the inventory.
//!
//! The first question on a fleet someone else set up is "what is deployed where?". The
//! inventory answers what is meant to be, offline and at once: no SSH, no store, no feed. One
//! row per app and environment, with the targets the app runs on there (the environment's
//! targets that have one of the app's roles), its image and feed. An app with `deploy_to` is
//! listed in those environments only. `ferry status --env ENV` then shows what actually runs.

use serde::Serialize;

use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};

/// One app as `--output json` lists it.
#[derive(Debug, Serialize)]
struct App<'a> {
    /// Its name.
    app: &'a str,
    /// Its image, without a tag.
    image: &'a str,
    /// Its feed's name, if it has one.
    feed: Option<&'a str>,
    /// `deploy_to`, when the app sets it: the only environments it deploys to.
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy_to: Option<&'a [String]>,
    /// Where it runs, per environment it deploys to, in inventory order.
    environments: Vec<Placement<'a>>,
}

/// Where an app runs in one environment.
#[derive(Debug, Serialize)]
struct Placement<'a> {
    /// The environment.
    environment: &'a str,
    /// Its targets that have one of the app's roles (empty: none).
    targets: Vec<&'a str>,
}

/// Runs `ferry ls`.
pub fn run(inventory: &Inventory, output: OutputFormat) -> Result<i32, Error> {
    let apps = list(inventory);
    match output {
        OutputFormat::Json => {
            output::print_json(&serde_json::json!({ "schema": 1, "type": "apps", "apps": apps }))?;
        }
        OutputFormat::Plain => {
            let mut out = String::new();
            for app in &apps {
                for p in &app.environments {
                    out += &format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        app.app,
                        p.environment,
                        p.targets.join(","),
                        app.image,
                        app.feed.unwrap_or("-")
                    );
                }
            }
            output::print(&out)?;
        }
        OutputFormat::Human => {
            let mut rows = Vec::new();
            for app in &apps {
                for p in &app.environments {
                    let targets = if p.targets.is_empty() { "-".to_string() } else { p.targets.join(", ") };
                    rows.push(vec![
                        app.app.to_string(),
                        p.environment.to_string(),
                        targets,
                        app.image.to_string(),
                        app.feed.unwrap_or("-").to_string(),
                    ]);
                }
            }
            output::print(&table(&["APP", "ENV", "TARGETS", "IMAGE", "FEED"], &rows))?;
        }
    }
    Ok(0)
}

/// The apps in inventory order, each with its targets per environment (in inventory order).
fn list(inventory: &Inventory) -> Vec<App<'_>> {
    inventory
        .apps
        .iter()
        .map(|app| App {
            app: &app.name,
            image: &app.image,
            feed: app.feed.as_deref(),
            deploy_to: app.deploy_to.as_ref().map(|d| d.environments.as_slice()),
            environments: inventory
                .environments
                .iter()
                .filter(|env| app.deploys_to(&env.name))
                .map(|env| Placement {
                    environment: &env.name,
                    targets: crate::select::select(inventory, app, env, &[])
                        .map(|ts| ts.into_iter().map(|t| t.name.as_str()).collect())
                        .unwrap_or_default(),
                })
                .collect(),
        })
        .collect()
}
