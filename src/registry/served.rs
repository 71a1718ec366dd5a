//! What a zone serves: each service of its file with the runtime instances
//! registered into it, runtime services after them, and what health checks
//! leave of both. Worked out one service at a time, so a change to one
//! service looks at that service only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tracing::{info, warn};

use super::entries::{FileZone, Touched, ZoneEntry, ZoneRuntime};
use super::health::Book;
use super::runtime;
use crate::answer::live::LiveZone;
use crate::answer::reverse::ForwardZone;
use crate::answer::snapshot::ZoneSnapshot;
use crate::model::{Instance, Instances, Service, ServiceChange, ServiceKey, Zone, instances_in};

/// A service is merged again when its changed registrations are more than
/// one in this many of its instances, else its last merge is edited. Tests
/// edit small services too, so that their random sequences of changes check
/// every edit against a merge (see `merged_again`).
const EDITS_PER_INSTANCE: usize = if cfg!(test) { 1 } else { 64 };

/// What a zone is built from, owned: the build, which takes seconds for a
/// file of 100 000 services, can run away from the writer.
pub(super) struct BuildInput {
    /// Apex, TTL, SOA, name servers and hosts; no services.
    base: Zone,
    /// The services served, merged and health-filtered.
    services: Vec<Arc<Service>>,
    serial: u32,
    /// The version being replaced, whose unchanged answers are shared.
    previous: Option<Arc<ZoneSnapshot>>,
    /// Zone transfers are allowed: answers keep every record of their RRset.
    transfers: bool,
}

impl BuildInput {
    /// Builds the zone.
    pub(super) fn run(self) -> LiveZone {
        // Tests stand in for a bug in the build with a service of this name.
        #[cfg(test)]
        if self.services.iter().any(|s| s.name == "panic-in-build") {
            panic!("a build that fails, for a test");
        }
        let build = match self.transfers {
            true => LiveZone::build_for_transfers,
            false => LiveZone::build,
        };
        build(
            &self.base,
            self.services,
            self.serial,
            self.previous.as_deref(),
        )
    }
}

impl ZoneEntry {
    /// The zone as a file `zone` at `source` describes it, not built yet.
    pub(super) fn new(source: &std::path::Path, file: FileZone) -> ZoneEntry {
        ZoneEntry {
            source: source.to_path_buf(),
            file,
            live: None,
            floor: None,
            merged: HashMap::new(),
        }
    }

    /// The zone's snapshot, as last built; `None` while a new zone's
    /// first build runs.
    pub(super) fn snapshot(&self) -> Option<&Arc<ZoneSnapshot>> {
        self.live.as_ref().map(LiveZone::snapshot)
    }

    /// The keys of the zone's services, from its file and registrations,
    /// in key order.
    fn service_keys<'a>(&'a self, runtime: Option<&'a ZoneRuntime>) -> BTreeSet<&'a ServiceKey> {
        (self.file.services.keys())
            .chain(runtime.into_iter().flat_map(ZoneRuntime::service_keys))
            .collect()
    }

    /// The addresses the zone names, for the reverse zones: its hosts' and
    /// each service's as merged (before health checks, which do not change
    /// what an address is called).
    pub(super) fn forward_zone(&self, runtime: Option<&ZoneRuntime>) -> ForwardZone {
        let hosts = self.file.zone.hosts.iter();
        let ids_of = self.service_keys(runtime);
        ForwardZone {
            serial: self.serial(),
            apex: self.file.zone.apex.clone(),
            hosts: hosts
                .flat_map(|h| h.addresses.iter().map(|a| (*a, h.name.clone())))
                .collect(),
            services: ids_of
                .into_iter()
                .filter_map(|id| {
                    let merged = self.merged_service(runtime, id)?;
                    Some((id.clone(), merged))
                })
                .collect(),
        }
    }

    /// The zone's SOA serial (0 before the first build).
    pub(super) fn serial(&self) -> u32 {
        self.live.as_ref().map_or(0, LiveZone::serial)
    }

    /// The serial for the next version of the zone.
    fn next_serial(&self) -> u32 {
        crate::model::serial::next(self.live.as_ref().map(LiveZone::serial).or(self.floor))
    }

    /// Service `id` as it is served, before health checks: the file's
    /// service (if the file declares it) with the serving runtime instances
    /// added, in the order of their ids; `None` when neither has it. A file
    /// service without runtime instances is the file's own, not a copy.
    fn merged_service(
        &self,
        runtime: Option<&ZoneRuntime>,
        id: &ServiceKey,
    ) -> Option<Arc<Service>> {
        let mut instances = (runtime.into_iter())
            .flat_map(|r| r.service(id))
            .map(|(_, r)| r)
            .filter(|r| r.serving())
            .map(|r| &r.valid)
            .peekable();
        let file = self
            .file
            .services
            .get(id)
            .map(|&i| &self.file.zone.services[i]);
        let mut service = match file {
            Some(file) if instances.peek().is_none() => return Some(Arc::clone(file)),
            Some(file) => Service::clone(file),
            None => {
                let first = instances.peek()?;
                Service {
                    name: first.service.clone(),
                    protocol: first.protocol,
                    tags: Vec::new(),
                    check: None,
                    instances: Instances::new(),
                    max_answers: None,
                }
            }
        };
        service
            .instances
            .extend(instances.map(|r| Arc::clone(&r.instance)));
        Some(Arc::new(service))
    }

    /// Service `id` as served: health checks follow the service as merged
    /// (its targets are recorded for the checker, and unhealthy addresses
    /// left out). A service with no check of its own, nor any instance's
    /// in the file or a registration, has no targets: it is served as
    /// merged, with no look at each instance for them.
    fn served(
        &self,
        runtime: Option<&ZoneRuntime>,
        id: &ServiceKey,
        merged: Arc<Service>,
        (key, health): (&[u8], &mut Book),
    ) -> Arc<Service> {
        let checked = merged.check.is_some()
            || self.file.checked.contains(id)
            || runtime.is_some_and(|r| r.has_checks(id));
        if !checked {
            health.service_gone(key, &id.name, id.protocol);
            return merged;
        }
        let served = health.service_built(key, &merged).map(Arc::new);
        served.unwrap_or(merged)
    }

    /// Works out what the zone is built from: its file and its runtime
    /// instances, with the serial after the current one; the current
    /// version lends its unchanged answers. What is built from it
    /// ([`BuildInput::run`]) replaces `live`.
    /// `shadow`: the file is new, so which registrations it now owns the
    /// names of (shadowed: kept, not served; the file wins) is worked out
    /// again, and said in the log. `transfers`: zone transfers are allowed.
    pub(super) fn prepare(
        &mut self,
        runtime: Option<&mut ZoneRuntime>,
        (key, health): (&[u8], &mut Book),
        (shadow, transfers): (bool, bool),
    ) -> BuildInput {
        let mut runtime = runtime;
        if shadow && let Some(runtime) = runtime.as_deref_mut() {
            self.shadow(runtime);
        }
        let runtime = runtime.as_deref();
        // File services, then runtime ones: one canonical order, by id.
        let ids_of = self.service_keys(runtime);
        let mut services = Vec::with_capacity(ids_of.len());
        for id in ids_of {
            let Some(merged) = self.merged_service(runtime, id) else {
                continue;
            };
            services.push(self.served(runtime, id, merged, (key, health)));
        }
        health.retain_services(key, services.iter().map(|s| &**s));
        // The zone's previous version lends its serial and its unchanged
        // answers: a file reload re-encodes what the file changed.
        BuildInput {
            base: Zone {
                apex: self.file.zone.apex.clone(),
                ttl: self.file.zone.ttl,
                nameservers: self.file.zone.nameservers.clone(),
                soa: self.file.zone.soa.clone(),
                hosts: self.file.zone.hosts.clone(),
                services: Vec::new(),
            },
            services,
            serial: self.next_serial(),
            previous: self.live.as_ref().map(|l| Arc::clone(l.snapshot())),
            transfers,
        }
    }

    /// Brings the services `changed` up to date (their runtime instances
    /// or health changed), with a new serial: only those services' names
    /// are gathered and encoded again. Returns the services replaced, to be
    /// freed where no one waits. `merged`, if given, gets each changed
    /// service as merged, before health checks (`None`: gone).
    pub(super) fn update(
        &mut self,
        runtime: Option<&ZoneRuntime>,
        changed: BTreeMap<ServiceKey, Touched>,
        (key, health): (&[u8], &mut Book),
        mut merged: Option<&mut Vec<ServiceChange>>,
    ) -> Vec<Arc<Service>> {
        let serial = self.next_serial();
        let changes: Vec<(ServiceKey, Option<Arc<Service>>)> = changed
            .into_iter()
            .map(|(id, touched)| {
                let service = self.merged_again(runtime, &id, &touched);
                if let Some(merged) = merged.as_deref_mut() {
                    merged.push((id.clone(), service.clone()));
                }
                let served = match service {
                    Some(merged) => Some(self.served(runtime, &id, merged, (key, &mut *health))),
                    None => {
                        health.service_gone(key, &id.name, id.protocol);
                        None
                    }
                };
                (id, served)
            })
            .collect();
        match self.live.as_mut() {
            Some(live) => {
                live.update(changes, serial);
                live.take_retired()
            }
            None => Vec::new(),
        }
    }

    /// Service `id` as merged after the change `touched`. When only some
    /// of its runtime instances changed, the last merge is edited: each
    /// of them taken out of it and put back in its place if it serves,
    /// at a cost in the log of the service's size, where merging again
    /// takes a reference to every instance. The merge is kept for the
    /// next change while the service has registrations.
    fn merged_again(
        &mut self,
        runtime: Option<&ZoneRuntime>,
        id: &ServiceKey,
        touched: &Touched,
    ) -> Option<Arc<Service>> {
        let service = match (touched, self.merged.get(id)) {
            // Each edit copies a chunk or two of the list: many edits, such
            // as a batch of registrations into one service, cost more than
            // merging its instances again.
            (Touched::Instances(ids), Some(last))
                if ids.len() * EDITS_PER_INSTANCE <= last.instances.len() =>
            {
                self.merged_with(runtime, id, last, ids)
            }
            _ => self.merged_service(runtime, id),
        };
        #[cfg(test)]
        assert_eq!(service, self.merged_service(runtime, id), "{id:?}");
        match &service {
            Some(s) if runtime.is_some_and(|r| r.service(id).next().is_some()) => {
                self.merged.insert(id.clone(), Arc::clone(s));
            }
            _ => {
                self.merged.remove(id);
            }
        }
        service
    }

    /// `last`, service `id` as last merged, with the runtime instances
    /// `ids` taken out and, those that serve, put back in their place. The
    /// file's instances come first, then the registrations', in the order
    /// of their ids (see [`ZoneEntry::merged_service`]), so each has its
    /// place found by halving.
    fn merged_with(
        &self,
        runtime: Option<&ZoneRuntime>,
        id: &ServiceKey,
        last: &Service,
        ids: &BTreeSet<String>,
    ) -> Option<Arc<Service>> {
        let file = (self.file.services.get(id)).map(|&i| &self.file.zone.services[i]);
        let from = file.map_or(0, |f| f.instances.len());
        let mut service = last.clone();
        for name in ids {
            let at = match place(&service.instances, from, name) {
                Ok(at) => {
                    service.instances.remove(at);
                    at
                }
                Err(at) => at,
            };
            let entry = runtime.and_then(|r| r.get(name));
            if let Some(r) = entry.filter(|r| r.serving() && r.valid.in_service(id)) {
                service.instances.insert(at, Arc::clone(&r.valid.instance));
            }
        }
        if service.instances.len() == from {
            // No registration serves: the file's own service, if any.
            return file.cloned();
        }
        if file.is_none() {
            // Spelled as its first serving registration spells it.
            let first = (runtime.into_iter().flat_map(|r| r.service(id)))
                .map(|(_, r)| r)
                .find(|r| r.serving())?;
            if first.valid.service != service.name {
                service.name = first.valid.service.clone();
            }
        }
        Some(Arc::new(service))
    }

    /// Marks the registrations whose names the file now owns as shadowed,
    /// and those it gave back as served again.
    fn shadow(&self, runtime: &mut ZoneRuntime) {
        for r in runtime.values_mut() {
            let conflict = runtime::file_conflict(&self.file.names, &self.source, &r.valid);
            if conflict == r.shadowed {
                continue;
            }
            match &conflict {
                Some(reason) => warn!(
                    zone = %self.file.zone.apex,
                    instance = %r.valid.instance.name,
                    %reason,
                    "the zone file now owns this name; the registration is kept but not served"
                ),
                None => info!(
                    zone = %self.file.zone.apex,
                    instance = %r.valid.instance.name,
                    "the registration no longer conflicts with the zone file; serving it again"
                ),
            }
            r.shadowed = conflict;
        }
    }
}

/// Where the runtime instance `id` is among `instances` (`Ok`), or where
/// it goes (`Err`): from `from` on, they are in the order of their ids,
/// their lowercased names.
fn place(instances: &Instances, from: usize, id: &str) -> Result<usize, usize> {
    let registered = instances_in(instances, from..instances.len());
    let against_id = |i: &Arc<Instance>| {
        let name = i.name.bytes().map(|b| b.to_ascii_lowercase());
        name.cmp(id.bytes())
    };
    (registered.binary_search_by(against_id))
        .map(|at| from + at)
        .map_err(|at| from + at)
}
