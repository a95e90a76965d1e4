//! The CLI's side of network namespaces: `enable --pid PID` (the cgroup a process is in) and
//! the namespaces `status` lists.
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
        println!(
            "  {inode} cookie {} pid {}: {}{listeners}",
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
