//! What sources tell the registry, and what it answers when it refuses.

use std::path::PathBuf;

use super::entries::FileZone;
use super::health::Flip;
use super::registration::{InstanceKey, Registration};
use crate::answer::wire::lower_wire;
use crate::model::Protocol;
use crate::model::names::parse_apex;

/// A change to the registry, from any source. Sources describe what they
/// saw; the registry decides what it means for the zones.
#[derive(Debug)]
pub enum Change {
    /// A zone file was read and is valid.
    FileLoaded {
        /// The file.
        path: PathBuf,
        /// What it describes, indexed (boxed: a zone is large, the other
        /// variants small).
        zone: Box<FileZone>,
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
    /// Add or replace a runtime instance.
    Register(Registration),
    /// Remove a runtime instance.
    Deregister(InstanceKey),
    /// Renew a runtime instance's TTL; an expired one is served again.
    Heartbeat(InstanceKey),
    /// Health checks changed state: the zones they are in are built again.
    Health(Vec<Flip>),
}

impl Change {
    /// Whether the source may be told "ok" only once the change is durable
    /// in the store: a registration or a removal. A heartbeat is saved too
    /// when it revives an instance, but health is not a registration, so its
    /// reply does not wait on the store.
    pub fn needs_durability(&self) -> bool {
        matches!(self, Change::Register(_) | Change::Deregister(_))
    }

    /// The key (lowercased wire form) of the zone a registration, removal
    /// or heartbeat is for; `None` for other changes, or a zone that is not
    /// a name.
    pub fn zone_key(&self) -> Option<Vec<u8>> {
        let zone = match self {
            Change::Register(r) => &r.zone,
            Change::Deregister(k) | Change::Heartbeat(k) => &k.zone,
            _ => return None,
        };
        Some(lower_wire(&parse_apex(zone).ok()?))
    }

    /// Whether a zone file was read or removed.
    pub fn is_file(&self) -> bool {
        matches!(
            self,
            Change::FileLoaded { .. } | Change::FileInvalid { .. } | Change::FileRemoved { .. }
        )
    }
}

/// A problem in a zone file, printed as `path:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ZoneError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when the problem is with the file as a whole).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl ZoneError {
    /// `problem`, reported at `at` (line, column) in `path`.
    pub fn at(path: &std::path::Path, at: (usize, usize), problem: impl ToString) -> ZoneError {
        ZoneError {
            path: path.to_path_buf(),
            line: at.0,
            column: at.1,
            message: problem.to_string(),
        }
    }
}

/// A change the registry refused, or a read it could not answer. Nothing
/// changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two files describe the same zone: the one that had it first keeps
    /// it, and the other waits (the same rule for `serve` and `check`).
    #[error(
        "zone {zone} is already defined by {}; this file is not served while that one declares it",
        other.display()
    )]
    ZoneClaimed {
        /// The zone's apex.
        zone: String,
        /// The file that has it.
        other: PathBuf,
    },
    /// The registration (or the name in a request) is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The registration would take a name that a zone file or another
    /// registration holds.
    #[error("{0}")]
    Conflict(String),
    /// No zone file declares the zone.
    #[error(
        "unknown zone \"{zone}\": zones are declared by zone files (served: {})",
        if served.is_empty() { "none".to_string() } else { served.join(", ") }
    )]
    UnknownZone {
        /// The zone as the request named it.
        zone: String,
        /// The zones served now.
        served: Vec<String>,
    },
    /// The instance comes from a zone file, not a registration.
    #[error("instance \"{instance}\" is defined by zone file {}; change it there", file.display())]
    DefinedByFile {
        /// The instance.
        instance: String,
        /// The file that defines it.
        file: PathBuf,
    },
    /// No such runtime instance.
    #[error("instance \"{instance}\" is not registered in zone {zone}")]
    NotRegistered {
        /// The instance.
        instance: String,
        /// The zone.
        zone: String,
    },
    /// The instance is registered under another service.
    #[error("instance \"{instance}\" is registered for service \"{registered}\", not \"{asked}\"")]
    OtherService {
        /// The instance.
        instance: String,
        /// Its service.
        registered: String,
        /// The service the request named.
        asked: String,
    },
    /// The instance is registered for the other protocol.
    #[error("instance \"{instance}\" is registered for protocol {}", registered.as_str())]
    OtherProtocol {
        /// The instance.
        instance: String,
        /// Its protocol.
        registered: Protocol,
    },
    /// The store could not make the change durable, so it was taken back.
    #[error("not saved: {0}; nothing changed")]
    NotSaved(String),
}
