//! TLS for the API listener (rustls with the ring provider, the one TLS stack of the build), with the
//! certificate reloaded without a restart.
//!
//! The listener's TLS configuration asks [`Reloading`] for the certificate at every handshake, so a reload
//! changes what new connections see and leaves open ones alone. A reload happens when the certificate or
//! key file changes on disk (checked every `SEALPOST_TLS_RELOAD_INTERVAL_SECONDS`) or on SIGHUP.
//!
//! Invariant: a certificate is only ever replaced by one that loaded whole and whose key matches it. A
//! renewal tool that writes the certificate and the key one after the other may be caught halfway; that
//! load fails, the old certificate stays, and the next check tries again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The crypto provider of every TLS connection sealpost makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS: the acceptor handed to the listener and the reloading certificate behind it.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub certificate: Arc<Reloading>,
}

impl Tls {
    /// `None` when no certificate is configured; an error naming the file when one does not load.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, String> {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else { return Ok(None) };
        let certificate = Arc::new(Reloading::load(cert.clone(), key.clone())?);
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), certificate }))
    }
}

/// A certificate and key loaded from files, swapped for their new contents on [`Reloading::reload`].
pub struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification time and length of both files when they were last loaded (or last failed to load).
    seen: Mutex<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 2];

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("cert_file", &self.cert_file).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl Reloading {
    fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<Reloading, String> {
        let stamp = stamp(&cert_file, &key_file);
        let key = read(&cert_file, &key_file)?;
        Ok(Reloading { cert_file, key_file, current: RwLock::new(Arc::new(key)), seen: Mutex::new(stamp) })
    }

    /// Loads the files again; on failure the current certificate stays and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = read(&self.cert_file, &self.key_file);
        metrics::counter!("sealpost_tls_reloads_total", "outcome" => if loaded.is_ok() { "ok" } else { "failed" })
            .increment(1);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded?);
        Ok(())
    }

    /// Reloads when either file changed since it was last looked at.
    fn reload_if_changed(&self) {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_none() || *seen == now {
                return;
            }
            *seen = now;
        }
        self.reload_and_log("the files changed");
    }

    fn reload_and_log(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded ({why})"),
            // Retried at the next check: a renewal may have written one file of two so far.
            Err(err) => {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::warn!(error = %err, "TLS certificate reload failed ({why}); the previous one stays")
            }
        }
    }

    /// Reloads on change (every `interval`; never when zero) and on SIGHUP until `stop` turns true.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let tick = async {
                if interval.is_zero() { std::future::pending::<()>().await } else { tokio::time::sleep(interval).await }
            };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = hup => self.reload_and_log("SIGHUP"),
                _ = tick => self.reload_if_changed(),
            }
        }
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Option<Stamp> {
    let one = |path: &Path| std::fs::metadata(path).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    Some([one(cert_file)?, one(key_file)?])
}

/// Reads a chain and its key and checks that they belong together.
fn read(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("SEALPOST_TLS_CERT_FILE {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("SEALPOST_TLS_CERT_FILE {}: no certificate in the file", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("SEALPOST_TLS_KEY_FILE {}: {e}", key_file.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("SEALPOST_TLS_KEY_FILE {} does not fit the certificate: {e}", key_file.display()))?;
    Ok(certified)
}
