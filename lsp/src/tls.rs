//! TLS towards the room server (`wss://`, `https://`): which certificates the bridge trusts, and
//! what a refused certificate means in words a user can act on.
//!
//! The bridge trusts the system's roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`)
//! plus the certificates of one CA file the user names (`ca` in `.duet.toml` or
//! `initializationOptions`, or `DUET_CA_FILE`), for a server whose certificate comes from a
//! private CA. One client configuration serves both the WebSocket and the REST calls.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The client configuration: the system's roots, plus every certificate in `ca`.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system root certificates");
    if let Some(ca) = ca {
        let unreadable = |e: &dyn std::fmt::Display| {
            format!(
                "cannot use the CA file {}: {e} (it must hold PEM certificates, \
                 -----BEGIN CERTIFICATE-----)",
                ca.display()
            )
        };
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| unreadable(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(&e))?;
        if certs.is_empty() {
            return Err(unreadable(&"no certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| unreadable(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP client for the REST API that trusts what [`client_config`] trusts.
pub fn http_client(config: Arc<ClientConfig>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls((*config).clone())
        .build()
        .map_err(|e| format!("cannot set up HTTPS: {e}"))
}

/// When `error` (or anything it was caused by) is a TLS failure, what it means for the user:
/// `host` is the server as the invite names it.
pub fn explain(error: &(dyn StdError + 'static), host: &str) -> Option<String> {
    let tls = causes(error).find_map(|e| e.downcast_ref::<rustls::Error>())?;
    let certificate = match tls {
        rustls::Error::InvalidCertificate(certificate) => certificate,
        rustls::Error::InvalidMessage(_) => {
            return Some(format!(
                "{host} does not speak TLS (is it a plain ws:// or http:// server?)"
            ))
        }
        other => return Some(format!("the TLS handshake with {host} failed: {other}")),
    };
    let private_ca = "if the server's certificate comes from a private CA, name the CA's \
                      certificate file with `ca` in .duet.toml or initializationOptions, \
                      or DUET_CA_FILE";
    Some(match certificate {
        CertificateError::UnknownIssuer => format!(
            "the certificate of {host} is not signed by a certificate authority this machine \
             trusts; {private_ca}"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let presented = match certificate {
                CertificateError::NotValidForNameContext { presented, .. } => {
                    format!(" (it is for {})", presented.join(", "))
                }
                _ => String::new(),
            };
            format!(
                "the certificate of {host} is for another host name{presented}: use the host \
                 name the certificate names in the invite, or have the server's certificate \
                 cover {host}"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the certificate of {host} has expired: the server's operator must renew it \
             (or this machine's clock is wrong)"
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the certificate of {host} is not valid yet: check this machine's clock")
        }
        other => format!("the certificate of {host} was refused: {other:?}"),
    })
}

/// `error` and its causes, looking inside `std::io::Error`s too (their `source()` skips the
/// error they wrap, which is where a TLS failure sits).
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_explained_inside_io_errors() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = explain(&wrapped, "duet.example:8443").unwrap();
        assert!(text.contains("duet.example:8443"), "{text}");
        assert!(text.contains("DUET_CA_FILE"), "{text}");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(explain(&plain, "h"), None);
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("duet-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let e = client_config(Some(&file)).unwrap_err();
        assert!(e.contains("ca.pem") && e.contains("no certificate"), "{e}");
        let e = client_config(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
