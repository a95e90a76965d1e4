//! Container and pod names, read from the container runtimes' own state on disk (never by
//! running their CLIs): the cgroup path gives a container's id (`call::container`), the
//! runtime's files give its name, and for Kubernetes the pod's name and namespace.
//!
//! - Podman (and CRI-O, which shares its storage): `<graph root>/overlay-containers/
//!   containers.json` (`[{"id", "names": [..]}]`), and the container's OCI bundle
//!   `.../overlay-containers/<id>/userdata/config.json` under the graph root or the run root,
//!   whose annotations CRI-O fills with `io.kubernetes.container.name`,
//!   `io.kubernetes.pod.name` and `io.kubernetes.pod.namespace`.
//! - Docker: `/var/lib/docker/containers/<id>/config.v2.json` (`"Name": "/web"`; Kubernetes
//!   labels in `Config.Labels` under cri-dockerd).
//! - containerd: the task's bundle `/run/containerd/io.containerd.runtime.v2.task/<namespace>/
//!   <id>/config.json`, annotated by the CRI plugin with `io.kubernetes.cri.container-name`,
//!   `io.kubernetes.cri.sandbox-name` and `io.kubernetes.cri.sandbox-namespace`.
//!
//! Names are cached by container id (a bounded map): a container's files are read once, on
//! its first connection or when its namespace is opened (off the data path), never again
//! while it runs. A container whose files say nothing is asked again after [`RETRY`].
use std::{
    collections::HashMap,
    fs,
    io::Read,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::call::container::{Container, is_id};

/// Where each runtime keeps its state. [`Default`] is what the runtimes use out of the box.
#[derive(Debug, Clone)]
pub struct RuntimeRoots {
    /// containers/storage graph and run roots (Podman, CRI-O).
    pub storage: Vec<PathBuf>,
    /// Docker's data root.
    pub docker: Vec<PathBuf>,
    /// containerd's state directory (`/run/containerd`).
    pub containerd: Vec<PathBuf>,
}

impl Default for RuntimeRoots {
    fn default() -> Self {
        Self {
            storage: vec![
                "/var/lib/containers/storage".into(),
                "/run/containers/storage".into(),
            ],
            docker: vec!["/var/lib/docker".into()],
            containerd: vec!["/run/containerd".into()],
        }
    }
}

/// What a runtime records of a container beyond its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl Names {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Fills what this knows and `other` does not.
    fn or(self, other: Self) -> Self {
        Self {
            name: self.name.or(other.name),
            pod_name: self.pod_name.or(other.pod_name),
            pod_namespace: self.pod_namespace.or(other.pod_namespace),
        }
    }
}

/// A container whose files named nothing is looked up again after this long.
pub const RETRY: Duration = Duration::from_secs(5);

/// At most this many containers are remembered; the map starts over when full.
const CAPACITY: usize = 4096;

/// No runtime file larger than this is read (a containers.json of thousands of containers
/// is a few MiB).
const MAX_FILE: u64 = 8 << 20;

/// At most this many containerd namespaces are looked in.
const MAX_NAMESPACES: usize = 64;

/// Container names by id, read from the runtimes' state and cached.
#[derive(Debug, Default)]
pub struct ContainerNames {
    roots: RuntimeRoots,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    names: Names,
    at: Instant,
}

impl ContainerNames {
    pub fn new(roots: RuntimeRoots) -> Self {
        Self {
            roots,
            cache: Mutex::default(),
        }
    }

    /// Adds the names the runtime records to `container` (which has its id from the cgroup
    /// path). Reads the runtime's files only for a container not seen before.
    pub fn fill(&self, container: &mut Container) {
        let Some(id) = container.id.clone() else {
            return;
        };
        let names = self.names(&id, container.runtime.as_deref());
        container.name = names.name.or(container.name.take());
        container.pod_name = names.pod_name.or(container.pod_name.take());
        container.pod_namespace = names.pod_namespace.or(container.pod_namespace.take());
    }

    /// The names of container `id` (64 hex digits) of `runtime` (any runtime when unknown).
    pub fn names(&self, id: &str, runtime: Option<&str>) -> Names {
        if let Some(c) = self.cache().get(id) {
            if !c.names.is_empty() || c.at.elapsed() < RETRY {
                return c.names.clone();
            }
        }
        if !is_id(id) {
            return Names::default();
        }
        let mut found = HashMap::new();
        let names = read(&self.roots, id, runtime, &mut found);
        let mut cache = self.cache();
        if cache.len() + found.len() >= CAPACITY {
            cache.clear();
        }
        let at = Instant::now();
        // Podman's containers.json names every container: remember them all.
        for (other, name) in found.into_iter().take(CAPACITY / 2) {
            cache.entry(other).or_insert_with(|| Cached {
                names: Names {
                    name: Some(name),
                    ..Names::default()
                },
                at,
            });
        }
        cache.insert(
            id.to_string(),
            Cached {
                names: names.clone(),
                at,
            },
        );
        names
    }

    /// The id of the container named `name`, from the runtimes' state (Podman's
    /// containers.json, Docker's config.v2.json files); `None` if no runtime or several
    /// containers know it.
    pub fn id_of(&self, name: &str) -> Option<String> {
        let mut ids = Vec::new();
        for root in &self.roots.storage {
            let path = root.join("overlay-containers/containers.json");
            for (id, names) in storage_names(&path) {
                if names.iter().any(|n| n == name) {
                    ids.push(id);
                }
            }
        }
        for root in &self.roots.docker {
            let Ok(dirs) = fs::read_dir(root.join("containers")) else {
                continue;
            };
            for dir in dirs.flatten().take(CAPACITY) {
                let id = dir.file_name().to_string_lossy().into_owned();
                if !is_id(&id) {
                    continue;
                }
                let n = docker(&dir.path().join("config.v2.json"));
                if n.name.as_deref() == Some(name) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the runtime made the cgroup `container` was read from (`cgroup`: its absolute
/// path). Podman's cgroupfs form, `<parent>/libpod-<id>`, may sit under any directory, so
/// it counts only when root made it: a subtree delegated by `chown` makes its cgroups as
/// its owner. Every other form sits where only systemd or the runtime create cgroups.
pub fn made_by_runtime(cgroup: &Path, container: &Container) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(id) = &container.id else {
        return true;
    };
    let name = format!("libpod-{id}");
    match cgroup
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| *n == *name))
    {
        Some(dir) => fs::metadata(dir).is_ok_and(|m| m.uid() == 0),
        None => true,
    }
}

/// Reads what the runtime(s) record of `id`. `others` collects the names of other
/// containers found on the way (Podman's one file names them all).
fn read(
    roots: &RuntimeRoots,
    id: &str,
    runtime: Option<&str>,
    others: &mut HashMap<String, String>,
) -> Names {
    let any = runtime.is_none();
    let mut names = Names::default();
    if any || matches!(runtime, Some("podman" | "crio")) {
        for root in &roots.storage {
            let bundle = root.join(format!("overlay-containers/{id}/userdata/config.json"));
            names = names.or(annotations(&bundle));
        }
        if names.name.is_none() {
            for root in &roots.storage {
                let path = root.join("overlay-containers/containers.json");
                for (other, list) in storage_names(&path) {
                    let Some(first) = list.into_iter().next() else {
                        continue;
                    };
                    if other == id {
                        names.name.get_or_insert(first);
                    } else {
                        others.insert(other, first);
                    }
                }
            }
        }
    }
    if any || runtime == Some("docker") {
        for root in &roots.docker {
            names = names.or(docker(
                &root.join(format!("containers/{id}/config.v2.json")),
            ));
        }
    }
    if any || runtime == Some("containerd") {
        for root in &roots.containerd {
            let tasks = root.join("io.containerd.runtime.v2.task");
            let Ok(spaces) = fs::read_dir(&tasks) else {
                continue;
            };
            for space in spaces.flatten().take(MAX_NAMESPACES) {
                let bundle = space.path().join(id).join("config.json");
                if bundle.exists() {
                    names = names.or(annotations(&bundle));
                }
            }
        }
    }
    names
}

/// A JSON file of at most [`MAX_FILE`] bytes.
fn json(path: &Path) -> Option<Value> {
    let file = fs::File::open(path).ok()?;
    let mut text = Vec::new();
    file.take(MAX_FILE).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The Kubernetes names in an annotation or label map (CRI plugin, CRI-O, cri-dockerd).
fn kubernetes(map: &Value) -> Names {
    let first = |keys: &[&str]| keys.iter().find_map(|k| text(map, k));
    Names {
        name: first(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        pod_name: first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        pod_namespace: first(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
    }
}

/// An OCI bundle's `config.json`: the names in its annotations.
fn annotations(path: &Path) -> Names {
    json(path)
        .and_then(|v| v.get("annotations").map(kubernetes))
        .unwrap_or_default()
}

/// Docker's `config.v2.json`: `Name` (with its leading `/`) and Kubernetes labels.
fn docker(path: &Path) -> Names {
    let Some(v) = json(path) else {
        return Names::default();
    };
    let labels = v
        .get("Config")
        .and_then(|c| c.get("Labels"))
        .map(kubernetes)
        .unwrap_or_default();
    let own = Names {
        name: text(&v, "Name").map(|n| n.trim_start_matches('/').to_string()),
        ..Names::default()
    };
    // A Kubernetes container's own name is the one in its pod spec, not `k8s_app_pod_...`.
    labels.or(own)
}

/// containers/storage `containers.json`: every container's id and names.
fn storage_names(path: &Path) -> Vec<(String, Vec<String>)> {
    let Some(Value::Array(list)) = json(path) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|c| {
            let id = text(c, "id").filter(|id| is_id(id))?;
            let names = c
                .get("names")?
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            Some((id, names))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "4f1c3a0b2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    struct Fixture(PathBuf);

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("callgate-runtimes-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, content: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }

        fn roots(&self) -> RuntimeRoots {
            RuntimeRoots {
                storage: vec![
                    self.0.join("var-lib-containers"),
                    self.0.join("run-containers"),
                ],
                docker: vec![self.0.join("var-lib-docker")],
                containerd: vec![self.0.join("run-containerd")],
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn container(runtime: &str, id: &str) -> Container {
        Container {
            runtime: Some(runtime.into()),
            id: Some(id.into()),
            ..Container::default()
        }
    }

    #[test]
    fn podman_names_from_containers_json() {
        let f = Fixture::new("podman");
        // As podman 4.3 writes it (one line, every container).
        f.write(
            "var-lib-containers/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{A}","names":["web"],"image":"","layer":"008f","metadata":"{{\"image-name\":\"\",\"name\":\"web\"}}","created":"2026-12-03T06:32:37.3476054Z","flags":{{"MountLabel":"","ProcessLabel":""}}}},{{"id":"{B}","names":["db"],"layer":"01"}}]"#
            ),
        );
        f.write(
            &format!("var-lib-containers/overlay-containers/{A}/userdata/config.json"),
            r#"{"ociVersion":"1.0.2-dev","annotations":{"io.container.manager":"libpod","io.podman.annotations.autoremove":"FALSE"}}"#,
        );
        let names = ContainerNames::new(f.roots());
        let mut c = container("podman", A);
        names.fill(&mut c);
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.pod_name, None);
        // The other container came with the same read.
        fs::remove_file(f.0.join("var-lib-containers/overlay-containers/containers.json")).unwrap();
        assert_eq!(names.names(B, Some("podman")).name.as_deref(), Some("db"));
        assert_eq!(names.names(A, Some("podman")).name.as_deref(), Some("web"));
    }

    #[test]
    fn name_to_id() {
        let f = Fixture::new("byname");
        f.write(
            "var-lib-containers/overlay-containers/containers.json",
            &format!(r#"[{{"id":"{A}","names":["web"]}},{{"id":"{B}","names":["db"]}}]"#),
        );
        f.write(
            &format!("var-lib-docker/containers/{B}/config.v2.json"),
            r#"{"ID":"x","Name":"/cache"}"#,
        );
        let names = ContainerNames::new(f.roots());
        assert_eq!(names.id_of("web").as_deref(), Some(A));
        assert_eq!(names.id_of("cache").as_deref(), Some(B));
        assert_eq!(names.id_of("nobody"), None);
    }

    #[test]
    fn crio_annotations() {
        let f = Fixture::new("crio");
        f.write(
            &format!("run-containers/overlay-containers/{A}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.container.name":"app","io.kubernetes.pod.name":"web-7d9f","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"0f9e"}}"#,
        );
        f.write(
            "var-lib-containers/overlay-containers/containers.json",
            &format!(r#"[{{"id":"{A}","names":["k8s_app_web-7d9f_shop_0f9e_0"]}}]"#),
        );
        let n = ContainerNames::new(f.roots()).names(A, Some("crio"));
        assert_eq!(
            n,
            Names {
                name: Some("app".into()),
                pod_name: Some("web-7d9f".into()),
                pod_namespace: Some("shop".into()),
            }
        );
    }

    #[test]
    fn docker_config_v2() {
        let f = Fixture::new("docker");
        f.write(
            &format!("var-lib-docker/containers/{A}/config.v2.json"),
            &format!(
                r#"{{"StreamConfig":{{}},"State":{{"Running":true,"Pid":4242}},"ID":"{A}","Created":"2026-12-01T10:00:00Z","Path":"nginx","Config":{{"Hostname":"4f1c3a0b2d5e","Labels":{{"maintainer":"x"}}}},"Name":"/billing","Driver":"overlay2"}}"#
            ),
        );
        f.write(
            &format!("var-lib-docker/containers/{B}/config.v2.json"),
            r#"{"ID":"b","Name":"/k8s_app_web-7d9f_shop_0f9e_0","Config":{"Labels":{"io.kubernetes.container.name":"app","io.kubernetes.pod.name":"web-7d9f","io.kubernetes.pod.namespace":"shop"}}}"#,
        );
        let names = ContainerNames::new(f.roots());
        let mut c = container("docker", A);
        names.fill(&mut c);
        assert_eq!(c.name.as_deref(), Some("billing"));
        let k = names.names(B, Some("docker"));
        assert_eq!(k.name.as_deref(), Some("app"));
        assert_eq!(k.pod_namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn containerd_cri_bundle() {
        let f = Fixture::new("containerd");
        f.write(
            &format!("run-containerd/io.containerd.runtime.v2.task/k8s.io/{A}/config.json"),
            &format!(
                r#"{{"ociVersion":"1.1.0","process":{{"args":["/app"]}},"annotations":{{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app","io.kubernetes.cri.sandbox-id":"{B}","io.kubernetes.cri.sandbox-name":"web-7d9f","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"0f9e8d7c-6b5a-4321-8fed-cba987654321","io.kubernetes.cri.image-name":"registry.local/app:1"}}}}"#
            ),
        );
        let names = ContainerNames::new(f.roots());
        let mut c = container("containerd", A);
        names.fill(&mut c);
        assert_eq!(c.name.as_deref(), Some("app"));
        assert_eq!(c.pod_name.as_deref(), Some("web-7d9f"));
        assert_eq!(c.pod_namespace.as_deref(), Some("shop"));
        assert!(c.pod_matches("shop/web-7d9f"));
    }

    #[test]
    fn podman_cgroupfs_form_only_when_root_made_it() {
        use std::os::unix::fs::chown;
        let f = Fixture::new("owner");
        let rel = format!("parent/libpod-{A}");
        let dir = f.0.join(&rel);
        fs::create_dir_all(dir.join("child")).unwrap();
        let c = Container::of_cgroup(Some(&rel)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(made_by_runtime(&dir, &c), root);
        assert_eq!(made_by_runtime(&dir.join("child"), &c), root);
        if root {
            chown(&dir, Some(1000), None).unwrap();
            assert!(!made_by_runtime(&dir.join("child"), &c));
        }
        // A scope of a runtime: systemd made it, whoever owns it.
        let scope = Container::of_cgroup(Some(&format!("machine.slice/libpod-{A}.scope")));
        assert!(made_by_runtime(&f.0.join("x.scope"), &scope.unwrap()));
    }

    #[test]
    fn nothing_recorded_is_asked_again_later_not_at_once() {
        let f = Fixture::new("retry");
        let names = ContainerNames::new(f.roots());
        assert_eq!(names.names(A, None), Names::default());
        f.write(
            &format!("var-lib-docker/containers/{A}/config.v2.json"),
            r#"{"Name":"/late"}"#,
        );
        // Within RETRY the miss is remembered: no file is read on this call.
        assert_eq!(names.names(A, None), Names::default());
        // Not an id: nothing is read at all.
        assert_eq!(names.names("../../etc", None), Names::default());
    }
}
