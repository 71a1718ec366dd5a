//! The zones directory as a source of changes.
//!
//! Any event in the directory (inotify through `notify`), a periodic rescan,
//! or SIGHUP leads to one scan: every zone file is stat'ed (through symlinks),
//! and only the files whose identity or contents changed are parsed again.
//! Looking at every file on every event, rather than at the event's path,
//! is what makes a Kubernetes ConfigMap's `..data` symlink swap, an editor's
//! rename-over, and an in-place write all the same case.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tracing::{debug, warn};

use crate::registry::{Change, FileZone};
use crate::sources::zone_file;

/// How long to wait after an event for more events of the same burst (an
/// editor's write-then-rename) before scanning.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

/// How long a zone file that is empty, or that changed while it was read,
/// may stay so before it is taken as it is. `cp new.toml zone.toml` and a
/// shell redirection truncate the file and then write it, and a scan can fall
/// in between: rejecting the empty file would log an error for a write that
/// is about to complete. The file's last good version serves meanwhile.
pub const SETTLE: Duration = Duration::from_millis(500);

/// How soon to scan again while a file is not settled. A completed write
/// sends an event of its own; this catches filesystems that send none.
const SETTLE_RETRY: Duration = Duration::from_millis(50);

/// What a file looked like when it was last read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(path: &Path) -> Option<Fingerprint> {
        std::fs::metadata(path).ok().map(|m| Fingerprint::from(&m))
    }

    fn from(m: &std::fs::Metadata) -> Fingerprint {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

/// Turns the state of the zones directory into [`Change`]s.
pub struct Scanner {
    dir: PathBuf,
    seen: HashMap<PathBuf, Fingerprint>,
    /// Files whose last read failed: read again on every scan, since what
    /// they conflicted with (another file's zone) may be gone.
    failing: HashSet<PathBuf>,
    /// Files found empty or changing, with when that was first seen: not
    /// read as their new version until settled (see [`SETTLE`]).
    unsettled: HashMap<PathBuf, Instant>,
    /// Directory entries skipped at the last scan, each warned about once.
    skipped: HashSet<String>,
}

impl Scanner {
    /// A scanner of `dir` that has seen nothing yet.
    pub fn new(dir: &Path) -> Scanner {
        Scanner {
            dir: dir.to_path_buf(),
            seen: HashMap::new(),
            failing: HashSet::new(),
            unsettled: HashMap::new(),
            skipped: HashSet::new(),
        }
    }

    /// When to scan again without an event: soon while a file is not
    /// settled, else None.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.unsettled.is_empty()).then_some(SETTLE_RETRY)
    }

    /// The changes since the last scan. With `force`, every file is read
    /// again whatever its fingerprint (SIGHUP).
    pub fn scan(&mut self, force: bool) -> std::io::Result<Vec<Change>> {
        let mut listing_errors = Vec::new();
        let files = zone_file::zone_files(&self.dir, &mut listing_errors)?;
        // A FIFO left in the directory is seen on every scan: warn when it
        // appears, not every time.
        let mut skipped = HashSet::new();
        for problem in listing_errors {
            let problem = problem.to_string();
            if !self.skipped.contains(&problem) {
                warn!(%problem, "zones directory entry skipped");
            }
            skipped.insert(problem);
        }
        self.skipped = skipped;
        let mut changes = Vec::new();

        let present: HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.seen.remove(&path);
            self.failing.remove(&path);
            changes.push(Change::FileRemoved { path });
        }
        self.unsettled.retain(|p, _| present.contains(p));

        for path in files {
            let Some(fingerprint) = Fingerprint::of(&path) else {
                // Vanished between the listing and the stat (a rename in
                // flight): the next event or rescan sees where it went.
                continue;
            };
            let unchanged = self.seen.get(&path) == Some(&fingerprint);
            if unchanged && !force && !self.failing.contains(&path) {
                continue;
            }
            let loaded = match zone_file::read_file(&path) {
                Ok((text, after)) => {
                    // Empty, or written to while read: a writer is likely
                    // still at work. Look again shortly, keeping what is
                    // served, unless it has been so for SETTLE already.
                    let moving = text.is_empty() || Fingerprint::from(&after) != fingerprint;
                    if moving && !unchanged {
                        let now = Instant::now();
                        let since = *self.unsettled.entry(path.clone()).or_insert(now);
                        if now.duration_since(since) < SETTLE {
                            debug!(path = %path.display(), "zone file not settled; looking again shortly");
                            continue;
                        }
                    }
                    zone_file::parse_located(&path, &text)
                }
                Err(error) => Err(vec![error]),
            };
            self.unsettled.remove(&path);
            self.seen.insert(path.clone(), fingerprint);
            match loaded {
                Ok((zone, zone_at)) => {
                    self.failing.remove(&path);
                    changes.push(Change::FileLoaded {
                        path,
                        zone: Box::new(FileZone::new(zone)),
                        zone_at,
                    });
                }
                Err(errors) => {
                    // Reported again only when the file changes.
                    if unchanged && !force {
                        continue;
                    }
                    self.failing.insert(path.clone());
                    changes.push(Change::FileInvalid { path, errors });
                }
            }
        }
        Ok(changes)
    }
}

/// What wakes the watcher thread.
pub enum Wake {
    /// Something happened in the directory.
    Event,
    /// Read every file again (SIGHUP).
    Reload,
}

/// File events of the zones directory, collected from the moment it is
/// created: make it before the first scan, so that no change made during
/// that scan goes unseen until the periodic rescan.
pub struct Watching {
    watcher: notify::RecommendedWatcher,
    tx: mpsc::Sender<Wake>,
    rx: mpsc::Receiver<Wake>,
}

/// Starts watching `dir` for events.
pub fn watch(dir: &Path) -> notify::Result<Watching> {
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Err(error) = &event {
            warn!(%error, "zones directory watch error; the periodic rescan still runs");
        }
        let _ = events.send(Wake::Event);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Watching { watcher, tx, rx })
}

/// Goes on with `scanner` (which has done the first scan) on a thread of
/// its own, sending changes to `apply` (which returns false once the
/// registry is gone). Returns the sender that SIGHUP uses to ask for a full
/// reload.
pub fn spawn(
    watching: Watching,
    mut scanner: Scanner,
    rescan: Duration,
    apply: impl Fn(Vec<Change>) -> bool + Send + 'static,
) -> std::io::Result<mpsc::Sender<Wake>> {
    let Watching { watcher, tx, rx } = watching;
    std::thread::Builder::new()
        .name("zone-watcher".into())
        .spawn(move || {
            // Dropping the watcher stops the events: keep it for the thread's life.
            let _watcher = watcher;
            loop {
                let wait = scanner.retry_after().map_or(rescan, |soon| soon.min(rescan));
                let force = match rx.recv_timeout(wait) {
                    Ok(Wake::Reload) => true,
                    Ok(Wake::Event) => {
                        // Let the burst finish, then take everything it queued.
                        let until = Instant::now() + DEBOUNCE;
                        let mut force = false;
                        while let Some(left) = until.checked_duration_since(Instant::now()) {
                            match rx.recv_timeout(left) {
                                Ok(Wake::Reload) => force = true,
                                Ok(Wake::Event) => {}
                                Err(mpsc::RecvTimeoutError::Timeout) => break,
                                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                            }
                        }
                        force
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                match scanner.scan(force) {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => {
                        debug!(count = changes.len(), "zone files changed");
                        if !apply(changes) {
                            return;
                        }
                    }
                    Err(error) => {
                        warn!(%error, dir = %scanner.dir.display(), "cannot read zones directory; serving what was loaded");
                    }
                }
            }
        })?;
    Ok(tx)
}
