//! Profile-guided release builds (`cargo xtask build --release --pgo`): build the gateway
//! instrumented, run it on a short mix of real work (the `train` bench: keep-alive, light load,
//! large answers, new connections, denials, HTTP/2, TLS interception, TCP pass-through), merge
//! the profiles it wrote and build again with them. Measured at 39d5d51 in interleaved rounds
//! against the plain build of the same commit: 13% less gateway CPU per call at full load, the
//! added p50 at light load from 79 to 50 µs.
//!
//! Each step has a target directory of its own under `target/pgo/`, so neither the plain
//! release build nor the benches' build is rebuilt with other flags. Training runs the gateway
//! with its eBPF programs, so it needs root, as the end-to-end tests do.
//!
//! Hand-written rather than `cargo-pgo`: that tool would be one more thing to install for four
//! commands, and the training here is the product's own bench world, which it would run anyway.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, run_cmd};

/// Where the profile-guided binary ends up.
pub fn binary(root: &Path) -> PathBuf {
    root.join("target/pgo/callgate")
}

/// Builds `target/pgo/callgate`: instrumented build, training run, merge, optimised build;
/// or says the one there is current (built from the same sources) and returns it.
pub fn build(root: &Path) -> Result<PathBuf> {
    let pgo = root.join("target/pgo");
    let out = binary(root);
    let stamp_file = pgo.join("callgate.sources");
    let stamp = sources_stamp(root)?;
    if out.exists() && fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        eprintln!(
            "pgo: {} was built from these sources; using it (remove it to train again)",
            out.display()
        );
        return Ok(out);
    }
    let profdata = profdata_tool()?;
    if !crate::setup::is_root() {
        bail!(
            "a profile-guided build trains the gateway with its eBPF programs attached, which \
             needs root; run it as root, or build without profile guidance (`build --release`, \
             `bench --no-pgo`)"
        );
    }
    check_disk(&pgo)?;
    let raw = pgo.join("raw");
    let gen_dir = pgo.join("instrumented");
    eprintln!(
        "pgo: 1/4 building an instrumented gateway in {}",
        gen_dir.display()
    );
    release_build(&gen_dir, &format!("-Cprofile-generate={}", raw.display()))?;
    // Build scripts are instrumented too and wrote their profiles while building: only the
    // training run's gateways count. The CLI runs of the training (`enable`, `status`) write
    // theirs elsewhere: start-up code, not the data path.
    let cli = pgo.join("cli");
    for dir in [&raw, &cli] {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    eprintln!("pgo: 2/4 training it (the `train` bench, about a minute)");
    // The driver only starts parties and runs wrk: the test build's profile, not the benches'
    // fat-LTO one, which would be a fourth long build.
    let status = cargo()
        .args(["bench", "--profile", "dev", "--package", "callgate-benches"])
        .args(["--bench", "train"])
        .env("CALLGATE_BIN", gen_dir.join("release/callgate"))
        .env("CALLGATE_PGO_PROFILE", raw.join("gateway-%p-%m.profraw"))
        .env("LLVM_PROFILE_FILE", cli.join("cli-%p-%m.profraw"))
        .status()
        .context("running the training bench")?;
    let _ = fs::remove_dir_all(&cli);
    match status.code() {
        Some(0) => {}
        Some(3) => bail!(
            "pgo training needs eBPF (cgroup/connect4 programs, root): it is not available \
             here, so there is no profile; build without profile guidance (`build --release`, \
             `bench --no-pgo`)"
        ),
        _ => bail!("the pgo training run failed ({status}); see its output above"),
    }
    let profiles: Vec<PathBuf> = fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    // Two gateways ran: one deciding, one passing TCP through.
    if profiles.len() < 2 {
        bail!(
            "the training run left {} gateway profile(s) in {}, not 2: did both gateways exit \
             on SIGTERM?",
            profiles.len(),
            raw.display()
        );
    }

    eprintln!("pgo: 3/4 merging {} profiles", profiles.len());
    let merged = pgo.join("merged.profdata");
    run_cmd(
        Command::new(&profdata)
            .arg("merge")
            .arg("-o")
            .arg(&merged)
            .args(&profiles),
    )?;
    let _ = fs::remove_dir_all(&raw);
    // The profile's path names its content: cargo rebuilds when the flags change, not when a
    // file they name does.
    let named = pgo.join(format!("callgate-{}.profdata", digest(&merged)?));
    fs::rename(&merged, &named)?;

    let use_dir = pgo.join("optimised");
    eprintln!(
        "pgo: 4/4 building with the profile in {}",
        use_dir.display()
    );
    release_build(&use_dir, &format!("-Cprofile-use={}", named.display()))?;
    // Copied beside it and renamed over it: a running `target/pgo/callgate` keeps its file.
    let part = pgo.join("callgate.part");
    fs::copy(use_dir.join("release/callgate"), &part)
        .with_context(|| format!("copying the build to {}", part.display()))?;
    fs::rename(&part, &out).with_context(|| format!("renaming it to {}", out.display()))?;
    fs::write(&stamp_file, &stamp)?;
    // Profiles of earlier trainings are no longer named by any build.
    for entry in fs::read_dir(&pgo)?.filter_map(Result::ok) {
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "profdata") && p != named {
            let _ = fs::remove_file(p);
        }
    }
    eprintln!("pgo: built {} (profile {})", out.display(), named.display());
    Ok(out)
}

/// The release build of the gateway into `target_dir`, with `flag` added to the caller's.
fn release_build(target_dir: &Path, flag: &str) -> Result<()> {
    run_cmd(
        cargo()
            .args(["build", "--release", "--package", "callgate"])
            .env("CARGO_TARGET_DIR", target_dir)
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", with_flag(flag)),
    )
}

/// What the binary is built from, as git sees it: the trees of the crates it holds and the
/// lock file at HEAD, and any change to them not committed. Equal stamps, same binary.
fn sources_stamp(root: &Path) -> Result<String> {
    const SOURCES: [&str; 5] = [
        "gateway",
        "gateway-common",
        "gateway-ebpf",
        "Cargo.toml",
        "Cargo.lock",
    ];
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let trees: Vec<String> = SOURCES.iter().map(|p| format!("HEAD:{p}")).collect();
    let mut stamp = git(&[
        &["rev-parse"],
        &trees.iter().map(String::as_str).collect::<Vec<_>>()[..],
    ]
    .concat())?;
    stamp += &git(&[&["diff", "HEAD", "--"], &SOURCES[..]].concat())?;
    // New files not yet added: their names and contents.
    let new = git(&[
        &["ls-files", "--others", "--exclude-standard", "--"],
        &SOURCES[..],
    ]
    .concat())?;
    let new: Vec<&str> = new.lines().collect();
    if !new.is_empty() {
        stamp += &new.join("\n");
        stamp += &git(&[&["hash-object", "--"], &new[..]].concat())?;
    }
    Ok(stamp)
}

/// A profile-guided build is two release builds in target directories of their own.
fn check_disk(pgo: &Path) -> Result<()> {
    crate::check_disk(pgo, PGO_DISK_BYTES)
}

/// Free bytes the two release builds (instrumented, optimised) and the profiles need.
const PGO_DISK_BYTES: u64 = 6 << 30;

/// The caller's flags (`CARGO_ENCODED_RUSTFLAGS`, else `RUSTFLAGS`) with `flag` added, encoded
/// as cargo reads them (separated by 0x1f), so that a path with a space stays one flag.
fn with_flag(flag: &str) -> String {
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(f) if !f.is_empty() => f.split('\x1f').map(str::to_string).collect(),
        _ => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    flags.push(flag.to_string());
    flags.join("\x1f")
}

/// An `llvm-profdata` whose LLVM is rustc's: a profile's format follows the LLVM major
/// version. Debian's `llvm-N` (which `setup` installs for bpf-linker) or rustup's
/// `llvm-tools` component.
fn profdata_tool() -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = llvm_major(&text)
        .with_context(|| format!("no `LLVM version` in `{rustc} -vV`:\n{text}"))?;
    let debian = PathBuf::from(format!("/usr/bin/llvm-profdata-{major}"));
    if debian.exists() {
        return Ok(debian);
    }
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output()?;
    let host = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_default();
    let rustup = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if rustup.exists() {
        return Ok(rustup);
    }
    bail!(
        "no llvm-profdata for rustc's LLVM {major}: install Debian's llvm-{major} \
         (/usr/bin/llvm-profdata-{major}) or `rustup component add llvm-tools`"
    )
}

/// The major version in `rustc -vV`'s `LLVM version: 22.1.2`.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The first 16 hex digits of a file's SHA-256 (coreutils' `sha256sum`).
fn digest(file: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() >= 16 => Ok(hex[..16].to_string()),
        _ => bail!("sha256sum {}: {text}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::{llvm_major, with_flag};

    #[test]
    fn a_flag_is_added_to_the_callers_as_one_encoded_flag() {
        // SAFETY: this test alone reads or writes these variables in this process.
        unsafe {
            std::env::remove_var("CARGO_ENCODED_RUSTFLAGS");
            std::env::set_var("RUSTFLAGS", " -Ctarget-cpu=native  -g ");
        }
        assert_eq!(
            with_flag("-Cprofile-use=/a b/x.profdata"),
            "-Ctarget-cpu=native\x1f-g\x1f-Cprofile-use=/a b/x.profdata"
        );
        unsafe { std::env::set_var("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=1") };
        assert_eq!(with_flag("-Cx"), "-Cdebuginfo=1\x1f-Cx");
        unsafe {
            std::env::remove_var("CARGO_ENCODED_RUSTFLAGS");
            std::env::remove_var("RUSTFLAGS");
        }
        assert_eq!(with_flag("-Cx"), "-Cx");
    }

    #[test]
    fn llvm_major_is_read_from_rustc_vv() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nhost: x86_64-unknown-linux-gnu\n\
                  release: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.95.0\n"), None);
    }
}
