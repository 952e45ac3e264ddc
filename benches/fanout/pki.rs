//! The certificate `eddy-tls` serves and the load generator trusts, made
//! when the bench starts: a CA, and a server certificate for `localhost`
//! and 127.0.0.1 that it signs (rcgen's default key: ECDSA P-256), written
//! as PEM to a directory of the bench's own under `target/eddy-bench/`,
//! removed when the bench is done with it. No key is ever committed.
//!
//! It also owns the clients' side: a rustls configuration that trusts that
//! CA alone, which [`crate::loadgen`] gives each TLS client. The servers
//! ([`crate::servers`]) only pass the two files to Eddy.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::{CipherSuite, ClientConfig, RootCertStore};

/// The name the clients ask for (SNI) and check the certificate against,
/// as a browser opening `wss://localhost:PORT/soc` would.
pub const SERVER_NAME: &str = "localhost";

/// A CA's server certificate on disk, and a client configuration trusting
/// the CA.
#[derive(Debug)]
pub struct Pki {
    /// Where the files are; removed on drop.
    dir: PathBuf,
    /// The server's certificate chain (its certificate, then the CA's):
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// The server's private key: `--tls-key`.
    pub key: PathBuf,
    /// TLS 1.3 or 1.2, ALPN `http/1.1`, no resumption: see [`Pki::new`].
    pub client: Arc<ClientConfig>,
}

impl Pki {
    /// A fresh CA and server certificate, written to
    /// `target/eddy-bench/tls-<pid>/`.
    pub fn new() -> Result<Pki, String> {
        fn fail(what: &'static str) -> impl Fn(rcgen::Error) -> String {
            move |e| format!("rcgen: {what}: {e}")
        }
        let dir = crate::servers::work_dir().join(format!("tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Eddy bench CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(fail("CA key"))?;
        let ca = ca_params.self_signed(&ca_key).map_err(fail("CA"))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
                .map_err(fail("server certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(fail("server key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(fail("server certificate"))?;

        let pki = Pki {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            client: client_config(ca.der().clone())?,
        };
        let write = |path: &PathBuf, text: String| {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        write(&pki.cert, format!("{}{}", cert.pem(), ca.pem()))?;
        write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }
}

/// A client trusting `ca` alone, on the server's crypto provider (`ring`),
/// offering TLS 1.3 and 1.2 and `http/1.1` as a browser does.
///
/// AES-128-GCM first, as Chrome and Firefox ask (rustls's own order puts
/// AES-256-GCM first): rustls's server takes the client's preference, so
/// this is the cipher Eddy runs for a browser, and the one measured.
///
/// Without resumption: each client of a run stands for a different user,
/// so each makes a full handshake, as a browser's first visit does; with
/// rustls's default, the clients would share one session cache and resume
/// each other's sessions. Only the connect phase pays for it: the figures
/// of the send phase are the same either way.
fn client_config(
    ca: rustls::pki_types::CertificateDer<'static>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| format!("CA certificate: {e}"))?;
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the others keep their order.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
