//! The server's outgoing HTTP: a POST over HTTP/1.1, to an `http://` or `https://` URL, one
//! connection per request (webhooks are batched, so requests are few). TLS is rustls with the
//! ring provider, as the listener uses, trusting the system's roots (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured) plus, per target, a CA certificate from a PEM file for
//! endpoints with a private CA.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::StatusCode;
use hyper::http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time for a whole request: connect, TLS handshake, send, response head.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where requests go: a parsed URL with what reaching it takes.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
    /// Set for `https://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    /// Parses `url` (`http://` or `https://`). An https endpoint trusts the system's roots
    /// and, when given, the certificates in the PEM file `ca`.
    pub(crate) fn new(url: &str, ca: Option<&Path>) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad url `{url}`: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("url `{url}` must start with http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("url `{url}` has no host"))?
            // An IPv6 literal comes bracketed.
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        if ca.is_some() && !https {
            return Err(format!("url `{url}`: a `ca` only applies to https:// urls"));
        }
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("url `{url}`: bad host name: {e}"))?;
            Some((TlsConnector::from(client_config(ca)?), name))
        } else {
            None
        };
        Ok(Endpoint {
            url: url.to_owned(),
            host,
            port,
            authority,
            path,
            tls,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` with `headers` (besides Host and Content-Length) and returns the status.
    pub(crate) async fn post(
        &self,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<StatusCode, String> {
        let mut request = hyper::Request::post(&self.path).header("host", &self.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body)
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            tcp.set_nodelay(true).ok();
            match &self.tls {
                None => exchange(tcp, request).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    exchange(tls, request).await
                }
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
    }
}

/// Sends one request over `io` and reads the response head; the body is not needed.
async fn exchange<S>(io: S, request: hyper::Request<String>) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // Drives the connection until the response is in; dropped (closing it) with the task.
    let driver = tokio::spawn(connection);
    let result = sender
        .send_request(request)
        .await
        .map(|response| response.status())
        .map_err(|e| format!("HTTP: {e}"));
    driver.abort();
    result
}

/// The system's trusted roots, read once.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!("reading the system's CA certificates: {error}");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::warn!("{ignored} system CA certificates could not be used");
        }
        if added == 0 {
            tracing::warn!(
                "no system CA certificates found: https:// requests will only trust a `ca` \
                 given in the config (install ca-certificates, or set SSL_CERT_FILE)"
            );
        }
        roots
    })
}

fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = system_roots().clone();
    if let Some(ca) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|iter| iter.collect())
            .map_err(|e| format!("cannot read CA certificate {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", ca.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_with_default_ports() {
        let e = Endpoint::new("http://example.com/hooks?x=1", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("example.com", 80, "/hooks?x=1")
        );
        assert!(e.tls.is_none());
        let e = Endpoint::new("https://example.com", None).unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, "/"));
        assert!(e.tls.is_some());
        let e = Endpoint::new("http://[::1]:8080/x", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 8080, "[::1]:8080")
        );
    }

    #[test]
    fn bad_urls_and_cas_are_refused() {
        assert!(Endpoint::new("ftp://example.com/", None).is_err());
        assert!(Endpoint::new("example.com/hooks", None).is_err());
        let missing = Path::new("/nonexistent/ca.pem");
        let err = Endpoint::new("https://example.com/", Some(missing))
            .err()
            .unwrap();
        assert!(err.contains("cannot read CA certificate"), "{err}");
        let err = Endpoint::new("http://example.com/", Some(missing))
            .err()
            .unwrap();
        assert!(err.contains("only applies to https"), "{err}");
    }
}
