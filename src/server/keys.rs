//! Scoped API keys: the keys file (`tilebox server --keys-file`), its secrets and their hashes.
//!
//! The file is one JSON document, `{"keys": [{"name", "scope", "clusters", "sha256",
//! "created_at"}]}`, written only by `tilebox server keys` (a temporary file renamed over
//! it, so a reader never sees half a file). It holds no secret: a key's secret is 32 random
//! bytes, shown once when it is created, and the file keeps the SHA-256 of the secret's
//! text. A fast hash is enough here, unlike for passwords: a 256-bit random secret cannot be
//! guessed, so nothing is gained by making each guess slow.

use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the text of every secret starts with (so a leaked one is recognisable in logs).
pub const SECRET_PREFIX: &str = "tbk_";
/// The `clusters` entry that means every cluster.
pub const ALL_CLUSTERS: &str = "*";

/// What reading or writing a keys file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the keys file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the keys file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the keys file {path} is malformed at line {line}, column {column}")]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("the keys file {path} has two keys named `{name}`")]
    DuplicateName { path: PathBuf, name: String },
    #[error("key `{name}` already exists in {path}")]
    Exists { path: PathBuf, name: String },
    #[error("no key named `{name}` in {path}")]
    NotFound { path: PathBuf, name: String },
    #[error("invalid key name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    InvalidName { name: String },
    #[error("key `{name}` has scope `runner` but no cluster: give at least one (`*` for all)")]
    RunnerWithoutClusters { name: String },
    #[error("key `{name}` has scope `{scope}`, which takes no clusters (only runner keys do)")]
    ClustersWithoutRunner { name: String, scope: Scope },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a key may do; the permission table is [`crate::server::auth::Principal::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Everything.
    Admin,
    /// Claim, report, extend leases, export telemetry, watch deployments and download
    /// artifacts, on its clusters only.
    Runner,
    /// Queries: jobs, tasks, clusters, workflows, logs, spans, artifacts.
    ReadOnly,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Scope::Admin => "admin",
            Scope::Runner => "runner",
            Scope::ReadOnly => "read-only",
        })
    }
}

/// One key as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub name: String,
    pub scope: Scope,
    /// For runner keys: the cluster slugs it may serve, or `["*"]` for all.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Hex SHA-256 of the secret's text.
    pub sha256: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub keys: Vec<Key>,
}

/// The hex SHA-256 of a secret's text, as the file keeps it.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret: [`SECRET_PREFIX`] and 32 random bytes from the OS-seeded generator, in hex.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_.".contains(character));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
        })
    }
}

fn check_key(key: &Key) -> Result<()> {
    check_name(&key.name)?;
    match key.scope {
        Scope::Runner if key.clusters.is_empty() => Err(Error::RunnerWithoutClusters {
            name: key.name.clone(),
        }),
        Scope::Admin | Scope::ReadOnly if !key.clusters.is_empty() => {
            Err(Error::ClustersWithoutRunner {
                name: key.name.clone(),
                scope: key.scope,
            })
        }
        _ => Ok(()),
    }
}

/// Parses the text of a keys file; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<KeysFile> {
    let file: KeysFile = serde_json::from_str(text).map_err(|source| Error::Malformed {
        path: path.to_path_buf(),
        line: source.line(),
        column: source.column(),
        source,
    })?;
    let mut names = std::collections::HashSet::new();
    for key in &file.keys {
        check_key(key)?;
        if !names.insert(key.name.as_str()) {
            return Err(Error::DuplicateName {
                path: path.to_path_buf(),
                name: key.name.clone(),
            });
        }
    }
    Ok(file)
}

/// Reads a keys file; a missing file is an empty one (for `keys create` and `keys list`).
pub fn load_or_empty(path: &Path) -> Result<KeysFile> {
    match fs_err::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KeysFile::default()),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a keys file that must exist (the server's).
pub fn load(path: &Path) -> Result<KeysFile> {
    let text = fs_err::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Replaces the file at once: a temporary file beside it, synced, renamed over it.
pub fn save(path: &Path, file: &KeysFile) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_string_pretty(file).expect("a keys file always serializes");
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys".to_string());
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4()));
    let written = (|| {
        use std::io::Write;
        let mut options = fs_err::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use fs_err::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut handle = options.open(&temporary)?;
        handle.write_all(text.as_bytes())?;
        handle.sync_all()?;
        fs_err::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs_err::remove_file(&temporary);
    }
    written.map_err(write_error)
}

/// Adds a key to the file and returns its secret (the only time it is shown).
pub fn create(
    path: &Path,
    name: &str,
    scope: Scope,
    clusters: Vec<String>,
) -> Result<(Key, String)> {
    let mut file = load_or_empty(path)?;
    if file.keys.iter().any(|key| key.name == name) {
        return Err(Error::Exists {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    let secret = generate_secret();
    let key = Key {
        name: name.to_string(),
        scope,
        clusters,
        sha256: hash_secret(&secret),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    check_key(&key)?;
    file.keys.push(key.clone());
    save(path, &file)?;
    Ok((key, secret))
}

/// Gives a key a new secret, keeping its name, scope and clusters; the old secret stops
/// working when the server next reads the file.
pub fn rotate(path: &Path, name: &str) -> Result<(Key, String)> {
    let mut file = load(path)?;
    let Some(key) = file.keys.iter_mut().find(|key| key.name == name) else {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    };
    let secret = generate_secret();
    key.sha256 = hash_secret(&secret);
    key.created_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let key = key.clone();
    save(path, &file)?;
    Ok((key, secret))
}

/// Removes a key from the file.
pub fn revoke(path: &Path, name: &str) -> Result<Key> {
    let mut file = load(path)?;
    let Some(index) = file.keys.iter().position(|key| key.name == name) else {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    };
    let key = file.keys.remove(index);
    save(path, &file)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let first = generate_secret();
        let second = generate_secret();
        assert_ne!(first, second);
        assert_eq!(first.len(), SECRET_PREFIX.len() + 64);
        assert_eq!(hash_secret("abc").len(), 64);
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_files_name_their_line() {
        let error = parse(Path::new("/k.json"), "{\"keys\": [\n  {\"name\": 1}\n]}").unwrap_err();
        assert!(
            matches!(error, Error::Malformed { line: 2, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("/k.json"));
    }

    #[test]
    fn runner_keys_need_clusters_and_others_take_none() {
        let key = |scope, clusters: &[&str]| Key {
            name: "k".into(),
            scope,
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            sha256: String::new(),
            created_at: String::new(),
        };
        assert!(check_key(&key(Scope::Runner, &[])).is_err());
        assert!(check_key(&key(Scope::Runner, &["gpu"])).is_ok());
        assert!(check_key(&key(Scope::Admin, &["gpu"])).is_err());
        assert!(check_key(&key(Scope::ReadOnly, &[])).is_ok());
    }
}
