//! TLS to the fleet database, with rustls (no OpenSSL). The URL's `sslmode` takes libpq's
//! meanings, which tokio-postgres only partly parses, so it is read here and taken out:
//! `disable`, `allow`, `prefer` or none → plaintext; `require` → encrypted, the server's
//! certificate checked against a CA only when one is given (`fleet.ca` or `sslrootcert`,
//! as libpq does with a root certificate file); `verify-ca` → the chain checked against the
//! CA (the system's roots without one); `verify-full` → the chain and the host name.
use std::{path::Path, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::FleetError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No TLS.
    Off,
    /// Encrypted, any certificate (libpq's `require` without a CA).
    Encrypt,
    /// The chain against the CA, any name.
    Ca,
    /// The chain and the host name.
    Full,
}

/// The connection settings of `database` (with `sslmode` and `sslrootcert` read and taken
/// out) and the TLS connector they need; `ca` (`fleet.ca`) is a PEM file of CA
/// certificates.
pub fn settings(
    database: &str,
    ca: Option<&Path>,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect, Verify), FleetError> {
    let (rest, mode, rootcert) = take_tls_params(database);
    let ca = ca
        .map(Path::to_path_buf)
        .or(rootcert.map(std::path::PathBuf::from));
    let verify = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => Verify::Off,
        Some("require") if ca.is_some() => Verify::Ca,
        Some("require") => Verify::Encrypt,
        Some("verify-ca") => Verify::Ca,
        Some("verify-full") => Verify::Full,
        Some(other) => {
            return Err(FleetError::Config(format!(
                "sslmode={other}: one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    let mut pg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| FleetError::Config(e.to_string()))?;
    pg.ssl_mode(if verify == Verify::Off {
        SslMode::Disable
    } else {
        SslMode::Require
    });
    let config = client_config(verify, ca.as_deref())?;
    Ok((pg, MakeRustlsConnect::new(config), verify))
}

fn client_config(verify: Verify, ca: Option<&Path>) -> Result<ClientConfig, FleetError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FleetError::Config(format!("TLS: {e}")))?;
    let config = match verify {
        Verify::Off | Verify::Encrypt => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Verify::Ca | Verify::Full => {
            let roots = Arc::new(roots(ca)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| FleetError::Config(format!("TLS: {e}")))?;
            if verify == Verify::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

/// The CA certificates of `ca`, or the system's roots without one.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, FleetError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| FleetError::Config(format!("fleet.ca {}: {e}", path.display())))?;
            let mut n = 0;
            for cert in rustls_pemfile_certs(&pem) {
                roots
                    .add(cert)
                    .map_err(|e| FleetError::Config(format!("fleet.ca {}: {e}", path.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(FleetError::Config(format!(
                    "fleet.ca {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// The certificates of a PEM text.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// `sslmode` and `sslrootcert` taken out of a URL (`?a=b&c=d`) or a `key=value` string.
fn take_tls_params(database: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |kv: &str| -> bool {
        match kv.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.trim_matches('\'').to_string());
                true
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.trim_matches('\'').to_string());
                true
            }
            _ => false,
        }
    };
    let rest = if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        match database.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|kv| !take(kv)).collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => database.to_string(),
        }
    } else {
        database
            .split_whitespace()
            .filter(|kv| !take(kv))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a CA: encrypted, the certificate not checked (libpq's meaning).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_taken_out() {
        let (rest, mode, root) =
            take_tls_params("postgresql://u@db:5432/f?sslmode=verify-full&application_name=x");
        assert_eq!(rest, "postgresql://u@db:5432/f?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root, None);
        let (rest, mode, root) = take_tls_params("host=db sslmode=require sslrootcert=/ca.pem");
        assert_eq!(rest, "host=db");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (_, _, v) = settings("postgresql://u@db/f", None).unwrap();
        assert_eq!(v, Verify::Off);
        let (_, _, v) = settings("postgresql://u@db/f?sslmode=require", None).unwrap();
        assert_eq!(v, Verify::Encrypt);
        assert!(settings("postgresql://u@db/f?sslmode=bogus", None).is_err());
        assert!(
            settings(
                "postgresql://u@db/f?sslmode=verify-full",
                Some(Path::new("/nonexistent"))
            )
            .is_err()
        );
    }
}
