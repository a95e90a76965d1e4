// Included (`include!`) by `gateway/build.rs` and `xtask`, which both need the toolchain
// that `rust-toolchain.toml` beside this file pins and share no crate to hold it in.

/// The `channel = "..."` of a `rust-toolchain.toml`'s text.
fn pinned_channel(toml: &str) -> Option<String> {
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
}
