//! Connection tokens (spec §2): JWT with HS256 (shared secret) or RS256/ES256 (public key),
//! verified into the hub's [`Claims`]; and minting of tokens for the CLI and tests.
//!
//! Checked besides the signature: `exp`, `nbf` (both to the second, no leeway: the server's
//! clock is the reference), and `aud` / `iss` when `[auth] audience` / `issuer` are set.

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
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// A token's `aud`: one string or a list of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Verifies connection tokens with the configured keys.
pub struct JwtAuthenticator {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    /// Required `aud` (one of the token's audiences) and `iss`, when configured.
    audience: Option<String>,
    issuer: Option<String>,
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
        Ok(JwtAuthenticator {
            secret,
            public,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        })
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
        let data = jsonwebtoken::decode::<TokenClaims>(token, key, &self.validation(header.alg))
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => invalid("bad signature"),
                ErrorKind::ImmatureSignature => invalid("token not valid yet (nbf)"),
                ErrorKind::InvalidAudience => invalid("token is for another audience (aud)"),
                ErrorKind::InvalidIssuer => invalid("token from another issuer (iss)"),
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(&format!("token has no `{claim}` claim"))
                }
                _ => invalid(&e.to_string()),
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

impl JwtAuthenticator {
    /// What a token must satisfy besides its signature.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // No claim is required by default: a token without `exp` never expires, one without
        // `nbf` is good at once (each is checked when present).
        let mut required = HashSet::new();
        // No leeway: `exp` and `nbf` are judged by this server's clock, to the second.
        validation.leeway = 0;
        validation.validate_nbf = true;
        // With no audience configured, a token's `aud` is not ours to judge (tokens minted
        // for several services keep working); with one, it must be there and name us.
        validation.validate_aud = self.audience.is_some();
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            required.insert("aud".to_owned());
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
        validation
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

    fn auth_for(audience: Option<&str>, issuer: Option<&str>) -> JwtAuthenticator {
        JwtAuthenticator::new(&AuthConfig {
            token_secret: Some("s3cret".into()),
            audience: audience.map(Into::into),
            issuer: issuer.map(Into::into),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn mint(claims: TokenClaims) -> String {
        mint_hs256(
            "s3cret",
            &TokenClaims {
                sub: Some("carol".into()),
                ..claims
            },
        )
    }

    fn is_invalid(result: Result<Claims, AuthError>, why: &str) -> bool {
        matches!(result, Err(AuthError::Invalid(message)) if message.contains(why))
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let now = switchboard_core::unix_now();
        let early = mint(TokenClaims {
            nbf: Some(now + 60),
            ..TokenClaims::default()
        });
        assert!(is_invalid(auth("s3cret").verify(&early), "nbf"));
        for nbf in [now, now - 60] {
            let ready = mint(TokenClaims {
                nbf: Some(nbf),
                ..TokenClaims::default()
            });
            assert_eq!(auth("s3cret").verify(&ready).unwrap().user, "carol");
        }
    }

    #[test]
    fn audience_when_configured_must_be_in_the_token() {
        let one = |aud: &str| Some(Audience::One(aud.into()));
        let for_us = mint(TokenClaims {
            aud: one("switchboard"),
            ..TokenClaims::default()
        });
        let among_others = mint(TokenClaims {
            aud: Some(Audience::Many(vec!["billing".into(), "switchboard".into()])),
            ..TokenClaims::default()
        });
        let for_others = mint(TokenClaims {
            aud: one("billing"),
            ..TokenClaims::default()
        });
        let without = mint(TokenClaims::default());
        let strict = auth_for(Some("switchboard"), None);
        assert!(strict.verify(&for_us).is_ok());
        assert!(strict.verify(&among_others).is_ok());
        assert!(is_invalid(strict.verify(&for_others), "aud"));
        assert!(is_invalid(strict.verify(&without), "aud"));
        // Not configured: `aud` is not looked at.
        let open = auth_for(None, None);
        assert!(open.verify(&for_others).is_ok() && open.verify(&without).is_ok());
    }

    #[test]
    fn issuer_when_configured_must_be_in_the_token() {
        let from = |iss: &str| {
            mint(TokenClaims {
                iss: Some(iss.into()),
                ..TokenClaims::default()
            })
        };
        let strict = auth_for(None, Some("https://auth.example"));
        assert!(strict.verify(&from("https://auth.example")).is_ok());
        assert!(is_invalid(
            strict.verify(&from("https://evil.example")),
            "iss"
        ));
        assert!(is_invalid(
            strict.verify(&mint(TokenClaims::default())),
            "iss"
        ));
        assert!(auth_for(None, None).verify(&from("anyone")).is_ok());
        // Both at once.
        let both = auth_for(Some("switchboard"), Some("https://auth.example"));
        let good = mint(TokenClaims {
            aud: Some(Audience::One("switchboard".into())),
            iss: Some("https://auth.example".into()),
            ..TokenClaims::default()
        });
        assert!(both.verify(&good).is_ok());
        assert!(both.verify(&from("https://auth.example")).is_err());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
