//! Authentication and authorisation: password hashes, access tokens (JWT),
//! refresh tokens, and the role → permission table.
//!
//! Called by `http` (login, the `Auth` extractor) and the CLI (`user add`).
//! Knows nothing about HTTP; the database work of logins lives in
//! `crm::sessions`.
//!
//! Invariants:
//! - passwords are stored only as argon2id PHC strings, hashed and verified
//!   on the blocking pool (they take tens of milliseconds by design);
//! - a refresh token is 256 random bits shown once; only its SHA-256 is stored;
//! - every permission check goes through [`rbac::allows`]: one table, one place.

pub mod keys;
pub mod rbac;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

pub use keys::SigningKeys;
pub use rbac::{Permission, Role};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot hash the password")]
    Hash,
    #[error("the password must be at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("signing the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

pub const MIN_PASSWORD_LEN: usize = 12;

/// Hashes `password` with argon2id (the crate's defaults: OWASP's minimum).
pub async fn hash_password(password: String) -> Result<String, Error> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::WeakPassword);
    }
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|_| Error::Hash)
    })
    .await
    .map_err(|_| Error::Hash)?
}

/// Checks `password` against a stored hash. `None` (no such user) still
/// spends the same time on a dummy hash, so response times do not tell
/// which emails exist.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let found = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && found
    })
    .await
    .unwrap_or(false)
}

/// An argon2id hash of a random string nobody knows, with default parameters.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    Argon2::default()
        .hash_password(crate::secrets::generate().as_bytes())
        .map(|h| h.to_string())
        .expect("hashing a random string with default parameters works")
});

/// What an access token says. `role` is informational: each request reads
/// the current role from the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: Uuid,
    pub tid: Uuid,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

pub const ISSUER: &str = "pagodirecto";
pub const AUDIENCE: &str = "pagodirecto-api";

/// A new refresh token (to give the client once) and its hash (to store).
#[must_use]
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let token = crate::secrets::generate();
    let hash = refresh_token_hash(&token);
    (token, hash)
}

#[must_use]
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse battery".into())
            .await
            .expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse battery".into(), Some(hash)).await);
        assert!(!verify_password("correct horse battery".into(), None).await);
    }

    #[tokio::test]
    async fn short_passwords_are_refused() {
        assert!(matches!(
            hash_password("short".into()).await,
            Err(Error::WeakPassword)
        ));
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash_a, refresh_token_hash(&a));
        assert_eq!(hash_a.len(), 32);
    }
}
