//! Pusher's signatures: HMAC-SHA256 with the app secret, as lowercase hex.
//!
//! - channel authorization: over `socket_id:channel` (`:channel_data` for presence), sent by
//!   the client as `auth = "<key>:<signature>"`;
//! - user sign-in: over `socket_id::user::user_data`;
//! - API requests: over `METHOD\npath\nquery` with the query's parameters (except
//!   `auth_signature`) lowercased, sorted and joined, plus `body_md5` of the body;
//! - webhooks: over the raw body (`X-Pusher-Signature`).
//!
//! Every check compares in constant time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::auth::constant_time_eq;

type HmacSha256 = Hmac<Sha256>;

/// How far an API request's `auth_timestamp` may be from now, in seconds.
pub const MAX_CLOCK_SKEW: u64 = 600;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `message` with `secret`, as lowercase hex.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is `message`'s, compared in constant time.
pub fn verify(secret: &str, message: &str, signature: &str) -> bool {
    constant_time_eq(sign(secret, message).as_bytes(), signature.as_bytes())
}

pub fn body_md5(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Checks a client's `auth` (`"<key>:<signature>"`) for `channel`, with `channel_data` for
/// presence channels.
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some(signature) = strip_key(key, auth) else {
        return false;
    };
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    verify(secret, &message, signature)
}

/// Checks a `pusher:signin`'s `auth` over `socket_id::user::user_data`.
pub fn verify_user_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let Some(signature) = strip_key(key, auth) else {
        return false;
    };
    verify(
        secret,
        &format!("{socket_id}::user::{user_data}"),
        signature,
    )
}

/// The signature part of `"<key>:<signature>"`, when the key is the app's (compared in
/// constant time too: the key is public, but no reason to leak which part failed).
fn strip_key<'a>(key: &str, auth: &'a str) -> Option<&'a str> {
    let (given_key, signature) = auth.split_once(':')?;
    constant_time_eq(given_key.as_bytes(), key.as_bytes()).then_some(signature)
}

/// Why an API request's signature was refused (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("unknown auth_key")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    Version,
    #[error("auth_timestamp is more than 600 seconds away from the server's clock")]
    Timestamp,
    #[error("body_md5 does not match the body")]
    BodyMd5,
    #[error("invalid auth_signature")]
    Signature,
}

/// The decoded query parameters of a request, in their order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex_digit(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match hex_digit(bytes[i + 1]).zip(hex_digit(bytes[i + 2])) {
                    Some((hi, lo)) => {
                        out.push(hi * 16 + lo);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The string an API request signs: `METHOD\npath\nk1=v1&k2=v2...` with every parameter but
/// `auth_signature`, keys lowercased, sorted by key.
pub fn request_string(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\n{path}\n{}", method.to_uppercase(), query.join("&"))
}

/// Verifies a signed API request (`now` in Unix seconds).
pub fn verify_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), RequestAuthError> {
    let get = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(RequestAuthError::Missing(name))
    };
    if !constant_time_eq(get("auth_key")?.as_bytes(), key.as_bytes()) {
        return Err(RequestAuthError::WrongKey);
    }
    if get("auth_version")? != "1.0" {
        return Err(RequestAuthError::Version);
    }
    let timestamp: u64 = get("auth_timestamp")?
        .parse()
        .map_err(|_| RequestAuthError::Timestamp)?;
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(RequestAuthError::Timestamp);
    }
    let signature = get("auth_signature")?;
    if !body.is_empty() {
        let md5 = get("body_md5")?;
        if !constant_time_eq(md5.as_bytes(), body_md5(body).as_bytes()) {
            return Err(RequestAuthError::BodyMd5);
        }
    }
    if !verify(secret, &request_string(method, path, params), signature) {
        return Err(RequestAuthError::Signature);
    }
    Ok(())
}

/// Fuzzing entry point (`fuzz/`): a signed API request's query and body (split at the first
/// line break), checked as the HTTP API checks them; then signed with the app's secret, the
/// same parameters must be accepted, and a changed signature refused.
#[doc(hidden)]
pub fn fuzz_pusher_query(data: &[u8]) {
    const KEY: &str = "key";
    const SECRET: &str = "secret";
    const NOW: u64 = 1_700_000_000;
    let (query, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let params = parse_query(&query);
    let _ = verify_request(KEY, SECRET, "POST", "/apps/1/events", &params, body, NOW);
    let _ = verify_channel_auth(KEY, SECRET, "1.2", "private-c", None, &query);
    let _ = verify_user_auth(KEY, SECRET, "1.2", &query, &query);

    let mut signed: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
        .collect();
    signed.push(("auth_key".into(), KEY.into()));
    signed.push(("auth_timestamp".into(), NOW.to_string()));
    signed.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        signed.push(("body_md5".into(), body_md5(body)));
    }
    let signature = sign(SECRET, &request_string("POST", "/apps/1/events", &signed));
    signed.push(("auth_signature".into(), signature.clone()));
    let check = |params: &[(String, String)]| {
        verify_request(KEY, SECRET, "POST", "/apps/1/events", params, body, NOW)
    };
    assert_eq!(check(&signed), Ok(()));
    signed.last_mut().expect("just pushed").1 = format!("0{signature}");
    assert_eq!(check(&signed), Err(RequestAuthError::Signature));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher's published worked examples ("Authenticating users" / "HTTP API reference").
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn channel_auth_worked_example() {
        let sig = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(sign(SECRET, "1234.1234:private-foobar"), sig);
        let auth = format!("{KEY}:{sig}");
        assert!(verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
        // Another socket, channel, key or a tampered signature: refused.
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1235",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "private-foobaz",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            "other",
            SECRET,
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "private-foobar",
            None,
            sig
        ));
        let tampered = format!("{KEY}:{}0", &sig[..63]);
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "private-foobar",
            None,
            &tampered
        ));
    }

    #[test]
    fn presence_auth_covers_channel_data() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channel"}}"#;
        let sig = sign(SECRET, &format!("1234.1234:presence-foobar:{data}"));
        let auth = format!("{KEY}:{sig}");
        assert!(verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "presence-foobar",
            Some(data),
            &auth
        ));
        let other = r#"{"user_id":11,"user_info":{"name":"Mr. Channel"}}"#;
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "presence-foobar",
            Some(other),
            &auth
        ));
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "presence-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn user_auth() {
        let data = r#"{"id":"42"}"#;
        let sig = sign(SECRET, &format!("1.2::user::{data}"));
        assert!(verify_user_auth(
            KEY,
            SECRET,
            "1.2",
            data,
            &format!("{KEY}:{sig}")
        ));
        assert!(!verify_user_auth(
            KEY,
            SECRET,
            "1.3",
            data,
            &format!("{KEY}:{sig}")
        ));
    }

    #[test]
    fn http_api_worked_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(body_md5(body), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                     &body_md5=ec365a775a4cd0599faeb73354201b6f\
                     &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let params = parse_query(query);
        assert_eq!(
            request_string("POST", "/apps/3/events", &params),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let now = 1353088179 + 30;
        assert_eq!(
            verify_request(KEY, SECRET, "POST", "/apps/3/events", &params, body, now),
            Ok(())
        );
        // Each part matters.
        assert_eq!(
            verify_request(KEY, SECRET, "POST", "/apps/4/events", &params, body, now),
            Err(RequestAuthError::Signature)
        );
        assert_eq!(
            verify_request(KEY, SECRET, "POST", "/apps/3/events", &params, b"{}", now),
            Err(RequestAuthError::BodyMd5)
        );
        assert_eq!(
            verify_request(KEY, "wrong", "POST", "/apps/3/events", &params, body, now),
            Err(RequestAuthError::Signature)
        );
        assert_eq!(
            verify_request(
                KEY,
                SECRET,
                "POST",
                "/apps/3/events",
                &params,
                body,
                now + 601
            ),
            Err(RequestAuthError::Timestamp)
        );
        assert_eq!(
            verify_request("k", SECRET, "POST", "/apps/3/events", &params, body, now),
            Err(RequestAuthError::WrongKey)
        );
        let unsigned: Vec<_> = params
            .iter()
            .filter(|(k, _)| k != "auth_signature")
            .cloned()
            .collect();
        assert_eq!(
            verify_request(KEY, SECRET, "POST", "/apps/3/events", &unsigned, body, now),
            Err(RequestAuthError::Missing("auth_signature"))
        );
    }

    #[test]
    fn query_values_are_signed_decoded_and_sorted() {
        let params = parse_query(
            "info=user_count%2Csubscription_count&Filter_By_Prefix=presence-&auth_key=k",
        );
        assert_eq!(
            request_string("get", "/apps/1/channels", &params),
            "GET\n/apps/1/channels\nauth_key=k&filter_by_prefix=presence-&info=user_count,subscription_count"
        );
    }
}
