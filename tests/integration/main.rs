//! ferry's integration tests: one binary, one module per area.
//!
//! CLI tests run the real `ferry` binary in a fresh temporary folder with a cleared environment
//! (see [`test::Test`]), so paths in messages are short and stable for snapshots and nothing
//! from the machine running the tests (its variables, its files) can change a result.

// A failing test is a panic: that is how the harness reports it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod check;
mod cli;
mod deploy;
mod errors;
mod feeds;
mod flags;
mod fuzz;
mod lab;
mod plan;
mod quoting;
mod run;
mod secrets;
mod test;
mod vars;
