//! The directory: who may authenticate with SMTP AUTH, and with what
//! password. Read once at start from `[directory]` (inline users and a
//! users file, `NAME:HASH` per line).
//!
//! Distrusts: what a client sends as a password. It is only ever handed to
//! the hash's own verifier (constant-time), on a blocking thread because
//! argon2 is slow on purpose; an unknown user costs the same verification
//! as a known one, so timing does not tell which names exist.
//!
//! Never: stores, logs or compares a password in clear. Hashes are argon2
//! (`$argon2id$...`, what `weir hash-password` writes) or SHA-512 crypt
//! (`$6$...`, as Dovecot and Postfix set-ups keep them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::config::DirectoryConfig;

/// Why the directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The users file could not be read.
    #[error("directory.users_file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A user's hash is not one Weir can check.
    #[error("{place}: user {user:?}: {reason}")]
    Hash {
        /// Where the user is defined.
        place: String,
        /// The user.
        user: String,
        /// What is wrong with the hash.
        reason: String,
    },
}

/// A stored password hash.
#[derive(Debug, Clone)]
enum Hash {
    /// A PHC string of argon2 (`$argon2id$v=19$m=...`).
    Argon2(String),
    /// SHA-512 crypt (`$6$rounds=...$salt$hash`).
    Sha512Crypt(String),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2") {
            PasswordHash::new(text).map_err(|e| format!("not an argon2 hash: {e}"))?;
            Ok(Hash::Argon2(text.to_string()))
        } else if text.starts_with("$6$") {
            Ok(Hash::Sha512Crypt(text.to_string()))
        } else {
            Err("the password must be a hash: argon2 ($argon2id$..., from `weir hash-password`) or SHA-512 crypt ($6$...)".into())
        }
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Argon2(phc) => PasswordHash::new(phc).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            }),
            Hash::Sha512Crypt(s) => sha_crypt::sha512_check(password, s).is_ok(),
        }
    }
}

/// The users who may authenticate.
#[derive(Debug)]
pub struct Directory {
    /// By lower-cased name: the name as configured, and its hash.
    users: HashMap<String, (String, Hash)>,
    /// A user's hash, verified for unknown names so that they cost what
    /// known ones do (the same algorithm and parameters).
    decoy: Option<Hash>,
    /// Verifications at once, at most one per core: argon2 costs tens of
    /// milliseconds of CPU by design, and a flood of AUTH attempts must
    /// not take every blocking thread (the spool's and the quarantine's
    /// disk work runs on them too).
    slots: tokio::sync::Semaphore,
}

impl Directory {
    /// Reads `[directory]`: the users file, then the inline users (which
    /// win).
    pub fn load(config: &DirectoryConfig) -> Result<Directory, DirectoryError> {
        let mut users = HashMap::new();
        if let Some(path) = &config.users_file {
            read_file(path, &mut users)?;
        }
        for (name, hash) in &config.users {
            let hash = Hash::parse(hash).map_err(|reason| DirectoryError::Hash {
                place: "directory.users".into(),
                user: name.clone(),
                reason,
            })?;
            users.insert(name.to_lowercase(), (name.clone(), hash));
        }
        let decoy = users.values().next().map(|(_, hash)| hash.clone());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Directory {
            users,
            decoy,
            slots: tokio::sync::Semaphore::new(cores),
        })
    }

    /// Whether anyone may authenticate.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user's name as configured if `password` is theirs (names are
    /// compared case-insensitively). Runs the verification on a blocking
    /// thread, when one of the directory's slots is free.
    pub async fn verify(self: &Arc<Self>, user: &str, password: &str) -> Option<String> {
        let _slot = self.slots.acquire().await.ok()?;
        let (me, user, password) = (self.clone(), user.to_lowercase(), password.to_string());
        tokio::task::spawn_blocking(move || match me.users.get(&user) {
            Some((name, hash)) => hash.verify(&password).then(|| name.clone()),
            None => {
                if let Some(decoy) = &me.decoy {
                    decoy.verify(&password);
                }
                None
            }
        })
        .await
        .ok()
        .flatten()
    }
}

fn read_file(
    path: &Path,
    users: &mut HashMap<String, (String, Hash)>,
) -> Result<(), DirectoryError> {
    let text = std::fs::read_to_string(path).map_err(|e| DirectoryError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let place = format!("{}, line {}", path.display(), n + 1);
        let Some((name, hash)) = line.split_once(':') else {
            return Err(DirectoryError::Hash {
                place,
                user: line.chars().take(40).collect(),
                reason: "a line is NAME:HASH".into(),
            });
        };
        let hash = Hash::parse(hash.trim()).map_err(|reason| DirectoryError::Hash {
            place,
            user: name.to_string(),
            reason,
        })?;
        users.insert(name.trim().to_lowercase(), (name.trim().to_string(), hash));
    }
    Ok(())
}

/// An argon2id hash of `password` with a fresh salt and the crate's
/// default cost (what `weir hash-password` prints).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password with a generated salt")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_from_the_file_and_the_table_and_only_their_hashes_verify() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        // SHA-512 crypt of "secret" with salt "saltsalt"
        // (`openssl passwd -6 -salt saltsalt secret`).
        let sha = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        std::fs::write(&file, format!("# users\nBob:{sha}\n\n")).unwrap();
        let config = DirectoryConfig {
            users_file: Some(file.clone()),
            users: [("alice".to_string(), hash_password("wonderland"))].into(),
        };
        let d = Arc::new(Directory::load(&config).unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            assert_eq!(
                d.verify("ALICE", "wonderland").await.as_deref(),
                Some("alice")
            );
            assert_eq!(d.verify("alice", "Wonderland").await, None);
            assert_eq!(d.verify("bob", "secret").await.as_deref(), Some("Bob"));
            assert_eq!(d.verify("bob", "secrets").await, None);
            assert_eq!(d.verify("carol", "wonderland").await, None);
        });
        // A clear-text password is refused at load, naming the place.
        std::fs::write(&file, "carol:plain\n").unwrap();
        let err = Directory::load(&DirectoryConfig {
            users_file: Some(file),
            users: Default::default(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 1") && err.contains("carol"), "{err}");
    }
}
