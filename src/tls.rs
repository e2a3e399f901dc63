//! Trust roots from a PEM file, shared by the two TLS clients ferry has: the registry (a feed's
//! `ca_file`) and the shared store (`sslrootcert`). One reader, so both refuse the same bad files
//! the same way.

use std::path::Path;

/// Adds every certificate of the PEM file at `path` to `roots`. A file that cannot be read,
/// holds a malformed block, or holds no certificate at all is an error (its text, without the
/// path: each caller says which setting named the file).
pub fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        assert_eq!(add_pem_file(&mut roots, &path).unwrap_err(), "no PEM certificate in it");
        assert!(add_pem_file(&mut roots, &dir.path().join("missing.pem")).is_err());
        assert!(roots.is_empty());
    }
}
