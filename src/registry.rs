//! The mutable registry and the point where snapshots are published.
//!
//! One owner (the task that applies changes) holds the [`Registry`]; queries
//! only ever see the immutable [`Snapshot`] it publishes through an
//! [`arc_swap::ArcSwap`], so a reader never waits for a writer and a writer
//! never waits for readers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use tracing::{error, info};

use crate::model::Zone;
use crate::snapshot::{Snapshot, ZoneSnapshot, build_zone};
use crate::wire::lower_wire;
use crate::zone::ZoneError;

/// Where the query path loads the current snapshot from.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// A change the registry refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two files describe the same zone.
    #[error("zone {zone} is already defined by {}", other.display())]
    ZoneClaimed {
        /// The zone's apex.
        zone: String,
        /// The file that has it.
        other: PathBuf,
    },
}

/// A change to the registry, from any source. Sources describe what they
/// saw; the registry decides what it means for the zones.
#[derive(Debug)]
pub enum Change {
    /// A zone file was read and is valid.
    FileLoaded {
        /// The file.
        path: PathBuf,
        /// What it describes (boxed: a zone is large, the other variants small).
        zone: Box<Zone>,
        /// Line and column of its `zone` value, for conflict errors.
        zone_at: (usize, usize),
    },
    /// A zone file was read and is not valid: its last good version, if
    /// any, keeps serving, marked stale.
    FileInvalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        errors: Vec<ZoneError>,
    },
    /// A zone file is gone: its zone is no longer served.
    FileRemoved {
        /// The file.
        path: PathBuf,
    },
}

/// The registry: every zone, where it came from, and its serial.
pub struct Registry {
    published: SnapshotHandle,
    zones: BTreeMap<Vec<u8>, ZoneEntry>,
    /// The first problem of each zone file whose current version is invalid.
    file_errors: BTreeMap<PathBuf, String>,
    /// Valid files refused because another file has their zone: each gets
    /// its turn when the zone is free again.
    waiting: BTreeMap<PathBuf, (Box<Zone>, (usize, usize))>,
}

struct ZoneEntry {
    source: PathBuf,
    zone: Zone,
    serial: u32,
    built: Arc<ZoneSnapshot>,
}

/// What `status` reports of one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneStatus {
    /// The apex, as written in its file.
    pub zone: String,
    /// The file it comes from.
    pub source: PathBuf,
    /// The current SOA serial.
    pub serial: u32,
    /// Why the file's current version is not served, if it is not: the zone
    /// is then stale, serving the file's last good version.
    pub stale: Option<String>,
    /// Number of services.
    pub services: usize,
    /// Number of instances over all services.
    pub instances: usize,
}

impl Registry {
    /// An empty registry and the handle its snapshots are published to.
    pub fn new() -> (Self, SnapshotHandle) {
        let published: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let registry = Registry {
            published: published.clone(),
            zones: BTreeMap::new(),
            file_errors: BTreeMap::new(),
            waiting: BTreeMap::new(),
        };
        (registry, published)
    }

    /// Applies one change; [`Registry::publish`] makes it visible. Returns
    /// whether anything that queries see changed.
    pub fn apply(&mut self, change: Change) -> bool {
        let zones_before = self.zones.len();
        let changed = match change {
            Change::FileLoaded {
                path,
                zone,
                zone_at,
            } => self.load(path, zone, zone_at),
            Change::FileInvalid { path, errors } => {
                self.waiting.remove(&path);
                self.reject(path, errors);
                false
            }
            Change::FileRemoved { path } => {
                self.file_errors.remove(&path);
                self.waiting.remove(&path);
                let before = self.zones.len();
                self.remove_file(&path);
                let changed = self.zones.len() != before;
                if changed {
                    info!(file = %path.display(), "zone file removed; its zone is no longer served");
                }
                changed
            }
        };
        // A zone was freed (its file deleted, or renamed to another zone):
        // a file that was waiting for it takes it now.
        if self.zones.len() <= zones_before && !self.waiting.is_empty() {
            let waiting = std::mem::take(&mut self.waiting);
            return waiting
                .into_iter()
                .fold(changed, |changed, (path, (zone, at))| {
                    self.load(path, zone, at) | changed
                });
        }
        changed
    }

    fn load(&mut self, path: PathBuf, zone: Box<Zone>, zone_at: (usize, usize)) -> bool {
        let name = zone.apex.to_ascii();
        match self.set_file_zone(&path, (*zone).clone()) {
            Ok(changed) => {
                self.waiting.remove(&path);
                if self.file_errors.remove(&path).is_some() || changed {
                    info!(zone = %name, file = %path.display(), "zone loaded");
                }
                changed
            }
            Err(problem) => {
                let error = ZoneError {
                    path: path.clone(),
                    line: zone_at.0,
                    column: zone_at.1,
                    message: problem.to_string(),
                };
                if self.file_errors.get(&path) != Some(&error.to_string()) {
                    self.reject(path.clone(), vec![error]);
                }
                self.waiting.insert(path, (zone, zone_at));
                false
            }
        }
    }

    fn reject(&mut self, path: PathBuf, errors: Vec<ZoneError>) {
        let serving = self.zones.values().any(|e| e.source == path);
        for problem in &errors {
            if serving {
                error!(%problem, "zone file rejected; still serving its last good version");
            } else {
                error!(%problem, "zone file rejected");
            }
        }
        if let Some(first) = errors.first() {
            self.file_errors.insert(path, first.to_string());
        }
    }

    /// Files whose current version was rejected.
    pub fn invalid_files(&self) -> impl Iterator<Item = &Path> {
        self.file_errors.keys().map(PathBuf::as_path)
    }

    /// Sets the zone a file describes, replacing what that file said before.
    /// Call [`Registry::publish`] to make the change visible.
    /// Returns whether the zone changed.
    pub fn set_file_zone(&mut self, path: &Path, zone: Zone) -> Result<bool, RegistryError> {
        let key = lower_wire(&zone.apex);
        if let Some(entry) = self.zones.get(&key)
            && entry.source != path
        {
            return Err(RegistryError::ZoneClaimed {
                zone: zone.apex.to_ascii(),
                other: entry.source.clone(),
            });
        }
        // A file whose `zone` line changed no longer serves its old zone.
        self.zones
            .retain(|k, entry| entry.source != path || *k == key);
        let previous = self.zones.get(&key);
        if previous.is_some_and(|p| p.zone == zone) {
            return Ok(false);
        }
        let serial = next_serial(previous.map(|p| p.serial));
        let built = Arc::new(build_zone(&zone, serial));
        self.zones.insert(
            key,
            ZoneEntry {
                source: path.to_path_buf(),
                zone,
                serial,
                built,
            },
        );
        Ok(true)
    }

    /// Drops every zone a file described.
    pub fn remove_file(&mut self, path: &Path) {
        self.zones.retain(|_, entry| entry.source != path);
    }

    /// Publishes the current state to the query path: one pointer swap.
    pub fn publish(&self) {
        let snapshot = Snapshot::new(self.zones.values().map(|e| e.built.clone()));
        self.published.store(Arc::new(snapshot));
    }

    /// Zones with their source and serial, sorted by apex.
    pub fn status(&self) -> Vec<ZoneStatus> {
        self.zones
            .values()
            .map(|e| ZoneStatus {
                zone: e.zone.apex.to_ascii(),
                source: e.source.clone(),
                serial: e.serial,
                stale: self.file_errors.get(&e.source).cloned(),
                services: e.zone.services.len(),
                instances: e.zone.services.iter().map(|s| s.instances.len()).sum(),
            })
            .collect()
    }
}

/// The serial after `previous`: the current Unix time, or one more than the
/// previous serial when changes come faster than once a second, so it only
/// ever grows, across restarts too (RFC 1982 arithmetic allows the wrap).
fn next_serial(previous: Option<u32>) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    match previous {
        Some(p) if p.wrapping_sub(now) as i32 >= 0 => p.wrapping_add(1),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_grow_even_within_one_second() {
        let a = next_serial(None);
        let b = next_serial(Some(a));
        let c = next_serial(Some(b));
        assert!(b > a && c > b);
    }
}
