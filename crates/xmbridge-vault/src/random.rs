//! New random secrets (webhook keys and tokens) from the one random source
//! ([`xmbridge_auth::random_token`]) that also makes the master key and the nonces.

use secrecy::SecretString;

use crate::VaultError;

/// 32 random bytes as unpadded base64url: 256 bits, safe in a URL, a header and a form.
pub fn random_secret() -> Result<SecretString, VaultError> {
    Ok(xmbridge_auth::random_token(32)?)
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
