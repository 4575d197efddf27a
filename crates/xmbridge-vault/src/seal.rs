//! Sealing and opening values with XChaCha20-Poly1305 under the master key. Each seal takes a
//! fresh random 24-byte nonce (so no counter must be persisted) and associated data that binds
//! the value to its place (connection, field, key id), so a sealed value moved to another row
//! fails to open. It knows nothing about SQLite.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::zeroize::Zeroizing;

use crate::{KeyId, MasterKey, VaultError};

/// Length of the nonce stored next to each sealed value.
pub(crate) const NONCE_LEN: usize = 24;

/// A sealed value as stored: nonce and ciphertext (with its 16-byte tag).
pub(crate) struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The cipher built from the master key (its key copy is zeroized on drop).
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: KeyId,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(key id {})", self.key_id)
    }
}

impl Sealer {
    pub fn new(key: &MasterKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.bytes().into()),
            key_id: key.id(),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, VaultError> {
        let mut nonce_bytes = [0u8; 24];
        xmbridge_auth::random_bytes(&mut nonce_bytes)?;
        let nonce = XNonce::from(nonce_bytes);
        // Encryption only fails for messages beyond ~256 GiB; report it without any content.
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::InvalidSettings {
                reason: "a secret is too large to seal".into(),
            })?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed value; `None` when it fails authentication (wrong key, tampered, moved) or
    /// the nonce has the wrong length. The plaintext is zeroized when dropped.
    pub fn open(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let nonce = XNonce::try_from(nonce).ok()?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// Associated data for a secret: binds it to connection, field and key, with NUL separators
/// (names cannot contain NUL) so distinct triples never produce the same bytes.
pub(crate) fn secret_aad(connection: &str, field: &str, key_id: KeyId) -> Vec<u8> {
    format!("xmbridge-vault/secret/v1\0{connection}\0{field}\0{key_id}").into_bytes()
}

/// Associated data for the key-check value in the meta table.
pub(crate) fn key_check_aad(key_id: KeyId) -> Vec<u8> {
    format!("xmbridge-vault/key-check/v1\0{key_id}").into_bytes()
}

/// The known plaintext of the key-check value.
pub(crate) const KEY_CHECK_PLAINTEXT: &[u8] = b"xmbridge master key check";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let key = MasterKey::generate().unwrap();
        let s = Sealer::new(&key);
        let aad = secret_aad("a", "api_token", key.id());
        let sealed = s.seal(b"hello", &aad).unwrap();
        assert_eq!(sealed.nonce.len(), NONCE_LEN);
        assert_eq!(
            s.open(&sealed.nonce, &sealed.ciphertext, &aad)
                .unwrap()
                .as_slice(),
            b"hello"
        );
        let other = secret_aad("b", "api_token", key.id());
        assert!(s.open(&sealed.nonce, &sealed.ciphertext, &other).is_none());
        let again = s.seal(b"hello", &aad).unwrap();
        assert_ne!(again.nonce, sealed.nonce, "fresh nonce per seal");
        let other_key = Sealer::new(&MasterKey::generate().unwrap());
        assert!(
            other_key
                .open(&sealed.nonce, &sealed.ciphertext, &aad)
                .is_none()
        );
        assert!(
            s.open(&sealed.nonce[..12], &sealed.ciphertext, &aad)
                .is_none()
        );
    }
}
