//! The state file: every acknowledged runtime registration, so they survive
//! a restart and a `kill -9`.
//!
//! The file is an append-only log of JSON lines. The first line names the
//! format (`{"signpost-state":1}`); each later line sets one registration
//! (`{"set":{...}}`, the whole registration) or removes one
//! (`{"remove":{"zone":...,"instance":...}}`). The last line for a name wins.
//!
//! A batch of changes is appended with one `write` and made durable with one
//! `fdatasync` before any of its requests is acknowledged, so the cost of a
//! registration does not grow with the number of registrations (rewriting a
//! whole file per change did). When the log holds many more lines than live
//! registrations, and at every start, it is compacted: the live set is
//! written to `<file>.tmp`, fsynced, renamed over the file, and the directory
//! fsynced, so a reader sees the old log or the new one, never a mix.
//!
//! A file that exists but cannot be read back completely (an incomplete or
//! malformed line, an unknown version) stops the server with an error naming
//! the file and the line: starting without those registrations would drop
//! them silently. A line is acknowledged only after it is complete on disk,
//! so an incomplete last line (a power loss during a write) was never
//! acknowledged; the error says so and the operator may delete it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::{Record, Store, StoreError, Stored, key};

/// The state file format's version.
pub const FORMAT_VERSION: u64 = 1;

/// Compact when the log has this many more lines than live registrations.
const COMPACT_SLACK: usize = 1024;

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
        /// What is wrong, and where.
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
struct Header {
    #[serde(rename = "signpost-state")]
    version: u64,
}

/// The open state file.
pub struct StateLog {
    path: PathBuf,
    file: File,
    /// Lines in the log after the header.
    lines: usize,
    /// An append failed part-way: the tail may hold a partial line, so the
    /// next save rewrites the whole file instead of appending after it.
    broken: bool,
}

impl StateLog {
    /// Reads the registrations in `path` (none if it does not exist: the
    /// first start) and rewrites it compacted, which also checks that it is
    /// writable.
    pub fn open(path: &Path) -> Result<(StateLog, Vec<Stored>), StateError> {
        let stored = read(path)?;
        let file = rewrite(path, &stored)?;
        let log = StateLog {
            path: path.to_path_buf(),
            file,
            lines: stored.len(),
            broken: false,
        };
        Ok((log, stored))
    }

    /// Appends `records` durably: when this returns Ok they survive a crash
    /// or a power loss. `live` gives every registration, for when the log is
    /// compacted or rewritten after a failed append.
    ///
    /// `live_count` is how many registrations there are: the log is compacted
    /// when it has grown to twice that, and only then is `live` called, since
    /// listing every registration on every save would make saves cost as much
    /// as the registry is large.
    fn append(
        &mut self,
        records: &[Record],
        live_count: usize,
        live: impl FnOnce() -> Vec<Stored>,
    ) -> Result<(), StateError> {
        // After a failed save, memory is ahead of the disk: even a request
        // that changes nothing must not be acknowledged until the whole
        // state has been rewritten.
        if records.is_empty() && !self.broken {
            return Ok(());
        }
        let result = if self.broken {
            Err(None)
        } else {
            let mut bytes = Vec::new();
            for r in records {
                serde_json::to_writer(&mut bytes, r).expect("records serialize");
                bytes.push(b'\n');
            }
            self.file
                .write_all(&bytes)
                .and_then(|()| self.file.sync_data())
                .map_err(Some)
        };
        match result {
            Ok(()) => {
                self.lines += records.len();
                if self.lines > live_count * 2 + COMPACT_SLACK {
                    // The records are already durable: a failed compaction
                    // leaves the old file, which is still correct, in use.
                    if let Err(problem) = self.compact(&live()) {
                        tracing::warn!(%problem, "state file not compacted; will try again");
                    }
                }
                Ok(())
            }
            Err(error) => {
                self.broken = true;
                if let Some(source) = error {
                    // Keep the caller's error; the next save rewrites.
                    return Err(StateError::Write {
                        path: self.path.clone(),
                        source,
                    });
                }
                self.compact(&live())
            }
        }
    }

    fn compact(&mut self, live: &[Stored]) -> Result<(), StateError> {
        self.file = rewrite(&self.path, live)?;
        self.lines = live.len();
        self.broken = false;
        Ok(())
    }
}

impl Store for StateLog {
    fn save(
        &mut self,
        records: &[Record],
        live_count: usize,
        live: &dyn Fn() -> Vec<Stored>,
    ) -> Result<(), StoreError> {
        Ok(self.append(records, live_count, live)?)
    }

    fn is_behind(&self) -> bool {
        self.broken
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads and replays the log.
fn read(path: &Path) -> Result<Vec<Stored>, StateError> {
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
    let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let lines: Vec<&str> = complete.lines().collect();
    if complete.len() < text.len() {
        return Err(corrupt(format!(
            "line {} is incomplete (the file was truncated, or the machine stopped during a write; an incomplete last line was never acknowledged and may be deleted)",
            lines.len() + 1
        )));
    }
    let header: Header = serde_json::from_str(lines[0]).map_err(|_| {
        corrupt(format!(
            "line 1 is not a signpost state header ({{\"signpost-state\":{FORMAT_VERSION}}})"
        ))
    })?;
    if header.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is not supported (this build reads version {FORMAT_VERSION})",
            header.version
        )));
    }
    // By name, in the order first set, so a restart keeps the order.
    let mut live: BTreeMap<(String, String), (usize, Stored)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate().skip(1) {
        let at = |message: String| corrupt(format!("line {}: {message}", i + 1));
        let record: Record = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        match record {
            Record::Set(s) => {
                let k = key(&s.registration.zone, &s.registration.instance).map_err(at)?;
                let order = live.get(&k).map_or(i, |(o, _)| *o);
                live.insert(k, (order, s));
            }
            Record::Remove(r) => {
                live.remove(&(r.zone, r.instance));
            }
        }
    }
    let mut out: Vec<(usize, Stored)> = live.into_values().collect();
    out.sort_by_key(|(order, _)| *order);
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

/// Writes `live` as a fresh log, atomically, and opens it for appending.
fn rewrite(path: &Path, live: &[Stored]) -> Result<File, StateError> {
    let write_error = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = serde_json::to_vec(&Header {
        version: FORMAT_VERSION,
    })
    .expect("the header serializes");
    bytes.push(b'\n');
    for s in live {
        serde_json::to_writer(&mut bytes, &Record::Set(s.clone())).expect("records serialize");
        bytes.push(b'\n');
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })()
    .map_err(write_error)?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::registration::Registration;
    use crate::registry::store::Removed;

    fn stored(instance: &str, expired: bool) -> Stored {
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
                check: None,
                metadata: Default::default(),
            },
            expired,
        }
    }

    fn remove(instance: &str) -> Record {
        let (zone, instance) = key("SVC.example", instance).unwrap();
        Record::Remove(Removed { zone, instance })
    }

    #[test]
    fn the_log_replays_to_the_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, none) = StateLog::open(&path).unwrap();
        assert!(none.is_empty());
        let records = [
            Record::Set(stored("a", false)),
            Record::Set(stored("b", false)),
            Record::Set(stored("c", false)),
            remove("b"),
            Record::Set(stored("a", true)),
        ];
        log.append(&records, 0, Vec::new).unwrap();
        drop(log);
        let (_, live) = StateLog::open(&path).unwrap();
        assert_eq!(live, vec![stored("a", true), stored("c", false)]);
        // Opening compacted it.
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn after_a_failed_save_even_an_empty_batch_rewrites_the_whole_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = StateLog::open(&path).unwrap();
        // As after an append that failed (disk full): "a" is in memory only.
        log.broken = true;
        log.append(&[], 1, || vec![stored("a", false)]).unwrap();
        assert!(!log.is_behind());
        let (_, replayed) = StateLog::open(&path).unwrap();
        assert_eq!(replayed.len(), 1, "the retried change reached the disk");
    }

    #[test]
    fn a_truncated_or_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = StateLog::open(&path).unwrap();
        log.append(&[Record::Set(stored("a", false))], 0, Vec::new)
            .unwrap();
        let full = fs::read(&path).unwrap();

        fs::write(&path, &full[..full.len() - 5]).unwrap();
        let e = StateLog::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("state.json is corrupt: line 2 is incomplete"),
            "{e}"
        );
        // Nothing was written over it.
        assert_eq!(fs::read(&path).unwrap(), &full[..full.len() - 5]);

        fs::write(&path, "").unwrap();
        let e = StateLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("empty"), "{e}");

        let mut damaged = full.clone();
        let at = damaged.len() - 10;
        damaged[at] = b'#';
        fs::write(&path, &damaged).unwrap();
        let e = StateLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("line 2:"), "{e}");

        fs::write(&path, "{\"signpost-state\":9}\n").unwrap();
        let e = StateLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("version 9"), "{e}");

        fs::write(&path, "{\"version\":1}\n").unwrap();
        let e = StateLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("line 1 is not a signpost state header"), "{e}");
    }
}
