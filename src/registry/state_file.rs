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
//! One server per state file: [`StateLock`] holds an exclusive `flock` on
//! `<file>.lock` for the server's life, taken before the state file is read.
//! The lock is on a file of its own because compaction renames a new inode
//! over the state file's path, and a lock on the old inode would no longer
//! guard the path. [`StateLog::open`] only reads; the first write comes from
//! [`StateLog::prepare`], once everything else that can stop a start has been
//! checked, so a refused start leaves the state file as it found it.
//!
//! A file that exists but cannot be read back completely (an incomplete or
//! malformed line, an unknown version) stops the server with an error naming
//! the file and the line: starting without those registrations would drop
//! them silently. A line is acknowledged only after it is complete on disk,
//! so an incomplete last line (a power loss during a write) was never
//! acknowledged; the error says so and the operator may delete it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    /// Another server holds its lock.
    #[error(
        "state file {} is in use by another signpost server{} (it holds the lock on {}); stop that server, or give this one another --state",
        path.display(),
        holder.map(|pid| format!(" (process {pid})")).unwrap_or_default(),
        lock.display()
    )]
    InUse {
        /// The state file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// The process that holds it, as it wrote in the lock file.
        holder: Option<u32>,
    },
    /// Its lock file could not be created or locked.
    #[error("cannot lock state file {}: {}: {source}", path.display(), lock.display())]
    Lock {
        /// The state file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The exclusive lock on a state file, held while the server runs. Its
/// file, `<state>.lock`, holds the owner's process ID and is removed when
/// the lock is dropped (a `kill -9` leaves it, unlocked and harmless).
pub struct StateLock {
    path: PathBuf,
    file: File,
}

impl StateLock {
    /// Locks the state file at `state`, or says which server has it.
    pub fn acquire(state: &Path) -> Result<StateLock, StateError> {
        let mut name = state.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let path = state.with_file_name(name);
        let lock_error = |source| StateError::Lock {
            path: state.to_path_buf(),
            lock: path.clone(),
            source,
        };
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(lock_error)?;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::WouldBlock {
                    return Err(lock_error(error));
                }
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StateError::InUse {
                    path: state.to_path_buf(),
                    lock: path,
                    holder: text.trim().parse().ok(),
                });
            }
            // A server that stopped removes its lock file: if it did so
            // between our open and our lock, ours is locked but unlinked, and
            // the next server would create and lock another. Start again.
            let ours = file.metadata().map_err(lock_error)?;
            match fs::metadata(&path) {
                Ok(m) if (m.dev(), m.ino()) == (ours.dev(), ours.ino()) => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(lock_error(e)),
            }
            // Only for the error message of a second server: a full disk
            // must not stop this one.
            let _ = file
                .set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()));
            return Ok(StateLock { path, file });
        }
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Removed while still locked, and only if it is still ours.
        if let (Ok(m), Ok(ours)) = (fs::metadata(&self.path), self.file.metadata())
            && (m.dev(), m.ino()) == (ours.dev(), ours.ino())
        {
            let _ = fs::remove_file(&self.path);
        }
    }
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
    /// Open for appending; none until [`StateLog::prepare`].
    file: Option<File>,
    /// Lines in the log after the header.
    lines: usize,
    /// An append failed part-way: the tail may hold a partial line, so the
    /// next save rewrites the whole file instead of appending after it.
    broken: bool,
    /// Held as long as the log is open.
    _lock: StateLock,
}

impl StateLog {
    /// Reads the registrations in `path` (none if it does not exist: the
    /// first start), under `lock`. Nothing is written until
    /// [`StateLog::prepare`].
    pub fn open(path: &Path, lock: StateLock) -> Result<(StateLog, Vec<Stored>), StateError> {
        let stored = read(path)?;
        let log = StateLog {
            path: path.to_path_buf(),
            file: None,
            lines: stored.len(),
            broken: false,
            _lock: lock,
        };
        Ok((log, stored))
    }

    /// Makes the log ready for appending: rewrites it compacted, which also
    /// checks that it is writable. `live` lists the registrations.
    pub fn prepare(&mut self, live: impl FnOnce() -> Vec<Stored>) -> Result<(), StateError> {
        self.compact(&live())
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
            let file = self.file.as_mut().expect("prepared before the first save");
            file.write_all(&bytes)
                .and_then(|()| file.sync_data())
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
        self.file = Some(rewrite(&self.path, live)?);
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

    /// Opens as the server does: lock, read, prepare.
    fn open(path: &Path) -> Result<(StateLog, Vec<Stored>), StateError> {
        let (mut log, stored) = StateLog::open(path, StateLock::acquire(path)?)?;
        log.prepare(|| stored.clone())?;
        Ok((log, stored))
    }

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
        let (mut log, none) = open(&path).unwrap();
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
        let (_, live) = open(&path).unwrap();
        assert_eq!(live, vec![stored("a", true), stored("c", false)]);
        // Opening compacted it.
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn after_a_failed_save_even_an_empty_batch_rewrites_the_whole_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = open(&path).unwrap();
        // As after an append that failed (disk full): "a" is in memory only.
        log.broken = true;
        log.append(&[], 1, || vec![stored("a", false)]).unwrap();
        assert!(!log.is_behind());
        let replayed = read(&path).unwrap();
        assert_eq!(replayed.len(), 1, "the retried change reached the disk");
    }

    #[test]
    fn a_truncated_or_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = open(&path).unwrap();
        log.append(&[Record::Set(stored("a", false))], 0, Vec::new)
            .unwrap();
        let full = fs::read(&path).unwrap();

        drop(log);
        fs::write(&path, &full[..full.len() - 5]).unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(
            e.contains("state.json is corrupt: line 2 is incomplete"),
            "{e}"
        );
        // Nothing was written over it.
        assert_eq!(fs::read(&path).unwrap(), &full[..full.len() - 5]);

        fs::write(&path, "").unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("empty"), "{e}");

        let mut damaged = full.clone();
        let at = damaged.len() - 10;
        damaged[at] = b'#';
        fs::write(&path, &damaged).unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("line 2:"), "{e}");

        fs::write(&path, "{\"signpost-state\":9}\n").unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("version 9"), "{e}");

        fs::write(&path, "{\"version\":1}\n").unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("line 1 is not a signpost state header"), "{e}");
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_file_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let lock = StateLock::acquire(&path).unwrap();
        let e = StateLock::acquire(&path).err().unwrap().to_string();
        let expected = format!(
            "state file {} is in use by another signpost server (process {})",
            path.display(),
            std::process::id()
        );
        assert!(e.contains(&expected), "{e}");
        assert!(e.contains("state.json.lock"), "{e}");
        drop(lock);
        assert!(!dir.path().join("state.json.lock").exists());
        let _again = StateLock::acquire(&path).unwrap();
    }
}
