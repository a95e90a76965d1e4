//! Idempotent prerequisites. Each step checks first and acts only when something is missing,
//! saying what it does; when not root it prints the command to run instead.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run_cmd, workspace_root};

/// The nightly the eBPF crate pins (its `rust-toolchain.toml`); fuzzing uses it too.
pub fn nightly() -> Result<String> {
    let file = workspace_root().join("gateway-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    pinned_channel(&text).with_context(|| format!("{} names no channel", file.display()))
}

include!("../../gateway-ebpf/pinned_toolchain.rs");

/// `cargo xtask fuzz` and the bounded fuzzing in `cargo xtask test`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// bpf-linker is built against the LLVM these packages provide.
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    // llvm-profdata-22 merges the profiles of a profile-guided build (`build --pgo`): rustc's
    // LLVM is 22 too, and a profile's format follows the LLVM major version.
    "llvm-22",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What the end-to-end tests drive: real clients and real servers.
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "python3",
    "python3-venv",
    "iproute2",
    "coreutils",
    "openssl",
    "ca-certificates",
    "util-linux",
    // nft: a workload NATs inside a network namespace of its own (credential tests).
    "nftables",
    // `systemd-analyze verify|security` check the unit `callgate install` writes.
    "systemd",
    // libfaketime moves the gateway's wall clock in the clock-jump test.
    "faketime",
    // Policy from git: signed commits (`git commit -S` with `gpg.format=ssh` runs `ssh-keygen -Y
    // sign`) in a repository the gateway fetches.
    "git",
    "openssh-client",
    // ... served over ssh:// by a real sshd on loopback, over https:// with a test CA made
    // by openssl (git http-backend behind a small Python server), and over git://.
    "openssh-server",
    "openssl",
    // The approvals page is driven in a real headless browser.
    "chromium",
    // Benchmark baselines and load generators.
    "nginx",
    "wrk",
    // h2load, for the HTTP/2 bench case.
    "nghttp2-client",
    // A Go client built in a test: it must trust the gateway's CA through SSL_CERT_FILE.
    "golang-go",
    // A real container runtime (tests/containers.rs): podman with runc, which, unlike
    // Debian's default crun, runs on hybrid cgroup hosts (v1 controllers, v2 unified).
    "podman",
    "runc",
    // Fleet mode's shared database: each fleet test initdb's a private cluster of its own.
    "postgresql-15",
    // Upstreams that rewrite parameter names (tests/no_bypass_fields.rs): PHP's built-in
    // server, and Rack (what Rails and Sinatra read requests with) on WEBrick.
    "php-cli",
    "ruby",
    "ruby-rack",
    "ruby-webrick",
    // Rails' router (tests/no_bypass.rs): `/items/7.json` runs `show` with id 7.
    "ruby-actionpack",
    // ActiveRecord's integer cast (`find("7abc")` loads 7), for the same test.
    "ruby-activemodel",
];
/// The Python test parties, pinned: real HTTP/2, MCP and gRPC peers, an OTLP receiver.
const TEST_PYTHON: &[&str] = &[
    "mcp==1.27.0",
    "httpx[http2]==0.28.1",
    "grpcio==1.85.1",
    // The OTLP receiver decodes what the gateway exports with the official protobufs.
    "opentelemetry-proto==1.38.0",
    // The REST upstream an attacker's spellings are tried against: Flask routes paths and
    // reads arguments the way most Python services do.
    "flask==3.1.3",
    // An unmodified `requests` client must trust the gateway's CA through the environment
    // `callgate trust env` prints (it reads certifi's bundle otherwise).
    "requests==2.32.5",
];
/// The newer MCP generation (the 2026-07-28 transport: discovery, per-request `_meta`, routing
/// headers), in a venv of its own beside [`TEST_PYTHON`]'s.
const TEST_PYTHON_MCP2: &[&str] = &["mcp==2.3.0"];
/// The Node test parties, pinned: a real OpenID provider (and the JOSE library its test
/// endpoints sign with), Playwright's driver for Debian's Chromium, and the official MCP
/// TypeScript SDK (client and server) of both generations: `@modelcontextprotocol/sdk` (1.x,
/// protocol revisions up to 2025-11-25) and its 2.x packages `@modelcontextprotocol/client`
/// and `/server` (the 2026-07-28 revision), with the schema library tools are declared in,
/// and Express (the 1.x SDK's own HTTP app is built on it; pinned at the version that SDK
/// resolves), whose body parser decodes bodies by their charset.
const TEST_NODE: &[&str] = &[
    "oidc-provider@9.13.3",
    "jose@6.2.17",
    "playwright-core@1.65.1",
    "@modelcontextprotocol/sdk@1.32.2",
    "@modelcontextprotocol/client@2.4.0",
    "@modelcontextprotocol/server@2.4.0",
    "zod@4.6.7",
    "express@5.3.0",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub struct Needs {
    test_parties: bool,
    /// The Python venv alone (for `cargo xtask run`'s demo world).
    python: bool,
}

impl Needs {
    pub fn build() -> Self {
        Self {
            test_parties: false,
            python: false,
        }
    }

    pub fn demo() -> Self {
        Self {
            test_parties: false,
            python: true,
        }
    }

    pub fn all() -> Self {
        Self {
            test_parties: true,
            python: true,
        }
    }
}

pub fn run(needs: &Needs) -> Result<()> {
    let root = is_root();
    let mut packages: Vec<&str> = LLVM_PACKAGES.to_vec();
    if needs.test_parties {
        packages.extend_from_slice(TEST_PACKAGES);
    } else if needs.python {
        packages.extend_from_slice(&["python3", "python3-venv"]);
    }
    let missing: Vec<&str> = packages
        .into_iter()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        let install = format!("apt-get install -y {}", missing.join(" "));
        if !root {
            bail!("missing Debian packages; run as root: apt-get update && {install}");
        }
        println!("setup: apt-get update");
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        println!("setup: {install}");
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    if needs.python {
        python_parties()?;
    }
    if needs.test_parties {
        node_parties(root)?;
    }

    let nightly = nightly()?;
    if !toolchain_has_rust_src(&nightly) {
        println!("setup: rustup toolchain install {nightly} --component rust-src");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }

    if needs.test_parties && !cargo_fuzz_ok() {
        println!("setup: cargo install cargo-fuzz@{CARGO_FUZZ_VERSION}");
        run_cmd(Command::new("cargo").args([
            "install",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        ]))?;
    }

    if !bpf_linker_ok() {
        println!(
            "setup: cargo install bpf-linker@{BPF_LINKER_VERSION} (against LLVM 22; takes a few minutes)"
        );
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("PATH", path)
                .env("LLVM_SYS_220_PREFIX", LLVM_PREFIX)
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    Ok(())
}

/// A venv under `target/testenv` with [`TEST_PYTHON`], and one under `target/testenv2` with
/// [`TEST_PYTHON_MCP2`]; each rebuilt only when its pins change.
fn python_parties() -> Result<()> {
    python_venv("target/testenv", TEST_PYTHON)?;
    python_venv("target/testenv2", TEST_PYTHON_MCP2)
}

fn python_venv(dir: &str, packages: &[&str]) -> Result<()> {
    let venv = std::path::Path::new(dir);
    let stamp = venv.join("callgate-pins");
    let pins = packages.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(());
    }
    println!("setup: python venv {dir} with {}", packages.join(" "));
    let _ = std::fs::remove_dir_all(venv);
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
    )?;
    std::fs::write(&stamp, pins)?;
    Ok(())
}

/// `node_modules` under `target/testenv/node` with [`TEST_NODE`]; Node itself from Debian when
/// the machine has none.
fn node_parties(root: bool) -> Result<()> {
    if Command::new("npm").arg("--version").output().is_err() {
        if !root {
            bail!("Node.js is missing; run as root: apt-get install -y nodejs npm");
        }
        println!("setup: apt-get install -y nodejs npm");
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "nodejs", "npm"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let dir = std::path::Path::new("target/testenv/node");
    let stamp = dir.join("callgate-pins");
    let pins = TEST_NODE.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(());
    }
    println!(
        "setup: npm packages in {} : {}",
        dir.display(),
        TEST_NODE.join(" ")
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("package.json"), "{\"private\": true}\n")?;
    run_cmd(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--save-exact",
            ])
            .args(TEST_NODE)
            .current_dir(dir),
    )?;
    std::fs::write(&stamp, pins)?;
    Ok(())
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn toolchain_has_rust_src(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", toolchain, "--installed"])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        })
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
