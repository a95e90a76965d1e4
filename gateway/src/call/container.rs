//! Which container (or Kubernetes pod) a workload runs in, read from its cgroup path: every
//! common runtime names the container's scope after its id, so no runtime needs to be asked.
//!
//! - Docker (systemd driver): `.../docker-<64 hex>.scope`; cgroupfs driver: `/docker/<id>`
//! - Podman: `.../libpod-<id>.scope` (`libpod-conmon-<id>.scope` is its monitor, not it);
//!   with the cgroupfs manager (no systemd), `<cgroup parent>/libpod-<id>` (default parent
//!   `libpod_parent`)
//! - containerd/CRI: `.../cri-containerd-<id>.scope`; CRI-O: `.../crio-<id>.scope`
//! - Kubernetes: `kubepods[-burstable|-besteffort].slice/...-pod<uid>.slice` (systemd driver,
//!   `_` for `-` in the uid) or `kubepods/[burstable/]pod<uid>/` (cgroupfs driver).
//!
//! The names (container, pod, Kubernetes namespace) are not in the path: where the runtime
//! records them, `identity::containers` reads them from its state on disk.
use serde::{Deserialize, Serialize};

/// A container as its cgroup path names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// `docker`, `podman`, `containerd` or `crio`; absent for a pod's cgroup above its
    /// containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The full container id (64 hex digits for the runtimes above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The Kubernetes pod UID, with dashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The container's name, where its runtime records one (`podman ps`, `docker ps`, the
    /// container's name in its pod spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pod's name, where the runtime records it (Kubernetes: `metadata.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's Kubernetes namespace, where the runtime records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
}

/// Scope prefixes of container runtimes, and the runtime each names.
const SCOPES: [(&str, &str); 5] = [
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("cri-containerd-", "containerd"),
    ("crio-", "crio"),
    ("containerd-", "containerd"),
];

impl Container {
    /// The container of a cgroup path (relative to the cgroup mount, with or without a
    /// leading `/`); `None` outside any container.
    ///
    /// Only names the runtime made count: a container scope or pod slice must sit directly
    /// under systemd slices (`*.slice`), or at the top of the cgroupfs drivers' trees
    /// (`docker/<id>`, `kubepods/.../pod<uid>`). A process may create cgroups below its own
    /// delegated unit or container, and could name one `docker-<someone else's id>.scope`;
    /// such a name is below a `.service` or `.scope`, or below the real container, so the
    /// outermost match, reached through slices only, is the runtime's.
    pub fn of_cgroup(path: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = path?.split('/').filter(|p| !p.is_empty()).collect();
        let mut found = Self::default();
        if parts.first() == Some(&"docker") && parts.get(1).is_some_and(|id| is_id(id)) {
            found.runtime = Some("docker".into());
            found.id = parts.get(1).map(|id| id.to_string());
        }
        if parts.first() == Some(&"kubepods") {
            // cgroupfs driver: kubepods/[burstable|besteffort/]pod<uid>/<container id>
            let pod_at = parts.iter().take(3).position(|p| pod_uid(p).is_some());
            if let Some(i) = pod_at.filter(|i| *i >= 1) {
                found.pod = pod_uid(parts[i]);
                if let Some(id) = parts.get(i + 1).filter(|id| is_id(id)) {
                    found.id = Some(id.to_string());
                }
            }
        }
        for part in &parts {
            if let Some(pod) = pod_uid(part).filter(|_| part.ends_with(".slice")) {
                found.pod.get_or_insert(pod);
                continue;
            }
            if let Some((runtime, id)) = scope_id(part) {
                if found.id.is_none() {
                    found.runtime = Some(runtime.into());
                    found.id = Some(id.into());
                }
                break;
            }
            if !part.ends_with(".slice") {
                break;
            }
        }
        // Podman's cgroupfs manager (no systemd): `<parent>/libpod-<id>`, the parent being
        // any plain directory (`--cgroup-parent`). Never below a unit (a `.service` or
        // `.scope`, which may be delegated to its workload) and never below another
        // container: the outermost such name is the runtime's.
        if found.id.is_none() {
            for part in &parts {
                if let Some(id) = part.strip_prefix("libpod-").filter(|id| is_id(id)) {
                    found.runtime = Some("podman".into());
                    found.id = Some(id.into());
                    break;
                }
                if part.ends_with(".service") || part.ends_with(".scope") || is_id(part) {
                    break;
                }
            }
        }
        (found != Self::default()).then_some(found)
    }

    /// Whether `want` names this container: its full id, or a prefix of at least 12 hex
    /// digits (as `docker ps` shows it).
    pub fn id_matches(&self, want: &str) -> bool {
        self.id
            .as_deref()
            .is_some_and(|id| id == want || (want.len() >= 12 && id.starts_with(want)))
    }

    /// Whether `want` names this container: by id (as [`Container::id_matches`]) or by the
    /// name its runtime gave it.
    pub fn matches(&self, want: &str) -> bool {
        self.id_matches(want) || self.name.as_deref() == Some(want)
    }

    /// Whether `want` names this container's pod: its UID, its name, or
    /// `namespace/name`.
    pub fn pod_matches(&self, want: &str) -> bool {
        if self.pod.as_deref() == Some(want) || self.pod_name.as_deref() == Some(want) {
            return true;
        }
        match (want.split_once('/'), &self.pod_namespace, &self.pod_name) {
            (Some((ns, name)), Some(pns), Some(pname)) => ns == pns && name == pname,
            _ => false,
        }
    }
}

/// `<prefix><id>.scope` of a known runtime (never its `conmon` monitor).
fn scope_id(part: &str) -> Option<(&'static str, &str)> {
    let name = part.strip_suffix(".scope")?;
    SCOPES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_id(id).then_some((*runtime, id))
    })
}

/// A container id: 64 lowercase hex digits (what every runtime above generates).
pub fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID of a kubepods cgroup component: `kubepods-burstable-pod<uid>.slice`
/// (underscores for dashes) or `pod<uid>`.
fn pod_uid(part: &str) -> Option<String> {
    let uid = if let Some(slice) = part.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        slice.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_string()
    };
    let is_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    is_uid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3a0b2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const POD: &str = "0f9e8d7c-6b5a-4321-8fed-cba987654321";

    fn of(path: &str) -> Option<Container> {
        Container::of_cgroup(Some(path))
    }

    #[test]
    fn runtimes_by_scope() {
        for (prefix, runtime) in [
            ("system.slice/docker-", "docker"),
            ("machine.slice/libpod-", "podman"),
            ("system.slice/cri-containerd-", "containerd"),
            ("system.slice/crio-", "crio"),
        ] {
            let c = of(&format!("{prefix}{ID}.scope")).expect(runtime);
            assert_eq!(c.runtime.as_deref(), Some(runtime));
            assert_eq!(c.id.as_deref(), Some(ID));
            assert_eq!(c.pod, None);
        }
        assert_eq!(
            of(&format!("/docker/{ID}")).and_then(|c| c.runtime),
            Some("docker".into())
        );
    }

    #[test]
    fn not_containers() {
        assert_eq!(of("system.slice/nginx.service"), None);
        assert_eq!(of(&format!("machine.slice/libpod-conmon-{ID}.scope")), None);
        assert_eq!(of("system.slice/docker-short.scope"), None);
        assert_eq!(of("user.slice/pod-not-a-uid"), None);
        assert_eq!(Container::of_cgroup(None), None);
    }

    #[test]
    fn kubernetes_pods() {
        let systemd = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            POD.replace('-', "_")
        );
        let c = of(&systemd).expect("pod container");
        assert_eq!(c.pod.as_deref(), Some(POD));
        assert_eq!(c.id.as_deref(), Some(ID));
        let cgroupfs = format!("kubepods/besteffort/pod{POD}/{ID}");
        assert_eq!(of(&cgroupfs).and_then(|c| c.pod), Some(POD.into()));
    }

    #[test]
    fn names_a_workload_made_below_its_own_unit_do_not_count() {
        const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";
        // Below a delegated user unit.
        assert_eq!(
            of(&format!(
                "user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"
            )),
            None
        );
        // Below a real container: still that container.
        let nested = of(&format!(
            "system.slice/docker-{ID}.scope/docker-{OTHER}.scope"
        ))
        .unwrap();
        assert_eq!(nested.id.as_deref(), Some(ID));
        // A pod slice below a service.
        let fake_pod = format!(
            "system.slice/x.service/kubepods-pod{}.slice",
            POD.replace('-', "_")
        );
        assert_eq!(of(&fake_pod), None);
        assert_eq!(of(&format!("x.service/docker/{ID}")), None);
    }

    #[test]
    fn podman_without_systemd() {
        // What podman 4.3 with `--cgroup-manager cgroupfs` makes on cgroup v2 (or in the
        // unified hierarchy of a hybrid host): its default parent, or `--cgroup-parent`.
        for path in [
            format!("/libpod_parent/libpod-{ID}"),
            format!("/callgate-test.slice/libpod-{ID}"),
            format!("enabled/parent/libpod-{ID}"),
        ] {
            let c = of(&path).expect(&path);
            assert_eq!(c.runtime.as_deref(), Some("podman"), "{path}");
            assert_eq!(c.id.as_deref(), Some(ID), "{path}");
        }
        assert_eq!(of("libpod_parent/conmon"), None);
        assert_eq!(of("libpod_parent/libpod-short"), None);
        // Made by a workload below its own unit or container: not a container of its own.
        assert_eq!(of(&format!("system.slice/app.service/libpod-{ID}")), None);
        const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";
        let nested = of(&format!("p/libpod-{ID}/libpod-{OTHER}")).unwrap();
        assert_eq!(nested.id.as_deref(), Some(ID));
        assert_eq!(
            of(&format!("docker/{ID}/libpod-{OTHER}"))
                .unwrap()
                .id
                .as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn matching_names() {
        let c = Container {
            id: Some(ID.into()),
            name: Some("web".into()),
            pod: Some(POD.into()),
            pod_name: Some("web-7d9f".into()),
            pod_namespace: Some("shop".into()),
            ..Default::default()
        };
        assert!(c.matches("web") && c.matches(&ID[..12]) && !c.matches("we"));
        assert!(c.pod_matches(POD) && c.pod_matches("web-7d9f") && c.pod_matches("shop/web-7d9f"));
        assert!(!c.pod_matches("other/web-7d9f") && !c.pod_matches("shop"));
        assert!(!Container::default().pod_matches("x"));
    }

    #[test]
    fn id_prefixes() {
        let c = of(&format!("system.slice/docker-{ID}.scope")).unwrap();
        assert!(c.id_matches(ID));
        assert!(c.id_matches(&ID[..12]));
        assert!(!c.id_matches(&ID[..11]));
        assert!(!c.id_matches("4f1c3a0b2d5e6f70819x"));
    }
}
