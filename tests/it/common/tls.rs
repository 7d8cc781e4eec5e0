//! TLS in front of the machine's plain services, made at test time.
//!
//! RabbitMQ, PostgreSQL and `payment-sim` listen without TLS here, and other
//! tests use them as they are. A test that needs `amqps://`, `sslmode` or
//! `https://` starts a [`TlsProxy`] per service instead: it terminates TLS
//! with a certificate for `localhost` and `127.0.0.1` signed by a private
//! [`TestCa`] made for that test, then forwards the bytes as plain TCP. The
//! proxies count handshakes, so a test can show that the daemon really spoke
//! TLS, and that it refused a certificate it had no reason to trust.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The request codes of PostgreSQL's SSLRequest and GSSENCRequest messages.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A private certificate authority, and a server certificate it signed for
/// `localhost` and `127.0.0.1`. The CA certificate is written to a folder of
/// its own, as a Kubernetes ConfigMap with the key `ca.crt` is mounted.
pub struct TestCa {
    dir: tempfile::TempDir,
    server: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "order-processor test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let mut leaf =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &*ca).unwrap();

        let server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();

        // Laid out as Kubernetes mounts a ConfigMap: the file in a
        // timestamped folder, reached through the `..data` symlink.
        let dir = tempfile::tempdir().unwrap();
        let version = dir.path().join("..2026_11_24_10_00_00.000000001");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("ca.crt"), ca.pem()).unwrap();
        std::os::unix::fs::symlink(&version, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ca.crt", dir.path().join("ca.crt")).unwrap();
        Self {
            dir,
            server: Arc::new(server),
        }
    }

    /// The folder that holds only `ca.crt` (and the ConfigMap's symlinks).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, PEM.
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// What a client says before the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS from the first byte: `amqps://`.
    Tls,
    /// TLS from the first byte, offering HTTP/2 and HTTP/1.1 by ALPN (`h2`
    /// preferred), as most HTTPS servers and load balancers do.
    Https,
    /// PostgreSQL: an SSLRequest answered with `S` (a GSSENCRequest with
    /// `N`), then TLS. A client that starts in plain text is turned away.
    Postgres,
}

#[derive(Default)]
struct Counts {
    handshakes: AtomicU64,
    refused: AtomicU64,
    h2: AtomicU64,
}

/// A TLS-terminating proxy on `127.0.0.1`; stops (with every connection it
/// carries) when dropped.
pub struct TlsProxy {
    pub port: u16,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(ca: &TestCa, upstream: SocketAddr, protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let server = match protocol {
            Protocol::Https => {
                let mut server = ServerConfig::clone(&ca.server);
                server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Arc::new(server)
            }
            Protocol::Tls | Protocol::Postgres => Arc::clone(&ca.server),
        };
        let acceptor = TlsAcceptor::from(server);
        let task = tokio::spawn(accept(
            listener,
            acceptor,
            upstream,
            protocol,
            Arc::clone(&counts),
        ));
        Self { port, counts, task }
    }

    /// TLS handshakes the client completed, i.e. after it accepted the
    /// certificate.
    pub fn handshakes(&self) -> u64 {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (a client that did not trust the
    /// certificate aborts with an alert).
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::SeqCst)
    }

    /// TLS sessions in which the client chose HTTP/2 by ALPN.
    pub fn h2_sessions(&self) -> u64 {
        self.counts.h2.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        // The connections live in a JoinSet owned by this task: aborting it
        // drops them all.
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    protocol: Protocol,
    counts: Arc<Counts>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(forward(
                    client,
                    acceptor.clone(),
                    upstream,
                    protocol,
                    Arc::clone(&counts),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(
    mut client: TcpStream,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    protocol: Protocol,
    counts: Arc<Counts>,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    if protocol == Protocol::Postgres {
        start_postgres_tls(&mut client).await?;
    }
    let mut tls = match acceptor.accept(client).await {
        Ok(tls) => {
            counts.handshakes.fetch_add(1, Ordering::SeqCst);
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                counts.h2.fetch_add(1, Ordering::SeqCst);
            }
            tls
        }
        Err(error) => {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            return Err(error);
        }
    };
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}

/// Reads the client's 8-byte requests until it asks for TLS, and says yes.
async fn start_postgres_tls(client: &mut TcpStream) -> io::Result<()> {
    loop {
        let mut request = [0u8; 8];
        client.read_exact(&mut request).await?;
        let length = u32::from_be_bytes(request[..4].try_into().unwrap());
        let code = u32::from_be_bytes(request[4..].try_into().unwrap());
        match (length, code) {
            (8, SSL_REQUEST) => return client.write_all(b"S").await,
            (8, GSSENC_REQUEST) => client.write_all(b"N").await?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not an SSLRequest: this proxy speaks only TLS",
                ));
            }
        }
    }
}
