//! TLS on the chat port (`--tls-cert`, `--tls-key`; the `tls` feature),
//! spoken by the event loop itself.
//!
//! rustls's [`ServerConnection`] is sans-I/O: it never touches a socket. We
//! hand it the bytes the socket gave us ([`read_tls`]), let it decrypt them
//! ([`process_new_packets`]), take the plaintext out of its reader, and give
//! it plaintext to encrypt, whose records we then write ([`write_tls`]). So
//! a TLS connection is just another [`Socket`] to the connection's state
//! machine: [`TlsStream`] reads and writes plaintext, over a non-blocking
//! `mio` socket, on the loop's thread. No thread, no runtime.
//!
//! Three rules make it fit an edge-triggered, budgeted loop:
//!
//! * **Read until the socket says `WouldBlock`.** Plaintext already
//!   decrypted is handed out first; only when none is left is the socket
//!   read, so that edge-triggered polling never strands bytes in rustls.
//! * **Every byte off the wire counts.** Handshake messages and record
//!   framing decrypt to no plaintext; a `read` that took such bytes says
//!   `Interrupted` ("progress, nothing for you yet") and reports them in
//!   [`Socket::take_overhead`], which the connection charges to its read
//!   budget. A client sending empty records cannot keep us reading.
//! * **Records are output too.** What rustls holds encrypted and unsent is
//!   [`Socket::held`]: the connection counts it in its pending output (the
//!   backpressure cap sees plaintext queued plus records held), wants
//!   WRITABLE while it is there, and writes nothing new until it has gone
//!   ([`Socket::send_held`]). At most one flush's worth is ever held.
//!
//! [`Certificates`] loads the certificate chain and key (PEM) with errors
//! that say what is wrong, and loads them again on SIGHUP: new connections
//! get the new pair, and a bad new pair leaves the old one in place.
//!
//! [`read_tls`]: rustls::ConnectionCommon::read_tls
//! [`process_new_packets`]: rustls::ConnectionCommon::process_new_packets
//! [`write_tls`]: rustls::ConnectionCommon::write_tls

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::connection::Socket;

/// The one application protocol spoken (ALPN): HTTP/1.1, upgraded to
/// WebSocket on `/soc`.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why the certificate or key cannot be used, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The certificate chain and key the server presents, and where they came
/// from (to load them again on SIGHUP).
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    config: Arc<ServerConfig>,
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
    /// Loads `cert` (PEM: the server's certificate first, then the chain)
    /// and `key` (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted), and checks
    /// that the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Certificates {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: server_config(cert, key)?,
        })
    }

    /// Loads the files again (SIGHUP). On success, connections accepted from
    /// now on get the new pair; on failure nothing changes.
    pub fn reload(&mut self) -> Result<(), TlsError> {
        self.config = server_config(&self.cert, &self.key)?;
        Ok(())
    }

    /// A TLS server session over a freshly accepted socket.
    pub fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let tls = ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)?;
        Ok(TlsStream {
            tcp,
            tls,
            held: 0,
            overhead: 0,
            eof: false,
        })
    }
}

/// rustls's configuration for one certificate chain and key: TLS 1.3 and
/// 1.2, ALPN `http/1.1`, no client certificates.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError(format!(
                "the key in {} is not the key of the certificate in {}",
                key.display(),
                cert.display()
            )),
            e => TlsError(format!(
                "cannot use the certificate in {} with the key in {}: {e}",
                cert.display(),
                key.display()
            )),
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// The certificates in a PEM file, in order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, "--tls-cert")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("--tls-cert {}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "--tls-cert {}: no CERTIFICATE in it (a PEM file, the server's certificate first)",
            path.display()
        )));
    }
    Ok(chain)
}

/// The private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "--tls-key")?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(_) if contains(&pem, b"ENCRYPTED") => Err(TlsError(format!(
            "--tls-key {}: the key is encrypted; give it unencrypted (readable by the server alone)",
            path.display()
        ))),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError(format!(
            "--tls-key {}: no PRIVATE KEY in it (a PEM file: PKCS#8, RSA or EC)",
            path.display()
        ))),
        Err(e) => Err(TlsError(format!("--tls-key {}: {e}", path.display()))),
    }
}

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One TLS connection over a non-blocking TCP socket: plaintext in and out
/// (see the module docs for the rules).
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Plaintext bytes given to rustls whose records are not all written
    /// yet (an upper bound on what is held, less the records' framing);
    /// 0 once rustls holds nothing.
    held: usize,
    /// Bytes read off the wire and not yet charged as plaintext.
    overhead: usize,
    /// The peer closed its side of the TCP connection.
    eof: bool,
}

impl TlsStream {
    /// The TCP socket, to (de)register with the loop.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The first plaintext rustls has: `Ok(None)` when there is none yet.
    fn plaintext(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.tls.reader().read(buf) {
            Ok(n) => {
                self.overhead = self.overhead.saturating_sub(n);
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // The TCP connection ended without TLS's close_notify. Browsers
            // do this all the time; for a chat it is an ordinary end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(n) = self.plaintext(buf)? {
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        match self.tls.read_tls(&mut self.tcp)? {
            0 => {
                self.eof = true;
                return Ok(0);
            }
            n => self.overhead += n,
        }
        if let Err(e) = self.tls.process_new_packets() {
            // rustls queued an alert saying why; send it if the socket
            // takes it, then end the connection.
            let _ = self.send_held();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // Handshake messages to answer go out now; what the socket does
        // not take waits for WRITABLE.
        self.send_held()?;
        match self.plaintext(buf)? {
            Some(n) => Ok(n),
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }
}

impl Write for TlsStream {
    /// Encrypts `buf` into records and writes what the socket takes. Takes
    /// nothing (`WouldBlock`) while earlier records are still held or the
    /// handshake is not done: the plaintext then stays in the connection's
    /// queue, where the cap sees it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_held()?;
        if self.tls.wants_write() || self.tls.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.held = n;
        self.send_held()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for TlsStream {
    /// Sends TLS's close_notify (if the socket takes it), then FIN.
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        let _ = self.send_held();
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    fn held(&self) -> usize {
        if self.tls.wants_write() {
            self.held.max(1)
        } else {
            0
        }
    }

    fn send_held(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held = self.held.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.held = 0;
        Ok(())
    }

    fn take_overhead(&mut self) -> usize {
        std::mem::take(&mut self.overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eddy-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make a temporary directory");
        dir
    }

    #[test]
    fn a_pair_made_for_each_other_loads_and_a_stranger_key_is_named() {
        let dir = temp_dir("pairs");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let other = rcgen::KeyPair::generate().expect("rcgen");
        let cert = write(&dir, "cert.pem", &made.cert.pem());
        let key = write(&dir, "key.pem", &made.signing_key.serialize_pem());
        let stranger = write(&dir, "other.pem", &other.serialize_pem());
        let mut loaded = Certificates::load(&cert, &key).expect("a good pair loads");
        assert_eq!(loaded.config.alpn_protocols, [b"http/1.1".to_vec()]);
        let err = Certificates::load(&cert, &stranger).unwrap_err();
        assert!(err.0.contains("is not the key of the certificate"), "{err}");
        // A reload that fails keeps what was loaded.
        let before = Arc::as_ptr(&loaded.config);
        std::fs::write(&key, "not a key").expect("overwrite");
        assert!(loaded.reload().is_err());
        assert_eq!(Arc::as_ptr(&loaded.config), before);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unusable_files_say_what_is_wrong() {
        let dir = temp_dir("bad");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert = write(&dir, "cert.pem", &made.cert.pem());
        let key = write(&dir, "key.pem", &made.signing_key.serialize_pem());
        let empty = write(&dir, "empty.pem", "nothing here\n");
        let encrypted = write(
            &dir,
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let missing = dir.join("missing.pem");
        let cases = [
            (&missing, &key, "--tls-cert"),
            (&empty, &key, "no CERTIFICATE"),
            (&cert, &missing, "--tls-key"),
            (&cert, &empty, "no PRIVATE KEY"),
            (&cert, &encrypted, "encrypted"),
            // A key given as the certificate: no CERTIFICATE in it.
            (&key, &key, "no CERTIFICATE"),
        ];
        for (c, k, says) in cases {
            let err = Certificates::load(c, k).unwrap_err();
            assert!(
                err.0.contains(says),
                "{} {}: {err}",
                c.display(),
                k.display()
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
