//! Zone files coming, changing and going: each replaces what its file said
//! before, or waits while another file has its zone.

use std::path::{Path, PathBuf};

use tracing::{error, info};

use super::entries::{FileZone, ZoneEntry};
use super::{Change, Registry, RegistryError, ZoneError};
use crate::answer::wire::lower_wire;

impl Registry {
    /// Applies a zone file change; returns whether anything queries see changed.
    pub(super) fn apply_file(&mut self, change: Change) -> bool {
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
                // Every zone the file described.
                let changed = self.retire(|_, entry| entry.source == path);
                if changed {
                    info!(file = %path.display(), "zone file removed; its zone is no longer served");
                }
                changed
            }
            _ => unreachable!("apply passes only file changes"),
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

    fn load(&mut self, path: PathBuf, zone: Box<FileZone>, zone_at: (usize, usize)) -> bool {
        let name = zone.zone.apex.to_ascii();
        match self.set_file_zone(&path, zone) {
            Ok(changed) => {
                self.waiting.remove(&path);
                if self.file_errors.remove(&path).is_some() || changed {
                    info!(zone = %name, file = %path.display(), "zone loaded");
                }
                changed
            }
            Err((problem, zone)) => {
                let error = ZoneError::at(&path, zone_at, problem);
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

    /// Sets the zone a file describes, replacing what that file said before.
    /// Call [`Registry::publish`] to make the change visible.
    /// Returns whether the zone changed.
    /// The file is handed back with the error, to wait for its zone.
    fn set_file_zone(
        &mut self,
        path: &Path,
        file: Box<FileZone>,
    ) -> Result<bool, (RegistryError, Box<FileZone>)> {
        let key = lower_wire(&file.zone.apex);
        if let Some(entry) = self.zones.get(&key)
            && entry.source != path
        {
            let problem = RegistryError::ZoneClaimed {
                zone: file.zone.apex.to_ascii(),
                other: entry.source.clone(),
            };
            return Err((problem, file));
        }
        // A file whose `zone` line changed no longer serves its old zone.
        self.retire(|k, entry| entry.source == path && *k != key);
        if self
            .zones
            .get(&key)
            .is_some_and(|p| p.file.zone == file.zone)
        {
            return Ok(false);
        }
        // Its runtime instances are merged in, checked against the new file;
        // the previous version lends its serial and its unchanged answers.
        let mut entry = ZoneEntry::new(path, *file);
        if let Some(mut old) = self.zones.remove(&key) {
            entry.live = old.live.take();
            // What the old file said is freed where no one waits.
            self.retired_files.push(old);
        }
        entry.floor = self.serials.floor(&key);
        let input = entry.prepare(
            self.runtime.get_mut(&key),
            (&key, &mut self.health),
            // The hook is what follows each publish for zone transfers.
            (true, self.on_publish.is_some()),
        );
        if let Some(live) = self.builds.start(&key, input) {
            entry.live = Some(live);
        }
        self.dirty.remove(&key);
        self.zones.insert(key, entry);
        Ok(true)
    }

    /// Stops serving the zones `which` picks, to be freed off the writer;
    /// returns whether there were any.
    fn retire(&mut self, mut which: impl FnMut(&[u8], &ZoneEntry) -> bool) -> bool {
        let keys: Vec<Vec<u8>> = (self.zones.iter())
            .filter(|(k, entry)| which(k, entry))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.retired_files.extend(self.zones.remove(key));
        }
        !keys.is_empty()
    }

    /// The zones files replaced or removed since the last call, to be freed
    /// where no one waits: a large zone takes a good part of a second.
    pub fn take_retired_files(&mut self) -> impl Send + use<> {
        std::mem::take(&mut self.retired_files)
    }
}
