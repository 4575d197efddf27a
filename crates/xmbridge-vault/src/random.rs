//! New random secrets (webhook keys and tokens) from the same operating-system source as the
//! master key and the nonces.

use base64::Engine;
use chacha20poly1305::aead::Generate;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;

use crate::VaultError;

/// 32 random bytes as unpadded base64url: 256 bits, safe in a URL, a header and a form.
pub fn random_secret() -> Result<SecretString, VaultError> {
    let bytes =
        Zeroizing::new(
            <[u8; 32]>::try_generate().map_err(|e| VaultError::RandomSource {
                detail: e.to_string(),
            })?,
        );
    Ok(SecretString::from(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn secrets_are_long_url_safe_and_differ() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.expose_secret().len(), 43);
        assert!(
            a.expose_secret()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
