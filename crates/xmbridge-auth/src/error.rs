//! [`AuthError`]: every way getting credentials can fail, each message naming the problem and
//! the fix. Messages and `Debug` output never contain a secret: variants carry only provider
//! names, URLs, OAuth error codes and descriptions, dates and scope names.

/// Why credentials could not be obtained. Messages say what was wrong and what to do; they
/// never contain a secret.
// Variant fields are named for what they hold; each variant's doc and message explain them.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The refresh token was refused (`invalid_grant`): revoked, expired or rotated away.
    #[error(
        "account token expired for connection '{connection}': the provider refused the refresh token ({}). Re-authorize with: {reauthorize}",
        // The provider's own sentence may end with a full stop; this one ends the sentence.
        .detail.trim_end_matches('.')
    )]
    AccountTokenExpired {
        connection: String,
        detail: String,
        reauthorize: String,
    },

    /// The provider rotated the refresh token but the [`crate::RefreshTokenSink`] could not
    /// store the new one; the old one no longer works.
    #[error(
        "the refresh token of connection '{connection}' was rotated but the new one could not be saved ({source}); fix the state store (disk full? read-only?) and re-authorize with: {reauthorize}"
    )]
    RefreshTokenNotSaved {
        connection: String,
        /// Why the sink could not store it (never the token).
        #[source]
        source: crate::SinkError,
        reauthorize: String,
    },

    /// `invalid_client` (or any 401 from the token endpoint).
    #[error(
        "{provider} refused the OAuth client: the client id or secret is wrong ({detail}). Check the client id and the client secret of this connection (Qualtrics: Account Settings → Qualtrics IDs → OAuth client) and update them"
    )]
    InvalidClient { provider: String, detail: String },

    /// `invalid_scope`.
    #[error(
        "{provider} refused the scope '{scope}' ({detail}). Ask only for scopes the OAuth client is allowed to use, or allow them on the client in {provider}"
    )]
    InvalidScope {
        provider: String,
        scope: String,
        detail: String,
    },

    /// `unauthorized_client`: the client may not use this grant type.
    #[error(
        "{provider} does not allow this OAuth client to use the {grant} grant ({detail}). Use a client created for that grant type, or change the connection's auth mode"
    )]
    UnauthorizedClient {
        provider: String,
        grant: String,
        detail: String,
    },

    /// The authorization code was refused at the exchange (`invalid_grant` on
    /// `authorization_code`): codes are single-use and short-lived.
    #[error(
        "{provider} refused the authorization code ({detail}). Codes work once and only for a few minutes: run the authorize command again"
    )]
    AuthorizationCodeRejected { provider: String, detail: String },

    /// Any other OAuth error answer.
    #[error("{provider} token endpoint answered {status} {error}: {detail}")]
    OAuth {
        provider: String,
        status: u16,
        error: String,
        detail: String,
    },

    /// The token endpoint could not be reached or did not answer in time. Retry-able.
    #[error(
        "cannot reach the {provider} token endpoint {url}: {detail}. Check the network, proxy and data center, then retry"
    )]
    Network {
        provider: String,
        url: String,
        detail: String,
    },

    /// The token endpoint kept answering 5xx/429. Retry-able.
    #[error(
        "the {provider} token endpoint answered {status} {attempts} times in a row ({detail}); the provider has trouble, try again later"
    )]
    Server {
        provider: String,
        status: u16,
        attempts: u32,
        detail: String,
        /// The last answer's `Retry-After`, if it sent one.
        retry_after: Option<std::time::Duration>,
    },

    /// A 2xx answer that is not a token response.
    #[error("unexpected answer from the {provider} token endpoint: {detail}")]
    BadResponse { provider: String, detail: String },

    /// The TLS handshake failed: a client certificate the server does not accept, or a server
    /// certificate we do not trust.
    #[error("the TLS handshake with {url} failed ({detail}): {hint}")]
    TlsHandshake {
        url: String,
        detail: String,
        /// What probably went wrong and what to do.
        hint: String,
    },

    // ---- authorize flow -------------------------------------------------------------------
    /// The redirect's `state` did not match: nothing was exchanged.
    #[error(
        "the browser redirect carried a state parameter that does not match this authorization request (an old tab, another run, or a forged link); nothing was exchanged. Run the authorize command again and use the URL it prints"
    )]
    StateMismatch,

    /// The user (or the provider) denied access on the consent page.
    #[error(
        "authorization was denied in the browser ({detail}); run the authorize command again and choose Allow, signed in as a user that may use the API"
    )]
    AccessDenied { detail: String },

    /// Any other error on the redirect.
    #[error("the authorization failed with {error}: {detail}")]
    AuthorizeFailed { error: String, detail: String },

    /// No redirect arrived in time.
    #[error(
        "no browser redirect arrived within {secs} s; open the printed URL in a browser on this machine (the redirect goes to 127.0.0.1) and run the command again"
    )]
    AuthorizeTimeout { secs: u64 },

    /// The local redirect listener could not be opened.
    #[error("cannot listen on {addr} for the browser redirect: {detail}; choose another port")]
    Listener { addr: String, detail: String },

    // ---- client identity (mutual TLS) -----------------------------------------------------
    /// A PEM input that could not be read at all.
    #[error("the {what} is not readable PEM: {detail}")]
    PemUnreadable { what: &'static str, detail: String },

    /// The certificate file holds no certificate.
    #[error("the certificate file holds no '-----BEGIN CERTIFICATE-----' block{hint}")]
    NoCertificate { hint: &'static str },

    /// The key file holds no private key.
    #[error(
        "the key file holds no private key (expected '-----BEGIN PRIVATE KEY-----', 'ENCRYPTED PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY'){hint}"
    )]
    NoPrivateKey { hint: &'static str },

    /// A traditional OpenSSL encrypted key (`Proc-Type: 4,ENCRYPTED`).
    #[error(
        "the private key is encrypted in the traditional OpenSSL format (Proc-Type: 4,ENCRYPTED), which is not supported; convert it to encrypted PKCS#8 with: openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.key -out new.key"
    )]
    TraditionalEncryptedKey,

    /// An encrypted PKCS#8 key with a scheme other than PBES2 (PBKDF2 or scrypt).
    #[error(
        "the private key is encrypted with {scheme}, which is not supported (only PKCS#8 PBES2 with PBKDF2 or scrypt); re-encrypt it with: openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.key -out new.key"
    )]
    UnsupportedKeyEncryption { scheme: String },

    /// The key is encrypted and no pass phrase was given.
    #[error(
        "the private key is encrypted but no pass phrase was given; pass the pass phrase (e.g. --passphrase-file) or use an unencrypted key"
    )]
    PassphraseRequired,

    /// Decryption failed.
    #[error(
        "the pass phrase is wrong: the encrypted private key could not be decrypted with it; check the pass phrase file (a trailing space or a different key?)"
    )]
    PassphraseWrong,

    /// The private key does not belong to the certificate.
    #[error(
        "the private key does not match the certificate (their public keys differ); pass the key that was generated together with this certificate"
    )]
    KeyMismatch,

    /// The certificate's `notAfter` lies in the past.
    #[error(
        "the client certificate expired on {not_after}; ask the provider's administrator for a new certificate and update the connection"
    )]
    CertificateExpired { not_after: String },

    /// The certificate's `notBefore` lies in the future.
    #[error(
        "the client certificate is not valid before {not_before}; check this machine's clock or wait until then"
    )]
    CertificateNotYetValid { not_before: String },

    /// An X.509 v1 (or v2) certificate.
    #[error(
        "the client certificate is X.509 v{version}; certificates must be v3 (issue it with extensions, e.g. openssl x509 -req ... -extfile with extendedKeyUsage=clientAuth)"
    )]
    CertificateNotV3 { version: u8 },

    /// The TLS library refused the certificate/key pair for another reason.
    #[error("the client certificate and key cannot be used for TLS: {detail}")]
    InvalidIdentity { detail: String },

    /// The operating system's random source failed (needed for `state` and PKCE).
    #[error(transparent)]
    Random(#[from] crate::RandomError),

    /// Bad settings given by the caller (URLs, data center names, HTTP client setup).
    #[error("{0}")]
    Config(String),

    /// Anything else, with a message a person can act on.
    #[error("{0}")]
    Other(String),
}

impl AuthError {
    /// True when trying again later may succeed (network trouble, provider 5xx/429).
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthError::Network { .. } | AuthError::Server { .. })
    }

    /// True when only a new `authorize` run can fix it.
    pub fn needs_reauthorization(&self) -> bool {
        matches!(
            self,
            AuthError::AccountTokenExpired { .. } | AuthError::RefreshTokenNotSaved { .. }
        )
    }
}
