//! The decide stage: the policy repository (YAML in git) loaded, validated and compiled into an
//! immutable [`Snapshot`] that decides calls in microseconds, plus what the `callgate policy`
//! commands need (tests, lint, explain) and hot reload.
//!
//! Data flows load → compile → snapshot; the data path only ever sees snapshots.
pub mod compile;
pub mod eval;
pub mod git;
pub mod lint;
pub mod load;
pub mod mcp;
pub mod readings;
pub mod remote;
pub mod schema;
pub mod snapshot;
pub mod sshsig;
pub mod store;
pub mod testing;

use std::path::Path;

pub use compile::split_destination;
pub use eval::{Decision, TraceLine};
pub use load::{Finding, Loaded, Severity};
pub use schema::{Action, Mode};
pub use snapshot::{Obligations, PolicyVersion, Service, Snapshot};
pub use store::PolicyStore;

/// Loads and compiles the repository at `dir`.
pub fn load_snapshot(dir: &Path) -> Result<(Loaded, Snapshot), Vec<Finding>> {
    let loaded = load::load(dir)?;
    let git = git::inspect(dir);
    let snap = compile::compile(&loaded, &git)?;
    Ok((loaded, snap))
}

/// Loads and compiles the files at `dir`, a checkout of the commit `git` names.
pub fn load_snapshot_as(
    dir: &Path,
    git: &git::GitState,
) -> Result<(Loaded, Snapshot), Vec<Finding>> {
    let loaded = load::load(dir)?;
    let snap = compile::compile(&loaded, git)?;
    Ok((loaded, snap))
}
