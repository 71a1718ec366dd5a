//! The registry: the one mutable copy of every zone and runtime
//! registration, and the point where snapshots are published.
//!
//! One owner, the [`writer`] task, holds the [`Registry`] and applies every
//! [`Change`] in order; queries only ever see the immutable [`Snapshot`] it
//! publishes through an [`arc_swap::ArcSwap`], so a reader never waits for a
//! writer and a writer never waits for readers. Runtime registrations are
//! made durable by a [`store::Store`] before they are acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use tracing::{error, info, warn};

mod building;
pub mod change;
mod entries;
mod files;
pub mod health;
pub mod registration;
mod runtime;
pub mod serials;
mod served;
pub mod state_file;
pub mod store;
mod timers;
pub mod writer;

pub use building::Built;
pub use change::{Change, RegistryError, ZoneError};
pub use entries::FileZone;

use crate::answer::live::LiveZone;
use crate::answer::reverse::ReverseZones;
use crate::answer::snapshot::{Snapshot, SnapshotHandle};
use crate::answer::wire::lower_wire;
use crate::model::names::parse_apex;
use crate::model::{Protocol, Service, ServiceKey, effective_check};
use entries::{RuntimeEntry, Touched, ZoneEntry, ZoneRuntime, instance_info};
use health::{Book, Flip, Target};
use registration::{InstanceInfo, InstanceKey, Registration};
use runtime::RuntimeInstance;
use store::{Record, Removed, Stored};
use timers::{Timer, Timers};

/// The registry: every zone, where it came from, and its serial, and the
/// runtime registrations that are merged into the zones when they are built.
pub struct Registry {
    published: SnapshotHandle,
    zones: BTreeMap<Vec<u8>, ZoneEntry>,
    /// The first problem of each zone file whose current version is invalid.
    file_errors: BTreeMap<PathBuf, String>,
    /// Runtime registrations by zone key, then by service and lowercased
    /// instance name (an instance name is a host name, unique in its zone).
    /// They outlive their zone file: a zone whose file goes away and comes
    /// back gets them back.
    runtime: BTreeMap<Vec<u8>, ZoneRuntime>,
    /// The services (lowercased name, protocol) whose runtime instances or
    /// health changed since they were last built, by zone key.
    dirty: Dirty,
    /// A zone file change altered what queries see since the last publish.
    files_changed: bool,
    /// Changes to the runtime registrations not yet handed out by
    /// [`Registry::take_journal`] for the state file.
    journal: Vec<Record>,
    /// Valid files refused because another file has their zone: each gets
    /// its turn when the zone is free again.
    waiting: BTreeMap<PathBuf, (Box<FileZone>, (usize, usize))>,
    /// Zones files replaced or removed, for the writer to free off its path.
    retired_files: Vec<ZoneEntry>,
    /// Health check targets and their states: answers leave out what is unhealthy.
    health: Book,
    /// Reverse zones, built from the forward zones' addresses.
    reverse: ReverseZones,
    /// Expiry and reaping times of runtime instances, earliest first.
    timers: Timers,
    /// How long an expired instance is kept before it is removed; `None`:
    /// until it is deregistered.
    reap_after: Option<Duration>,
    /// The serials zones must stay above, across restarts.
    serials: serials::Serials,
    /// Sees each snapshot before it is published, with the one it replaces.
    on_publish: Option<PublishHook>,
    /// The store expires TTL instances (etcd's leases remove their keys):
    /// no local expiry timers.
    store_keeps_ttls: bool,
    /// Zone builds running away from the writer.
    builds: building::Builds,
}

/// Called with the published snapshot and the one about to replace it;
/// what it returns runs once the new one is published (a NOTIFY must not
/// reach a secondary before the serial it announces is served).
pub type PublishHook = Box<dyn FnMut(&Snapshot, &Snapshot) -> AfterPublish + Send>;

/// Work that waits for a snapshot to be published.
pub type AfterPublish = Option<Box<dyn FnOnce() + Send>>;

/// What a registration or removal replaced: kept until the store has made
/// the change durable, so that a change the store refuses is taken back and
/// memory never holds what the store does not.
pub struct Undo {
    key: Vec<u8>,
    id: String,
    before: Option<RuntimeEntry>,
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
    /// Number of instances over all services in the file.
    pub instances: usize,
    /// Runtime instances served.
    pub runtime_serving: usize,
    /// Runtime instances registered but not served (expired or shadowed).
    pub runtime_not_serving: usize,
    /// Services served, file and runtime.
    pub services_served: usize,
    /// Instances left out of answers because every address fails its check.
    pub unhealthy: usize,
}

impl Registry {
    /// An empty registry and the handle its snapshots are published to.
    pub fn new() -> (Self, SnapshotHandle) {
        let published: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let registry = Registry {
            published: published.clone(),
            zones: BTreeMap::new(),
            file_errors: BTreeMap::new(),
            runtime: BTreeMap::new(),
            dirty: BTreeMap::new(),
            files_changed: false,
            journal: Vec::new(),
            waiting: BTreeMap::new(),
            retired_files: Vec::new(),
            health: Book::default(),
            reverse: ReverseZones::default(),
            timers: Timers::default(),
            reap_after: None,
            serials: serials::Serials::in_memory(),
            on_publish: None,
            store_keeps_ttls: false,
            builds: building::Builds::default(),
        };
        (registry, published)
    }

    /// Applies one change; [`Registry::publish`] makes it visible. A
    /// registration or heartbeat answers with the instance as now
    /// registered; file and health changes answer nothing (their problems
    /// go to the log, and a rejected file to `status`).
    pub fn apply(
        &mut self,
        change: Change,
        now: Instant,
    ) -> Result<Option<InstanceInfo>, RegistryError> {
        match change {
            Change::Register(r) => self.register(r, now).map(Some),
            Change::Deregister(k) => self.deregister(&k).map(|()| None),
            Change::Heartbeat(k) => self.heartbeat(&k, now).map(Some),
            Change::Health(flips) => {
                self.set_health(flips);
                Ok(None)
            }
            file => {
                self.files_changed |= self.apply_file(file);
                Ok(None)
            }
        }
    }

    /// Applies a change another node made, read from a shared store: it is
    /// not saved again (the journal is left as it was), and a refusal is
    /// logged, since nobody waits for it.
    pub fn apply_remote(&mut self, change: Change, now: Instant) {
        let journal = self.journal.len();
        let (zone, instance) = match &change {
            Change::Register(r) => (r.zone.clone(), r.instance.clone()),
            Change::Deregister(k) | Change::Heartbeat(k) => (k.zone.clone(), k.instance.clone()),
            _ => Default::default(),
        };
        match self.apply(change, now) {
            Ok(_) | Err(RegistryError::NotRegistered { .. }) => {}
            Err(problem) => {
                warn!(%problem, %zone, %instance, "change from the cluster not applied");
            }
        }
        self.journal.truncate(journal);
    }

    /// Leaves TTL expiry to the store (a cluster's leases): instances are
    /// removed when the store says so, never by this node's clock.
    pub fn set_store_keeps_ttls(&mut self) {
        self.store_keeps_ttls = true;
    }

    /// What `change` (a registration or a removal) is about to replace, for
    /// [`Registry::undo`]; `None` for other changes.
    pub fn undo_point(&self, change: &Change) -> Option<Undo> {
        let instance = match change {
            Change::Register(r) => &r.instance,
            Change::Deregister(k) => &k.instance,
            _ => return None,
        };
        let key = change.zone_key()?;
        let id = instance.to_ascii_lowercase();
        let before = self.runtime.get(&key).and_then(|z| z.get(&id)).cloned();
        Some(Undo { key, id, before })
    }

    /// Takes back a change the store refused: the instance is as it was
    /// before it, and [`Registry::publish`] serves that again.
    pub fn undo(&mut self, undo: Undo) {
        let Undo { key, id, before } = undo;
        let zone = self.runtime.entry(key.clone()).or_default();
        if let Some(now) = zone.remove(&id) {
            self.timers.retime(&key, &id, now.timer, None);
            touch(&mut self.dirty, &key, &now.valid);
        }
        if let Some(before) = before {
            self.timers.retime(&key, &id, None, before.timer);
            touch(&mut self.dirty, &key, &before.valid);
            zone.insert(id, before);
        }
        if self.runtime.get(&key).is_some_and(ZoneRuntime::is_empty) {
            self.runtime.remove(&key);
        }
    }

    /// Publishes the current state to the query path: one pointer swap.
    /// Zones whose runtime instances changed are built again first; the
    /// services they replaced are returned, to be freed after the replies.
    pub fn publish(&mut self) -> Vec<Arc<Service>> {
        self.files_changed = false;
        let mut retired = Vec::new();
        for (key, services) in std::mem::take(&mut self.dirty) {
            // A zone whose build runs is served as it was until the build
            // is installed; its changes wait for it.
            if self.builds.is_running(&key) {
                self.dirty.insert(key, services);
            } else if let Some(entry) = self.zones.get_mut(&key) {
                // The reverse zones follow the services as merged: what
                // changed in them is all they read.
                let mut merged = Vec::new();
                let from = entry.serial();
                retired.extend(entry.update(
                    self.runtime.get(&key),
                    services,
                    (&key, &mut self.health),
                    self.reverse.is_enabled().then_some(&mut merged),
                ));
                if self.reverse.is_enabled() && entry.live.is_some() {
                    self.reverse
                        .services_changed(&key, (from, entry.serial()), merged);
                }
            }
        }
        // Zones no longer served have nothing to check.
        let gone: Vec<Vec<u8>> = self
            .health
            .zone_keys()
            .filter(|k| !self.zones.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.health.zone_removed(&key);
        }
        if self.reverse.is_enabled() {
            let serials = &self.serials;
            self.reverse.seed_serials(|key| serials.floor(key));
            let current: Vec<(&[u8], u32)> = self
                .zones
                .iter()
                .filter(|(_, e)| e.live.is_some())
                .map(|(k, e)| (k.as_slice(), e.serial()))
                .collect();
            let (zones, runtime) = (&self.zones, &self.runtime);
            self.reverse
                .update(&current, |key| zones[key].forward_zone(runtime.get(key)));
        }
        // Durable before any secondary can see the serials.
        let serials = self
            .zones
            .iter()
            .filter(|(_, e)| e.live.is_some())
            .map(|(k, e)| (k.as_slice(), &e.file.zone.apex, e.serial()))
            .chain(self.reverse.serials());
        if let Err(error) = self.serials.reserve(serials) {
            error!(%error, "serials not saved; after a restart they may go below ones already served");
        }
        let zones = &self.zones;
        let snapshot = Snapshot::new(
            zones
                .values()
                .filter_map(|e| e.snapshot().cloned())
                .chain(self.reverse.snapshots(|k| zones.contains_key(k))),
        );
        let after = match self.on_publish.as_mut() {
            Some(hook) => hook(&self.published.load(), &snapshot),
            None => None,
        };
        self.published.store(Arc::new(snapshot));
        if let Some(after) = after {
            after();
        }
        retired
    }

    /// Keeps serials above those in `serials` (read from the serial file),
    /// and the file above every serial published. Call before loading zones.
    pub fn set_serials(&mut self, serials: serials::Serials) {
        self.serials = serials;
    }

    /// Shows `hook` every snapshot before it is published, with the one it
    /// replaces (the zone transfer journal and NOTIFY follow changes so).
    pub fn set_publish_hook(&mut self, hook: PublishHook) {
        self.on_publish = Some(hook);
    }

    /// Serves these reverse zones (PTR records for every instance and host
    /// address in their networks). Call before the first publish.
    pub fn set_reverse(&mut self, zones: ReverseZones) {
        self.reverse = zones;
    }

    /// Zones with their source and serial, sorted by apex.
    pub fn status(&self) -> Vec<ZoneStatus> {
        self.zones
            .iter()
            .map(|(key, e)| {
                let runtime = self.runtime.get(key);
                let serving = runtime.map_or(0, |r| r.values().filter(|r| r.serving()).count());
                let registered = runtime.map_or(0, ZoneRuntime::len);
                let mut services: BTreeSet<(String, crate::model::Protocol)> = e
                    .file
                    .zone
                    .services
                    .iter()
                    .map(|s| (s.name.to_ascii_lowercase(), s.protocol))
                    .collect();
                for r in runtime.into_iter().flat_map(|r| r.values()) {
                    if r.serving() {
                        services.insert((r.valid.service.to_ascii_lowercase(), r.valid.protocol));
                    }
                }
                ZoneStatus {
                    unhealthy: self.health.unhealthy_instances(key),
                    zone: e.file.zone.apex.to_ascii(),
                    source: e.source.clone(),
                    serial: e.serial(),
                    stale: self.file_errors.get(&e.source).cloned(),
                    services: e.file.zone.services.len(),
                    instances: e.file.zone.services.iter().map(|s| s.instances.len()).sum(),
                    runtime_serving: serving,
                    runtime_not_serving: registered - serving,
                    services_served: services.len(),
                }
            })
            .collect()
    }

    /// Runtime registrations whose zone no file declares now.
    pub fn orphaned(&self) -> usize {
        self.runtime
            .iter()
            .filter(|(k, _)| !self.zones.contains_key(*k))
            .map(|(_, r)| r.len())
            .sum()
    }

    /// Adds or replaces a runtime instance. It is served after the next
    /// [`Registry::publish`]; the caller saves the registrations first.
    fn register(
        &mut self,
        request: Registration,
        now: Instant,
    ) -> Result<InstanceInfo, RegistryError> {
        let valid = runtime::validate(&request).map_err(RegistryError::Invalid)?;
        let key = lower_wire(&valid.apex);
        let Some(entry) = self.zones.get(&key) else {
            return Err(self.unknown_zone(&request.zone));
        };
        if let Some(reason) = runtime::file_conflict(&entry.file.names, &entry.source, &valid) {
            return Err(RegistryError::Conflict(reason));
        }
        let id = valid.instance.name.to_ascii_lowercase();
        let zone = self.runtime.entry(key.clone()).or_default();
        // The only registrations this one can collide with: one under its
        // instance name, one of a service named like the instance, and one
        // whose instance is named like the service. Found by lookups, so a
        // registration costs the same in a zone of any size.
        let service_id = valid.service.to_ascii_lowercase();
        let named_like_instance =
            [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .filter_map(|protocol| {
                    let key = ServiceKey {
                        name: id.clone(),
                        protocol,
                    };
                    zone.service(&key).next().map(|(id, _)| id)
                });
        let candidates = std::iter::once(&id)
            .chain(named_like_instance)
            .chain(std::iter::once(&service_id));
        for other_id in candidates {
            let Some(other) = zone.get(other_id) else {
                continue;
            };
            let replaces = *other_id == id
                && other.valid.service.eq_ignore_ascii_case(&valid.service)
                && other.valid.protocol == valid.protocol;
            if replaces {
                continue;
            }
            if let Some(reason) = runtime::runtime_conflict(&valid, &other.valid) {
                return Err(RegistryError::Conflict(reason));
            }
        }
        let timer = expiry(valid.ttl.filter(|_| !self.store_keeps_ttls), now);
        let new = RuntimeEntry {
            request,
            valid,
            timer,
            expired: false,
            shadowed: None,
        };
        let info = new.info(now);
        let old_timer = zone.get(&id).and_then(|old| old.timer);
        self.timers.retime(&key, &id, old_timer, timer);
        let unchanged = zone
            .get(&id)
            .is_some_and(|old| old.request == new.request && old.serving());
        if !unchanged {
            self.journal.push(Record::Set(new.stored()));
            touch(&mut self.dirty, &key, &new.valid);
        }
        info!(zone = %new.request.zone, instance = %new.request.instance, "instance registered");
        zone.insert(id, new);
        Ok(info)
    }

    /// Removes a runtime instance.
    fn deregister(&mut self, k: &InstanceKey) -> Result<(), RegistryError> {
        let (key, id) = self.find(k)?;
        let zone = self.runtime.get_mut(&key).expect("found");
        if let Some(gone) = zone.remove(&id) {
            touch(&mut self.dirty, &key, &gone.valid);
            self.timers.retime(&key, &id, gone.timer, None);
            let (zone, instance) = store::key(&gone.request.zone, &gone.request.instance)
                .map_err(RegistryError::Invalid)?;
            self.journal
                .push(Record::Remove(Removed { zone, instance }));
            info!(zone = %k.zone, instance = %k.instance, "instance deregistered");
        }
        if self.runtime.get(&key).is_some_and(ZoneRuntime::is_empty) {
            self.runtime.remove(&key);
        }
        Ok(())
    }

    /// Renews a runtime instance's TTL; an expired one is served again.
    fn heartbeat(&mut self, k: &InstanceKey, now: Instant) -> Result<InstanceInfo, RegistryError> {
        let (key, id) = self.find(k)?;
        let r = self
            .runtime
            .get_mut(&key)
            .and_then(|z| z.get_mut(&id))
            .expect("found");
        let timer = expiry(r.valid.ttl.filter(|_| !self.store_keeps_ttls), now);
        self.timers.retime(&key, &id, r.timer, timer);
        r.timer = timer;
        if r.expired {
            r.expired = false;
            info!(zone = %r.valid.apex, instance = %r.valid.instance.name, "heartbeat: serving again");
            // The expired flag is saved, so saving again keeps a restart
            // from hiding an instance that is alive.
            self.journal.push(Record::Set(r.stored()));
            touch(&mut self.dirty, &key, &r.valid);
        }
        let r = self.runtime[&key].get(&id).expect("found");
        let mut info = r.info(now);
        self.runtime_health(&key, r, &mut info);
        Ok(info)
    }

    /// The zone key and instance id of a registered runtime instance, or why not.
    fn find(&self, k: &InstanceKey) -> Result<(Vec<u8>, String), RegistryError> {
        let apex = parse_apex(&k.zone).map_err(RegistryError::Invalid)?;
        let key = lower_wire(&apex);
        let id = k.instance.to_ascii_lowercase();
        let Some(zone) = self.runtime.get(&key) else {
            if let Some(e) = self.zones.get(&key) {
                return Err(not_registered(k, e));
            }
            return Err(self.unknown_zone(&k.zone));
        };
        match zone.get(&id) {
            Some(r) if !r.valid.service.eq_ignore_ascii_case(&k.service) => {
                Err(RegistryError::OtherService {
                    instance: r.valid.instance.name.clone(),
                    registered: r.valid.service.clone(),
                    asked: k.service.clone(),
                })
            }
            Some(r) if k.protocol.is_some_and(|p| p != r.valid.protocol) => {
                Err(RegistryError::OtherProtocol {
                    instance: r.valid.instance.name.clone(),
                    registered: r.valid.protocol,
                })
            }
            Some(_) => Ok((key, id)),
            None => match self.zones.get(&key) {
                Some(e) => Err(not_registered(k, e)),
                None => Err(RegistryError::NotRegistered {
                    instance: k.instance.clone(),
                    zone: k.zone.clone(),
                }),
            },
        }
    }

    fn unknown_zone(&self, zone: &str) -> RegistryError {
        RegistryError::UnknownZone {
            zone: zone.to_string(),
            served: self
                .zones
                .values()
                .map(|e| e.file.zone.apex.to_ascii())
                .collect(),
        }
    }

    /// Every instance, file and runtime, of one zone or all, sorted by zone,
    /// service and instance.
    pub fn list(
        &self,
        zone: Option<&str>,
        now: Instant,
    ) -> Result<Vec<InstanceInfo>, RegistryError> {
        let only = match zone {
            None => None,
            Some(z) => {
                let key = lower_wire(&parse_apex(z).map_err(RegistryError::Invalid)?);
                if !self.zones.contains_key(&key) && !self.runtime.contains_key(&key) {
                    return Err(self.unknown_zone(z));
                }
                Some(key)
            }
        };
        let wanted = |k: &Vec<u8>| only.as_ref().is_none_or(|o| o == k);
        let mut out = Vec::new();
        for (key, e) in self.zones.iter().filter(|(k, _)| wanted(k)) {
            for s in &e.file.zone.services {
                for i in &s.instances {
                    let check = effective_check(i.check.as_deref(), s.check.as_ref());
                    let (health, unhealthy) = self
                        .health
                        .instance_health(key, &s.name, s.protocol, i, check);
                    out.push(InstanceInfo {
                        source: "file".into(),
                        state: "serving".into(),
                        health: health.as_str().into(),
                        unhealthy_address: unhealthy.iter().map(ToString::to_string).collect(),
                        ..instance_info(&e.file.zone.apex, &s.name, s.protocol, i)
                    });
                }
            }
        }
        for (key, zone) in self.runtime.iter().filter(|(k, _)| wanted(k)) {
            for r in zone.values() {
                let mut info = r.info(now);
                self.runtime_health(key, r, &mut info);
                if !self.zones.contains_key(key) {
                    info.state = "no-zone".into();
                    info.reason = Some("no zone file declares this zone now".into());
                    info.expires_in_ms = None;
                }
                out.push(info);
            }
        }
        out.sort_by(|a, b| {
            let k = |i: &InstanceInfo| {
                (
                    i.zone.to_ascii_lowercase(),
                    i.service.to_ascii_lowercase(),
                    i.instance.to_ascii_lowercase(),
                )
            };
            k(a).cmp(&k(b))
        });
        Ok(out)
    }

    /// Marks runtime instances whose TTL ran out as expired, and removes
    /// those that stayed expired for the reaping age. Returns whether any
    /// did; [`Registry::publish`] then takes them out of answers.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some((timer, key, id)) = self.timers.pop_due(now) {
            let Some(zone) = self.runtime.get_mut(&key) else {
                continue;
            };
            let Some(r) = zone.get_mut(&id) else {
                continue;
            };
            any = true;
            touch(&mut self.dirty, &key, &r.valid);
            match timer {
                Timer::Expire => {
                    r.expired = true;
                    r.timer = self.reap_after.map(|age| (now + age, Timer::Reap));
                    if let Some(t) = r.timer {
                        self.timers.retime(&key, &id, None, Some(t));
                    }
                    self.journal.push(Record::Set(r.stored()));
                    info!(zone = %r.valid.apex, instance = %r.valid.instance.name, ttl = r.valid.ttl, "no heartbeat within the TTL; not serving it until the next one");
                }
                Timer::Reap => {
                    let gone = zone.remove(&id).expect("found");
                    if zone.is_empty() {
                        self.runtime.remove(&key);
                    }
                    if let Ok((zone, instance)) =
                        store::key(&gone.request.zone, &gone.request.instance)
                    {
                        self.journal
                            .push(Record::Remove(Removed { zone, instance }));
                    }
                    info!(zone = %gone.valid.apex, instance = %gone.valid.instance.name, after_secs = self.reap_after.map(|a| a.as_secs()), "expired for the reaping age; registration removed");
                }
            }
        }
        any
    }

    /// The earliest moment a runtime instance expires or is reaped, if any will.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Removes instances that stay expired for `age` (`None`: keep them
    /// until they are deregistered). Call before [`Registry::restore`].
    pub fn set_reap_after(&mut self, age: Option<Duration>) {
        self.reap_after = age;
    }

    /// Fills in a runtime instance's health. One in a file's service has
    /// the service's check unless it has its own.
    fn runtime_health(&self, key: &[u8], r: &RuntimeEntry, info: &mut InstanceInfo) {
        let id = r.valid.service_key();
        let service_check = self.zones.get(key).and_then(|e| {
            let &i = e.file.services.get(&id)?;
            e.file.zone.services[i].check.as_ref()
        });
        let i = &r.valid.instance;
        let (health, unhealthy) = self.health.instance_health(
            key,
            &r.valid.service,
            r.valid.protocol,
            i,
            effective_check(i.check.as_deref(), service_check),
        );
        info.health = health.as_str().into();
        info.unhealthy_address = unhealthy.iter().map(ToString::to_string).collect();
    }

    /// Records health checks' state changes: the zones they are in are
    /// built again at the next [`Registry::publish`]. Results for targets
    /// that are gone (the instance or its check changed meanwhile) are
    /// ignored.
    fn set_health(&mut self, flips: Vec<Flip>) {
        for flip in flips {
            let Ok(before) = self.health.record(&flip) else {
                continue;
            };
            // Unknown addresses are already served: a first passing probe
            // changes no answer, so it costs no rebuild (nor a new serial).
            if before.is_some() || !flip.healthy {
                let t = &flip.target;
                let service = ServiceKey {
                    name: t.service.clone(),
                    protocol: t.protocol,
                };
                mark(&mut self.dirty, &t.zone, service, Touched::Whole);
            }
            let t = &flip.target;
            let zone = self
                .zones
                .get(&t.zone)
                .map_or_else(String::new, |e| e.file.zone.apex.to_ascii());
            let check = check_name(t);
            match (before, flip.healthy) {
                (None, true) => {
                    tracing::debug!(%zone, service = %t.service, instance = %t.instance, address = %t.address, port = t.port, %check, "health check passing")
                }
                (Some(_), true) => {
                    info!(%zone, service = %t.service, instance = %t.instance, address = %t.address, port = t.port, %check, "health check passing again; serving the address")
                }
                (_, false) => {
                    warn!(%zone, service = %t.service, instance = %t.instance, address = %t.address, port = t.port, %check, error = %flip.detail, "health check failing; the address is left out of answers")
                }
            }
        }
    }

    /// The zones whose health check targets changed since the last call,
    /// with their targets now, for the checker.
    pub fn take_health_updates(&mut self) -> Vec<(Vec<u8>, Vec<Target>)> {
        self.health.take_updates()
    }

    /// Whether anything changed since the last [`Registry::publish`].
    pub fn needs_publish(&self) -> bool {
        self.files_changed || self.dirty.keys().any(|k| !self.builds.is_running(k))
    }

    /// The changes to the registrations since the last call, for the state file.
    pub fn take_journal(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.journal)
    }

    /// How many names the zones answer for, as last built.
    pub fn served_names(&self) -> usize {
        let live = self.zones.values().filter_map(|e| e.live.as_ref());
        live.map(LiveZone::name_count).sum()
    }

    /// How many runtime registrations there are.
    pub fn stored_count(&self) -> usize {
        self.runtime.values().map(|z| z.len()).sum()
    }

    /// Every runtime registration, as the state file keeps it.
    pub fn stored(&self) -> Vec<Stored> {
        self.runtime
            .values()
            .flat_map(|z| z.values())
            .map(RuntimeEntry::stored)
            .collect()
    }

    /// Restores registrations from the state file, before any zone file is
    /// loaded. TTL instances that were alive get a fresh TTL from `now`: a
    /// restart must not drop every healthy instance until its next heartbeat.
    /// Those that had expired stay expired until a heartbeat.
    pub fn restore(&mut self, stored: Vec<Stored>, now: Instant) -> Result<(), RegistryError> {
        for s in stored {
            let valid = runtime::validate(&s.registration).map_err(|e| {
                RegistryError::Invalid(format!(
                    "registration of instance \"{}\" in zone {}: {e}",
                    s.registration.instance, s.registration.zone
                ))
            })?;
            let key = lower_wire(&valid.apex);
            let id = valid.instance.name.to_ascii_lowercase();
            // Alive: a fresh TTL from now. Expired: the reaping age from now,
            // since the file does not say when it expired.
            let timer = match s.expired {
                false => expiry(valid.ttl.filter(|_| !self.store_keeps_ttls), now),
                true => self.reap_after.map(|age| (now + age, Timer::Reap)),
            };
            let zone = self.runtime.entry(key.clone()).or_default();
            if zone.contains_key(&id) {
                return Err(RegistryError::Conflict(format!(
                    "instance \"{}\" is registered twice in zone {}",
                    valid.instance.name, s.registration.zone
                )));
            }
            self.timers.retime(&key, &id, None, timer);
            zone.insert(
                id,
                RuntimeEntry {
                    request: s.registration,
                    valid,
                    timer,
                    expired: s.expired,
                    shadowed: None,
                },
            );
        }
        Ok(())
    }
}

/// Notes that the service of runtime instance `r` of zone `key` changed.
fn touch(dirty: &mut Dirty, key: &[u8], r: &RuntimeInstance) {
    let id = r.instance.name.to_ascii_lowercase();
    mark(dirty, key, r.service_key(), Touched::Instances([id].into()));
}

/// The services changed since the last publish, by zone key.
type Dirty = BTreeMap<Vec<u8>, BTreeMap<ServiceKey, Touched>>;

/// Notes that service `service` of zone `key` changed by `touched`.
fn mark(dirty: &mut Dirty, key: &[u8], service: ServiceKey, touched: Touched) {
    let services = dirty.entry(key.to_vec()).or_default();
    match services.entry(service) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(touched);
        }
        std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().add(touched),
    }
}

/// The expiry timer of an instance with this TTL, registered or renewed at `now`.
fn expiry(ttl: Option<u32>, now: Instant) -> Option<(Instant, Timer)> {
    ttl.map(|t| (now + Duration::from_secs(t.into()), Timer::Expire))
}

/// Why `k` is not a runtime instance of the zone `e`: a zone file defines
/// it, or nothing does.
fn not_registered(k: &InstanceKey, e: &ZoneEntry) -> RegistryError {
    let in_file = e
        .file
        .zone
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .any(|i| i.name.eq_ignore_ascii_case(&k.instance));
    if in_file {
        RegistryError::DefinedByFile {
            instance: k.instance.clone(),
            file: e.source.clone(),
        }
    } else {
        RegistryError::NotRegistered {
            instance: k.instance.clone(),
            zone: k.zone.clone(),
        }
    }
}

/// How a check is named in the log: `tcp` or `http /healthz`.
fn check_name(t: &Target) -> String {
    match &t.check.kind {
        crate::model::CheckKind::Tcp => "tcp".into(),
        crate::model::CheckKind::Http(path) => format!("http {path}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    const ZONE: &str = "zone = \"r.test\"\n[[services]]\nname = \"web\"\nport = 80\n\
                        [[services.instances]]\nname = \"web-1\"\naddress = \"10.0.0.1\"\n";

    fn file(path: &str, text: &str) -> Change {
        let zone = crate::sources::zone_file::parse(Path::new(path), text).expect("valid zone");
        Change::FileLoaded {
            path: path.into(),
            zone: Box::new(FileZone::new(zone)),
            zone_at: (1, 8),
        }
    }

    fn registration(instance: &str, address: &str, ttl: Option<u32>) -> Registration {
        let mut r = json!({"zone": "r.test", "service": "web", "instance": instance,
            "address": address, "port": 8080});
        if let Some(ttl) = ttl {
            r["ttl"] = ttl.into();
        }
        serde_json::from_value(r).expect("a registration")
    }

    fn key(instance: &str) -> InstanceKey {
        serde_json::from_value(json!({"zone": "r.test", "service": "web", "instance": instance}))
            .expect("a key")
    }

    /// Whether the published snapshot has this name.
    fn answers(handle: &SnapshotHandle, name: &str) -> bool {
        let apex = hickory_proto::rr::Name::from_ascii("r.test.").unwrap();
        let name = hickory_proto::rr::Name::from_ascii(name).unwrap();
        handle
            .load()
            .zone(&lower_wire(&apex))
            .is_some_and(|z| z.node(&lower_wire(&name)).is_some())
    }

    fn state(registry: &Registry, instance: &str) -> String {
        let list = registry.list(Some("r.test"), Instant::now()).unwrap();
        let i = list
            .iter()
            .find(|i| i.instance == instance)
            .expect("listed");
        i.state.clone()
    }

    #[test]
    fn a_registration_is_answered_after_publish_and_journaled() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry.publish();
        let info = registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", None)),
                now,
            )
            .unwrap()
            .expect("the instance");
        assert_eq!(info.state, "serving");
        assert!(!answers(&handle, "web-9.r.test."), "not before publish");
        assert!(registry.needs_publish());
        registry.publish();
        assert!(answers(&handle, "web-9.r.test."));
        assert!(
            matches!(&registry.take_journal()[..], [Record::Set(s)] if s.registration.instance == "web-9")
        );

        // The same registration again changes nothing and saves nothing.
        registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", None)),
                now,
            )
            .unwrap();
        assert!(registry.take_journal().is_empty());

        registry
            .apply(Change::Deregister(key("web-9")), now)
            .unwrap();
        registry.publish();
        assert!(!answers(&handle, "web-9.r.test."));
        assert!(
            matches!(&registry.take_journal()[..], [Record::Remove(r)] if r.instance == "web-9")
        );
    }

    #[test]
    fn refusals_are_typed_and_change_nothing() {
        let (mut registry, _) = Registry::new();
        let now = Instant::now();
        let unknown = registry.apply(
            Change::Register(registration("web-9", "10.0.0.9", None)),
            now,
        );
        assert!(
            matches!(unknown, Err(RegistryError::UnknownZone { served, .. }) if served.is_empty())
        );
        registry.apply(file("r.toml", ZONE), now).unwrap();
        let taken = registry.apply(
            Change::Register(registration("web-1", "10.0.0.9", None)),
            now,
        );
        assert!(
            matches!(taken, Err(RegistryError::Conflict(_))),
            "{taken:?}"
        );
        let from_file = registry.apply(Change::Deregister(key("web-1")), now);
        assert!(
            matches!(from_file, Err(RegistryError::DefinedByFile { .. })),
            "{from_file:?}"
        );
        let missing = registry.apply(Change::Heartbeat(key("web-7")), now);
        assert!(
            matches!(missing, Err(RegistryError::NotRegistered { .. })),
            "{missing:?}"
        );
        let invalid = registry.apply(
            Change::Register(registration("web_9", "10.0.0.9", None)),
            now,
        );
        assert!(
            matches!(invalid, Err(RegistryError::Invalid(_))),
            "{invalid:?}"
        );
        assert!(registry.take_journal().is_empty());
    }

    #[test]
    fn an_undone_change_leaves_the_registry_as_it_was() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        let first = Change::Register(registration("web-9", "10.0.0.9", Some(5)));
        registry.apply(first, now).unwrap();
        registry.publish();
        // A replacement, then a removal, both taken back, latest first.
        let replace = Change::Register(registration("web-9", "10.0.0.99", None));
        let undo_replace = registry.undo_point(&replace).unwrap();
        registry.apply(replace, now).unwrap();
        let remove = Change::Deregister(key("web-9"));
        let undo_remove = registry.undo_point(&remove).unwrap();
        registry.apply(remove, now).unwrap();
        registry.undo(undo_remove);
        registry.undo(undo_replace);
        registry.publish();
        assert!(answers(&handle, "web-9.r.test."));
        let list = registry.list(Some("r.test"), now).unwrap();
        let web_9 = list.iter().find(|i| i.instance == "web-9").unwrap();
        assert_eq!(web_9.address, ["10.0.0.9"]);
        assert_eq!(registry.next_expiry(), Some(now + Duration::from_secs(5)));
        // A new registration taken back is gone, timer and all.
        let new = Change::Register(registration("web-7", "10.0.0.7", Some(1)));
        let undo_new = registry.undo_point(&new).unwrap();
        registry.apply(new, now).unwrap();
        registry.undo(undo_new);
        registry.publish();
        assert!(!answers(&handle, "web-7.r.test."));
        assert_eq!(registry.next_expiry(), Some(now + Duration::from_secs(5)));
    }

    #[test]
    fn registrations_that_collide_with_each_other_are_refused() {
        let (mut registry, _) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        let reg = |instance: &str, service: &str| {
            let mut r = registration(instance, "10.0.0.9", None);
            r.service = service.into();
            Change::Register(r)
        };
        registry.apply(reg("web-9", "web"), now).unwrap();
        registry.apply(reg("q-1", "queue"), now).unwrap();
        let conflict = |registry: &mut Registry, change| match registry.apply(change, now) {
            Err(RegistryError::Conflict(reason)) => reason,
            other => panic!("{other:?}"),
        };
        let e = conflict(&mut registry, reg("web-9", "queue"));
        assert!(e.contains("already registered for service \"web\""), "{e}");
        let e = conflict(&mut registry, reg("queue", "web"));
        assert!(
            e.contains("is the name of registered service \"queue\""),
            "{e}"
        );
        let e = conflict(&mut registry, reg("q-2", "web-9"));
        assert!(
            e.contains("is the name of registered instance \"web-9\""),
            "{e}"
        );
        // Replacing an instance of the same service is no collision; once
        // it is gone, its name is free.
        registry.apply(reg("web-9", "web"), now).unwrap();
        registry
            .apply(Change::Deregister(key("web-9")), now)
            .unwrap();
        registry.apply(reg("web-9", "queue"), now).unwrap();
    }

    #[test]
    fn a_file_that_takes_a_registered_name_shadows_it_until_it_gives_it_back() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", None)),
                now,
            )
            .unwrap();
        registry.publish();
        let with_web_9 =
            format!("{ZONE}[[services.instances]]\nname = \"web-9\"\naddress = \"10.0.0.99\"\n");
        registry.apply(file("r.toml", &with_web_9), now).unwrap();
        registry.publish();
        assert_eq!(state(&registry, "web-9"), "serving", "the file's web-9");
        let runtime = registry.list(Some("r.test"), now).unwrap();
        let shadowed = runtime.iter().find(|i| i.source == "runtime").unwrap();
        assert_eq!(shadowed.state, "shadowed");
        // The file gives the name back: the registration is served again.
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry.publish();
        assert_eq!(state(&registry, "web-9"), "serving");
        assert!(answers(&handle, "web-9.r.test."));
    }

    #[test]
    fn an_instance_without_heartbeat_expires_and_a_heartbeat_revives_it() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", Some(5))),
                now,
            )
            .unwrap();
        registry.publish();
        registry.take_journal();
        assert_eq!(registry.next_expiry(), Some(now + Duration::from_secs(5)));
        assert!(!registry.expire(now + Duration::from_secs(4)));
        assert!(registry.expire(now + Duration::from_secs(5)));
        registry.publish();
        assert!(!answers(&handle, "web-9.r.test."));
        assert_eq!(state(&registry, "web-9"), "expired");
        assert_eq!(
            registry.next_expiry(),
            None,
            "an expired instance has no deadline"
        );
        // The expired flag is saved, so a restart keeps it out of answers.
        assert!(matches!(&registry.take_journal()[..], [Record::Set(s)] if s.expired));

        let later = now + Duration::from_secs(6);
        registry
            .apply(Change::Heartbeat(key("web-9")), later)
            .unwrap();
        registry.publish();
        assert!(answers(&handle, "web-9.r.test."));
        assert_eq!(registry.next_expiry(), Some(later + Duration::from_secs(5)));
        assert!(matches!(&registry.take_journal()[..], [Record::Set(s)] if !s.expired));
    }

    #[test]
    fn an_instance_expired_for_the_reaping_age_is_removed_unless_it_comes_back() {
        let (mut registry, _) = Registry::new();
        registry.set_reap_after(Some(Duration::from_secs(60)));
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        for id in ["web-8", "web-9"] {
            registry
                .apply(Change::Register(registration(id, "10.0.0.9", Some(5))), now)
                .unwrap();
        }
        let secs = |s| now + Duration::from_secs(s);
        assert!(registry.expire(secs(5)));
        assert_eq!(registry.next_expiry(), Some(secs(65)), "the reaping time");
        // web-9 comes back before the reaping age: it is kept.
        registry
            .apply(Change::Heartbeat(key("web-9")), secs(30))
            .unwrap();
        registry.take_journal();
        assert_eq!(registry.next_expiry(), Some(secs(35)), "web-9's new TTL");
        assert!(registry.expire(secs(35)));
        assert_eq!(
            registry.next_expiry(),
            Some(secs(65)),
            "web-8 is reaped first"
        );
        assert!(registry.expire(secs(65)));
        let listed: Vec<String> = registry
            .list(Some("r.test"), secs(65))
            .unwrap()
            .into_iter()
            .map(|i| i.instance)
            .collect();
        assert!(!listed.contains(&"web-8".to_string()), "{listed:?}");
        assert!(listed.contains(&"web-9".to_string()), "{listed:?}");
        let journal = registry.take_journal();
        assert!(
            journal
                .iter()
                .any(|r| matches!(r, Record::Remove(r) if r.instance == "web-8")),
            "the removal is saved"
        );
        assert_eq!(
            registry.next_expiry(),
            Some(secs(95)),
            "web-9's reaping time"
        );
    }

    #[test]
    fn restored_registrations_keep_their_expired_state_and_wait_for_their_zone() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        let stored = vec![
            Stored {
                registration: registration("web-8", "10.0.0.8", Some(5)),
                expired: true,
            },
            Stored {
                registration: registration("web-9", "10.0.0.9", Some(5)),
                expired: false,
            },
        ];
        registry.restore(stored, now).unwrap();
        assert_eq!(registry.orphaned(), 2, "no file declares r.test yet");
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry.publish();
        assert_eq!(registry.orphaned(), 0);
        assert!(!answers(&handle, "web-8.r.test."));
        assert!(answers(&handle, "web-9.r.test."));
        assert_eq!(state(&registry, "web-8"), "expired");
        // The zone file goes: the registrations stay, not served.
        registry
            .apply(
                Change::FileRemoved {
                    path: "r.toml".into(),
                },
                now,
            )
            .unwrap();
        registry.publish();
        assert!(!answers(&handle, "web-9.r.test."));
        assert_eq!(registry.orphaned(), 2);
    }

    #[test]
    fn a_zone_built_in_the_background_is_served_whole_when_installed_and_others_go_on() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        let other = "zone = \"o.test\"\n[hosts]\nh = \"10.1.0.1\"\n";
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry.apply(file("o.toml", other), now).unwrap();
        registry.publish();
        let mut builds = registry.build_in_background();
        let r_key = lower_wire(&parse_apex("r.test").unwrap());
        let serial = registry.status()[1].serial;

        // A new version of r.test (web-1 becomes web-2), then a registration
        // into it and one into o.test.
        registry
            .apply(file("r.toml", &ZONE.replace("web-1", "web-2")), now)
            .unwrap();
        assert!(registry.is_building(&r_key));
        registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", None)),
                now,
            )
            .unwrap();
        let into_other: Registration = serde_json::from_value(json!({"zone": "o.test",
            "service": "db", "instance": "db-1", "address": "10.1.0.2", "port": 5432}))
        .unwrap();
        registry.apply(Change::Register(into_other), now).unwrap();
        assert!(registry.needs_publish());
        registry.publish();
        // o.test moved on; r.test is served as it was, whole.
        let o_key = lower_wire(&parse_apex("o.test").unwrap());
        let db = lower_wire(&hickory_proto::rr::Name::from_ascii("db-1.o.test.").unwrap());
        assert!(handle.load().zone(&o_key).unwrap().node(&db).is_some());
        assert!(answers(&handle, "web-1.r.test."));
        assert!(!answers(&handle, "web-2.r.test."));
        assert!(!answers(&handle, "web-9.r.test."));
        assert_eq!(registry.status()[1].serial, serial);
        assert!(
            !registry.needs_publish(),
            "r.test's changes wait for its build"
        );

        let built = builds.blocking_recv().unwrap();
        assert!(
            registry.install(built).is_some(),
            "the old version comes back"
        );
        assert!(!registry.is_building(&r_key));
        assert!(registry.needs_publish());
        registry.publish();
        assert!(!answers(&handle, "web-1.r.test."));
        assert!(answers(&handle, "web-2.r.test."));
        assert!(
            answers(&handle, "web-9.r.test."),
            "the registration made meanwhile"
        );
        // The build's serial, then the registration's.
        assert_eq!(registry.status()[1].serial, serial + 2);

        // Two versions in a row: whichever build comes back first, the zone
        // ends as the later file says.
        registry
            .apply(file("r.toml", &ZONE.replace("web-1", "web-3")), now)
            .unwrap();
        registry
            .apply(file("r.toml", &ZONE.replace("web-1", "web-4")), now)
            .unwrap();
        for _ in 0..2 {
            let built = builds.blocking_recv().unwrap();
            registry.install(built);
        }
        assert!(!registry.is_building(&r_key));
        registry.publish();
        assert!(answers(&handle, "web-4.r.test."));
        assert!(!answers(&handle, "web-3.r.test."));
        assert!(!answers(&handle, "web-2.r.test."));
    }

    #[test]
    fn a_build_that_fails_leaves_the_zone_served_as_it_was_and_changes_go_on() {
        let (mut registry, handle) = Registry::new();
        let now = Instant::now();
        registry.apply(file("r.toml", ZONE), now).unwrap();
        registry.publish();
        let mut builds = registry.build_in_background();
        let r_key = lower_wire(&parse_apex("r.test").unwrap());
        let broken = format!("{ZONE}[[services]]\nname = \"panic-in-build\"\nport = 1\n");
        registry.apply(file("r.toml", &broken), now).unwrap();
        registry
            .apply(
                Change::Register(registration("web-9", "10.0.0.9", None)),
                now,
            )
            .unwrap();
        // The failed build comes back, rather than leaving the zone waiting.
        let deadline = Instant::now() + Duration::from_secs(10);
        let built = loop {
            match builds.try_recv() {
                Ok(built) => break built,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("no word from the build: {e}"),
            }
        };
        assert!(registry.install(built).is_none());
        assert!(!registry.is_building(&r_key), "nothing waits for it");
        registry.publish();
        assert!(
            answers(&handle, "web-1.r.test."),
            "the version served before"
        );
        assert!(
            answers(&handle, "web-9.r.test."),
            "the registration made meanwhile"
        );
    }

    #[test]
    fn a_second_file_for_a_zone_waits_and_takes_it_when_the_first_goes() {
        let (mut registry, _) = Registry::new();
        let now = Instant::now();
        registry.apply(file("a.toml", ZONE), now).unwrap();
        registry.apply(file("b.toml", ZONE), now).unwrap();
        let status = registry.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].source, Path::new("a.toml"));
        assert!(registry.file_errors[Path::new("b.toml")].contains("already defined by a.toml"));
        registry
            .apply(
                Change::FileRemoved {
                    path: "a.toml".into(),
                },
                now,
            )
            .unwrap();
        let status = registry.status();
        assert_eq!(status[0].source, Path::new("b.toml"));
        assert!(registry.file_errors.is_empty());
    }

    /// A DNS query for `name` and `rtype`, as bytes.
    fn query(name: &str, rtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(crate::answer::wire::wire(
            &hickory_proto::rr::Name::from_ascii(name).unwrap(),
        ));
        q.extend(rtype.to_be_bytes());
        q.extend(1u16.to_be_bytes());
        q
    }

    /// The answers of `handle` to every name the test can make, by type:
    /// the whole response where it has answers (no serial in them), the
    /// response code alone where it is negative (its SOA carries the serial).
    fn answers_of(handle: &SnapshotHandle) -> Vec<(String, u16, Vec<u8>)> {
        use crate::answer::respond::{Transport, respond};
        use crate::answer::wire::rtype;
        let mut names = vec![
            "r.test.".to_string(),
            "_services._dns-sd._udp.r.test.".into(),
        ];
        for s in ["web", "db", "new"] {
            names.push(format!("{s}.r.test."));
            names.push(format!("_{s}._tcp.r.test."));
            names.push(format!("blue.{s}.r.test."));
            for i in 0..6 {
                names.push(format!("{s}-{i}.r.test."));
                names.push(format!("{s}-{i}._{s}._tcp.r.test."));
            }
        }
        let snapshot = handle.load();
        let mut out = Vec::new();
        let mut reply = Vec::new();
        for name in names {
            for t in [rtype::A, rtype::SRV, rtype::PTR, rtype::TXT] {
                respond(&snapshot, &query(&name, t), Transport::Tcp, &mut reply);
                let answered = u16::from_be_bytes([reply[6], reply[7]]) > 0;
                let kept = if !answered {
                    vec![reply[3] & 0x0F]
                } else if t == rtype::A {
                    // A service's addresses go out in a weighted order
                    // drawn per query: compare them as a set.
                    let body = &reply[12 + name.len() + 1 + 4..];
                    let mut records: Vec<&[u8]> = body.chunks(16).collect();
                    records.sort();
                    records.concat()
                } else {
                    reply.clone()
                };
                out.push((name.clone(), t, kept));
            }
        }
        out
    }

    #[test]
    fn any_sequence_of_changes_answers_as_a_fresh_start_would() {
        random_changes(false);
    }

    /// The same, with file versions built away from the writer while the
    /// other changes go on.
    #[test]
    fn any_sequence_of_changes_with_background_builds_answers_as_a_fresh_start_would() {
        random_changes(true);
    }

    fn random_changes(background: bool) {
        let base = "zone = \"r.test\"\n[[services]]\nname = \"web\"\nport = 80\ntags = [\"blue\"]\n\
                    [[services.instances]]\nname = \"web-0\"\naddress = \"10.0.0.1\"\n\
                    [[services]]\nname = \"db\"\nport = 5432\n";
        let moved =
            format!("{base}[[services.instances]]\nname = \"db-0\"\naddress = \"10.0.9.9\"\n");
        let mut x = 0x2545_f491u32;
        let mut next = move |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let (mut registry, handle) = Registry::new();
        let start = Instant::now();
        registry.apply(file("r.toml", base), start).unwrap();
        registry.publish();
        let mut builds = background.then(|| registry.build_in_background());
        let r_key = lower_wire(&parse_apex("r.test").unwrap());
        for step in 0..300u64 {
            let now = start + Duration::from_secs(step);
            let service = ["web", "db", "new", "NEW"][next(4) as usize];
            // Spelled in either letter case: ids are lowercased names.
            let id = match next(4) {
                0 => format!("{}-{}", service.to_ascii_uppercase(), next(6)),
                _ => format!("{}-{}", service.to_ascii_lowercase(), next(6)),
            };
            let change = match next(10) {
                0..=4 => {
                    let mut r =
                        registration(&id, &format!("10.1.{}.{}", next(3), next(200) + 1), None);
                    r.service = service.into();
                    r.ttl = (next(2) == 0).then_some(1 + next(3));
                    r.weight = Some(next(3) as u16);
                    Change::Register(r)
                }
                5..=6 => {
                    let mut k = key(&id);
                    k.service = service.into();
                    Change::Deregister(k)
                }
                7 => {
                    let mut k = key(&id);
                    k.service = service.into();
                    Change::Heartbeat(k)
                }
                // The file takes a name (db-0) or gives it back.
                8 => file("r.toml", if next(2) == 0 { base } else { &moved }),
                _ => {
                    registry.expire(now);
                    continue;
                }
            };
            let _ = registry.apply(change, now);
            registry.expire(now);
            // A build comes back some steps later; until then, nothing
            // of the zone changes for queries.
            if let Some(builds) = builds.as_mut()
                && registry.is_building(&r_key)
            {
                let served = answers_of(&handle);
                registry.publish();
                assert_eq!(served, answers_of(&handle), "step {step}");
                if next(3) > 0 {
                    continue;
                }
                while registry.is_building(&r_key) {
                    let built = builds.blocking_recv().unwrap();
                    registry.install(built);
                }
            }
            registry.publish();

            // A fresh server: the same file, the same registrations restored.
            let (mut fresh, fresh_handle) = Registry::new();
            fresh.restore(registry.stored(), now).unwrap();
            let text = if registry.zones.values().any(|e| e.names_instance("db-0")) {
                moved.as_str()
            } else {
                base
            };
            fresh.apply(file("r.toml", text), now).unwrap();
            fresh.publish();
            let (a, b) = (answers_of(&handle), answers_of(&fresh_handle));
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x, y, "step {step}: {} type {}", x.0, x.1);
            }
        }
    }
}
