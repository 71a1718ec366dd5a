//! The serials each zone may not go below, kept next to the state file so
//! that a restart (or a zone file that goes away and comes back) never
//! shows a secondary a serial lower than one it has seen.
//!
//! Writing the file on every change would add a file write and two fsyncs
//! to every registration. Instead a zone reserves serials ahead: the file
//! holds a ceiling above every serial published so far, and is written again
//! only when a new serial reaches it. After a restart a zone starts above
//! its ceiling, which is above anything it served.
//!
//! The format is one line per zone, `<apex> <ceiling>`, apex in presentation
//! form; written to `<file>.tmp`, fsynced and renamed over the file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;

use crate::answer::wire::lower_wire;

/// How many serials past the current one a write reserves: a burst of this
/// many changes costs one write.
pub const RESERVE: u32 = 1024;

/// Ceilings by zone key (lowercased wire apex).
pub struct Serials {
    path: Option<PathBuf>,
    ceilings: BTreeMap<Vec<u8>, (Name, u32)>,
}

/// The serial file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("serial file {}: {source}", path.display())]
pub struct SerialsError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

impl Serials {
    /// Serials kept in memory only: they grow while the process runs.
    pub fn in_memory() -> Serials {
        Serials {
            path: None,
            ceilings: BTreeMap::new(),
        }
    }

    /// The serial file that goes with a state file: `<state>.serials`.
    pub fn path_for(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_owned();
        name.push(".serials");
        PathBuf::from(name)
    }

    /// Reads the file at `path` (none yet is an empty file). Lines that do
    /// not parse are an error: a ceiling silently lost could let a serial go
    /// back.
    pub fn open(path: &Path) -> Result<Serials, SerialsError> {
        let error = |source| SerialsError {
            path: path.to_path_buf(),
            source,
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(error(e)),
        };
        let mut ceilings = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || {
                error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: expected `<zone> <serial>`, found `{line}`", i + 1),
                ))
            };
            let mut parts = line.split_whitespace();
            let (Some(apex), Some(serial), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let apex = Name::from_ascii(apex).map_err(|_| bad())?;
            let serial: u32 = serial.parse().map_err(|_| bad())?;
            ceilings.insert(lower_wire(&apex), (apex, serial));
        }
        Ok(Serials {
            path: Some(path.to_path_buf()),
            ceilings,
        })
    }

    /// The serial a zone must start above, if it was ever served.
    pub fn floor(&self, key: &[u8]) -> Option<u32> {
        self.ceilings.get(key).map(|&(_, s)| s)
    }

    /// Notes that `zone` is about to be published at `serial`; when that
    /// reaches the zone's ceiling, a new one is written (durably) first.
    /// Returns whether the file was written.
    pub fn reserve<'z>(
        &mut self,
        zones: impl IntoIterator<Item = (&'z [u8], &'z Name, u32)>,
    ) -> Result<bool, SerialsError> {
        let mut write = false;
        for (key, apex, serial) in zones {
            let reached = match self.ceilings.get(key) {
                // RFC 1982: `serial` at or past the ceiling.
                Some(&(_, ceiling)) => serial.wrapping_sub(ceiling) as i32 >= 0,
                None => true,
            };
            if reached {
                let ceiling = match self.path {
                    Some(_) => serial.wrapping_add(RESERVE),
                    None => serial,
                };
                self.ceilings.insert(key.to_vec(), (apex.clone(), ceiling));
                write = true;
            }
        }
        match &self.path {
            Some(path) if write => {
                self.write(path).map_err(|source| SerialsError {
                    path: path.clone(),
                    source,
                })?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn write(&self, path: &Path) -> io::Result<()> {
        let mut text = String::new();
        for (apex, ceiling) in self.ceilings.values() {
            text.push_str(&format!("{} {ceiling}\n", apex.to_ascii()));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(apex: &str, serial: u32) -> (Vec<u8>, Name, u32) {
        let name = Name::from_ascii(apex).unwrap();
        (lower_wire(&name), name, serial)
    }

    impl Serials {
        fn reserve_one(&mut self, (key, apex, serial): (Vec<u8>, Name, u32)) -> bool {
            self.reserve([(key.as_slice(), &apex, serial)]).unwrap()
        }
    }

    #[test]
    fn a_ceiling_is_written_only_when_a_serial_reaches_it_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.serials");
        let mut serials = Serials::open(&path).unwrap();
        assert!(serials.reserve_one(zone("a.test.", 100)));
        assert!(!serials.reserve_one(zone("a.test.", 101)));
        assert!(!serials.reserve_one(zone("a.test.", 100 + RESERVE - 1)));
        assert!(serials.reserve_one(zone("A.test.", 100 + RESERVE)));
        let again = Serials::open(&path).unwrap();
        assert_eq!(again.floor(&zone("a.test.", 0).0), Some(100 + 2 * RESERVE));
        assert_eq!(again.floor(&zone("b.test.", 0).0), None);
    }

    #[test]
    fn a_damaged_line_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.serials");
        fs::write(&path, "a.test. 12\nb.test. twelve\n").unwrap();
        let error = Serials::open(&path).err().unwrap().to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn the_ceiling_wraps_in_serial_arithmetic() {
        let mut serials = Serials::in_memory();
        serials.reserve_one(zone("a.test.", u32::MAX));
        serials.reserve_one(zone("a.test.", 3));
        assert_eq!(serials.floor(&zone("a.test.", 0).0), Some(3));
    }
}
