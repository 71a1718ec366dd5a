//! The state file: every acknowledged runtime registration, so they survive
//! a restart and a `kill -9`.
//!
//! The whole set is written as one JSON document to `<file>.tmp`, fsynced,
//! renamed over the file, and the directory fsynced, before any request that
//! changed it is acknowledged. A reader therefore sees either the previous
//! complete file or the new complete file, never a mix. Requests that queue up
//! while a write is in progress share the next write (group commit).
//!
//! A file that exists but cannot be read back (truncated, edited into invalid
//! JSON, an unknown version) stops the server with an error naming it: starting
//! empty would silently drop every registration at the next write.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::Stored;

/// The state file format's version.
pub const FORMAT_VERSION: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It exists but could not be read.
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It was read but is not a valid state file.
    #[error(
        "state file {} is corrupt: {message}; refusing to start rather than lose its registrations (repair it, or move it aside to start without them)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// It could not be written.
    #[error("cannot write state file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File1 {
    version: u32,
    registrations: Vec<Stored>,
}

/// Reads the registrations in `path`; a missing file is an empty set (the
/// first start).
pub fn load(path: &Path) -> Result<Vec<Stored>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    // The version is checked first so that a newer file gets a clear message
    // rather than an unknown-field error.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "format version {v} is not supported (this build reads version {FORMAT_VERSION})"
            )));
        }
        None => return Err(corrupt("no `version` field".into())),
    }
    let file: File1 = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    Ok(file.registrations)
}

/// Writes `registrations` to `path` atomically and durably: when this
/// returns Ok, the file holds them even if the machine loses power.
pub fn save(path: &Path, registrations: Vec<Stored>) -> Result<(), StateError> {
    let file = File1 {
        version: FORMAT_VERSION,
        registrations,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).expect("state serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Checks at startup that the state file's directory is writable, so a
/// mistake shows at once rather than at the first registration.
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    File::create(&tmp)
        .and_then(|_| fs::remove_file(&tmp))
        .map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::Registration;

    fn stored(instance: &str) -> Stored {
        Stored {
            registration: Registration {
                zone: "svc.example".into(),
                service: "web".into(),
                protocol: Default::default(),
                instance: instance.into(),
                address: vec!["10.0.0.1".into()],
                target: None,
                port: 80,
                weight: None,
                priority: None,
                tags: vec![],
                ttl: Some(5),
            },
            expired: instance == "b",
        }
    }

    #[test]
    fn round_trip_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).unwrap(), vec![]);
        save(&path, vec![stored("a"), stored("b")]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![stored("a"), stored("b")]);
    }

    #[test]
    fn truncated_or_empty_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, vec![stored("a")]).unwrap();
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() / 2]).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json is corrupt"), "{e}");
        fs::write(&path, "").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("empty"));
        fs::write(&path, r#"{"version":9,"registrations":[]}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 9"));
    }
}
