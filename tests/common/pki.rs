//! Certificates made by the tests, never committed: a CA, and server
//! certificates for `localhost` and 127.0.0.1 it signs, written as PEM to a
//! temporary directory; and rustls clients that trust that CA alone.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;

/// A TLS stream to the server, as a client sees it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A test CA and the files of the server certificate it last issued.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
    ca_pem: String,
    /// The server's certificate file: its certificate, then the CA's.
    pub cert: PathBuf,
    /// The server's key file.
    pub key: PathBuf,
    /// The server certificate last issued (DER), to recognise it.
    pub issued: CertificateDer<'static>,
}

impl Pki {
    /// A new CA, and a first server certificate in `cert` and `key`.
    pub fn new(name: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("pki")
            .join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Eddy test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let mut pki = Pki {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            issuer: Issuer::new(params, ca_key),
            ca: ca.der().clone(),
            ca_pem: ca.pem(),
            issued: CertificateDer::from(Vec::new()),
        };
        pki.issue();
        pki
    }

    /// Issues a new server certificate (a new key too) and writes it over
    /// `cert` and `key`: what an operator does before a SIGHUP.
    pub fn issue(&mut self) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&self.cert, format!("{}{}", cert.pem(), self.ca_pem)).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        self.issued = cert.der().clone();
    }

    /// A file in this PKI's directory.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The flags that serve TLS with this PKI's files.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client that trusts this CA alone, offering `alpn`, speaking
    /// `versions`.
    pub fn client_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS 1.3 or 1.2 client offering `http/1.1`, as a browser does.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with(
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &[b"http/1.1"],
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to `addr` as `localhost`, handshake done.
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let tcp = super::tcp(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// `GET path` over TLS: its one response.
pub fn https_get(stream: &mut TlsStream, path: &str) -> super::HttpResponse {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.flush().unwrap();
    super::read_response(stream, false)
}

/// A chat client over `wss://localhost:PORT/soc`.
pub type WssClient = WebSocket<TlsStream>;

/// Opens `wss://localhost:PORT/soc` and reads the welcome; returns the
/// client and its id.
pub fn wss_join(addr: SocketAddr, config: &Arc<ClientConfig>) -> (WssClient, u64) {
    let stream = tls_connect(addr, config);
    let url = format!("wss://localhost:{}/soc", addr.port());
    let (mut client, response) = tungstenite::client(url, stream).expect("wss handshake");
    assert_eq!(response.status(), 101);
    let welcome = wss_json(&mut client);
    (client, super::welcome_id(&welcome))
}

/// The next text message over wss, as JSON.
pub fn wss_json(client: &mut WssClient) -> serde_json::Value {
    loop {
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => {
                return serde_json::from_str(text.as_str()).unwrap();
            }
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}
