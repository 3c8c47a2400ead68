//! TLS for the HTTP listeners: rustls over the aws-lc-rs provider, HTTP/2 and
//! HTTP/1.1 by ALPN, TLS 1.2 and 1.3 only.
//!
//! Called by `daemon`, which loads the certificate at start, reloads it when
//! its files change (see `config::watch`) and hands [`acceptor`] to
//! `http::server`.
//!
//! Invariants:
//! - Every handshake asks [`Certificates`] for the certificate, so a reload
//!   applies to the next connection and never touches open ones.
//! - A new certificate is used only once it parsed, its key loaded and the
//!   key matched the certificate; anything else is an error naming the file,
//!   and the certificate in use stays.
//! - aws-lc-rs is the one crypto provider compiled in (`Cargo.toml`), and
//!   [`install_provider`] makes it the process default before any TLS setup,
//!   so rustls never has to guess.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a valid PEM certificate chain")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("generating the self-signed certificate")]
    Generate(#[source] rcgen::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Makes aws-lc-rs the process-wide crypto provider. Call once at start,
/// before anything builds a TLS config; calling again is harmless.
pub fn install_provider() {
    // Err means one is installed already (by an earlier call): fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The certificate new handshakes get, replaceable while serving.
pub struct Certificates {
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    cert: PathBuf,
    key: PathBuf,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loaded = self.loaded();
        f.debug_struct("Certificates")
            .field("cert", &loaded.cert)
            .field("key", &loaded.key)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads `cert` and `key`; an error names the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let certified = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Loaded {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                certified,
            }),
        }))
    }

    fn loaded(&self) -> Loaded {
        self.current
            .read()
            .expect("certificate lock is never poisoned")
            .clone()
    }

    /// The files the certificate and key are read from.
    #[must_use]
    pub fn files(&self) -> (PathBuf, PathBuf) {
        let loaded = self.loaded();
        (loaded.cert, loaded.key)
    }

    /// Reads `cert` and `key` (the same files, or new ones after a config
    /// change) and serves them to new connections. On error the certificate
    /// in use stays. Returns the new certificate's fingerprint.
    pub fn replace(&self, cert: &Path, key: &Path) -> Result<String, TlsError> {
        let certified = read_pair(cert, key)?;
        let print = fingerprint(&certified);
        *self
            .current
            .write()
            .expect("certificate lock is never poisoned") = Loaded {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            certified,
        };
        Ok(print)
    }

    /// [`Certificates::replace`] from the files in use (they changed on disk).
    pub fn reload(&self) -> Result<String, TlsError> {
        let (cert, key) = self.files();
        self.replace(&cert, &key)
    }

    /// SHA-256 of the leaf certificate in use, in hex: what the logs show.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.loaded().certified)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded().certified)
    }
}

fn fingerprint(certified: &CertifiedKey) -> String {
    certified
        .cert
        .first()
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|source| TlsError::BadKey {
            path: key.to_path_buf(),
            source,
        })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mismatch = |source| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    // `from_der` loads the key and checks it against the leaf's public key;
    // a certificate that does not parse fails there too.
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(mismatch)?;
    certified.keys_match().map_err(mismatch)?;
    Ok(Arc::new(certified))
}

/// The acceptor every TLS listener uses: ALPN `h2` then `http/1.1`, TLS 1.2+
/// (rustls implements nothing older), the certificate from `certs`.
#[must_use]
pub fn acceptor(certs: Arc<Certificates>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// For `tls = "self-signed"`: makes sure `cert` and `key` exist, generating
/// them once (for `localhost`, this host's name and loopback addresses) and
/// reusing them on every later start, so browsers' exceptions keep working.
/// Returns whether they were generated now.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(host) = host.to_str().filter(|h| !h.is_empty() && *h != "localhost")
    {
        names.push(host.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    let write = |path: &Path, text: String, mode| {
        if let Some(dir) = path.parent() {
            fsutil::ensure_dir(dir, 0o700).map_err(|source| TlsError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        fsutil::write_atomic(path, text.as_bytes(), mode).map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    // The key first: a crash in between leaves a key without a certificate,
    // which the next start regenerates, never a certificate without its key.
    write(key, generated.signing_key.serialize_pem(), 0o600)?;
    write(cert, generated.cert.pem(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        ensure_self_signed(&cert, &key).expect("generate");
        (cert, key)
    }

    #[test]
    fn a_bad_replacement_is_refused_naming_the_file_and_the_old_one_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_a, key_a) = pair(dir.path(), "a");
        let (cert_b, key_b) = pair(dir.path(), "b");
        let certs = Certificates::load(&cert_a, &key_a).expect("load");
        let first = certs.fingerprint();

        let err = certs.replace(&cert_a, &key_b).expect_err("mismatch");
        assert!(
            err.to_string().contains("b.key is not the private key"),
            "{err}"
        );
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = certs.replace(&garbage, &key_a).expect_err("garbage");
        assert!(err.to_string().contains("garbage.crt"), "{err}");
        std::fs::write(&garbage, "").expect("write");
        let err = certs.replace(&garbage, &key_a).expect_err("empty");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert_eq!(certs.fingerprint(), first, "the old certificate stays");

        let second = certs.replace(&cert_b, &key_b).expect("good one");
        assert_ne!(second, first);
        assert_eq!(certs.files(), (cert_b, key_b));
    }

    #[test]
    fn the_self_signed_certificate_is_generated_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls/c.crt"), dir.path().join("tls/c.key"));
        assert!(ensure_self_signed(&cert, &key).expect("first"));
        let pem = std::fs::read(&cert).expect("cert");
        assert!(!ensure_self_signed(&cert, &key).expect("second"));
        assert_eq!(std::fs::read(&cert).expect("cert"), pem, "reused");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        Certificates::load(&cert, &key).expect("usable");
    }
}
