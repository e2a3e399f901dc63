//! ferry: an agentless, SSH-driven orchestrator for Docker deployments.
//!
//! The crate is a pipeline; each module is one stage and data flows one way:
//!
//! cli → request → inventory → select → vars → render → plan → (apply → report → audit)
//!
//! [`cli`] turns flags into the validated values of [`request`] once; commands never see clap
//! types. [`planning`] wires select, vars, render and plan for one app in one environment (from
//! the inventory or from a deployment record). [`apply`] rolls a plan out in batches over the
//! [`host::Host`]s of the targets, through [`fanout`]'s one ordered, bounded, cancellable loop;
//! [`docker`] holds the scripts it runs on targets. [`report`] is the event stream and its
//! subscribers (the renderers and the audit trail). Everything ferry remembers goes through a
//! [`store::Store`] as [`records`]: the audit chain, the runner-side lease, and the
//! [`deployments`] that `status`, `rollback` and the [`lifecycle`] gate read back. [`registry`]
//! is the feed client, [`version`] orders tags. [`hooks`] runs the inventory's deploy hooks on
//! the runner around a rollout.
//!
//! Stages up to [`plan`] are pure: they read the inventory and templates and produce a
//! [`plan::Plan`], plain data that says exactly what would run where, without any network.
//! The binary (`src/main.rs`) is a thin wrapper over [`cli::run`].

pub mod apply;
pub mod archive;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod deployments;
pub mod diagnostic;
pub mod docker;
pub mod docker_run;
pub mod duration;
pub mod error;
pub mod exec;
pub mod fanout;
pub mod freeze;
pub mod glob;
pub mod hooks;
pub mod host;
pub mod ids;
pub mod inventory;
pub mod known_hosts;
pub mod lifecycle;
pub mod lock;
pub mod logging;
pub mod netvol;
pub mod notify;
pub mod output;
pub mod plan;
pub mod planning;
pub mod proxy;
pub mod records;
pub mod registry;
pub mod render;
pub mod replace;
pub mod report;
pub mod request;
pub mod retention;
pub mod rollout;
pub mod secret;
pub mod secret_command;
pub mod select;
pub mod shell;
pub mod ssh;
pub mod ssh_config;
pub mod store;
pub mod terminal;
pub mod time;
pub mod tls;
pub mod vars;
pub mod version;
