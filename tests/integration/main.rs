//! ferry's integration tests: one binary, one module per area.
//!
//! CLI tests run the real `ferry` binary in a fresh temporary folder with a cleared environment
//! (see [`test::Test`]), so paths in messages are short and stable for snapshots and nothing
//! from the machine running the tests (its variables, its files) can change a result.
//!
//! The lab tests (real sshd, dockerd and a registry in network namespaces, started as root by
//! `scripts/test`) compile only with `--features lab`, so that plain `cargo test` passes on any
//! machine without root or the lab. With the feature on and no lab up they fail, saying how to
//! start it: a lab test that silently skipped would look like a pass.

// A failing test is a panic: that is how the harness reports it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "lab")]
mod archive_lab;
mod audit;
mod check;
mod cli;
mod contract;
#[cfg(feature = "lab")]
mod deploy;
mod deploy_to;
mod errors;
#[cfg(feature = "lab")]
mod feeds;
mod flags;
mod freeze;
mod fuzz;
mod history;
mod hooks;
#[cfg(feature = "lab")]
mod hostkeys;
#[cfg(feature = "lab")]
mod lab;
#[cfg(feature = "lab")]
mod locks;
mod logs_exec;
mod ls_init;
#[cfg(feature = "lab")]
mod mirror;
mod netvol;
mod notify;
mod plan;
#[cfg(feature = "lab")]
mod postgres_lab;
mod probe;
mod proxy_cli;
mod proxy_config;
#[cfg(feature = "lab")]
mod proxy_lab;
mod quoting;
mod receiver;
#[cfg(feature = "lab")]
mod remove_lab;
mod retention;
mod run;
mod secret_command;
#[cfg(feature = "lab")]
mod secret_lab;
mod secrets;
#[cfg(feature = "lab")]
mod shared_store;
#[cfg(feature = "lab")]
mod ssh_certs;
mod ssh_config;
#[cfg(feature = "lab")]
mod ssh_config_lab;
mod test;
mod vars;
#[cfg(feature = "lab")]
mod zero_downtime;
