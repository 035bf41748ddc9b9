//! HTTPS and WSS served by `duet-server` itself (`--tls-cert`, `--tls-key`).
//!
//! [`Certificates`] holds the certificate chain and key read from PEM files; SIGHUP reads them
//! again ([`reload_on_sighup`]) and new connections get the new pair while every open
//! connection, and so every room, goes on untouched. A pair that fails to load is refused with
//! the reason and the previous one stays.
//!
//! [`TlsListener`] wraps any listener: each accepted connection does its TLS handshake in a
//! task of its own, bounded by [`HANDSHAKE_TIMEOUT`], so a client that opens a connection and
//! never finishes the handshake neither holds up other clients nor stays open.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::serve::Listener;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The certificate chain and key the server presents; replaced as a whole on reload.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads `cert` (PEM, the server's certificate first, then its chain) and `key` (PEM,
    /// PKCS#8, PKCS#1 or SEC1), and checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert, &self.key, &self.provider)?;
        // A std lock: nothing awaits while holding it, and it is held for a pointer swap.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }

    /// The TLS acceptor: HTTP/1.1 only (what the WebSocket upgrade needs).
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "cannot read the certificate {}: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "no certificate in {} (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!(
            "cannot read the private key {}: {e} (expected PEM: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        ))
    })?;
    let pair = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        TlsError(format!(
            "the key {} does not fit the certificate {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(pair))
}

/// Reloads `certificates` on every SIGHUP, logging the outcome. Runs until the process ends.
pub async fn reload_on_sighup(certificates: Arc<Certificates>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    while hangups.recv().await.is_some() {
        match certificates.reload() {
            Ok(()) => {
                tracing::info!(cert = %certificates.cert.display(), "TLS certificate reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays")
            }
        }
    }
    Ok(())
}

/// A listener whose connections come out of their TLS handshake.
pub struct TlsListener<L: Listener> {
    handshaken: mpsc::Receiver<(TlsStream<L::Io>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl<L: Listener<Addr = SocketAddr>> TlsListener<L> {
    /// Accepts from `inner` and hands over each connection once its handshake is done.
    pub fn new(mut inner: L, acceptor: TlsAcceptor) -> std::io::Result<TlsListener<L>> {
        let local_addr = inner.local_addr()?;
        let (done, handshaken) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (io, addr) = inner.accept().await;
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %addr.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(client = %addr.ip(), "TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken,
            local_addr,
            accepting,
        })
    }
}

impl<L: Listener> Drop for TlsListener<L> {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl<L: Listener<Addr = SocketAddr>> Listener for TlsListener<L> {
    type Io = TlsStream<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this listener drops.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn unusable_files_are_refused_with_their_names() {
        let dir = std::env::temp_dir().join(format!("duet-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = write(&dir, "garbage.pem", "hello");
        let e = Certificates::load(&garbage, &garbage)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no certificate in") && e.contains("garbage.pem"),
            "{e}"
        );
        let e = Certificates::load(&dir.join("missing.pem"), &garbage)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
