//! Mutual TLS (feature `tls`): a server that accepts only clients with a certificate of its
//! CA and sees who they are, and a client that checks the server's name. The certificates are
//! made here with rcgen; a real deployment loads its own.
//!
//! Run: `cargo run --features tls --example tls`

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tofu::message::PEER_IDENTITY;
use tofu::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tofu::{rustls, Address, Engine, EngineOptions, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A certificate for `names` signed by `ca`: (chain, key).
fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    cn: &str,
    names: &[&str],
) -> Res<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone(), ca.der().clone()], key))
}

fn main() -> Res<()> {
    // A CA, a server certificate for localhost / 127.0.0.1, a client certificate.
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "example CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let roots = Arc::new(roots);
    let (server_chain, server_key) = leaf(&ca, "server", &["localhost", "127.0.0.1"])?;
    let (client_chain, client_key) = leaf(&ca, "worker-1", &["worker-1.example"])?;

    // The server asks every client for a certificate of the CA (mutual TLS).
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::clone(&roots)).build()?;
    let server_config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)?;
    let server_engine = Engine::new(EngineOptions {
        tls_server: Some(Arc::new(server_config)),
        ..EngineOptions::default()
    })?;
    let server = server_engine.create_group()?;
    let listening = server.listen(&Address::tls("127.0.0.1", 0))?;

    // The client trusts the CA and presents its own certificate.
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(client_chain, client_key)?;
    let client_engine = Engine::new(EngineOptions {
        tls_client: Some(Arc::new(client_config)),
        ..EngineOptions::default()
    })?;
    let client = client_engine.create_group()?;

    std::thread::scope(|s| -> Res<()> {
        let service = s.spawn(|| -> Res<String> {
            // The Hello carries the client's verified names; answer it, then echo once.
            let mut hello = server
                .wait_receive(Some(Duration::from_secs(10)))?
                .ok_or("no Hello")?;
            let who = hello.header_value(PEER_IDENTITY).unwrap_or("?").to_string();
            hello.make_echo()?;
            server.post(hello)?;
            let mut req = server
                .wait_receive(Some(Duration::from_secs(10)))?
                .ok_or("no Request")?;
            req.make_echo()?;
            server.post(req)?;
            Ok(who)
        });
        // The server's name is checked against the host part: 127.0.0.1 is in its certificate.
        let ch = client.connect(&listening.address)?;
        let mut req = Message::with_opcode(OpCode::Request);
        req.header.channel = ch;
        req.set_body(b"over TLS");
        let reply = client.request(req, Some(Duration::from_secs(10)))?;
        assert_eq!(reply.body(), b"over TLS");
        let who = service.join().expect("service thread")?;
        assert!(who.contains("CN=worker-1"), "{who}");
        println!(
            "server {} saw client {who:?}; the echo came back encrypted both ways",
            listening.address
        );
        Ok(())
    })
}
