//! The one source of secret randomness: OAuth `state` and PKCE verifiers here, webhook secrets,
//! master keys and nonces in `xmbridge-vault`. It reads the operating system's CSPRNG through the
//! TLS provider (aws-lc-rs) every HTTPS connection already uses; nothing opens `/dev/urandom` by
//! hand. Also PKCE S256 (RFC 7636), the one derivation of a challenge from a verifier.

use base64::Engine as _;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use sha2::Digest as _;

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
#[non_exhaustive]
pub struct RandomError;

/// Fills `buf` with random bytes from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RandomError> {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| RandomError)
}

/// `bytes` random bytes as unpadded base64url: safe in a URL, a header and a form.
pub fn random_token(bytes: usize) -> Result<SecretString, RandomError> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    random_bytes(&mut buf)?;
    Ok(SecretString::from(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*buf),
    ))
}

/// PKCE S256: `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = sha2::Sha256::digest(verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn pkce_is_base64url_sha256() {
        // Expected value computed independently (Python hashlib + urlsafe_b64encode).
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r-gW1gZWFOEjXk"),
            "TLr9LG18MJizbpAEg39ZwLHNOyZVdcN0ElspFaf8LSU"
        );
    }

    #[test]
    fn random_tokens_differ() {
        let a = random_token(24).unwrap();
        assert_eq!(a.expose_secret().len(), 32);
        assert_ne!(a.expose_secret(), random_token(24).unwrap().expose_secret());
    }
}
