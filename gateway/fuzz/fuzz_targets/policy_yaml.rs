//! A service file from a policy repository: parsed, compiled and linted into findings with a
//! file and line, or a snapshot; never a panic.
#![no_main]
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use callgate::policy;
use libfuzzer_sys::fuzz_target;

fn repo() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("callgate-fuzz-policy-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("services"));
        let _ = std::fs::write(dir.join("callgate.yaml"), "default_action: deny\n");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = policy::load::parse_str::<policy::schema::ServiceFile>(Path::new("x.yaml"), text);
    let dir = repo();
    if std::fs::write(dir.join("services/fuzz.yaml"), text).is_ok() {
        let _ = policy::load_snapshot(dir);
    }
});
