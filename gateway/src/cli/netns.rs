//! `callgate` and network namespaces: `enable --pid PID` (the cgroup a process is in),
//! `enable --container ID_OR_NAME` (the container's scope, found in the cgroup tree) and the
//! namespaces `status` lists.
use anyhow::{Context, Result, bail};
use callgate::intercept::netns::NetnsStatus;

/// The cgroup v2 path of process `pid`, relative to the cgroup mount, from `/proc/PID/cgroup`.
pub fn cgroup_of_pid(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("process {pid}: {path}"))?;
    match parse_proc_cgroup(&text) {
        Some(p) => Ok(p),
        None => bail!("process {pid} is in no cgroup v2 ({path} has no `0::` line)"),
    }
}

/// The `0::/path` line of `/proc/PID/cgroup` (the unified hierarchy), without its leading `/`.
fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_string())
}

/// Scope name prefixes of the runtimes whose containers `--container` finds.
const SCOPES: [&str; 4] = ["docker-", "libpod-", "cri-containerd-", "crio-"];

/// How deep below the cgroup mount containers are looked for (kubepods are 3 deep).
const MAX_DEPTH: usize = 6;

/// The cgroup of container `want`: its id (full, or 12+ hex digits as `docker ps` shows it),
/// or a name that `docker`/`podman inspect` turns into one. Found by the runtime's scope
/// (`docker-<id>.scope`, `libpod-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`)
/// or the cgroupfs drivers' `docker/<id>` and `<parent>/libpod-<id>` (Podman without
/// systemd); exactly one must match.
pub fn cgroup_of_container(want: &str) -> Result<String> {
    let id = if is_id_prefix(want) {
        want.to_string()
    } else {
        id_from_runtime(want)?
    };
    let mount = callgate::intercept::cgroup::cgroup2_mount()?;
    let mut found = Vec::new();
    let mut dirs = vec![(mount.clone(), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let scope = name.strip_suffix(".scope").and_then(|n| {
                SCOPES
                    .iter()
                    .find_map(|p| n.strip_prefix(p).filter(|i| i.starts_with(&id)))
            });
            let cgroupfs = (dir.file_name().is_some_and(|d| d == "docker")
                && name.starts_with(&id))
                || name
                    .strip_prefix("libpod-")
                    .is_some_and(|n| n.starts_with(&id) && !n.ends_with(".scope"));
            if scope.is_some() || cgroupfs {
                found.push(e.path());
            } else if depth < MAX_DEPTH {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(one
            .strip_prefix(&mount)
            .unwrap_or(one)
            .display()
            .to_string()),
        [] => bail!(
            "no container {want} (no runtime scope named after it under {})",
            mount.display()
        ),
        many => bail!(
            "{want} names {} containers: {}; give more of its id",
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// 12 to 64 lowercase hex digits: an id or the prefix `docker ps` shows.
fn is_id_prefix(s: &str) -> bool {
    (12..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A container name, turned into its id: from the runtimes' state on disk (Podman's
/// containers.json, Docker's config.v2.json), else by whichever runtime CLI knows it.
fn id_from_runtime(name: &str) -> Result<String> {
    let names = callgate::identity::containers::ContainerNames::default();
    if let Some(id) = names.id_of(name) {
        return Ok(id);
    }
    for cli in ["podman", "docker"] {
        let out = std::process::Command::new(cli)
            .args([
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.Id}}",
                name,
            ])
            .output();
        if let Ok(out) = out {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && is_id_prefix(&id) {
                return Ok(id);
            }
        }
    }
    bail!("{name} is neither a container id (12+ hex digits) nor a name podman or docker knows")
}

/// The `namespaces:` part of `status`.
pub fn print_namespaces(list: &[NetnsStatus]) {
    if list.len() <= 1 {
        return;
    }
    println!("namespaces:");
    for ns in list {
        let inode = ns
            .inode
            .map(|i| format!("net:[{i}]"))
            .unwrap_or_else(|| "net:[?]".into());
        let listeners = if ns.listeners.is_empty() {
            String::new()
        } else {
            format!(" on {}", ns.listeners.join(", "))
        };
        let container = ns.container.as_ref().map_or_else(String::new, |c| {
            let id = c.id.as_deref().map_or("?", |id| &id[..id.len().min(12)]);
            match &c.name {
                Some(name) => format!(" container {name} ({id})"),
                None => format!(" container {id}"),
            }
        });
        println!(
            "  {inode} cookie {} pid {}{container}: {}{listeners}",
            ns.cookie, ns.pid, ns.state
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/docker-abc.scope\n").as_deref(),
            Some("system.slice/docker-abc.scope")
        );
        assert_eq!(parse_proc_cgroup("12:cpu:/x\n0::/\n").as_deref(), Some(""));
        assert_eq!(parse_proc_cgroup("12:cpu:/x\n"), None);
    }
}
