//! DKIM signing (RFC 6376, RSA-SHA256 and Ed25519-SHA256 of RFC 8463) of
//! mail leaving the gateway, with mail-auth's signer.
//!
//! A message is signed with every key configured for the domain of its
//! From address. Header canonicalization is relaxed; the body's is simple
//! (mail-auth 0.13's relaxed body hash differs from other
//! implementations' when a body ends in whitespace-only lines, which would
//! make such messages fail at their destination).

use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::config::DkimSignConfig;

/// Header fields signed when the configuration names none: those RFC 6376
/// 5.4.1 recommends, From listed twice so that a second From cannot be
/// added without breaking the signature (oversigning).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
];

/// Why a signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file could not be read.
    #[error("DKIM key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error("DKIM key {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The domain or selector is not a DNS name.
    #[error("DKIM signing for {0:?}: domain and selector must be DNS names")]
    BadName(String),
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct DomainKey {
    domain: String,
    selector: String,
    key: Key,
}

/// The configured keys.
#[derive(Default)]
pub struct Signer {
    keys: Vec<DomainKey>,
}

impl Signer {
    /// Loads every configured key; the first bad one is an error naming
    /// its file.
    pub fn load(config: &[DkimSignConfig]) -> Result<Signer, SignError> {
        let mut keys = Vec::new();
        for c in config {
            let name_ok = |n: &str| {
                !n.is_empty()
                    && n.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    })
            };
            if !name_ok(&c.domain) || !name_ok(&c.selector) {
                return Err(SignError::BadName(format!("{}/{}", c.domain, c.selector)));
            }
            let mut headers: Vec<String> = c
                .headers
                .clone()
                .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
            // From is always signed, and oversigned.
            let froms = headers
                .iter()
                .filter(|h| h.eq_ignore_ascii_case("from"))
                .count();
            for _ in froms..2 {
                headers.insert(0, "From".into());
            }
            let domain = c.domain.to_ascii_lowercase();
            let key = match load_key(&c.key)? {
                Loaded::Rsa(k) => Key::Rsa(
                    DkimSigner::from_key(k)
                        .domain(domain.clone())
                        .selector(c.selector.clone())
                        .headers(headers)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Simple),
                ),
                Loaded::Ed25519(k) => Key::Ed25519(
                    DkimSigner::from_key(k)
                        .domain(domain.clone())
                        .selector(c.selector.clone())
                        .headers(headers)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Simple),
                ),
            };
            keys.push(DomainKey {
                domain,
                selector: c.selector.clone(),
                key,
            });
        }
        Ok(Signer { keys })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The DKIM-Signature fields (each ending in CRLF) to put on top of
    /// `message`: one per key of its From domain; none if there is no key
    /// for it or no From.
    pub fn sign(&self, message: &[u8]) -> Vec<String> {
        let Some(domain) = from_domain(message) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for k in self.keys.iter().filter(|k| k.domain == domain) {
            let signed = match &k.key {
                Key::Rsa(s) => s.sign(message),
                Key::Ed25519(s) => s.sign(message),
            };
            match signed {
                Ok(sig) => out.push(sig.to_header()),
                Err(e) => {
                    tracing::warn!(domain, selector = %k.selector, error = %e, "DKIM signing failed; message sent unsigned by this key")
                }
            }
        }
        out
    }
}

/// The domain of the (first) From address, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

enum Loaded {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

fn load_key(path: &Path) -> Result<Loaded, SignError> {
    let pem = std::fs::read(path).map_err(|source| SignError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| SignError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("not a PEM private key ({e})")))?;
    // PKCS#8 holds either algorithm: try Ed25519 first, then RSA.
    if let PrivateKeyDer::Pkcs8(k) = &der
        && let Ok(ed) = Ed25519Key::from_pkcs8_der(k.secret_pkcs8_der())
    {
        return Ok(Loaded::Ed25519(ed));
    }
    RsaKey::<Sha256>::from_key_der(der)
        .map(Loaded::Rsa)
        .map_err(|e| bad(format!("neither an RSA nor an Ed25519 key ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_cannot_be_used_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let config = |key: PathBuf| DkimSignConfig {
            domain: "example.org".into(),
            selector: "s1".into(),
            key,
            headers: None,
        };
        let err = Signer::load(&[config(junk.clone())]).err().unwrap();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let err = Signer::load(&[config(dir.path().join("absent.pem"))])
            .err()
            .unwrap();
        assert!(err.to_string().contains("absent.pem"), "{err}");
        let mut bad = config(junk);
        bad.domain = "exa mple.org".into();
        assert!(matches!(Signer::load(&[bad]), Err(SignError::BadName(_))));
    }

    #[test]
    fn the_from_domain_picks_the_key() {
        assert_eq!(
            from_domain(b"From: Alice <alice@Example.ORG>\r\nTo: b@x.test\r\n\r\nhi\r\n")
                .as_deref(),
            Some("example.org")
        );
        assert_eq!(from_domain(b"To: b@x.test\r\n\r\nhi\r\n"), None);
    }
}
