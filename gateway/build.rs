//! Builds the eBPF object (`gateway-ebpf`) with its pinned nightly and bpf-linker so the
//! gateway can embed it: one binary to ship. Set `CALLGATE_EBPF_OBJECT` to use a prebuilt
//! object instead.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    println!("cargo:rerun-if-env-changed=CALLGATE_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Which cargo profile built the binary (`release`, `demo`, `dev`'s `debug`): `--version`
    // says it, so a benchmark's results name the build they measured (the fat-LTO release and
    // the thin-LTO demo have measured from the same to a tenth apart in CPU per call). A
    // build script is told only release or debug; OUT_DIR is
    // `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`.
    // Any other layout (cargo's build-dir layout may change) says `unknown`, not some other
    // directory's name.
    let mut up = out.ancestors().skip(2);
    let profile = match (up.next().and_then(Path::file_name), up.next()) {
        (Some(build), Some(dir)) if build == "build" => dir
            .file_name()
            .map_or_else(|| "unknown".into(), |p| p.to_string_lossy()),
        _ => "unknown".into(),
    };
    // A profile-guided build (`cargo xtask build --release --pgo`) says so too: it and a plain
    // build of the same profile differ by a tenth in CPU per call.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let pgo = if flags.contains("profile-use=") {
        "+pgo"
    } else if flags.contains("profile-generate") {
        "+pgo-instrumented"
    } else {
        ""
    };
    println!("cargo:rustc-env=CALLGATE_BUILD_PROFILE={profile}{pgo}");
    let dest = out.join("callgate-ebpf.o");
    if let Some(prebuilt) = env::var_os("CALLGATE_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, &dest).unwrap_or_else(|e| {
            panic!(
                "CALLGATE_EBPF_OBJECT={}: {e}",
                Path::new(&prebuilt).display()
            )
        });
        return;
    }

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .parent()
        .expect("gateway/ sits in the workspace")
        .to_path_buf();
    for dir in [
        "gateway-ebpf/src",
        "gateway-ebpf/Cargo.toml",
        "gateway-ebpf/rust-toolchain.toml",
        "gateway-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // A target dir of its own: the outer cargo holds the lock on ours.
    let target_dir = root.join("target").join("ebpf");
    let toolchain = pinned_toolchain(&root.join("gateway-ebpf/rust-toolchain.toml"));
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--release",
        "-p",
        "callgate-ebpf",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&root);
    // What the outer cargo sets for the host build must not leak into the BPF one
    // (clippy's wrapper, host rustflags, the outer toolchain's rustc).
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run `rustup run {toolchain} cargo` to build the eBPF object ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the eBPF object failed ({status}); `cargo xtask setup` installs {toolchain}, rust-src and bpf-linker"
        );
    }
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join("callgate-ebpf");
    std::fs::copy(&built, &dest)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), dest.display()));
}

include!("../gateway-ebpf/pinned_toolchain.rs");

/// The channel the eBPF crate pins in its `rust-toolchain.toml`.
fn pinned_toolchain(file: &Path) -> String {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    pinned_channel(&text).unwrap_or_else(|| panic!("{} names no channel", file.display()))
}
