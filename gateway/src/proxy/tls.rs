//! The tls stage: the gateway's local certificate authority, the leaves it mints on the fly for
//! intercepted server names, and the client configurations that re-originate TLS upstream.
//!
//! The CA is created once in the state directory (`ca.key` mode 0600, `ca.crt` for operators
//! to trust). Every leaf shares one key generated at start, so minting costs a signature, and
//! leaves are cached per name. The server configurations are made once per fallback name and
//! share one session cache and one ticket key, so a client that comes back resumes its session
//! (no certificate, no signature) as it would with nginx.
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
    server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::util::fs::write_atomic_mode;

/// Leaves kept; past this the cache starts over (a gateway talks to few distinct names).
const LEAF_CACHE: usize = 1024;
/// Server configurations kept (one per destination address that clients reach without SNI).
const SERVER_CACHE: usize = 1024;
/// TLS 1.2 sessions the server side remembers for resumption (TLS 1.3 uses tickets).
const SESSIONS: usize = 4096;
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

/// An upstream client configuration's extra CA file and whether it offers HTTP/1.1 only.
type ClientKey = (Option<PathBuf>, bool);

/// The local CA and everything minted from it.
pub struct Authority {
    ca_key: KeyPair,
    ca_cert: rcgen::Certificate,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Server configurations by fallback name: building one per connection cost allocations
    /// and, with a session cache of its own, made every returning client do a full handshake.
    servers: Mutex<HashMap<String, Arc<ServerConfig>>>,
    /// Shared by every server configuration: sessions and the (in-memory, rotating) ticket key.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    /// Upstream client configurations by extra CA file (None: system roots only) and whether
    /// they offer HTTP/1.1 only.
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
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
            servers: Mutex::new(HashMap::new()),
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSIONS),
            ticketer: match rustls::crypto::ring::Ticketer::new() {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(error = %e, "no TLS session tickets: clients resume from the session cache only");
                    None
                }
            },
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
    pub fn server_config(self: &Arc<Self>, fallback_name: &str) -> Arc<ServerConfig> {
        if let Some(c) = self
            .servers
            .lock()
            .ok()
            .and_then(|s| s.get(fallback_name).cloned())
        {
            return c;
        }
        let mut cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver {
                // Weak: the authority keeps the configurations, which keep their resolvers.
                authority: Arc::downgrade(self),
                fallback_name: fallback_name.to_string(),
            }));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        if let Some(t) = &self.ticketer {
            cfg.ticketer = t.clone();
        }
        let cfg = Arc::new(cfg);
        if let Ok(mut servers) = self.servers.lock() {
            if servers.len() >= SERVER_CACHE {
                servers.clear();
            }
            servers.insert(fallback_name.to_string(), cfg.clone());
        }
        cfg
    }

    /// The client side towards the upstream: system roots plus the service's extra CA; ALPN
    /// h2 and http/1.1.
    pub fn client_config(&self, extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(extra_ca, false)
    }

    /// [`Authority::client_config`] offering http/1.1 only, for a client that speaks HTTP/1:
    /// its calls go up over one connection of their own, one after another.
    pub fn client_config_http1(
        &self,
        extra_ca: Option<&Path>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(extra_ca, true)
    }

    fn client_config_with(
        &self,
        extra_ca: Option<&Path>,
        http1_only: bool,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = (extra_ca.map(Path::to_path_buf), http1_only);
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
        cfg.alpn_protocols = if http1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
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
    authority: std::sync::Weak<Authority>,
    fallback_name: String,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or(&self.fallback_name);
        match self.authority.upgrade()?.leaf(name) {
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

    /// Moves TLS records both ways until neither side has more to send.
    fn pump(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
        for _ in 0..16 {
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).expect("client writes");
            }
            let mut rd = &out[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("server reads");
                s.process_new_packets().expect("server processes");
            }
            let mut back = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut back).expect("server writes");
            }
            let mut rd = &back[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client reads");
                c.process_new_packets().expect("client processes");
            }
            if out.is_empty() && back.is_empty() {
                return;
            }
        }
    }

    #[test]
    fn a_returning_client_resumes_its_session() {
        let dir = std::env::temp_dir().join(format!("callgate-tls-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Arc::new(Authority::load_or_create(&dir).expect("create"));
        assert!(Arc::ptr_eq(
            &a.server_config("10.0.0.1"),
            &a.server_config("10.0.0.1")
        ));
        let mut roots = RootCertStore::empty();
        roots.add(a.ca_der.clone()).expect("root");
        let client = Arc::new(
            ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let name = rustls::pki_types::ServerName::try_from("api.example.test").expect("name");
        for want in [
            rustls::HandshakeKind::Full,
            rustls::HandshakeKind::Resumed,
            rustls::HandshakeKind::Resumed,
        ] {
            // Each connection asks for the configuration anew, as the accept stage does.
            let mut s = rustls::ServerConnection::new(a.server_config("10.0.0.1")).expect("server");
            let mut c =
                rustls::ClientConnection::new(client.clone(), name.clone()).expect("client");
            pump(&mut c, &mut s);
            assert!(!c.is_handshaking() && !s.is_handshaking());
            assert_eq!(c.handshake_kind(), Some(want));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
