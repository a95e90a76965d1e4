//! The tls stage: the gateway's local certificate authority, the leaves it mints on the fly for
//! intercepted server names, and the client configurations that re-originate TLS upstream.
//!
//! The CA is created once in the state directory (`ca.key` mode 0600, `ca.crt` for operators
//! to trust). Every leaf shares one key generated at start, so minting costs a signature, and
//! leaves are cached per name.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::util::fs::write_atomic_mode;

/// Leaves kept; past this the cache starts over (a gateway talks to few distinct names).
const LEAF_CACHE: usize = 1024;
const CA_NAME: &str = "callgate local CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The local CA and everything minted from it.
pub struct Authority {
    ca_key: KeyPair,
    ca_cert: rcgen::Certificate,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Upstream client configurations by extra CA file (None: system roots only).
    clients: Mutex<HashMap<Option<PathBuf>, Arc<ClientConfig>>>,
    system_roots: Arc<RootCertStore>,
    pub ca_path: PathBuf,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

/// rustls needs one process-wide crypto provider; ring is the one this build carries.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Authority {
    /// Loads the CA from `dir` (`ca.key`, `ca.crt`), creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        install_crypto();
        let key_path = dir.join("ca.key");
        let crt_path = dir.join("ca.crt");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_params = ca_params();
        let (ca_key, ca_cert) = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::BadFile {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            // Signing needs only the CA's name and key; the certificate operators trust is the
            // one in ca.crt, with the same name and key.
            let cert = ca_params.clone().self_signed(&key)?;
            if !crt_path.exists() {
                write_atomic_mode(&crt_path, cert.pem().as_bytes(), 0o644)
                    .map_err(io(&crt_path))?;
            }
            (key, cert)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params.clone().self_signed(&key)?;
            write_atomic_mode(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(io(&key_path))?;
            write_atomic_mode(&crt_path, cert.pem().as_bytes(), 0o644).map_err(io(&crt_path))?;
            info!(ca = %crt_path.display(), "created the local CA for TLS interception");
            (key, cert)
        };
        let ca_der = {
            let pem = std::fs::read(&crt_path).map_err(io(&crt_path))?;
            CertificateDer::from_pem_slice(&pem).map_err(|e| TlsError::BadFile {
                path: crt_path.clone(),
                reason: e.to_string(),
            })?
        };
        let leaf_key = KeyPair::generate()?;
        let leaf_signing = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        ))?;
        Ok(Self {
            ca_key,
            ca_cert,
            ca_der,
            leaf_key,
            leaf_signing,
            leaves: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            system_roots: Arc::new(system_roots()),
            ca_path: crt_path,
        })
    }

    /// The leaf for `name`, minted on first use.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        if let Some(k) = self.leaves.lock().ok().and_then(|l| l.get(name).cloned()) {
            return Ok(k);
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into()?),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&self.leaf_key, &self.ca_cert, &self.ca_key)?;
        let key = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            self.leaf_signing.clone(),
        ));
        if let Ok(mut leaves) = self.leaves.lock() {
            if leaves.len() >= LEAF_CACHE {
                leaves.clear();
            }
            leaves.insert(name.to_string(), key.clone());
        }
        Ok(key)
    }

    /// The server side of an interception: leaves by SNI (or by the destination IP for a
    /// client that sent none), ALPN h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>, fallback_name: String) -> Arc<ServerConfig> {
        let mut cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver {
                authority: self.clone(),
                fallback_name,
            }));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// The client side towards the upstream: system roots plus the service's extra CA.
    pub fn client_config(&self, extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
        let key = extra_ca.map(Path::to_path_buf);
        if let Some(c) = self.clients.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(c);
        }
        let mut roots = (*self.system_roots).clone();
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::BadFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| TlsError::BadFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(TlsError::BadFile {
                    path: path.to_path_buf(),
                    reason: "no PEM certificate in it".into(),
                });
            }
        }
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, cfg.clone());
        }
        Ok(cfg)
    }

    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }
}

/// The CA's fixed identity: rebuilt the same way on every start so that the stored key signs
/// leaves whose issuer matches the stored certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "callgate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "reading the system trust store");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        warn!("no system root certificates found; intercepted upstreams need `upstream_ca`");
    }
    roots
}

#[derive(Debug)]
struct Resolver {
    authority: Arc<Authority>,
    fallback_name: String,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(str::to_string)
            .unwrap_or_else(|| self.fallback_name.clone());
        match self.authority.leaf(&name) {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(name, error = %e, "could not mint a leaf certificate");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("callgate-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create(&dir).expect("create");
        let pem1 = std::fs::read_to_string(dir.join("ca.crt")).expect("crt");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("ca.key"))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let b = Authority::load_or_create(&dir).expect("reload");
        assert_eq!(
            pem1,
            std::fs::read_to_string(dir.join("ca.crt")).expect("crt")
        );
        assert_eq!(
            a.ca_cert.params().distinguished_name,
            b.ca_cert.params().distinguished_name
        );
        // A leaf minted after the reload verifies against the CA written before it.
        let leaf = b.leaf("api.example.test").expect("leaf");
        let mut roots = RootCertStore::empty();
        roots.add(a.ca_der.clone()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .expect("verifier");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &rustls::pki_types::ServerName::try_from("api.example.test").expect("name"),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf verifies");
        assert!(Arc::ptr_eq(
            &leaf,
            &b.leaf("api.example.test").expect("cached")
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
