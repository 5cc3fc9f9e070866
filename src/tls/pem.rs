//! Reading PEM certificates and keys, with messages that name the file and what is wrong.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file (at least one).
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path:?} is not a valid PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    // Read first so a missing file says so instead of "no key".
    std::fs::metadata(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{path:?} holds no usable PEM private key: {e}"))
}
