//! HTTP client of the server API (PROTOCOL.md §6).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::{Result, Value, http_error, percent_encode};

/// A client of the backend's server API (`/api/...`), authorised by the API key.
///
/// [`call`](Self::call) reaches any path and reports the status as is; the typed helpers turn
/// a non-2xx answer into [`Error::Server`](crate::Error::Server).
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7700`), sending
    /// `Authorization: Bearer <api_key>` when a key is given.
    ///
    /// Proxy settings from the environment are ignored: this client talks to a Switchboard
    /// server directly (tests and the benchmark run it on localhost, where an inherited
    /// `HTTP_PROXY` would only get in the way).
    pub fn new(base: &str, api_key: Option<&str>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            // Building only fails when the TLS/resolver backend cannot start; fall back to
            // reqwest's defaults rather than fail a constructor that takes no I/O.
            .unwrap_or_else(|_| reqwest::Client::new());
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.map(str::to_owned),
            http,
        }
    }

    /// The server's base address, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (with `body` as JSON when given) and returns the HTTP status and the
    /// raw body text. Useful for non-JSON answers such as `/metrics`.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        };
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, text))
    }

    /// Sends `method path` (with `body` as JSON when given) and returns the HTTP status and the
    /// parsed JSON body, or [`Value::Null`] when the body is empty or not JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let (status, text) = self.call_text(method, path, body).await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `POST /api/publish`: publishes `data` to `channel`; answers `{"offset","epoch"}`.
    pub async fn publish(&self, channel: &str, data: &Value) -> Result<Value> {
        let body = json!({"channel": channel, "data": data});
        self.expect_ok(Method::POST, "/api/publish", Some(&body))
            .await
    }

    /// `POST /api/broadcast`: publishes `data` to every channel; answers `{"results":[...]}`.
    pub async fn broadcast(&self, channels: &[&str], data: &Value) -> Result<Value> {
        let body = json!({"channels": channels, "data": data});
        self.expect_ok(Method::POST, "/api/broadcast", Some(&body))
            .await
    }

    /// `GET /api/channels`: channels with subscribers now; answers `{"channels":[...]}`.
    pub async fn channels(&self) -> Result<Value> {
        self.expect_ok(Method::GET, "/api/channels", None).await
    }

    /// `GET /api/presence/<channel>`: answers `{"members":[...]}`.
    pub async fn presence(&self, channel: &str) -> Result<Value> {
        let path = format!("/api/presence/{}", percent_encode(channel));
        self.expect_ok(Method::GET, &path, None).await
    }

    /// `GET /api/history/<channel>`, at most `limit` messages, only those after
    /// `since = (offset, epoch)` when given; answers `{"messages":[...],"offset","epoch"}`.
    pub async fn history(
        &self,
        channel: &str,
        limit: Option<usize>,
        since: Option<(u64, &str)>,
    ) -> Result<Value> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some((offset, epoch)) = since {
            query.push(format!("since_offset={offset}"));
            query.push(format!("epoch={}", percent_encode(epoch)));
        }
        let mut path = format!("/api/history/{}", percent_encode(channel));
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.expect_ok(Method::GET, &path, None).await
    }

    /// `POST /api/disconnect`: closes every connection of `user`; answers `{"disconnected":N}`.
    pub async fn disconnect(&self, user: &str) -> Result<Value> {
        let body = json!({"user": user});
        self.expect_ok(Method::POST, "/api/disconnect", Some(&body))
            .await
    }

    /// `POST /api/unsubscribe`: removes `user` from `channel`; answers `{}`.
    pub async fn unsubscribe(&self, user: &str, channel: &str) -> Result<Value> {
        let body = json!({"user": user, "channel": channel});
        self.expect_ok(Method::POST, "/api/unsubscribe", Some(&body))
            .await
    }

    /// `GET /api/rooms/<room>`: answers `{"peers":[...]}`.
    pub async fn room(&self, room: &str) -> Result<Value> {
        let path = format!("/api/rooms/{}", percent_encode(room));
        self.expect_ok(Method::GET, &path, None).await
    }

    /// `GET /api/info`: version, uptime, nodes, connection and channel counts.
    pub async fn info(&self) -> Result<Value> {
        self.expect_ok(Method::GET, "/api/info", None).await
    }

    /// Calls and returns the JSON body of a 2xx answer (`Null` when empty); any other status
    /// becomes [`Error::Server`](crate::Error::Server) read from the contract's error body.
    async fn expect_ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, text) = self.call_text(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(http_error(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A one-request HTTP server: answers `status_line` with `body` and returns the raw request
    /// it received (head and body).
    async fn http_once(status_line: &str, body: &str) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let response = format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as many body bytes as content-length announces.
            let head_end = loop {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
                if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while request.len() < head_end + length {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(response.as_bytes()).await.unwrap();
            let _ = tcp.shutdown().await;
            String::from_utf8(request).unwrap()
        });
        (base, task)
    }

    #[tokio::test]
    async fn publish_sends_key_and_body_and_returns_answer() {
        let (base, server) = http_once("200 OK", r#"{"offset":3,"epoch":"e1"}"#).await;
        let api = ApiClient::new(&format!("{base}/"), Some("k3y"));
        let answer = api.publish("chat:1", &json!({"text": "hi"})).await.unwrap();
        assert_eq!(answer, json!({"offset": 3, "epoch": "e1"}));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /api/publish HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_lowercase()
                .contains("authorization: bearer k3y\r\n")
        );
        let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, json!({"channel": "chat:1", "data": {"text": "hi"}}));
    }

    #[tokio::test]
    async fn error_body_becomes_server_error() {
        let body = r#"{"error":{"code":"unauthorized","message":"bad api key"}}"#;
        let (base, server) = http_once("401 Unauthorized", body).await;
        let api = ApiClient::new(&base, None);
        match api.info().await {
            Err(Error::Server {
                code,
                message,
                status,
            }) => {
                assert_eq!(code, "unauthorized");
                assert_eq!(message, "bad api key");
                assert_eq!(status, Some(401));
            }
            other => panic!("unexpected {other:?}"),
        }
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /api/info HTTP/1.1\r\n"));
        assert!(!request.to_lowercase().contains("authorization:"));
    }

    #[tokio::test]
    async fn channel_names_are_percent_encoded_in_paths() {
        let (base, server) = http_once("200 OK", r#"{"members":[]}"#).await;
        let api = ApiClient::new(&base, Some("k"));
        api.presence("chat:room#alice").await.unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /api/presence/chat%3Aroom%23alice HTTP/1.1\r\n"),
            "{request}"
        );

        let (base, server) = http_once("200 OK", r#"{"messages":[]}"#).await;
        let api = ApiClient::new(&base, Some("k"));
        api.history("a b", Some(5), Some((7, "e/1"))).await.unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with(
                "GET /api/history/a%20b?limit=5&since_offset=7&epoch=e%2F1 HTTP/1.1\r\n"
            ),
            "{request}"
        );
    }

    #[tokio::test]
    async fn call_returns_status_and_null_for_non_json() {
        let (base, server) = http_once("503 Service Unavailable", "not json").await;
        let api = ApiClient::new(&base, None);
        let (status, body) = api.call(Method::GET, "health", None).await.unwrap();
        assert_eq!((status, body), (503, Value::Null));
        assert!(
            server
                .await
                .unwrap()
                .starts_with("GET /health HTTP/1.1\r\n")
        );

        let (base, server) = http_once("200 OK", "").await;
        let api = ApiClient::new(&base, None);
        let answer = api.unsubscribe("u", "c").await.unwrap();
        assert_eq!(answer, Value::Null);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connection_refused_is_an_http_error() {
        // Bind then drop to get a port that (almost certainly) has no listener.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
        assert!(matches!(api.channels().await, Err(Error::Http(_))));
    }
}
