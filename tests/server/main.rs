//! Integration tests of `visage-server`, the Rust client and the `visage`
//! CLI: each test starts the real server binary on an ephemeral port with a
//! temporary data directory.
//!
//! The binaries are found next to this test executable's directory; `cargo
//! test --workspace` builds them (the server and client packages have
//! integration tests of their own, which makes cargo build their binaries).

mod backup;
mod cli;
mod cli_head;
mod cli_outliers;
mod cli_plot;
mod cli_report;
mod cli_spec;
mod concurrency;
mod config;
mod conflicts;
mod crash;
mod erasure;
mod errors;
mod full_disk;
mod harness;
mod health;
mod hostile;
mod import;
mod listing;
mod metrics;
mod packed;
mod restart;
mod rpc;
mod rpc_calibration;
mod security;
mod spec;
