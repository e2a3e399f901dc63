//! `ferry state init|push|status`: the shared store's schema, moving a runner's local records
//! into it, and which store a runner uses.

use super::{open_store, state_dir, store};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat};
use crate::request::State;
use crate::store::postgres::Schema;
use crate::store::{StoreError, StoreStatus};

/// Runs `ferry state …`.
pub fn run(inventory: &Inventory, args: &State, output: OutputFormat) -> Result<i32, Error> {
    match args {
        State::Init => {
            let store = open_store(inventory, Schema::Migrate)?;
            let status = store.status()?;
            shared(&status)?;
            print_status(&status, output, "ready")?;
        }
        State::Push { log } => {
            let store = store(inventory)?;
            if !store.is_shared() {
                shared(&store.status()?)?;
            }
            let path = log.clone().unwrap_or_else(|| state_dir(inventory).join("audit.jsonl"));
            // Verified first: a broken local chain is refused whole (exit 4), never half moved.
            let records = crate::audit::Log::new(&state_dir(inventory), store.actor().clone())
                .with_file(&path)
                .read()?;
            let added = store.import(&records)?;
            let shown = crate::diagnostic::display_path(&path).display().to_string();
            if output == OutputFormat::Json {
                output::print_json(&serde_json::json!({
                    "schema": 1, "type": "state_push", "log": shown, "records": records.len(), "imported": added,
                }))?;
            } else {
                output::print(&format!(
                    "{shown}: {}, {added} imported into {}, {} already there\n",
                    output::count(records.len(), "record"),
                    store.describe(),
                    records.len() - added
                ))?;
            }
        }
        State::Status => print_status(&open_store(inventory, Schema::Inspect)?.status()?, output, "in use")?,
    }
    Ok(0)
}

/// Refuses the files: `init` and `push` concern a shared store.
fn shared(status: &StoreStatus) -> Result<(), Error> {
    if status.kind == "files" {
        return Err(StoreError::NotShared(format!(
            "this inventory keeps its records in local files ({}); `ferry state init` and `ferry state push` concern a shared store\n  = help: set [state] url = {{ env = \"FERRY_STATE_URL\" }} in the inventory, or export FERRY_STATE_URL=postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA.pem",
            status.location
        ))
        .into());
    }
    Ok(())
}

fn print_status(status: &StoreStatus, output: OutputFormat, state: &str) -> Result<(), Error> {
    if output == OutputFormat::Json {
        let mut value = serde_json::to_value(status).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("schema_version".into(), serde_json::json!(status.schema));
            object.insert("schema".into(), serde_json::json!(1));
            object.insert("type".into(), serde_json::json!("state_status"));
            object.insert(
                "head".into(),
                serde_json::json!(
                    status.head.as_ref().map(|(seq, hash)| serde_json::json!({"seq": seq, "hash": hash}))
                ),
            );
        }
        output::print_json(&value)?;
        return Ok(());
    }
    let head = status
        .head
        .as_ref()
        .map_or_else(|| "(empty)".to_string(), |(seq, hash)| format!("seq {seq}, {hash}"));
    let schema = status.schema.map_or_else(|| "-".to_string(), |v| v.to_string());
    output::print(&format!(
        "store:    {} ({}, {state})\ntls:      {}\nschema:   {schema}\nrecords:  {} ({} delayed, {} imported)\nhead:     {head}\n",
        status.location, status.kind, status.tls, status.records, status.delayed, status.imported
    ))?;
    Ok(())
}
