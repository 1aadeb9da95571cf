//! Connection tokens (spec §2): JWT with HS256 (shared secret) or RS256/ES256 (public key),
//! verified into the hub's [`Claims`]; and minting of tokens for the CLI and tests.

use std::collections::HashSet;

use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::{AuthError, Authenticator, Claims};

use crate::config::AuthConfig;

/// The claims as they appear in a token.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// Verifies connection tokens with the configured keys.
pub struct JwtAuthenticator {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

impl JwtAuthenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let secret = config
            .token_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let public = match &config.token_public_key {
            None => None,
            Some(key) => Some(load_public_key(key)?),
        };
        Ok(JwtAuthenticator { secret, public })
    }

    /// Whether any key is configured (else no token can ever be valid).
    pub fn has_keys(&self) -> bool {
        self.secret.is_some() || self.public.is_some()
    }
}

/// Reads a PEM public key given inline or as a file path; RSA gives RS256, EC gives ES256.
fn load_public_key(key: &str) -> Result<(DecodingKey, Algorithm), String> {
    let pem = if key.contains("-----BEGIN") {
        key.as_bytes().to_vec()
    } else {
        std::fs::read(key).map_err(|e| format!("cannot read token_public_key {key}: {e}"))?
    };
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok((k, Algorithm::ES256));
    }
    Err("token_public_key is neither an RSA nor an EC (P-256) public key in PEM".into())
}

impl Authenticator for JwtAuthenticator {
    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        // The key follows from the algorithm family, so an HS256 token can never be checked
        // against the public key (the classic algorithm-confusion forgery).
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(_, expected)| *expected == alg)
                .map(|(k, _)| k),
        }
        .ok_or_else(|| {
            invalid(&format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = false;
        validation.leeway = 0;
        let data =
            jsonwebtoken::decode::<TokenClaims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => invalid("bad signature"),
                    _ => invalid(&e.to_string()),
                }
            })?;
        let c = data.claims;
        Ok(Claims {
            user: c.sub.unwrap_or_default(),
            exp: c.exp,
            info: c.info.map(|raw| Bytes::from(raw.get().to_owned())),
            subscribe: c.subscribe.unwrap_or_default(),
            publish: c.publish.unwrap_or_default(),
            rooms: c.rooms.unwrap_or_default(),
            anonymous: false,
        })
    }
}

/// Signs an HS256 token (CLI `switchboard token`, tests).
pub fn mint_hs256(secret: &str, claims: &TokenClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// Constant-time comparison of secrets (API keys), so timing reveals nothing of the key.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> JwtAuthenticator {
        JwtAuthenticator::new(&AuthConfig {
            token_secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn hs256_round_trip_with_claims() {
        let token = mint_hs256(
            "s3cret",
            &TokenClaims {
                sub: Some("alice".into()),
                exp: Some(switchboard_core::unix_now() + 60),
                info: Some(RawValue::from_string(r#"{"name":"Alice"}"#.into()).unwrap()),
                subscribe: Some(vec!["chat:*".into()]),
                ..TokenClaims::default()
            },
        );
        let claims = auth("s3cret").verify(&token).unwrap();
        assert_eq!(claims.user, "alice");
        assert_eq!(claims.subscribe, vec!["chat:*".to_string()]);
        assert_eq!(claims.info.as_deref(), Some(&br#"{"name":"Alice"}"#[..]));
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_refused() {
        let claims = TokenClaims {
            sub: Some("bob".into()),
            ..TokenClaims::default()
        };
        let forged = mint_hs256("other", &claims);
        assert!(matches!(
            auth("s3cret").verify(&forged),
            Err(AuthError::Invalid(_))
        ));
        let expired = mint_hs256(
            "s3cret",
            &TokenClaims {
                exp: Some(1_000_000),
                ..claims
            },
        );
        assert_eq!(auth("s3cret").verify(&expired), Err(AuthError::Expired));
        assert!(auth("s3cret").verify("not.a.jwt").is_err());
        assert!(auth("s3cret").verify("").is_err());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
