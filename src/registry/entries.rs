//! What the registry keeps of each zone and of each runtime registration.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::health::InstanceHealth;
use super::registration::{InstanceInfo, Registration};
use super::runtime::{FileNames, RuntimeInstance};
use super::store::Stored;
use super::timers::Timer;
use crate::answer::live::LiveZone;
use crate::model::{Endpoint, Service, ServiceKey, Zone};

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

/// A zone's runtime registrations, kept by service: a change to a service
/// reads that service's registrations in one walk, not one lookup in the
/// zone's registrations for each of them (a fifth of a registration's time
/// at 3 000 instances).
#[derive(Default)]
pub(super) struct ZoneRuntime {
    /// Each service's registrations (lowercased name, protocol), by
    /// lowercased instance name (a host name, unique in its zone).
    services: BTreeMap<ServiceKey, BTreeMap<String, RuntimeEntry>>,
    /// The service each instance name is registered in.
    service_of: BTreeMap<String, ServiceKey>,
    /// How many of each service's registrations have a health check: a
    /// service with none, in a file service with none, has no targets to
    /// collect, and a change to it skips a look at each of its instances.
    checked: HashMap<ServiceKey, usize>,
}

impl ZoneRuntime {
    pub(super) fn get(&self, id: &str) -> Option<&RuntimeEntry> {
        self.services.get(self.service_of.get(id)?)?.get(id)
    }

    /// The registration, to change its state; its service and name stay.
    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut RuntimeEntry> {
        self.services.get_mut(self.service_of.get(id)?)?.get_mut(id)
    }

    pub(super) fn contains_key(&self, id: &str) -> bool {
        self.service_of.contains_key(id)
    }

    /// Adds or replaces the registration of instance `id`, wherever its
    /// service was; returns the one it replaced.
    pub(super) fn insert(&mut self, id: String, entry: RuntimeEntry) -> Option<RuntimeEntry> {
        let before = self.remove(&id);
        let service = entry.valid.service_key();
        if entry.valid.instance.check.is_some() {
            *self.checked.entry(service.clone()).or_default() += 1;
        }
        self.service_of.insert(id.clone(), service.clone());
        self.services.entry(service).or_default().insert(id, entry);
        before
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<RuntimeEntry> {
        let service = self.service_of.remove(id)?;
        let instances = self.services.get_mut(&service)?;
        let gone = instances.remove(id);
        if instances.is_empty() {
            self.services.remove(&service);
        }
        if gone
            .as_ref()
            .is_some_and(|g| g.valid.instance.check.is_some())
            && let Some(n) = self.checked.get_mut(&service)
        {
            *n -= 1;
            if *n == 0 {
                self.checked.remove(&service);
            }
        }
        gone
    }

    /// Whether any registration of the service has a health check.
    pub(super) fn has_checks(&self, service: &ServiceKey) -> bool {
        self.checked.contains_key(service)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.service_of.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.service_of.len()
    }

    /// Every registration, service by service.
    pub(super) fn values(&self) -> impl Iterator<Item = &RuntimeEntry> {
        self.services.values().flat_map(BTreeMap::values)
    }

    /// Every registration, to change their state; services and names stay.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut RuntimeEntry> {
        self.services.values_mut().flat_map(BTreeMap::values_mut)
    }

    /// The services with registrations.
    pub(super) fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// A service's registrations, by instance name.
    pub(super) fn service(
        &self,
        service: &ServiceKey,
    ) -> impl Iterator<Item = (&String, &RuntimeEntry)> {
        self.services.get(service).into_iter().flatten()
    }
}

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
    /// The services with a health check, of their own or an instance's.
    pub(super) checked: HashSet<ServiceKey>,
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
            checked: (zone.services.iter())
                .filter(|s| s.check.is_some() || s.instances.iter().any(|i| i.check.is_some()))
                .map(|s| ServiceKey::of(s))
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
    /// Each service with registrations as last merged (before health
    /// checks), since the file was last read: a change to a few of its
    /// instances edits this instead of merging every instance again
    /// (see `ZoneEntry::update`).
    pub(super) merged: HashMap<ServiceKey, Arc<Service>>,
}

/// What changed in a service since it was last published.
#[derive(Debug)]
pub(super) enum Touched {
    /// These runtime instances (by id) came, went or changed.
    Instances(BTreeSet<String>),
    /// Its health: every instance is looked at again.
    Whole,
}

impl Touched {
    /// Adds `other` to what changed.
    pub(super) fn add(&mut self, other: Touched) {
        match (self, other) {
            (Touched::Instances(ids), Touched::Instances(more)) => ids.extend(more),
            (this, _) => *this = Touched::Whole,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, instance: &str) -> RuntimeEntry {
        let request: Registration = serde_json::from_value(serde_json::json!({
            "zone": "r.test", "service": service, "instance": instance,
            "address": "10.0.0.1", "port": 80}))
        .expect("a registration");
        RuntimeEntry {
            valid: super::super::runtime::validate(&request).expect("valid"),
            request,
            timer: None,
            expired: false,
            shadowed: None,
        }
    }

    fn checked_entry(service: &str, instance: &str) -> RuntimeEntry {
        let request: Registration = serde_json::from_value(serde_json::json!({
            "zone": "r.test", "service": service, "instance": instance,
            "address": "10.0.0.1", "port": 80, "check": {"tcp": true}}))
        .expect("a registration");
        RuntimeEntry {
            valid: super::super::runtime::validate(&request).expect("valid"),
            ..entry(service, instance)
        }
    }

    /// Whether a service has a registration with a health check follows
    /// every insert, replacement and removal.
    #[test]
    fn a_service_has_checks_while_a_registration_with_one_is_in_it() {
        let mut z = ZoneRuntime::default();
        let (web, db) = (
            entry("web", "x").valid.service_key(),
            entry("db", "x").valid.service_key(),
        );
        z.insert("a".into(), entry("web", "a"));
        assert!(!z.has_checks(&web));
        z.insert("b".into(), checked_entry("web", "b"));
        z.insert("c".into(), checked_entry("web", "c"));
        assert!(z.has_checks(&web));
        z.remove("b");
        assert!(z.has_checks(&web), "c has one still");
        // Registered again without a check, then in another service.
        z.insert("c".into(), entry("web", "c"));
        assert!(!z.has_checks(&web));
        z.insert("c".into(), checked_entry("web", "c"));
        z.insert("c".into(), checked_entry("db", "c"));
        assert!(!z.has_checks(&web) && z.has_checks(&db));
        z.remove("c");
        assert!(!z.has_checks(&db));
    }

    fn names<'a>(z: &'a ZoneRuntime, service: &str) -> Vec<&'a str> {
        let key = entry(service, "x").valid.service_key();
        z.service(&key).map(|(id, _)| id.as_str()).collect()
    }

    /// An instance name is in one service: registered again in another, it
    /// leaves the first, and a service without registrations is gone.
    #[test]
    fn each_instance_is_in_one_service() {
        let mut z = ZoneRuntime::default();
        assert!(z.insert("b".into(), entry("web", "b")).is_none());
        assert!(z.insert("a".into(), entry("web", "a")).is_none());
        assert_eq!(names(&z, "web"), ["a", "b"], "in name order");
        let moved = z.insert("a".into(), entry("db", "a"));
        assert_eq!(moved.expect("replaced").valid.service, "web");
        assert_eq!((names(&z, "web"), names(&z, "db")), (vec!["b"], vec!["a"]));
        assert_eq!(z.get("a").expect("there").valid.service, "db");
        assert_eq!(z.len(), 2);
        assert_eq!(z.remove("b").expect("there").valid.service, "web");
        assert!(z.remove("b").is_none());
        assert_eq!(z.service_keys().count(), 1, "web has no registrations left");
        z.get_mut("a").expect("there").expired = true;
        assert!(z.values().all(|r| r.expired));
        assert!(z.remove("a").is_some() && z.is_empty() && z.service_keys().next().is_none());
    }
}
