//! The `callgate` subcommands other than `run`, one file each; `main.rs` parses and dispatches.

pub mod approvals;
pub mod install;
pub mod records;
