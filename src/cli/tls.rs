//! The demo PKI of the `tofu` command (feature `tls`): a CA, a server certificate for
//! localhost and 127.0.0.1 and a client certificate, compiled in from `src/cli/certs/`
//! (made by `scripts/make-demo-certs.sh`). TEST ONLY: the private keys are public.

use std::sync::Arc;

use tofu::rustls;
use tofu::rustls::pki_types::pem::PemObject;
use tofu::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tofu::EngineOptions;

const CA: &[u8] = include_bytes!("certs/ca.pem");
const SERVER: &[u8] = include_bytes!("certs/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("certs/server.key");
const CLIENT: &[u8] = include_bytes!("certs/client.pem");
const CLIENT_KEY: &[u8] = include_bytes!("certs/client.key");

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("the demo certificates are valid PEM")
}

fn key(pem: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem).expect("the demo keys are valid PEM")
}

fn roots() -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(CA) {
        roots.add(c).expect("the demo CA is a valid certificate");
    }
    Arc::new(roots)
}

/// `options` with the demo server and client configs; with `mutual`, the server asks for and
/// the client presents a certificate.
pub fn with_demo_pki(options: EngineOptions, mutual: bool) -> EngineOptions {
    let server = rustls::ServerConfig::builder();
    let server = if mutual {
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots())
            .build()
            .expect("a client verifier from the demo CA");
        server.with_client_cert_verifier(verifier)
    } else {
        server.with_no_client_auth()
    };
    let server = server
        .with_single_cert(certs(SERVER), key(SERVER_KEY))
        .expect("the demo server certificate and key match");
    let client = rustls::ClientConfig::builder().with_root_certificates(roots());
    let client = if mutual {
        client
            .with_client_auth_cert(certs(CLIENT), key(CLIENT_KEY))
            .expect("the demo client certificate and key match")
    } else {
        client.with_no_client_auth()
    };
    EngineOptions {
        tls_server: Some(Arc::new(server)),
        tls_client: Some(Arc::new(client)),
        ..options
    }
}
