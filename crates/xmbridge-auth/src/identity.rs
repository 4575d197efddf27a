//! Mutual-TLS client identities: a certificate chain PEM, a private key PEM (plain PKCS#8, PKCS#1,
//! SEC1, or encrypted PKCS#8 with a pass phrase) → a `reqwest::Identity`, with every failure mapped
//! to its own clear error (docs/design/qualtrics-api.md §2.3), and the HTTP client builder that
//! carries it. It owns PEM reading, the PBES2 decryption (pkcs8), the certificate checks (X.509 v3,
//! validity dates, read with a small DER walker) and the key/certificate match check (rustls
//! `CertifiedKey`); it must not read files or make network calls.
//!
//! Decrypted key bytes live in zeroizing buffers here; the copies that rustls and reqwest make
//! internally are outside our control.

use crate::error::AuthError;
use crate::oauth::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, error_chain};
use base64::Engine as _;
use pkcs8::der::Decode as _;
use pkcs8::der::pem::LineEnding;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::SystemTime;

/// DER content of the PBES2 OID 1.2.840.113549.1.5.13.
const OID_PBES2: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x05, 0x0D];
/// 1.2.840.113549.1.5 (PKCS#5 algorithms; PBES1 ids live here).
const OID_PKCS5_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x05];
/// 1.2.840.113549.1.12.1 (PKCS#12 PBE ids, what `openssl pkcs8 -v1 PBE-SHA1-3DES` writes).
const OID_PKCS12_PBE_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x0C, 0x01];

/// A loaded client identity for mutual TLS. `Debug` shows only the validity dates.
#[derive(Clone)]
pub struct ClientIdentity {
    identity: reqwest::Identity,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// Which CAs the HTTP client trusts for the server's certificate.
#[derive(Clone, Debug, Default)]
pub enum Roots {
    /// The operating system's trust store (reqwest 0.13's platform verifier).
    #[default]
    System,
    /// Only the CA certificates in this PEM (e.g. a simulator's `ca.pem`).
    Only(Vec<u8>),
    /// The system's trust store plus the CA certificates in this PEM.
    Add(Vec<u8>),
}

/// A `reqwest::ClientBuilder` with `identity` (if any), the trusted `roots`, 30 s timeout, 10 s
/// connect timeout and redirects off; callers may override any of these.
pub fn http_client_builder(
    identity: Option<&ClientIdentity>,
    roots: &Roots,
) -> Result<reqwest::ClientBuilder, AuthError> {
    let mut b = reqwest::Client::builder()
        .timeout(DEFAULT_TIMEOUT)
        .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    let cas = |pem: &[u8]| {
        check_ca_certificates(pem)?;
        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| AuthError::PemUnreadable {
            what: "CA certificate file",
            detail: error_chain(&e),
        })
    };
    match roots {
        Roots::System => {}
        Roots::Only(pem) => b = b.tls_certs_only(cas(pem)?),
        Roots::Add(pem) => b = b.tls_certs_merge(cas(pem)?),
    }
    if let Some(id) = identity {
        b = b.identity(id.identity.clone());
    }
    Ok(b)
}

/// Checks a CA certificate file (PEM) before it is stored or used: at least one
/// `CERTIFICATE` block, each one a readable X.509 certificate. Returns how many it holds.
pub fn check_ca_certificates(pem: &[u8]) -> Result<usize, AuthError> {
    const WHAT: &str = "CA certificate file";
    let blocks = parse_pem(WHAT, pem)?;
    let certs: Vec<&Block> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
    if certs.is_empty() {
        return Err(AuthError::PemUnreadable {
            what: WHAT,
            detail: "it holds no '-----BEGIN CERTIFICATE-----' block; give the CA's certificate in PEM form (a simulator writes it as ca.pem)".into(),
        });
    }
    for (i, c) in certs.iter().enumerate() {
        if cert_info(&c.der).is_none() {
            return Err(AuthError::PemUnreadable {
                what: WHAT,
                detail: format!(
                    "certificate {} is not a valid X.509 certificate (damaged or not a certificate)",
                    i + 1
                ),
            });
        }
    }
    Ok(certs.len())
}

impl ClientIdentity {
    /// Loads and checks a certificate (chain) and its key, checking validity against the
    /// system clock. `passphrase` is needed for `ENCRYPTED PRIVATE KEY`; one trailing newline
    /// (as pass phrase files have) is ignored.
    pub fn load(
        cert_pem: &[u8],
        key_pem: &[u8],
        passphrase: Option<&SecretString>,
    ) -> Result<Self, AuthError> {
        Self::load_at(cert_pem, key_pem, passphrase, SystemTime::now())
    }

    /// [`ClientIdentity::load`], checking validity dates against `now`.
    pub fn load_at(
        cert_pem: &[u8],
        key_pem: &[u8],
        passphrase: Option<&SecretString>,
        now: SystemTime,
    ) -> Result<Self, AuthError> {
        let cert_blocks = parse_pem("certificate file", cert_pem)?;
        let certs: Vec<&Block> = cert_blocks
            .iter()
            .filter(|b| b.label == "CERTIFICATE")
            .collect();
        if certs.is_empty() {
            let hint = if cert_blocks.iter().any(|b| b.label.contains("PRIVATE KEY")) {
                " (it holds a private key: are the certificate and key files swapped?)"
            } else {
                ""
            };
            return Err(AuthError::NoCertificate { hint });
        }
        let (mut not_before, mut not_after) = (SystemTime::UNIX_EPOCH, None::<SystemTime>);
        for (i, c) in certs.iter().enumerate() {
            let info = cert_info(&c.der).ok_or_else(|| AuthError::PemUnreadable {
                what: "certificate file",
                detail: format!("certificate {} is not a valid X.509 certificate", i + 1),
            })?;
            // Only the leaf must be v3 for rustls; an expired intermediate breaks the chain too.
            if i == 0 && info.version != 3 {
                return Err(AuthError::CertificateNotV3 {
                    version: info.version,
                });
            }
            let nb: SystemTime = info.not_before.to_system_time();
            let na: SystemTime = info.not_after.to_system_time();
            if na < now {
                return Err(AuthError::CertificateExpired {
                    not_after: format!("{} (UTC){}", info.not_after, chain_note(i)),
                });
            }
            if nb > now {
                return Err(AuthError::CertificateNotYetValid {
                    not_before: format!("{} (UTC){}", info.not_before, chain_note(i)),
                });
            }
            not_before = not_before.max(nb);
            not_after = Some(not_after.map_or(na, |a| a.min(na)));
        }

        let key_blocks = parse_pem("key file", key_pem)?;
        let Some(key_block) = key_blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
            let hint = if key_blocks.iter().any(|b| b.label == "CERTIFICATE") {
                " (it holds a certificate: are the certificate and key files swapped?)"
            } else {
                ""
            };
            return Err(AuthError::NoPrivateKey { hint });
        };
        let key = match key_block.label.as_str() {
            _ if key_block.encrypted_header => return Err(AuthError::TraditionalEncryptedKey),
            "PRIVATE KEY" => Key::Pkcs8(Zeroizing::new(key_block.der.to_vec())),
            "ENCRYPTED PRIVATE KEY" => Key::Pkcs8(decrypt(&key_block.der, passphrase)?),
            "RSA PRIVATE KEY" => Key::Pkcs1(Zeroizing::new(key_block.der.to_vec())),
            "EC PRIVATE KEY" => Key::Sec1(Zeroizing::new(key_block.der.to_vec())),
            other => {
                return Err(AuthError::InvalidIdentity {
                    detail: format!(
                        "'{other}' keys are not supported; use an RSA, ECDSA or Ed25519 key in PKCS#8 form (openssl pkcs8 -topk8)"
                    ),
                });
            }
        };

        check_key_matches(&certs, &key)?;

        let mut pem = Zeroizing::new(String::new());
        for c in &certs {
            pem.push_str(&encode_pem("CERTIFICATE", &c.der)?);
        }
        pem.push_str(&Zeroizing::new(encode_pem(key.label(), key.der())?));
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            AuthError::InvalidIdentity {
                detail: error_chain(&e),
            }
        })?;
        Ok(ClientIdentity {
            identity,
            not_before,
            not_after: not_after.unwrap_or(not_before),
        })
    }

    /// [`ClientIdentity::load`], returning just the `reqwest::Identity`.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        passphrase: Option<&SecretString>,
    ) -> Result<reqwest::Identity, AuthError> {
        Ok(Self::load(cert_pem, key_pem, passphrase)?.identity)
    }

    /// The identity for `reqwest::ClientBuilder::identity`.
    pub fn identity(&self) -> &reqwest::Identity {
        &self.identity
    }

    /// The earliest `notAfter` of the chain: when mutual TLS stops working.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The latest `notBefore` of the chain.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// A `reqwest::Client` with this identity and `roots` (see [`http_client_builder`]).
    pub fn http_client(&self, roots: &Roots) -> Result<reqwest::Client, AuthError> {
        http_client_builder(Some(self), roots)?
            .build()
            .map_err(|e| AuthError::InvalidIdentity {
                detail: error_chain(&e),
            })
    }
}

fn chain_note(i: usize) -> String {
    if i == 0 {
        String::new()
    } else {
        format!(
            " — certificate {} of the chain in the certificate file",
            i + 1
        )
    }
}

fn encode_pem(label: &str, der: &[u8]) -> Result<String, AuthError> {
    pkcs8::der::pem::encode_string(label, LineEnding::LF, der).map_err(|e| {
        AuthError::InvalidIdentity {
            detail: format!("cannot re-encode the {label}: {e}"),
        }
    })
}

enum Key {
    Pkcs8(Zeroizing<Vec<u8>>),
    Pkcs1(Zeroizing<Vec<u8>>),
    Sec1(Zeroizing<Vec<u8>>),
}

impl Key {
    fn label(&self) -> &'static str {
        match self {
            Key::Pkcs8(_) => "PRIVATE KEY",
            Key::Pkcs1(_) => "RSA PRIVATE KEY",
            Key::Sec1(_) => "EC PRIVATE KEY",
        }
    }

    fn der(&self) -> &[u8] {
        match self {
            Key::Pkcs8(d) | Key::Pkcs1(d) | Key::Sec1(d) => d,
        }
    }
}

/// rustls' own check: the key loads and its public key equals the leaf certificate's.
fn check_key_matches(certs: &[&Block], key: &Key) -> Result<(), AuthError> {
    let chain: Vec<CertificateDer<'static>> = certs
        .iter()
        .map(|c| CertificateDer::from(c.der.to_vec()))
        .collect();
    let der = key.der().to_vec();
    let key_der = match key {
        Key::Pkcs8(_) => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        Key::Pkcs1(_) => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        Key::Sec1(_) => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key_der, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(AuthError::KeyMismatch)
        }
        Err(e) => Err(AuthError::InvalidIdentity {
            detail: e.to_string(),
        }),
    }
}

/// Decrypts an `ENCRYPTED PRIVATE KEY` (PBES2 only) into plain PKCS#8 DER.
fn decrypt(der: &[u8], passphrase: Option<&SecretString>) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let oid = encryption_oid(der).ok_or_else(|| AuthError::PemUnreadable {
        what: "key file",
        detail: "the ENCRYPTED PRIVATE KEY block is not valid PKCS#8".into(),
    })?;
    if oid != OID_PBES2 {
        let scheme = if oid.starts_with(OID_PKCS5_PREFIX) {
            "PKCS#5 v1.5 PBES1".to_string()
        } else if oid.starts_with(OID_PKCS12_PBE_PREFIX) {
            "a PKCS#12 PBE scheme (openssl pkcs8 -v1)".to_string()
        } else {
            format!("an unknown scheme (OID bytes {})", hex_bytes(oid))
        };
        return Err(AuthError::UnsupportedKeyEncryption { scheme });
    }
    let pass = passphrase.ok_or(AuthError::PassphraseRequired)?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der).map_err(|e| {
        AuthError::UnsupportedKeyEncryption {
            scheme: format!("PBES2 parameters this program cannot read ({e})"),
        }
    })?;
    let exact = pass.expose_secret();
    let trimmed = exact
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(exact);
    let mut candidates = vec![trimmed];
    if trimmed.len() != exact.len() {
        candidates.push(exact);
    }
    for candidate in candidates {
        match info.decrypt(candidate.as_bytes()) {
            // CBC padding can come out right by chance with a wrong pass phrase: the result
            // must also parse as a key.
            Ok(doc) if pkcs8::PrivateKeyInfoRef::from_der(doc.as_bytes()).is_ok() => {
                return Ok(Zeroizing::new(doc.as_bytes().to_vec()));
            }
            Err(pkcs8::Error::EncryptedPrivateKey(e))
                if e != pkcs8::pkcs5::Error::DecryptFailed =>
            {
                return Err(AuthError::UnsupportedKeyEncryption {
                    scheme: format!("PBES2 with parameters this program cannot use ({e})"),
                });
            }
            // Bad padding, or (about 1 in 256 wrong pass phrases) good padding around bytes
            // that are not DER: the pass phrase is wrong either way.
            Ok(_) | Err(_) => {}
        }
    }
    Err(AuthError::PassphraseWrong)
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- PEM ----------------------------------------------------------------------------------

/// One PEM block. `der` is zeroized on drop (key blocks are secret).
struct Block {
    label: String,
    /// Had a `Proc-Type: 4,ENCRYPTED` header (traditional OpenSSL encryption).
    encrypted_header: bool,
    der: Zeroizing<Vec<u8>>,
}

/// Splits PEM text into blocks; text outside blocks is ignored (as OpenSSL does).
fn parse_pem(what: &'static str, input: &[u8]) -> Result<Vec<Block>, AuthError> {
    let unreadable = |detail: String| AuthError::PemUnreadable { what, detail };
    let Ok(text) = std::str::from_utf8(input) else {
        return Err(unreadable(if input.first() == Some(&0x30) {
            "it looks like binary DER; convert it to PEM (openssl x509 -inform der -in FILE -out FILE.pem, or openssl pkcs8 -inform der ... for a key)".into()
        } else {
            "it is not text".into()
        }));
    };
    let mut blocks = Vec::new();
    let mut current: Option<(String, bool, Zeroizing<String>)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some((open, ..)) = &current {
                return Err(unreadable(format!(
                    "line {}: a new block starts before '-----END {open}-----'",
                    n + 1
                )));
            }
            current = Some((label.to_string(), false, Zeroizing::new(String::new())));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            let Some((open, enc, body)) = current.take() else {
                return Err(unreadable(format!(
                    "line {}: '-----END {label}-----' without a BEGIN",
                    n + 1
                )));
            };
            if open != label {
                return Err(unreadable(format!(
                    "line {}: '-----BEGIN {open}-----' ends with '-----END {label}-----'",
                    n + 1
                )));
            }
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| {
                    unreadable(format!(
                        "the {open} block is not valid base64 (damaged file?)"
                    ))
                })?;
            blocks.push(Block {
                label: open,
                encrypted_header: enc,
                der: Zeroizing::new(der),
            });
        } else if let Some((_, enc, body)) = current.as_mut() {
            if line.contains(':') {
                // RFC 1421 headers (traditional OpenSSL encryption).
                if line.to_ascii_uppercase().starts_with("PROC-TYPE") && line.contains("ENCRYPTED")
                {
                    *enc = true;
                }
            } else {
                body.push_str(line);
            }
        }
    }
    if let Some((open, ..)) = current {
        return Err(unreadable(format!(
            "'-----BEGIN {open}-----' has no END line (truncated file?)"
        )));
    }
    if blocks.is_empty() {
        return Err(unreadable(
            "no '-----BEGIN ...-----' block found".to_string(),
        ));
    }
    Ok(blocks)
}

// ---- a minimal DER walker for the few certificate fields we check ------------------------

/// `(tag, content, whole TLV, rest)` of one DER element.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The first DER element of `input`.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > input.len() {
        return None;
    }
    Some((tag, &input[hdr..end], &input[..end], &input[end..]))
}

struct CertInfo {
    version: u8,
    not_before: pkcs8::der::DateTime,
    not_after: pkcs8::der::DateTime,
}

fn der_time(tag: u8, whole: &[u8]) -> Option<pkcs8::der::DateTime> {
    match tag {
        0x17 => pkcs8::der::asn1::UtcTime::from_der(whole)
            .ok()
            .map(|t| t.to_date_time()),
        0x18 => pkcs8::der::asn1::GeneralizedTime::from_der(whole)
            .ok()
            .map(|t| t.to_date_time()),
        _ => None,
    }
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }
fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (0x30, cert, ..) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, ..) = tlv(cert)? else {
        return None;
    };
    let (tag, content, _, mut rest) = tlv(tbs)?;
    let version = if tag == 0xA0 {
        let (0x02, v, ..) = tlv(content)? else {
            return None;
        };
        let v = *v.last()?;
        v.checked_add(1)?
    } else {
        // No version field: v1; what we read was the serial number.
        rest = tbs;
        1
    };
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        let (_, _, _, r) = tlv(rest)?;
        rest = r;
    }
    let (0x30, validity, ..) = tlv(rest)? else {
        return None;
    };
    let (t1, _, w1, r) = tlv(validity)?;
    let (t2, _, w2, _) = tlv(r)?;
    Some(CertInfo {
        version,
        not_before: der_time(t1, w1)?,
        not_after: der_time(t2, w2)?,
    })
}

/// OID content bytes of an `EncryptedPrivateKeyInfo`'s algorithm.
fn encryption_oid(der: &[u8]) -> Option<&[u8]> {
    let (0x30, outer, ..) = tlv(der)? else {
        return None;
    };
    let (0x30, alg, ..) = tlv(outer)? else {
        return None;
    };
    let (0x06, oid, ..) = tlv(alg)? else {
        return None;
    };
    Some(oid)
}
