//! Trust in the gateway's CA where each runtime looks for it.
//!
//! An intercepted client verifies the leaf the gateway minted against the roots its runtime
//! uses. The system store covers OpenSSL defaults, curl and Go, but Python's `requests` and
//! `httpx` read certifi's bundle, Node its compiled-in list and Java its `cacerts`. So the
//! gateway keeps one trust bundle current in a world-readable directory beside its state
//! directory (`<state_dir>-trust/`; the state directory itself is the daemon's alone):
//!
//! - `bundle.pem`: the system roots plus the gateway's CA, for `SSL_CERT_FILE`,
//!   `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` (these replace the runtime's roots, so the
//!   system's are included);
//! - `ca.pem`: the CA alone, for `NODE_EXTRA_CA_CERTS` (which adds to Node's own list);
//! - `bundle.p12`: the same roots as a PKCS#12 trust store for Java's
//!   `javax.net.ssl.trustStore`.
//!
//! [`env()`] is the environment that points each runtime at them; `callgate trust env` prints
//! it and `callgate enable --unit NAME --trust` writes it into a systemd drop-in. The files
//! are rewritten when the CA or the system roots change ([`keep_current`]: at start, each
//! minute, and on SIGHUP); a client that still refuses the CA is noticed by [`refusals`].
use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use rustls::{AlertDescription, pki_types::CertificateDer};
use tracing::{info, warn};

/// The PKCS#12 trust store's password. A trust store holds only public certificates; Java
/// needs a password to check its integrity, and `changeit` is the one its own `cacerts` uses.
pub const P12_PASSWORD: &str = "changeit";
/// How often the system roots are read again to see whether they changed.
const REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {reason}: every workload told to trust this directory would trust what is put in it"
    )]
    NotOurs { path: PathBuf, reason: String },
    #[error("the CA certificate is not PEM")]
    BadCa,
    #[error("writing the PKCS#12 trust store: {0}")]
    P12(String),
}

/// The trust files' directory for a state directory: its sibling `<state_dir>-trust`,
/// readable by every workload (the state directory is mode 0700).
pub fn dir_for(state_dir: &Path) -> PathBuf {
    let mut name = state_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "callgate".into());
    name.push("-trust");
    state_dir.with_file_name(name)
}

/// Where the trust files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn for_state_dir(state_dir: &Path) -> Self {
        Self {
            dir: dir_for(state_dir),
        }
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn p12(&self) -> PathBuf {
        self.dir.join("bundle.p12")
    }
}

/// The roots the host trusts, as the gateway itself reads them.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "reading the system trust store");
    }
    found.certs
}

fn pem(der: &[u8], out: &mut String) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}

/// Writes the trust files for `ca_pem` and `roots` where they differ from what is there.
/// Returns whether anything was written.
pub fn refresh(
    paths: &Paths,
    ca_pem: &str,
    roots: &[CertificateDer<'_>],
) -> Result<bool, TrustError> {
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| TrustError::BadCa)?;
    let mut bundle = String::with_capacity(roots.len() * 2048 + 2048);
    let _ = writeln!(
        bundle,
        "# callgate trust bundle: the system roots and the gateway's CA."
    );
    let _ = writeln!(bundle, "# Rewritten by the gateway; do not edit.");
    // The gateway's CA first: a reader that stops early still finds it.
    pem(&ca, &mut bundle);
    for r in roots.iter().filter(|r| r.as_ref() != ca.as_ref()) {
        pem(r, &mut bundle);
    }
    let mut ca_only = String::new();
    pem(&ca, &mut ca_only);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Io { path, source }
    };
    std::fs::create_dir_all(&paths.dir).map_err(io(&paths.dir))?;
    // Workloads of every user read these, and trust what they say: the directory must be
    // this process's own, not a link, and writable by nobody else.
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(&paths.dir).map_err(io(&paths.dir))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let not_ours = |reason: String| TrustError::NotOurs {
            path: paths.dir.clone(),
            reason,
        };
        if !meta.is_dir() {
            return Err(not_ours("not a directory".into()));
        }
        if meta.uid() != me {
            return Err(not_ours(format!("owned by uid {}, not {me}", meta.uid())));
        }
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&paths.dir))?;
    }
    let same = |p: &Path, text: &str| std::fs::read(p).is_ok_and(|b| b == text.as_bytes());
    let mut wrote = false;
    if !same(&paths.ca(), &ca_only) {
        crate::util::fs::write_atomic_mode(&paths.ca(), ca_only.as_bytes(), 0o644)
            .map_err(io(&paths.ca()))?;
        wrote = true;
    }
    // The PKCS#12 store is salted afresh each time: it follows the PEM bundle.
    if !same(&paths.bundle(), &bundle) || !paths.p12().exists() {
        let p12 = p12_store(&ca, roots)?;
        crate::util::fs::write_atomic_mode(&paths.p12(), &p12, 0o644).map_err(io(&paths.p12()))?;
        crate::util::fs::write_atomic_mode(&paths.bundle(), bundle.as_bytes(), 0o644)
            .map_err(io(&paths.bundle()))?;
        wrote = true;
    }
    Ok(wrote)
}

/// A Java trust store: every root a trusted-certificate entry.
fn p12_store(ca: &CertificateDer<'_>, roots: &[CertificateDer<'_>]) -> Result<Vec<u8>, TrustError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
    let mut store = KeyStore::new();
    let ca_cert = Certificate::from_der(ca).map_err(|e| TrustError::P12(e.to_string()))?;
    store.add_entry("callgate-local-ca", KeyStoreEntry::Certificate(ca_cert));
    for (n, r) in roots.iter().enumerate() {
        if r.as_ref() == ca.as_ref() {
            continue;
        }
        // A root the parser does not take is left out, as the JDK's own import does.
        if let Ok(c) = Certificate::from_der(r) {
            store.add_entry(&format!("system-{n}"), KeyStoreEntry::Certificate(c));
        }
    }
    store
        .writer(P12_PASSWORD)
        .write()
        .map_err(|e| TrustError::P12(e.to_string()))
}

/// Writes the trust files now, then again whenever the system roots change (read each
/// minute, and at once when `now` is notified), until `stop`.
pub async fn keep_current(
    paths: Paths,
    ca_pem: String,
    now: std::sync::Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (p, ca) = (paths.clone(), ca_pem.clone());
        match tokio::task::spawn_blocking(move || refresh(&p, &ca, &system_roots())).await {
            Ok(Ok(true)) => {
                info!(bundle = %paths.bundle().display(), "wrote the trust bundle (system roots and the gateway's CA)")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not write the trust bundle"),
            Err(e) => warn!(error = %e, "the trust bundle task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = now.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Why a handshake that failed means the client refused the gateway's certificate, if it
/// does. A client that does not trust the CA aborts after seeing the minted leaf: OpenSSL
/// (Python, curl) sends `unknown_ca`, Go `bad_certificate`, Java `certificate_unknown`; others
/// (Node 20, Java 17 as tested) just close before their Finished. A client that completes the
/// handshake and only then gives up cannot be told from one that opened a connection it did
/// not use, and is not counted.
pub fn refusal(e: &io::Error) -> Option<&'static str> {
    if let Some(rustls::Error::AlertReceived(alert)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        return match alert {
            AlertDescription::UnknownCA => Some("alert unknown_ca"),
            AlertDescription::BadCertificate => Some("alert bad_certificate"),
            AlertDescription::CertificateUnknown => Some("alert certificate_unknown"),
            AlertDescription::UnsupportedCertificate => Some("alert unsupported_certificate"),
            AlertDescription::CertificateExpired => Some("alert certificate_expired"),
            _ => None,
        };
    }
    match e.kind() {
        // The ClientHello was whole (sniffing read it) and the gateway answered it: the
        // client left on reading that answer.
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Some("closed before Finished"),
        _ => None,
    }
}

/// The environment that makes each runtime trust the bundle, in the order printed.
pub fn env(paths: &Paths) -> Vec<(&'static str, String)> {
    let bundle = paths.bundle().display().to_string();
    vec![
        // OpenSSL's default file: Python's ssl module (and httpx), Go, Ruby, OpenSSL tools.
        ("SSL_CERT_FILE", bundle.clone()),
        // Python requests (certifi otherwise).
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        // The curl command line tool (its compiled-in bundle otherwise).
        ("CURL_CA_BUNDLE", bundle),
        // Node adds these to its compiled-in list.
        ("NODE_EXTRA_CA_CERTS", paths.ca().display().to_string()),
        // Every JVM reads JAVA_TOOL_OPTIONS at start.
        (
            "JAVA_TOOL_OPTIONS",
            format!(
                "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword={P12_PASSWORD}",
                paths.p12().display()
            ),
        ),
    ]
}

/// How [`env()`] is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `export NAME='value'` lines for a POSIX shell.
    Shell,
    /// `Environment="NAME=value"` lines for a unit's `[Service]` section.
    Systemd,
    /// `NAME=value` lines for `docker run --env-file` (values taken literally).
    Docker,
}

/// [`env()`] in `format`, one variable a line.
pub fn render(vars: &[(&str, String)], format: Format) -> String {
    let mut out = String::new();
    for (name, value) in vars {
        match format {
            Format::Shell => {
                let _ = writeln!(out, "export {name}='{}'", value.replace('\'', r"'\''"));
            }
            Format::Systemd => {
                // Quoted for the word splitting of Environment=, `%` for specifiers.
                let v = value
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('%', "%%");
                let _ = writeln!(out, "Environment=\"{name}={v}\"");
            }
            Format::Docker => {
                let _ = writeln!(out, "{name}={value}");
            }
        }
    }
    out
}

/// The drop-in `callgate enable --unit NAME --trust` writes.
pub fn dropin(paths: &Paths) -> String {
    format!(
        "# Written by `callgate enable --unit … --trust`; `callgate disable --unit …` removes it.\n\
         # Points the unit's TLS clients at the gateway's trust bundle (see `callgate trust env`).\n\
         # Restart the unit for it to take effect.\n\
         [Service]\n{}",
        render(&env(paths), Format::Systemd)
    )
}

/// The drop-in's file for `unit` under a systemd unit directory.
pub fn dropin_path(unit_dir: &Path, unit: &str) -> PathBuf {
    unit_dir
        .join(format!("{unit}.d"))
        .join("50-callgate-trust.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_holds_the_ca_and_the_roots_and_is_rewritten_only_on_change() {
        let base = std::env::temp_dir().join(format!("callgate-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let state = base.join("state");
        let paths = Paths::for_state_dir(&state);
        assert_eq!(paths.dir, base.join("state-trust"));
        let a = crate::proxy::tls::Authority::load_or_create(&state).expect("ca");
        let other = crate::proxy::tls::Authority::load_or_create(&base.join("other")).expect("ca");
        let roots = vec![{
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(other.ca_pem().as_bytes()).expect("pem")
        }];
        assert!(refresh(&paths, &a.ca_pem(), &roots).expect("write"));
        assert!(
            !refresh(&paths, &a.ca_pem(), &roots).expect("again"),
            "unchanged"
        );
        let text = std::fs::read_to_string(paths.bundle()).expect("bundle");
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
        assert!(text.contains(a.ca_pem().lines().nth(1).expect("line")));
        // The Java store holds both as trusted entries.
        let p12 = std::fs::read(paths.p12()).expect("p12");
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            P12_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .expect("parse");
        assert_eq!(store.entries_len(), 2);
        // New system roots: rewritten.
        assert!(refresh(&paths, &a.ca_pem(), &[]).expect("fewer roots"));
        let text = std::fs::read_to_string(paths.bundle()).expect("bundle");
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 1);
        // A directory someone else owns, or a link, is not written to.
        let link = Paths {
            dir: base.join("link-trust"),
        };
        std::os::unix::fs::symlink(&paths.dir, &link.dir).expect("symlink");
        assert!(matches!(
            refresh(&link, &a.ca_pem(), &[]),
            Err(TrustError::NotOurs { .. })
        ));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&paths.dir, Some(65534), None).expect("chown");
            assert!(matches!(
                refresh(&paths, &a.ca_pem(), &roots),
                Err(TrustError::NotOurs { .. })
            ));
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn alerts_and_early_closes_are_trust_refusals_and_other_errors_are_not() {
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        assert_eq!(
            refusal(&alert(AlertDescription::UnknownCA)),
            Some("alert unknown_ca")
        );
        assert_eq!(
            refusal(&alert(AlertDescription::BadCertificate)),
            Some("alert bad_certificate")
        );
        assert_eq!(
            refusal(&alert(AlertDescription::CertificateUnknown)),
            Some("alert certificate_unknown")
        );
        assert_eq!(refusal(&alert(AlertDescription::ProtocolVersion)), None);
        assert_eq!(
            refusal(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            Some("closed before Finished")
        );
        let garbage = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(refusal(&garbage), None);
    }

    #[test]
    fn env_is_quoted_for_each_consumer() {
        let paths = Paths {
            dir: PathBuf::from("/var/lib/it's 100%-trust"),
        };
        let vars = env(&paths);
        let shell = render(&vars, Format::Shell);
        assert!(
            shell.contains(r"export SSL_CERT_FILE='/var/lib/it'\''s 100%-trust/bundle.pem'"),
            "{shell}"
        );
        let unit = render(&vars, Format::Systemd);
        assert!(
            unit.contains("Environment=\"SSL_CERT_FILE=/var/lib/it's 100%%-trust/bundle.pem\""),
            "{unit}"
        );
        assert!(unit.contains("Environment=\"JAVA_TOOL_OPTIONS=-Djavax.net.ssl.trustStore="));
        let docker = render(&vars, Format::Docker);
        assert!(docker.contains("NODE_EXTRA_CA_CERTS=/var/lib/it's 100%-trust/ca.pem\n"));
    }
}
