//! The keys that sign access tokens (HS256), with rotation.
//!
//! Kept in `<data>/secrets/jwt-keys.json` (0600), generated on first start.
//! Tokens carry the key id (`kid`). Rotation adds a new key that signs from
//! then on; the previous keys still verify until every token they signed has
//! expired, then they are dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AUDIENCE, Claims, Error, ISSUER};
use crate::fsutil;

pub const FILE: &str = "jwt-keys.json";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid key file: {reason}; restore it from a backup (deleting it logs everyone out)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    secret: String,
    created: u64,
    /// When a newer key took over signing.
    retired: Option<u64>,
}

#[derive(Clone)]
pub struct SigningKeys {
    /// Newest last; the last one signs.
    keys: Vec<(String, EncodingKey, DecodingKey)>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_key() -> StoredKey {
    let secret = crate::secrets::generate();
    StoredKey {
        kid: secret[..12].to_string(),
        secret: crate::secrets::generate(),
        created: now(),
        retired: None,
    }
}

impl SigningKeys {
    /// Loads the keys, creating the file on first start and dropping keys
    /// retired longer than `token_ttl` ago.
    pub fn load_or_create(
        secrets_dir: &Path,
        token_ttl: Duration,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> Result<Self, KeyError> {
        let path = secrets_dir.join(FILE);
        let mut stored = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<Vec<StoredKey>>(&text).map_err(|e| KeyError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(KeyError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let before = stored.len();
        stored.retain(|k| k.retired.is_none_or(|r| r + token_ttl.as_secs() > now()));
        if stored.is_empty() {
            stored.push(new_key());
        }
        if stored.len() != before {
            save(secrets_dir, &path, &stored, owner)?;
        }
        Self::from_stored(&stored, &path)
    }

    /// Adds a new signing key; the old ones verify until their tokens expire.
    pub fn rotate(
        secrets_dir: &Path,
        token_ttl: Duration,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> Result<Self, KeyError> {
        let path = secrets_dir.join(FILE);
        Self::load_or_create(secrets_dir, token_ttl, owner)?;
        let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let mut stored: Vec<StoredKey> =
            serde_json::from_str(&text).map_err(|e| KeyError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let at = now();
        for key in &mut stored {
            key.retired.get_or_insert(at);
        }
        stored.push(new_key());
        save(secrets_dir, &path, &stored, owner)?;
        Self::from_stored(&stored, &path)
    }

    fn from_stored(stored: &[StoredKey], path: &Path) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(stored.len());
        for key in stored {
            let secret = hex::decode(&key.secret).map_err(|e| KeyError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("key {}: {e}", key.kid),
            })?;
            keys.push((
                key.kid.clone(),
                EncodingKey::from_secret(&secret),
                DecodingKey::from_secret(&secret),
            ));
        }
        Ok(Self { keys })
    }

    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let (kid, key, _) = self.keys.last().expect("there is always at least one key");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).map_err(Error::Sign)
    }

    /// Verifies signature, expiry, issuer and audience; any failure is the
    /// same `InvalidToken`, so a client learns nothing from the difference.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::InvalidToken)?;
        if header.alg != Algorithm::HS256 {
            return Err(Error::InvalidToken);
        }
        let kid = header.kid.ok_or(Error::InvalidToken)?;
        let (_, _, key) = self
            .keys
            .iter()
            .find(|(k, _, _)| *k == kid)
            .ok_or(Error::InvalidToken)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| Error::InvalidToken)
    }
}

fn save(
    secrets_dir: &Path,
    path: &Path,
    stored: &[StoredKey],
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> Result<(), KeyError> {
    fsutil::ensure_dir(secrets_dir, 0o700).map_err(|source| KeyError::Io {
        action: "create",
        path: secrets_dir.to_path_buf(),
        source,
    })?;
    let text = serde_json::to_vec_pretty(stored).expect("keys serialise");
    fsutil::write_atomic(path, &text, 0o600).map_err(|source| KeyError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })?;
    if let Some((uid, gid)) = owner {
        fsutil::chown(path, uid, gid).map_err(|source| KeyError::Io {
            action: "chown",
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn claims(exp_in: i64) -> Claims {
        let now = i64::try_from(now()).expect("now");
        Claims {
            sub: uuid::Uuid::new_v4(),
            tid: uuid::Uuid::new_v4(),
            role: Role::Agent,
            iat: u64::try_from(now).expect("now"),
            exp: u64::try_from(now + exp_in).expect("exp"),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_tampered_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys =
            SigningKeys::load_or_create(dir.path(), Duration::from_secs(900), None).expect("keys");
        let c = claims(60);
        let token = keys.sign(&c).expect("sign");
        assert_eq!(keys.verify(&token).expect("verify"), c);

        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = parts[1].replace('A', "B").replace('e', "f");
        assert!(keys.verify(&parts.join(".")).is_err(), "tampered payload");
        assert!(
            keys.verify(&keys.sign(&claims(-60)).expect("sign"))
                .is_err(),
            "expired"
        );

        let other = tempfile::tempdir().expect("tempdir");
        let stranger = SigningKeys::load_or_create(other.path(), Duration::from_secs(900), None)
            .expect("keys");
        assert!(
            keys.verify(&stranger.sign(&c).expect("sign")).is_err(),
            "signed by another key"
        );
    }

    #[test]
    fn after_rotation_old_tokens_still_verify_and_new_ones_use_the_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(900);
        let keys = SigningKeys::load_or_create(dir.path(), ttl, None).expect("keys");
        let old = keys.sign(&claims(60)).expect("sign");
        let rotated = SigningKeys::rotate(dir.path(), ttl, None).expect("rotate");
        assert!(rotated.verify(&old).is_ok());
        let new = rotated.sign(&claims(60)).expect("sign");
        assert!(
            keys.verify(&new).is_err(),
            "the old key set does not know the new key"
        );
        let reloaded = SigningKeys::load_or_create(dir.path(), ttl, None).expect("reload");
        assert!(reloaded.verify(&old).is_ok() && reloaded.verify(&new).is_ok());
        // Once the retired key's tokens have all expired, it is dropped.
        let dropped =
            SigningKeys::load_or_create(dir.path(), Duration::ZERO, None).expect("reload");
        assert!(dropped.verify(&old).is_err());
    }
}
