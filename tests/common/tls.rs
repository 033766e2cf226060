//! Certificates made at test time (rcgen) and rustls configurations for the TLS tests.
#![allow(dead_code)]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::net::{TcpListener, TcpStream};
use tofu::rustls;
use tofu::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tofu::{Address, Backend, Engine, EngineOptions};

/// A certificate authority of the tests.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, signed by a [`Ca`].
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP literals) with common name `cn`.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        self.leaf_with(cn, names, |_| {})
    }

    /// [`leaf`](Self::leaf), with the parameters changed by `edit` (validity, for example).
    pub fn leaf_with(
        &self,
        cn: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.der()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Roots that trust only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        roots
    }
}

/// A server config presenting `leaf`; with `clients_of`, clients must present a certificate
/// of that CA (mutual TLS).
pub fn server_config(leaf: &Leaf, clients_of: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder();
    let builder = match clients_of {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(ca.roots()))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
    )
}

/// A client config trusting `ca`; with `identity`, presenting that certificate.
pub fn client_config(ca: &Ca, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(ca.roots());
    Arc::new(match identity {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// The usual set: one CA, a server certificate for localhost and 127.0.0.1, a client
/// certificate, and the configs made of them.
pub struct Pki {
    pub ca: Ca,
    pub server: Leaf,
    pub client: Leaf,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("tofu test CA");
        let server = ca.leaf("tofu server", &["localhost", "127.0.0.1"]);
        let client = ca.leaf("node-7", &["node-7.tofu.test"]);
        Pki { ca, server, client }
    }

    /// Engine options with this PKI's server config (no client certificates asked) and a
    /// client config that trusts the CA.
    pub fn options(&self, backend: Backend) -> EngineOptions {
        EngineOptions {
            backend,
            tls_server: Some(server_config(&self.server, None)),
            tls_client: Some(client_config(&self.ca, None)),
            ..EngineOptions::default()
        }
    }

    /// A rustls client (trusting the CA, no certificate) over a blocking socket connected to
    /// `addr`'s port on the loopback, its handshake done: a TLS peer that is not a tofu engine.
    pub fn raw_client(
        &self,
        addr: &Address,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let sock = TcpStream::connect(("127.0.0.1", addr.port().unwrap())).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(super::PATIENCE)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client_config(&self.ca, None), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        s
    }

    /// The server side of a connection accepted from `listener` by a rustls server with this
    /// PKI's server certificate, its handshake done.
    pub fn raw_server(
        &self,
        listener: &TcpListener,
    ) -> rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(super::PATIENCE)).unwrap();
        let conn = rustls::ServerConnection::new(server_config(&self.server, None)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        s
    }

    pub fn engine(&self, backend: Backend) -> Engine {
        Engine::new(self.options(backend)).expect("engine starts")
    }
}
