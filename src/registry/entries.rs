//! What the registry keeps of each zone and of each runtime registration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use super::health::InstanceHealth;
use super::registration::{InstanceInfo, Registration};
use super::runtime::{FileNames, RuntimeInstance};
use super::store::Stored;
use super::timers::Timer;
use crate::answer::live::LiveZone;
use crate::model::{Endpoint, ServiceKey, Zone};

#[cfg(test)]
impl ZoneEntry {
    /// Whether the zone file has an instance of this name.
    pub(super) fn names_instance(&self, name: &str) -> bool {
        self.file
            .zone
            .services
            .iter()
            .flat_map(|s| &s.instances)
            .any(|i| i.name == name)
    }
}

/// The runtime instance ids of each service of a zone.
pub(super) type ServiceIds = BTreeMap<ServiceKey, BTreeSet<String>>;

/// A zone file's zone with the indexes the registry keeps of it. The
/// watcher makes it on its own thread: for a file of 100 000 services the
/// indexes take a good part of a second that the registry's one writer,
/// which registrations wait for, need not spend.
pub struct FileZone {
    pub(super) zone: Zone,
    /// The names the file uses.
    pub(super) names: FileNames,
    /// Where each service of the file is in `zone.services`.
    pub(super) services: HashMap<ServiceKey, usize>,
}

impl FileZone {
    /// Indexes a zone as a file describes it.
    pub fn new(zone: Zone) -> FileZone {
        FileZone {
            names: FileNames::of(&zone),
            services: zone
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| (ServiceKey::of(s), i))
                .collect(),
            zone,
        }
    }

    /// The zone as the file describes it.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

impl std::fmt::Debug for FileZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileZone")
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

/// One zone: its file, what the file names, and its snapshot as built.
pub(super) struct ZoneEntry {
    pub(super) source: PathBuf,
    /// What the file says, indexed; the snapshot is built from this plus
    /// the runtime instances.
    pub(super) file: FileZone,
    /// The zone as built, updated service by service; `None` only before
    /// the first build.
    pub(super) live: Option<LiveZone>,
    /// The serial the zone's first build must go above: one it served
    /// before a restart, or before its file went away.
    pub(super) floor: Option<u32>,
}

/// One runtime registration and its health.
#[derive(Clone)]
pub(super) struct RuntimeEntry {
    /// As the client sent it: what the state file keeps.
    pub(super) request: Registration,
    pub(super) valid: RuntimeInstance,
    /// Its pending timer: expiry (TTL instances that are serving) or
    /// reaping (expired ones, when reaping is on), kept in `Registry::timers`.
    pub(super) timer: Option<(Instant, Timer)>,
    /// No heartbeat came within its TTL: registered, not served.
    pub(super) expired: bool,
    /// Why a zone file now keeps it from being served.
    pub(super) shadowed: Option<String>,
}

/// What `list` says of any instance, wherever it comes from; the caller adds
/// its source, state and health.
pub(super) fn instance_info(
    apex: &hickory_proto::rr::Name,
    service: &str,
    protocol: crate::model::Protocol,
    i: &crate::model::Instance,
) -> InstanceInfo {
    let (address, target) = endpoint_strings(&i.endpoint);
    InstanceInfo {
        zone: apex.to_ascii(),
        service: service.to_string(),
        protocol,
        instance: i.name.clone(),
        address,
        target,
        port: i.port,
        weight: i.weight,
        priority: i.priority,
        tags: i.tags.clone(),
        metadata: i.metadata.iter().cloned().collect(),
        ..InstanceInfo::default()
    }
}

impl RuntimeEntry {
    pub(super) fn stored(&self) -> Stored {
        Stored {
            registration: self.request.clone(),
            expired: self.expired,
        }
    }

    pub(super) fn serving(&self) -> bool {
        !self.expired && self.shadowed.is_none()
    }

    pub(super) fn info(&self, now: Instant) -> InstanceInfo {
        let i = &self.valid.instance;
        let (state, reason) = if let Some(reason) = &self.shadowed {
            ("shadowed", Some(reason.clone()))
        } else if self.expired {
            ("expired", Some("no heartbeat within its TTL".to_string()))
        } else {
            ("serving", None)
        };
        InstanceInfo {
            source: "runtime".into(),
            ttl: self.valid.ttl,
            state: state.into(),
            reason,
            expires_in_ms: match self.timer {
                Some((at, Timer::Expire)) => {
                    Some(at.saturating_duration_since(now).as_millis() as u64)
                }
                _ => None,
            },
            // Not probed yet; `list` and `heartbeat` say what the checks found.
            health: match i.check {
                Some(_) if self.serving() => InstanceHealth::Unknown,
                _ => InstanceHealth::Unchecked,
            }
            .as_str()
            .into(),
            unhealthy_address: Vec::new(),
            ..instance_info(
                &self.valid.apex,
                &self.valid.service,
                self.valid.protocol,
                i,
            )
        }
    }
}

fn endpoint_strings(e: &Endpoint) -> (Vec<String>, Option<String>) {
    match e {
        Endpoint::Addresses(a) => (a.iter().map(ToString::to_string).collect(), None),
        Endpoint::Target(t) => (Vec::new(), Some(t.to_ascii())),
    }
}
