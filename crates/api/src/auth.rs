//! Bearer tokens: JWT (RFC 7519) signed with HMAC-SHA256 (HS256) and a server secret.
//!
//! Claims: `sub` (the user id), `iat` and `exp` (seconds since the epoch), and `adm: true` on
//! an operator's token (`missive token --admin`; the admin routes require it). Only HS256 is
//! accepted; the signature is checked in constant time before anything else is trusted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// The fixed header of every token we issue.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The claims we issue and check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    /// An operator's token: may call the admin routes. Absent (false) on users' tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adm: bool,
}

/// Why a token was refused. The texts go to clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("the token must be signed with HS256")]
    Algorithm,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
}

/// A server's signing secret. Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// Issues a token for `user` valid for `ttl_seconds` from `now` (seconds since the epoch).
    pub fn issue(&self, user: Uuid, now: i64, ttl_seconds: i64) -> String {
        self.sign(&Claims {
            sub: user,
            iat: now,
            exp: now.saturating_add(ttl_seconds),
            adm: false,
        })
    }

    /// Issues an operator's token (the admin routes accept it), acting as `user`.
    pub fn issue_admin(&self, user: Uuid, now: i64, ttl_seconds: i64) -> String {
        self.sign(&Claims {
            sub: user,
            iat: now,
            exp: now.saturating_add(ttl_seconds),
            adm: true,
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks a token's signature, algorithm and expiry at `now`, and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_carry_the_claim_and_users_tokens_do_not() {
        let secret = Secret::new(b"s3cret".to_vec());
        let user = Uuid::now_v7();
        assert!(
            secret
                .verify(&secret.issue_admin(user, 1_000, 60), 1_010)
                .unwrap()
                .adm
        );
        let plain = secret.issue(user, 1_000, 60);
        assert!(!secret.verify(&plain, 1_010).unwrap().adm);
        // A user's token says nothing of it (older tokens, and tokens of other issuers, too).
        let payload = plain.split('.').nth(1).expect("payload");
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(!claims.contains("adm"), "{claims}");
    }

    #[test]
    fn issued_tokens_verify_and_tampering_is_caught() {
        let secret = Secret::new(b"s3cret".to_vec());
        let user = Uuid::now_v7();
        let token = secret.issue(user, 1_000, 60);
        assert_eq!(secret.verify(&token, 1_010).unwrap().sub, user);
        assert_eq!(secret.verify(&token, 1_060), Err(TokenError::Expired));
        assert_eq!(
            Secret::new(b"other".to_vec()).verify(&token, 1_010),
            Err(TokenError::Signature)
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{}","iat":1000,"exp":99999}}"#,
            Uuid::now_v7()
        ));
        parts[1] = &forged;
        assert_eq!(
            secret.verify(&parts.join("."), 1_010),
            Err(TokenError::Signature)
        );
        assert_eq!(secret.verify("a.b", 0), Err(TokenError::Malformed));
        assert_eq!(secret.verify("", 0), Err(TokenError::Malformed));
        assert_eq!(secret.verify("a.b.c.d", 0), Err(TokenError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        let secret = Secret::new(b"k".to_vec());
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD
            .encode(r#"{"sub":"00000000-0000-0000-0000-000000000001","iat":0,"exp":9999999999}"#);
        assert!(secret.verify(&format!("{header}.{payload}."), 0).is_err());
    }
}
