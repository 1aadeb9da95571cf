//! TLS on the one listener (spec §1): WSS and HTTPS with a certificate from the config.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate it signed for localhost and 127.0.0.1, made with
/// openssl. Returns (CA certificate, server certificate, server key).
fn make_certificate() -> (PathBuf, PathBuf, PathBuf) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sb-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    let p256 = "ec_paramgen_curve:P-256";
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        p256,
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=switchboard test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        p256,
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca.into(), cert.into(), key.into())
}

async fn tls_server() -> (TestServer, TlsConnector) {
    let (ca, cert, key) = make_certificate();
    let config = format!(
        "{}{JOIN_LEAVE}[tls]\ncert = {:?}\nkey = {:?}\n",
        auth_toml(),
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let server = TestServer::with_config(&config).await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, TlsConnector::from(Arc::new(client)))
}

async fn tls_connect(server: &TestServer, connector: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// One HTTPS request with `Connection: close`; returns status and JSON body.
async fn https(
    server: &TestServer,
    connector: &TlsConnector,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let mut stream = tls_connect(server, connector).await;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A peer that closes without close_notify is fine here: we read until the end.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// The next text frame, as JSON.
async fn next(ws: &mut Wss) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_api_over_tls() {
    let (server, connector) = tls_server().await;

    let (status, health) = https(&server, &connector, "GET", "/health", "").await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    let stream = tls_connect(&server, &connector).await;
    let url = format!(
        "wss://localhost/ws?token={}",
        token("alice", &["*"], &["*"])
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "connected");
    ws.send(Message::text(
        json!({"type":"subscribe","id":1,"channel":"secure"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["type"], "reply");
    assert_eq!(next(&mut ws).await["type"], "join");

    // Enough volume that TLS records queue up behind a full socket buffer.
    let blob = "y".repeat(16_000);
    let count = 300u64;
    for n in 1..=count {
        let body = json!({"channel": "secure", "data": {"n": n, "blob": blob}}).to_string();
        let (status, answer) = https(&server, &connector, "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["offset"], n);
    }
    for n in 1..=count {
        let message = next(&mut ws).await;
        assert_eq!(message["offset"], n);
        assert_eq!(message["data"]["blob"].as_str().unwrap().len(), blob.len());
    }

    // Commands from the client side work too.
    ws.send(Message::text(json!({"type":"ping","id":9}).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, json!({"type":"pong","id":9}));
    server.stop().await;
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_gets_no_answer() {
    let (server, _) = tls_server().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
    server.stop().await;
}
