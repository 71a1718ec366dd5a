//! The state file: every acknowledged runtime registration, so they survive
//! a restart and a `kill -9`.
//!
//! The file is an append-only log of JSON lines. The first line names the
//! format (`{"signpost-state":2}`); each later line sets one registration
//! (`{"set":{...}}`, the whole registration) or removes one
//! (`{"remove":{"zone":...,"instance":...}}`). The last line for a name wins.
//!
//! In format 2 each of those lines ends with its checksum, so that a line
//! damaged on disk is refused rather than read as another registration:
//! `{"set":{...},"crc":"1a2b3c4d"}`, where the checksum is the CRC32C, in 8
//! lowercase hex digits, of the line without it (`{"set":{...}}`, the bytes
//! before `,"crc":` followed by `}`). Format 1, the same lines without
//! checksums, is still read, appended to in its own format, and rewritten in
//! format 2 at the first compaction (tried at every start).
//!
//! A batch of changes is appended with one `write` and made durable with one
//! `fdatasync` before any of its requests is acknowledged, so the cost of a
//! registration does not grow with the number of registrations (rewriting a
//! whole file per change did). When the log holds many more lines than live
//! registrations (checked after a save and at start), it is compacted: the
//! live set is written to `<file>.tmp`, fsynced, renamed over the file, and
//! the directory fsynced, so a reader sees the old log or the new one, never
//! a mix. A compaction that fails (a full disk) leaves the old log in use;
//! start-up only reads the log unless it needs compacting, so a server
//! starts, and serves its registrations, on a full disk.
//!
//! A save that fails (a full disk) is cut back with `ftruncate` to where the
//! last good line ended, so the file reads as it did: a restart needs no
//! repair and never sees the refused changes. The writer takes the refused
//! registrations and removals back in memory too, so a refusal means that
//! nothing changed. What else memory holds that the file does not (an
//! expiry, a heartbeat that revived an instance) is appended by the next save
//! that succeeds, read back from the file: the file catches up without a
//! whole rewrite.
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
//! malformed line, a line that fails its checksum, an unknown version) stops
//! the server with an error naming
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

use super::store::{Record, Removed, Store, StoreError, Stored, key};

/// The state file format's version, as written.
pub const FORMAT_VERSION: u64 = 2;

/// The oldest version still read (lines without checksums).
const FIRST_VERSION: u64 = 1;

/// The checksum of a line: CRC32C (Castagnoli), as in iSCSI and ext4.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What follows a line's record in format 2: `,"crc":"` 8 hex digits `"}`.
const CRC_PREFIX: &str = ",\"crc\":\"";
const CRC_SUFFIX_LEN: usize = CRC_PREFIX.len() + 8 + 2;

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
    /// A save could not be appended; the file was cut back to what it held.
    #[error(
        "cannot write state file {}: {source} (the file holds what it held before this change)",
        path.display()
    )]
    Append {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
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
    /// Where the last complete, durable line ends: a failed append is cut
    /// back to here.
    len: u64,
    /// Lines in the log after the header.
    lines: usize,
    /// The format of the file's lines; appends keep to it.
    version: u64,
    /// A save failed: memory holds changes the file does not, and the next
    /// save appends whatever differs, so a retried request that changes
    /// nothing in memory is still saved before it is acknowledged.
    behind: bool,
    /// A failed append could not be cut back: the tail may hold a partial
    /// line, so the next save rewrites the whole file.
    broken: bool,
    /// Held as long as the log is open.
    _lock: StateLock,
}

impl StateLog {
    /// Reads the registrations in `path` (none if it does not exist: the
    /// first start), under `lock`, and opens it for appending, which checks
    /// that it is writable. Nothing is written until [`StateLog::prepare`].
    pub fn open(path: &Path, lock: StateLock) -> Result<(StateLog, Vec<Stored>), StateError> {
        let (stored, lines, version) = read(path)?;
        let write_error = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = match OpenOptions::new().append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(write_error(e)),
        };
        let len = match &file {
            Some(f) => f.metadata().map_err(write_error)?.len(),
            None => 0,
        };
        let log = StateLog {
            path: path.to_path_buf(),
            file,
            len,
            lines,
            version,
            behind: false,
            broken: false,
            _lock: lock,
        };
        Ok((log, stored))
    }

    /// Makes the log ready for appending: creates it on the first start,
    /// and compacts it if it has grown enough to need it or is in an older
    /// format. A compaction that fails (a full disk) leaves the file as it
    /// is, in use: the server starts from a file it can read without any
    /// free space.
    pub fn prepare(&mut self, live: impl FnOnce() -> Vec<Stored>) -> Result<(), StateError> {
        if self.file.is_none() {
            return self.compact(&[]);
        }
        let live = live();
        if (self.lines > live.len() * 2 + COMPACT_SLACK || self.version < FORMAT_VERSION)
            && let Err(problem) = self.compact(&live)
        {
            tracing::warn!(%problem, "state file not compacted; will try again");
        }
        Ok(())
    }

    /// Appends `records` durably: when this returns Ok they survive a crash
    /// or a power loss. `live` gives every registration, for when the log is
    /// compacted or has to catch up after a failed save.
    ///
    /// `live_count` is how many registrations there are: the log is compacted
    /// when it has grown to twice that, and only then is `live` called, since
    /// listing every registration on every save would make saves cost as much
    /// as the registry is large.
    fn append(
        &mut self,
        records: &[Record],
        live_count: usize,
        live: impl Fn() -> Vec<Stored>,
    ) -> Result<(), StateError> {
        if self.broken {
            return self.compact(&live());
        }
        let catch_up;
        let records = if self.behind {
            catch_up = self.differences(live())?;
            &catch_up[..]
        } else {
            records
        };
        if records.is_empty() {
            self.behind = false;
            return Ok(());
        }
        let mut bytes = Vec::new();
        for r in records {
            encode(r, self.version, &mut bytes);
        }
        let file = self.file.as_mut().expect("prepared before the first save");
        if let Err(source) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            // Cut a partial line (a full disk) back off, so the file reads
            // as it did: a restart needs no repair, and never sees a change
            // that was refused. Shrinking needs no free space.
            if file
                .set_len(self.len)
                .and_then(|()| file.sync_data())
                .is_err()
            {
                self.broken = true;
            }
            self.behind = true;
            return Err(StateError::Append {
                path: self.path.clone(),
                source,
            });
        }
        self.len += bytes.len() as u64;
        self.lines += records.len();
        self.behind = false;
        if self.lines > live_count * 2 + COMPACT_SLACK {
            // The records are already durable: a failed compaction
            // leaves the old file, which is still correct, in use.
            if let Err(problem) = self.compact(&live()) {
                tracing::warn!(%problem, "state file not compacted; will try again");
            }
        }
        Ok(())
    }

    /// What to append for the file to hold `live`: the file is read back,
    /// since after a failed save it is the only record of what it holds.
    fn differences(&self, live: Vec<Stored>) -> Result<Vec<Record>, StateError> {
        let mut on_disk: BTreeMap<(String, String), Stored> = BTreeMap::new();
        for s in read(&self.path)?.0 {
            on_disk.insert(stored_key(&s), s);
        }
        let mut records = Vec::new();
        for s in live {
            if on_disk.remove(&stored_key(&s)).as_ref() != Some(&s) {
                records.push(Record::Set(s));
            }
        }
        for (zone, instance) in on_disk.into_keys() {
            records.push(Record::Remove(Removed { zone, instance }));
        }
        Ok(records)
    }

    fn compact(&mut self, live: &[Stored]) -> Result<(), StateError> {
        let (file, len) = rewrite(&self.path, live)?;
        self.file = Some(file);
        self.len = len;
        self.lines = live.len();
        self.version = FORMAT_VERSION;
        self.behind = false;
        self.broken = false;
        Ok(())
    }
}

/// The name a stored registration is kept under.
fn stored_key(s: &Stored) -> (String, String) {
    key(&s.registration.zone, &s.registration.instance).unwrap_or_else(|_| {
        (
            s.registration.zone.to_ascii_lowercase(),
            s.registration.instance.to_ascii_lowercase(),
        )
    })
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
        self.behind || self.broken
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Appends `record` as one line of the format `version` to `out`.
fn encode(record: &Record, version: u64, out: &mut Vec<u8>) {
    let start = out.len();
    serde_json::to_writer(&mut *out, record).expect("records serialize");
    if version >= 2 {
        let crc = CRC32C.checksum(&out[start..]);
        // The object's closing brace moves after the checksum.
        out.pop();
        write!(out, "{CRC_PREFIX}{crc:08x}\"}}").expect("writing to a Vec");
    }
    out.push(b'\n');
}

/// The record in one line of the format `version`, checked against its
/// checksum; the error says what is wrong, to follow "line N".
fn decode(line: &str, version: u64) -> Result<Record, String> {
    if version < 2 {
        return serde_json::from_str(line).map_err(invalid);
    }
    let Some(split) = line.len().checked_sub(CRC_SUFFIX_LEN) else {
        return Err("has no checksum (,\"crc\":\"...\" at its end)".into());
    };
    let (body, suffix) = (line.as_bytes()[..split].to_vec(), &line[split..]);
    let hex = suffix
        .strip_prefix(CRC_PREFIX)
        .and_then(|s| s.strip_suffix("\"}"))
        .ok_or("has no checksum (,\"crc\":\"...\" at its end)")?;
    let mut body = body;
    body.push(b'}');
    if u32::from_str_radix(hex, 16).ok() != Some(CRC32C.checksum(&body)) {
        return Err("fails its checksum: it changed after it was written (a disk error, or an edit by hand); restore it, or delete it to drop that change".into());
    }
    serde_json::from_slice(&body).map_err(invalid)
}

fn invalid(e: serde_json::Error) -> String {
    format!("is not a valid record: {e}")
}

/// Reads and replays the log: the live registrations, how many lines follow
/// the header, and the format version.
fn read(path: &Path) -> Result<(Vec<Stored>, usize, u64), StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((Vec::new(), 0, FORMAT_VERSION));
        }
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
    if !(FIRST_VERSION..=FORMAT_VERSION).contains(&header.version) {
        return Err(corrupt(format!(
            "format version {} is not supported (this build reads versions {FIRST_VERSION} to {FORMAT_VERSION})",
            header.version
        )));
    }
    // By name, in the order first set, so a restart keeps the order.
    let mut live: BTreeMap<(String, String), (usize, Stored)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate().skip(1) {
        let at = |message: String| corrupt(format!("line {}: {message}", i + 1));
        let record =
            decode(line, header.version).map_err(|e| corrupt(format!("line {} {e}", i + 1)))?;
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
    Ok((
        out.into_iter().map(|(_, s)| s).collect(),
        lines.len() - 1,
        header.version,
    ))
}

/// Writes `live` as a fresh log, atomically, and opens it for appending;
/// returns it and its length.
fn rewrite(path: &Path, live: &[Stored]) -> Result<(File, u64), StateError> {
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
        encode(&Record::Set(s.clone()), FORMAT_VERSION, &mut bytes);
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
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
    })();
    if let Err(e) = written {
        // A partial copy only takes space (a full disk is a likely cause).
        let _ = fs::remove_file(&tmp);
        return Err(write_error(e));
    }
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(write_error)?;
    Ok((file, bytes.len() as u64))
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
        let inode = fs::metadata(&path).unwrap().ino();
        let (_, live) = open(&path).unwrap();
        assert_eq!(live, vec![stored("a", true), stored("c", false)]);
        // Opening wrote nothing: a small log is compacted only once it grows.
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 6);
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn a_file_of_the_first_format_is_read_and_rewritten_in_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut v1 = b"{\"signpost-state\":1}\n".to_vec();
        for r in [
            Record::Set(stored("a", false)),
            Record::Set(stored("b", true)),
        ] {
            encode(&r, 1, &mut v1);
        }
        assert!(!String::from_utf8_lossy(&v1).contains("crc"));
        fs::write(&path, &v1).unwrap();

        // Read, and appended to in its own format while it is not rewritten.
        let (mut log, live) = StateLog::open(&path, StateLock::acquire(&path).unwrap()).unwrap();
        assert_eq!(live, vec![stored("a", false), stored("b", true)]);
        log.append(&[remove("a")], 1, Vec::new).unwrap();
        assert_eq!(read(&path).unwrap(), (vec![stored("b", true)], 3, 1));

        // Rewritten at the next start.
        log.prepare(|| vec![stored("b", true)]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"signpost-state\":2}\n"), "{text}");
        assert!(
            text.ends_with("\"}\n") && text.contains(",\"crc\":\""),
            "{text}"
        );
        assert_eq!(read(&path).unwrap(), (vec![stored("b", true)], 1, 2));
    }

    #[test]
    fn a_grown_log_is_compacted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = open(&path).unwrap();
        let records: Vec<Record> = (0..COMPACT_SLACK + 10)
            .map(|_| Record::Set(stored("a", false)))
            .collect();
        log.append(&records, usize::MAX / 4, Vec::new).unwrap();
        drop(log);
        let (_, live) = open(&path).unwrap();
        assert_eq!(live, vec![stored("a", false)]);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn after_a_failed_save_the_next_save_appends_what_memory_holds_and_the_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = open(&path).unwrap();
        let saved = [
            Record::Set(stored("a", false)),
            Record::Set(stored("b", false)),
            Record::Set(stored("c", false)),
        ];
        log.append(&saved, 0, Vec::new).unwrap();
        // As after an append that failed and was cut back: memory has "a"
        // expired, "b" gone and "d" new; the file has none of it.
        log.behind = true;
        let memory = || vec![stored("a", true), stored("c", false), stored("d", false)];
        log.append(&[], 3, memory).unwrap();
        assert!(!log.is_behind());
        let (replayed, lines, _) = read(&path).unwrap();
        assert_eq!(replayed, memory());
        // Only the differences: "a", "d" and the removal of "b".
        assert_eq!(lines, 6);
    }

    #[test]
    fn after_a_failed_save_that_could_not_be_cut_back_the_whole_state_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut log, _) = open(&path).unwrap();
        // As after an append that failed and could not be cut back: "a" is
        // in memory only, and the file may end in a partial line.
        log.broken = true;
        log.append(&[], 1, || vec![stored("a", false)]).unwrap();
        assert!(!log.is_behind());
        let (replayed, ..) = read(&path).unwrap();
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
        assert!(e.contains("line 2 fails its checksum"), "{e}");

        // A line without its checksum is refused too.
        let text = String::from_utf8(full.clone()).unwrap();
        let at = text.rfind(",\"crc\":").unwrap();
        fs::write(&path, format!("{}}}\n", &text[..at])).unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("line 2 has no checksum"), "{e}");

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
