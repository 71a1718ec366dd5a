//! A zone kept built between changes: adding, changing or removing a
//! service re-gathers only the names that service has (or had), and
//! re-encodes only the answers whose records changed or that read them
//! (additional sections), so a change costs what it touches, not the zone.
//!
//! Both a build from scratch and an update gather records in one canonical
//! order, services by [`ServiceKey`] and a service's instances in the order
//! given, so after any sequence of updates the snapshot is, answer for
//! answer, the one a build of the final services makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hickory_proto::rr::Name;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::build::{
    Builder, ancestors, browse_name, count_below, service_names, snapshot_of, try_child,
};
use super::encode::{Encoder, NodeRecords, RData};
use super::snapshot::{Answer, SHARD_NAMES, ZoneSnapshot};
use super::weighted::Weighted;
use crate::answer::wire::{WireName, lower_wire, rtype};
use crate::model::{Endpoint, Instance, Instances, Protocol, Service, ServiceKey, Zone};

mod compare;
mod holdings;
mod patch;
use compare::{differing, differing_bounds, same_fields, same_instance, same_service};
use patch::{ChangedInstances, PATCH_FROM, runs};

/// A zone's services and its snapshot, updated service by service.
pub struct LiveZone {
    /// Apex, TTL, SOA, name servers and hosts; its `services` stay empty.
    zone: Zone,
    /// Shared with the zone file's parsed services where no registration or
    /// health check changed them.
    services: BTreeMap<ServiceKey, Arc<Service>>,
    /// What the instances of each large service that was patched hold,
    /// counted, while it goes on being patched.
    holdings: HashMap<ServiceKey, holdings::Holdings>,
    /// Every name's records, gathered from all of the above.
    names: HashMap<Vec<u8>, NodeRecords>,
    /// For each name above a name of `names` (below the apex): how many names
    /// of `names` are under it; those not in `names` are empty non-terminals.
    below: HashMap<Vec<u8>, u32>,
    /// The services whose instances point at a name: its host name (which
    /// several services' instances, or a service, may share) or its SRV
    /// target. They gather records there, or read its addresses.
    /// With each service, how many of its instances point there.
    by_target: HashMap<Vec<u8>, Vec<(ServiceKey, u32)>>,
    /// The apex's and the hosts' keys: only names among them need the hosts.
    base_keys: HashSet<Vec<u8>>,
    apex_len: usize,
    /// The DNS-SD enumeration name and its key.
    browse: Option<(Name, Vec<u8>)>,
    snapshot: Arc<ZoneSnapshot>,
    /// The services the last update replaced or did not keep, for the
    /// caller to free where no one waits (see [`LiveZone::take_retired`]).
    retired: Vec<Arc<Service>>,
    /// For each RRset the current update changed, where its first changed
    /// record is: an answer cut at the first record past a message depends
    /// on its first records alone (see [`LiveZone::finish`]).
    first_edits: HashMap<(Vec<u8>, u16), usize>,
    /// Answers keep their RRset's records past a message, for zone
    /// transfers.
    whole_rrsets: bool,
}

impl LiveZone {
    /// Builds a zone from scratch: `base` gives apex, ttl, soa, nameservers
    /// and hosts (its `services` are ignored); `services` are the served
    /// services (already merged and health-filtered), in any order, the last
    /// of two with the same key kept; `previous` lends the answers that
    /// encode the same (so a file reload leaves unchanged answers shared).
    pub fn build(
        base: &Zone,
        services: impl IntoIterator<Item = impl Into<Arc<Service>>>,
        serial: u32,
        previous: Option<&ZoneSnapshot>,
    ) -> LiveZone {
        LiveZone::build_with(base, services, Vec::new(), (serial, false), previous)
    }

    /// A zone whose answers also keep their RRset's records past what a
    /// message holds, which zone transfers carry (see [`LiveZone::build`]).
    pub fn build_for_transfers(
        base: &Zone,
        services: impl IntoIterator<Item = impl Into<Arc<Service>>>,
        serial: u32,
        previous: Option<&ZoneSnapshot>,
    ) -> LiveZone {
        LiveZone::build_with(base, services, Vec::new(), (serial, true), previous)
    }

    /// [`LiveZone::build`] with more records, of names no service has (a
    /// reverse zone's PTR records), in the order given; `whole_rrsets` as
    /// in [`LiveZone::build_for_transfers`].
    pub(super) fn build_with(
        base: &Zone,
        services: impl IntoIterator<Item = impl Into<Arc<Service>>>,
        records: Vec<(Name, Vec<RData>)>,
        (serial, whole_rrsets): (u32, bool),
        previous: Option<&ZoneSnapshot>,
    ) -> LiveZone {
        let zone = Zone {
            apex: base.apex.clone(),
            ttl: base.ttl,
            nameservers: base.nameservers.clone(),
            soa: base.soa.clone(),
            hosts: base.hosts.clone(),
            services: Vec::new(),
        };
        let services: BTreeMap<ServiceKey, Arc<Service>> = services
            .into_iter()
            .map(|s| {
                let s = s.into();
                (ServiceKey::of(&s), s)
            })
            .collect();
        let apex_len = lower_wire(&zone.apex).len();
        let mut builder = Builder::new(&zone.apex, previous.map_or(0, |p| p.nodes.len()));
        builder.add_zone(&zone, services.values().map(|s| &**s));
        for (name, rdatas) in records {
            for rdata in rdatas {
                builder.add(&name, rdata);
            }
        }
        let names = builder.names;
        let below = count_below(&names, apex_len);
        let version = (serial, whole_rrsets);
        let snapshot = Arc::new(snapshot_of(&zone, &names, &below, version, previous));
        let mut by_target: HashMap<Vec<u8>, Vec<(ServiceKey, u32)>> = HashMap::new();
        for (key, service) in &services {
            index(&mut by_target, &zone.apex, key, &service.instances, true);
        }
        let base_keys = std::iter::once(&zone.apex)
            .chain(zone.hosts.iter().map(|h| &h.name))
            .map(lower_wire)
            .collect();
        let browse = browse_name(&zone.apex).map(|n| {
            let key = lower_wire(&n);
            (n, key)
        });
        LiveZone {
            zone,
            services,
            names,
            below,
            by_target,
            base_keys,
            apex_len,
            browse,
            snapshot,
            retired: Vec::new(),
            first_edits: HashMap::new(),
            holdings: HashMap::new(),
            whole_rrsets,
        }
    }

    /// The zone's current snapshot.
    pub fn snapshot(&self) -> &Arc<ZoneSnapshot> {
        &self.snapshot
    }

    /// The service with this key, as last given.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key).map(|s| &**s)
    }

    /// The services, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &Service)> {
        self.services.iter().map(|(k, s)| (k, &**s))
    }

    /// How many names the zone answers for.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// The serial of the current snapshot.
    pub fn serial(&self) -> u32 {
        self.snapshot.serial
    }

    /// Replaces, adds (`Some`) or removes (`None`) these services and gives
    /// the zone a new serial, re-encoding only the names they touch and the
    /// answers that read those names. A service given under another key than
    /// its own ([`ServiceKey::of`]) is stored under its own.
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (ServiceKey, Option<impl Into<Arc<Service>>>)>,
        serial: u32,
    ) {
        let changes: Vec<(ServiceKey, Option<Arc<Service>>)> = changes
            .into_iter()
            .map(|(k, s)| (k, s.map(Into::into)))
            .collect();
        // What the previous update retired, if nobody took it.
        self.retired.clear();
        self.first_edits.clear();
        // Names changed, and empty non-terminals that came or went, so far.
        let (mut changed, mut ents) = (Vec::new(), Vec::new());
        // Instances more, less or changed in a large service, few beside
        // it: its names are patched rather than gathered again from every
        // instance. Each service of a batch on its own: a patch refuses
        // names another service has records at, and the names of services
        // gathered below are gathered from every service there, patched
        // ones included.
        let mut patched = Vec::new();
        let mut rest = Vec::with_capacity(changes.len());
        // Each under its own key, once: the general path below takes the
        // last of two changes to one service, in order, which patching
        // one of them first would undo.
        let keys: BTreeSet<&ServiceKey> = changes.iter().map(|(k, _)| k).collect();
        let patchable = keys.len() == changes.len()
            && (changes.iter()).all(|(k, s)| s.as_ref().is_none_or(|s| *k == ServiceKey::of(s)));
        for (key, new) in changes {
            if patchable
                && let Some(new) = &new
                && let Some(old) = self.services.get(&key).cloned()
                && old.instances.len() >= PATCH_FROM
                && same_fields(&old, new)
                && !same_service(&old, new)
                && let Some(runs) = runs(&old, new)
                && let Some(done) = self.patch(&key, &old, new, &runs)
            {
                changed.extend(done.in_place);
                self.settle(done.touched, done.fresh, &mut changed, &mut ents);
                self.services.insert(key, new.clone());
                self.retired.push(old);
                patched.push(done.changed);
            } else {
                rest.push((key, new));
            }
        }
        if rest.is_empty() {
            self.finish(changed, ents, serial, &patched);
            return;
        }
        let changes = rest;
        let apex = self.zone.apex.clone();
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        let mut changed_services: Vec<ServiceKey> = Vec::new();
        // The enumeration's PTR records that change, applied together after
        // the loop: one pass over the list, however many services come.
        let mut ptr_edits: Vec<(ServiceKey, Option<RData>)> = Vec::new();
        // The records a new service gathers alone: when it is the only
        // source of the names touched, they are those names' records.
        let mut alone = None;
        for (key, new) in changes {
            let key = new.as_deref().map_or(key, ServiceKey::of);
            let old = self.services.get(&key);
            if match (old, &new) {
                (Some(a), Some(b)) => same_service(a, b),
                (a, b) => a.is_none() && b.is_none(),
            } {
                continue;
            }
            // Gathered again: what its instances hold is counted again when
            // it is next patched.
            self.holdings.remove(&key);
            match (old, &new) {
                // The same service with other instances: only the names of
                // the instances that differ (and the service's own names,
                // which every instance has records at) are touched, since
                // the others gather the same records in the same order.
                (Some(old), Some(new)) if same_fields(old, new) => {
                    let (before, after) = differing(old, new);
                    touched.extend(gathered(&apex, &before).into_keys());
                    touched.extend(gathered(&apex, &after).into_keys());
                    index(&mut self.by_target, &apex, &key, &before.instances, false);
                    index(&mut self.by_target, &apex, &key, &after.instances, true);
                    alone = None;
                }
                _ => {
                    if let Some(old) = old {
                        touched.extend(gathered(&apex, old).into_keys());
                        index(&mut self.by_target, &apex, &key, &old.instances, false);
                    }
                    if let Some(new) = &new {
                        let names = gathered(&apex, new);
                        touched.extend(names.keys().cloned());
                        index(&mut self.by_target, &apex, &key, &new.instances, true);
                        alone = Some(names);
                    }
                }
            }
            // The enumeration's PTR records: one per service, in key order.
            let old_ptr = old
                .and_then(|s| service_names(&apex, s))
                .map(|(_, srv)| srv);
            let new_ptr = new
                .as_ref()
                .and_then(|s| service_names(&apex, s))
                .map(|(_, srv)| srv);
            if !names_same(old_ptr.as_ref(), new_ptr.as_ref()) {
                ptr_edits.push((key.clone(), new_ptr.map(|n| RData::Ptr(WireName::new(&n)))));
            }
            match new {
                Some(new) => {
                    self.retired.extend(self.services.insert(key.clone(), new));
                }
                None => {
                    self.retired.extend(self.services.remove(&key));
                }
            }
            changed_services.push(key);
        }
        let browse = self.browse.clone();
        // Taken out of the node rather than copied: there is one per
        // service. The node is gathered again below.
        let (ptrs, first_ptr_edit) = match (&browse, ptr_edits.is_empty()) {
            (Some((_, browse_key)), false) => {
                touched.insert(browse_key.clone());
                let ptrs = (self.names.get_mut(browse_key))
                    .map(|n| n.rrsets.take(rtype::PTR))
                    .unwrap_or_default();
                let (ptrs, first) = edit_ptrs(ptrs, ptr_edits);
                (Some(ptrs), first)
            }
            _ => (None, usize::MAX),
        };

        // Gather the touched names again, from everything that can have
        // records there, in the order of a full build.
        changed_services.retain(|k| self.services.contains_key(k));
        let mut candidates: BTreeSet<ServiceKey> = changed_services.iter().cloned().collect();
        let mut seen_labels: HashSet<Vec<u8>> = HashSet::new();
        for key in &touched {
            self.contributors(key, &mut seen_labels, &mut candidates);
        }
        let with_base = touched.iter().any(|k| self.base_keys.contains(k));
        let only_one = candidates.len() == 1
            && changed_services.len() == 1
            && candidates.first() == changed_services.first();
        let mut fresh = match alone {
            Some(names) if only_one && !with_base => names,
            _ => {
                let mut builder = Builder::filtered(&apex, &touched);
                if with_base {
                    builder.add_base(&self.zone);
                }
                builder.add_services(
                    candidates
                        .iter()
                        .filter_map(|k| self.services.get(k).map(|s| &**s)),
                    false,
                );
                if with_base {
                    builder.add_empty_hosts(&self.zone);
                }
                builder.names
            }
        };
        if let Some((browse, browse_key)) = &browse
            && touched.contains(browse_key)
        {
            let ptrs = ptrs.unwrap_or_else(|| browse_ptrs(&self.names, self.browse.as_ref()));
            let mut node = fresh.remove(browse_key);
            if !ptrs.is_empty() {
                // Created by the first service's PTR, unless a host with
                // addresses came first.
                let host_first = self
                    .zone
                    .hosts
                    .iter()
                    .any(|h| !h.addresses.is_empty() && lower_wire(&h.name) == *browse_key);
                let node = node.get_or_insert_with(|| NodeRecords::new(Some(browse)));
                if !host_first {
                    node.name = Some(WireName::new(browse));
                }
                node.rrsets.set(rtype::PTR, ptrs);
            }
            if let Some(node) = node {
                fresh.insert(browse_key.clone(), node);
            }
        }

        self.settle(touched, fresh, &mut changed, &mut ents);
        if let Some((_, browse_key)) = &browse
            && first_ptr_edit < usize::MAX
        {
            self.first_edits
                .insert((browse_key.clone(), rtype::PTR), first_ptr_edit);
        }
        self.finish(changed, ents, serial, &patched);
    }

    /// Sets all the records of these names (none: the name goes), for a
    /// zone whose records are not services' (a reverse zone), and gives the
    /// zone a new serial: only those names, and the answers that read them,
    /// are encoded again.
    pub(super) fn set_names(&mut self, changes: Vec<(Name, Vec<RData>)>, serial: u32) {
        self.retired.clear();
        self.first_edits.clear();
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        let mut fresh: HashMap<Vec<u8>, NodeRecords> = HashMap::new();
        for (name, records) in changes {
            let key = lower_wire(&name);
            touched.insert(key.clone());
            if records.is_empty() {
                continue;
            }
            let mut node = NodeRecords::new(Some(&name));
            let mut types: Vec<u16> = records.iter().map(RData::rtype).collect();
            types.sort_unstable();
            types.dedup();
            for rtype in types {
                let of_type = records.iter().filter(|r| r.rtype() == rtype);
                node.rrsets.set(rtype, of_type.cloned().collect());
            }
            fresh.insert(key, node);
        }
        let (mut changed, mut ents) = (Vec::new(), Vec::new());
        self.settle(touched, fresh, &mut changed, &mut ents);
        self.finish(changed, ents, serial, &[]);
    }

    /// Stores the records gathered again at the `touched` names (`fresh`
    /// has those that exist), adding to `changed` the names whose records
    /// changed and to `ents` the empty non-terminals that came or went.
    fn settle(
        &mut self,
        touched: HashSet<Vec<u8>>,
        mut fresh: HashMap<Vec<u8>, NodeRecords>,
        changed: &mut Vec<Vec<u8>>,
        ents: &mut Vec<Vec<u8>>,
    ) {
        // Names that appear or go change the counts of names below their
        // ancestors.
        let mut presence: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut edits = Vec::new();
        for key in touched {
            let new = fresh.remove(&key);
            let old = self.names.get(&key);
            match (old, &new) {
                (None, None) => continue,
                (Some(o), Some(n)) if o.same(n) => continue,
                (None, Some(_)) => presence.push((key.clone(), true)),
                (Some(_), None) => presence.push((key.clone(), false)),
                // The answers carry the owner's spelling: only records of
                // a name spelled alike can be compared for what changed.
                (Some(o), Some(n)) if o.name == n.name => {
                    let types: BTreeSet<u16> =
                        o.rrsets.keys().chain(n.rrsets.keys()).copied().collect();
                    let none: &[RData] = &[];
                    for rtype in types {
                        let (a, b) = (
                            o.rrsets.get(&rtype).map_or(none, Vec::as_slice),
                            n.rrsets.get(&rtype).map_or(none, Vec::as_slice),
                        );
                        let first = a.iter().zip(b).take_while(|(x, y)| x.same(y)).count();
                        edits.push((key.clone(), rtype, first));
                    }
                }
                _ => {}
            }
            match new {
                Some(n) => {
                    self.names.insert(key.clone(), n);
                }
                None => {
                    self.names.remove(&key);
                }
            }
            changed.push(key);
        }
        for (key, rtype, at) in edits {
            self.edited_from(key, rtype, at);
        }
        for (key, added) in &presence {
            for suffix in ancestors(key, self.apex_len) {
                if *added {
                    match self.below.get_mut(suffix) {
                        Some(n) => *n += 1,
                        None => {
                            self.below.insert(suffix.to_vec(), 1);
                            ents.push(suffix.to_vec());
                        }
                    }
                } else {
                    let n = self.below.get_mut(suffix).expect("counted");
                    *n -= 1;
                    if *n == 0 {
                        self.below.remove(suffix);
                        ents.push(suffix.to_vec());
                    }
                }
            }
        }
    }

    /// Notes that the RRset of `rtype` at `key` changed from record `at` on.
    fn edited_from(&mut self, key: Vec<u8>, rtype: u16, at: usize) {
        let first = self.first_edits.entry((key, rtype)).or_insert(at);
        *first = (*first).min(at);
    }

    /// The services the last [`LiveZone::update`] replaced or did not keep.
    /// A service of thousands of instances takes a while to free: a caller
    /// that answers requests frees them after answering. Left here, they are
    /// freed at the next update.
    pub fn take_retired(&mut self) -> Vec<Arc<Service>> {
        std::mem::take(&mut self.retired)
    }

    /// Encodes again the names in `changed` and `ents`, those whose answers
    /// read them, and the apex (its SOA has the serial), and publishes the
    /// snapshot with `serial`.
    ///
    /// An answer cut at the first record past a message (the SRV and PTR
    /// answers of a service of thousands of instances, the DNS-SD service
    /// list of a zone of thousands of services) holds its RRset's first
    /// records and nothing else: when the update changed that RRset only
    /// past them, the answer is kept as it was instead of encoded again.
    fn finish(
        &mut self,
        changed: Vec<Vec<u8>>,
        ents: Vec<Vec<u8>>,
        serial: u32,
        patched: &[ChangedInstances],
    ) {
        let apex = self.zone.apex.clone();
        let mut encode: HashSet<Vec<u8>> = HashSet::new();
        encode.insert(lower_wire(&apex));
        self.readers(&changed, &mut encode, patched);
        encode.extend(changed);
        encode.extend(ents);
        let encoder = Encoder::new(&self.zone, serial, &self.names, self.whole_rrsets);
        let before = &self.snapshot.nodes;
        let mut nodes = before.clone();
        for key in &encode {
            let node = self.names.get(key);
            if node.is_none() && !self.below.contains_key(key) {
                nodes.remove(key);
                continue;
            }
            let old = before.get_arc(key);
            let unchanged = |rtype: u16| {
                let held = old
                    .and_then(|o| o.answer(rtype))
                    .and_then(Answer::overflowing_records);
                let first_edit = self.first_edits.get(&(key.clone(), rtype));
                matches!((held, first_edit), (Some(held), Some(&first)) if first >= held)
            };
            let new = encoder.node(key, node, old, unchanged);
            if !old.is_some_and(|o| Arc::ptr_eq(o, &new)) {
                nodes.insert(Arc::from(&key[..]), new);
            }
        }
        // Shards that grew far past their size go back to it.
        if nodes.len() > nodes.shard_count() * SHARD_NAMES * 4 {
            nodes = nodes.resharded();
        }
        let negative_soa = encoder.negative_soa();
        self.snapshot = Arc::new(ZoneSnapshot {
            apex_key: self.snapshot.apex_key.clone(),
            serial,
            nodes,
            negative_soa,
        });
    }

    /// Adds to `out` the services that can have records at `key`, besides
    /// the ones changed: those named like its label next to the apex (the
    /// service name, its tag names) or like its second (`_<service>`: SRV,
    /// DNS-SD and subtype names, and `_<service>._<tag>`), under either
    /// protocol; and for a name just below the apex, the services with an
    /// instance of that host name.
    fn contributors(
        &self,
        key: &[u8],
        seen: &mut HashSet<Vec<u8>>,
        out: &mut BTreeSet<ServiceKey>,
    ) {
        // The last two labels above the apex, and how many there are.
        let (mut depth, mut last, mut second) = (0, &[][..], &[][..]);
        for label in labels(&key[..key.len() - self.apex_len]) {
            depth += 1;
            (second, last) = (last, label);
        }
        if depth == 0 {
            return;
        }
        let mut by_name = |label: &[u8], out: &mut BTreeSet<ServiceKey>| {
            if seen.contains(label) {
                return;
            }
            seen.insert(label.to_vec());
            let name = String::from_utf8_lossy(label).into_owned();
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let key = ServiceKey {
                    name: name.clone(),
                    protocol,
                };
                if self.services.contains_key(&key) {
                    out.insert(key);
                }
            }
        };
        by_name(last, out);
        if depth >= 2
            && let Some(service) = second.strip_prefix(b"_")
        {
            by_name(service, out);
        }
        if depth == 1
            && let Some(services) = self.by_target.get(key)
        {
            out.extend(services.iter().map(|(k, _)| k.clone()));
        }
    }

    /// Adds to `out` the names whose answers read the names in `changed`:
    /// those with an SRV record pointing at one (the additional section has
    /// its addresses) and those with a PTR record to a DNS-SD instance name
    /// (the additional section has its SRV and TXT records, and the SRV
    /// target's addresses). Both are names of the services whose instances
    /// point there, found by gathering just those instances.
    ///
    /// Of a service a patch changed (in `patched`), when its counted holdings
    /// say that the only instances named so or pointing there are ones the
    /// patch put in, the names those have records at are already in
    /// `changed`: no look at each of its instances.
    fn readers(
        &self,
        changed: &[Vec<u8>],
        out: &mut HashSet<Vec<u8>>,
        patched: &[ChangedInstances],
    ) {
        let apex = &self.zone.apex;
        // Per service, the changed names its instances may point at, and
        // the instance names (lowercase) whose DNS-SD name changed: gathered
        // first, so that each service's instances are looked at once per
        // batch, not once per changed name.
        type Wanted<'k> = (HashSet<&'k [u8]>, HashSet<Vec<u8>>);
        let mut wanted: BTreeMap<&ServiceKey, Wanted> = BTreeMap::new();
        for key in changed {
            for (service, _) in self.by_target.get(key).into_iter().flatten() {
                if let Some((service, _)) = self.services.get_key_value(service) {
                    wanted.entry(service).or_default().0.insert(key);
                }
            }
            // `<instance>._<service>._<protocol>.<zone>`
            let labels: Vec<&[u8]> = labels(&key[..key.len() - self.apex_len]).collect();
            if let [instance, service, protocol] = labels[..]
                && let Some(name) = service.strip_prefix(b"_")
            {
                let protocol = match protocol {
                    b"_tcp" => Protocol::Tcp,
                    b"_udp" => Protocol::Udp,
                    _ => continue,
                };
                let k = ServiceKey {
                    name: String::from_utf8_lossy(name).into_owned(),
                    protocol,
                };
                if let Some((k, _)) = self.services.get_key_value(&k) {
                    wanted
                        .entry(k)
                        .or_default()
                        .1
                        .insert(instance.to_ascii_lowercase());
                }
            }
        }
        let mut reading: BTreeMap<&ServiceKey, Vec<usize>> = BTreeMap::new();
        for (key, (targets, mut names)) in wanted {
            let s = &self.services[key];
            // Instances of the same name share a DNS-SD name, which the PTR
            // records of each one's subtypes read: so the names of those
            // pointing at a changed name, then every instance of those names.
            // An instance with addresses points at its host name, one label
            // above the apex: that label, as the keys spell it, is its name.
            // Taking every such label as a name may add an instance of that
            // name that points elsewhere: its answers are encoded again for
            // nothing, and come out the same.
            let is_host =
                |k: &[u8]| k.len() > self.apex_len && k[0] as usize + 1 + self.apex_len == k.len();
            names.extend(
                targets
                    .iter()
                    .filter(|k| is_host(k))
                    .map(|k| k[1..k.len() - self.apex_len].to_vec()),
            );
            if let Some(p) = patched.iter().find(|p| p.service == *key)
                && let Some(holdings) = self.holdings.get(key)
                && (names.iter()).all(|n| holdings.named(n) == p.inserted.named(n))
                && (targets.iter()).all(|t| holdings.targeting(t) == p.inserted.targeting(t))
            {
                continue;
            }
            // Instances with an SRV target are found by looking at each, in
            // the same look as the names; a second look only when one brings
            // a name not asked for yet.
            let mut more: HashSet<Vec<u8>> = HashSet::new();
            let mut found: Vec<usize> = Vec::new();
            let is_named = named_in(&names);
            for (n, i) in s.instances.iter().enumerate() {
                if is_named(i) {
                    found.push(n);
                } else if let Endpoint::Target(t) = &i.endpoint
                    && targets.contains(&lower_wire(t)[..])
                {
                    more.insert(lowercase(&i.name).into_owned());
                }
            }
            drop(is_named);
            if !more.is_empty() {
                names.extend(more);
                let is_named = named_in(&names);
                found = (s.instances.iter().enumerate())
                    .filter(|(_, i)| is_named(i))
                    .map(|(n, _)| n)
                    .collect();
            }
            reading.entry(key).or_default().extend(found);
        }
        for (key, instances) in reading {
            let service = &self.services[key];
            let only = service.with_instances(
                instances
                    .into_iter()
                    .map(|i| service.instances[i].clone())
                    .collect(),
            );
            out.extend(gathered(apex, &only).into_keys());
        }
    }
}

/// The enumeration's PTR records (in key order) with these services'
/// records replaced, added or removed (`None`), and where the first edit
/// is. Of edits to one service the last counts. One pass over the records
/// however many edits there are: a batch of new services each inserting
/// into a list of 100 000 would move it once per service.
fn edit_ptrs(ptrs: Vec<RData>, mut edits: Vec<(ServiceKey, Option<RData>)>) -> (Vec<RData>, usize) {
    // Stable: of equal keys, the last edit stays last, and is kept.
    edits.sort_by(|a, b| a.0.cmp(&b.0));
    edits.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    let at: Vec<Result<usize, usize>> = edits
        .iter()
        .map(|(key, _)| ptrs.binary_search_by(|p| ptr_key(p).as_ref().cmp(&Some(key))))
        .collect();
    let first = at.first().map_or(usize::MAX, |a| a.unwrap_or_else(|i| i));
    let mut out = Vec::with_capacity(ptrs.len() + edits.len());
    let mut old = ptrs.into_iter();
    let mut next = 0;
    for ((_, ptr), at) in edits.into_iter().zip(at) {
        let (i, found) = match at {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        };
        out.extend(old.by_ref().take(i - next));
        next = i;
        if found {
            old.next();
            next += 1;
        }
        out.extend(ptr);
    }
    out.extend(old);
    (out, first)
}

/// The PTR records of the enumeration name now.
fn browse_ptrs(
    names: &HashMap<Vec<u8>, NodeRecords>,
    browse: Option<&(Name, Vec<u8>)>,
) -> Vec<RData> {
    browse
        .and_then(|(_, key)| names.get(key))
        .and_then(|n| n.rrsets.get(&rtype::PTR))
        .cloned()
        .unwrap_or_default()
}

/// The records a service alone gathers, by name (the enumeration name left
/// out).
fn gathered(apex: &Name, service: &Service) -> HashMap<Vec<u8>, NodeRecords> {
    let mut builder = Builder::new(apex, 0);
    builder.add_services(std::iter::once(service), false);
    builder.names
}

/// Counts (`add`) or forgets these instances of a service in the index of
/// the names instances point at.
fn index(
    by_target: &mut HashMap<Vec<u8>, Vec<(ServiceKey, u32)>>,
    apex: &Name,
    key: &ServiceKey,
    instances: &Instances,
    add: bool,
) {
    for instance in instances {
        let Some(target) = target_key(apex, instance) else {
            continue;
        };
        if add {
            let services = by_target.entry(target).or_default();
            match services.iter_mut().find(|(k, _)| k == key) {
                Some((_, n)) => *n += 1,
                None => {
                    // Most names are pointed at by one service.
                    services.reserve_exact(1);
                    services.push((key.clone(), 1));
                }
            }
        } else if let Some(services) = by_target.get_mut(&target) {
            if let Some(at) = services.iter().position(|(k, _)| k == key) {
                services[at].1 -= 1;
                if services[at].1 == 0 {
                    services.swap_remove(at);
                }
            }
            if services.is_empty() {
                by_target.remove(&target);
            }
        }
    }
}

/// Whether an instance's name is one of `names` (lowercase). A batch names
/// few instances: comparing with each is cheaper than hashing the name of
/// every instance of a large service.
fn named_in(names: &HashSet<Vec<u8>>) -> impl Fn(&Instance) -> bool + '_ {
    let few: Vec<&[u8]> = if names.len() <= 8 {
        names.iter().map(Vec::as_slice).collect()
    } else {
        Vec::new()
    };
    move |i: &Instance| {
        if few.is_empty() {
            names.contains(&*lowercase(&i.name))
        } else {
            few.iter()
                .any(|n| n.eq_ignore_ascii_case(i.name.as_bytes()))
        }
    }
}

/// A name in lowercase, copied only when it has capitals.
fn lowercase(name: &str) -> std::borrow::Cow<'_, [u8]> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.as_bytes().to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name.as_bytes())
    }
}

/// The key of the name an instance's SRV record points at: its own host
/// name (which exists, empty, even without addresses) or its target.
fn target_key(apex: &Name, instance: &Instance) -> Option<Vec<u8>> {
    match &instance.endpoint {
        Endpoint::Addresses(_) => try_child(apex, &instance.name).map(|n| lower_wire(&n)),
        Endpoint::Target(t) => Some(lower_wire(t)),
    }
}

/// The labels of a wire name (or of its leading part), first to last.
fn labels(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = wire.split_first()?;
        if len == 0 || rest.len() < len as usize {
            return None;
        }
        let (label, rest) = rest.split_at(len as usize);
        wire = rest;
        Some(label)
    })
}

/// The key of the service an enumeration PTR record points at
/// (`_<service>._<protocol>.<zone>`).
fn ptr_key(ptr: &RData) -> Option<ServiceKey> {
    let RData::Ptr(name) = ptr else {
        return None;
    };
    let mut labels = labels(name.wire());
    let service = labels.next()?.strip_prefix(b"_")?;
    let protocol = match labels.next()? {
        p if p.eq_ignore_ascii_case(b"_tcp") => Protocol::Tcp,
        p if p.eq_ignore_ascii_case(b"_udp") => Protocol::Udp,
        _ => return None,
    };
    Some(ServiceKey {
        name: String::from_utf8_lossy(service).to_ascii_lowercase(),
        protocol,
    })
}

fn names_same(a: Option<&Name>, b: Option<&Name>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_case(b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::answer::encode::KEPT_UNENCODED;
    use crate::answer::snapshot::Cut;
    use crate::answer::testing::{Rng, answers, assert_same, plain_instance};
    use crate::model::Host;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// The snapshot tests' zone, with an instance as a name server and a
    /// host left without addresses by its health, named like an instance.
    fn base() -> Zone {
        let mut zone = super::super::build::test_base_zone();
        zone.nameservers[1] = name("i3.svc.example.");
        zone.hosts.push(Host {
            name: name("i4.svc.example."),
            addresses: vec![],
        });
        zone
    }

    /// Names chosen from small pools, so that services share names across
    /// protocols, instances share host names across services and with
    /// hosts and service names, and targets point at all of those.
    const SERVICES: &[&str] = &["web", "api", "db", "i1"];
    const INSTANCES: &[&str] = &["i0", "i1", "i2", "I2", "i3", "i4", "web", "db"];
    const TAGS: &[&str] = &["blue", "green", "tcp", "Blue"];
    const TARGETS: &[&str] = &[
        "db.svc.example.",
        "i1.svc.example.",
        "I2.svc.example.",
        "web.svc.example.",
        "ns1.svc.example.",
        "x.other.",
        "i0._web._tcp.svc.example.",
    ];

    /// The common start and end found chunk by chunk are the ones found
    /// instance by instance, for lists that share chunks after edits
    /// anywhere in them, and for equal lists that share none.
    #[test]
    fn differing_bounds_passing_over_shared_chunks_finds_each_instance() {
        let mut rng = Rng(0x5eed_b0d5);
        let one = |k: usize| Arc::new(plain_instance(format!("i{k}"), Vec::new()));
        let naive = |a: &Service, b: &Service| {
            let (x, y): (Vec<_>, Vec<_>) =
                (a.instances.iter().collect(), b.instances.iter().collect());
            let start = x
                .iter()
                .zip(&y)
                .take_while(|(i, j)| same_instance(i, j))
                .count();
            let most = x.len().min(y.len()) - start;
            let end = (x.iter().rev().zip(y.iter().rev()))
                .take(most)
                .take_while(|(i, j)| same_instance(i, j))
                .count();
            (start, end)
        };
        for round in 0..200 {
            let len = [0, 1, 5, 64, 65, 300, 5000][rng.below(7)];
            let old = Service {
                name: "big".into(),
                protocol: Protocol::Tcp,
                tags: Vec::new(),
                check: None,
                instances: (0..len).map(one).collect(),
                max_answers: None,
            };
            let mut new = old.clone();
            for _ in 0..rng.below(4) {
                let at = rng.below(new.instances.len() + 1);
                match rng.below(4) {
                    0 => new.instances.insert(at, one(len + round)),
                    1 if at < new.instances.len() => {
                        new.instances.remove(at);
                    }
                    // The same instance again, in a new allocation.
                    2 if at < new.instances.len() => {
                        let again = Arc::new(Instance::clone(&new.instances[at]));
                        new.instances.set(at, again);
                    }
                    _ => new.instances.push_back(one(len + round + 1)),
                }
            }
            assert_eq!(
                differing_bounds(&old, &new),
                naive(&old, &new),
                "round {round}"
            );
            // Equal lists, no chunk shared.
            let copy = old.with_instances(old.instances.iter().cloned().collect());
            assert_eq!(differing_bounds(&old, &copy), (len, 0), "round {round}");
        }
    }

    fn instance(rng: &mut Rng) -> Instance {
        let endpoint = if rng.below(4) == 0 {
            Endpoint::Target(Box::new(name(rng.pick::<&str>(TARGETS))))
        } else {
            let addrs = (0..rng.below(3))
                .map(|_| match rng.below(3) {
                    0 => format!("fd00::{}", rng.below(4)).parse().unwrap(),
                    _ => format!("10.0.0.{}", rng.below(8)).parse().unwrap(),
                })
                .collect();
            Endpoint::Addresses(addrs)
        };
        Instance {
            name: rng.pick(INSTANCES).to_string(),
            endpoint,
            port: 8000 + rng.below(3) as u16,
            weight: rng.below(4) as u16,
            priority: rng.below(3) as u16,
            check: None,
            tags: (0..rng.below(3))
                .map(|_| rng.pick(TAGS).to_string())
                .collect(),
            metadata: (0..rng.below(3))
                .map(|i| (format!("k{i}"), format!("v{}", rng.below(3))))
                .collect(),
        }
    }

    fn service(rng: &mut Rng) -> Service {
        let name = rng.pick(SERVICES);
        Service {
            name: if rng.below(8) == 0 {
                name.to_ascii_uppercase()
            } else {
                name.to_string()
            },
            protocol: if rng.below(2) == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            tags: (0..rng.below(2))
                .map(|_| rng.pick(TAGS).to_string())
                .collect(),
            check: None,
            instances: (0..rng.below(5)).map(|_| Arc::new(instance(rng))).collect(),
            max_answers: [None, Some(1), Some(2)][rng.below(3)],
        }
    }

    /// A random change to the zone's services.
    fn change(rng: &mut Rng, live: &LiveZone) -> (ServiceKey, Option<Service>) {
        let existing: Vec<&Service> = live.services().map(|(_, s)| s).collect();
        if existing.is_empty() || rng.below(4) == 0 {
            let s = service(rng);
            return (ServiceKey::of(&s), Some(s));
        }
        let mut s = (*rng.pick(&existing)).clone();
        let key = ServiceKey::of(&s);
        match rng.below(8) {
            0 => return (key, None),
            1 => {
                let at = rng.below(s.instances.len() + 1);
                s.instances.insert(at, Arc::new(instance(rng)));
            }
            2 if !s.instances.is_empty() => {
                let at = rng.below(s.instances.len());
                s.instances.remove(at);
            }
            3 => s.max_answers = [None, Some(1), Some(3)][rng.below(3)],
            4 => s.tags = vec![rng.pick(TAGS).to_string()],
            _ if !s.instances.is_empty() => {
                let at = rng.below(s.instances.len());
                let mut new = instance(rng);
                // Often the same instance with one thing changed.
                if rng.below(2) == 0 {
                    new.name = s.instances[at].name.clone();
                    new.tags = s.instances[at].tags.clone();
                }
                s.instances[at] = Arc::new(new);
            }
            _ => s.instances.push_back(Arc::new(instance(rng))),
        }
        (key, Some(s))
    }

    #[test]
    fn a_zone_encoded_on_several_threads_equals_one_encoded_on_one() {
        let mut rng = Rng(0x05EE_D0F7_EAD5);
        let mut live = LiveZone::build(&base(), Vec::<Service>::new(), 1, None);
        for serial in 2..200 {
            let change = change(&mut rng, &live);
            live.update([change], serial);
        }
        let on = |threads, previous| {
            let (names, below) = (&live.names, &live.below);
            super::super::build::snapshot_on(
                threads,
                &live.zone,
                names,
                below,
                (300, false),
                previous,
            )
        };
        let one = on(1, None);
        assert!(one.nodes.len() > 3, "a zone worth splitting");
        assert_same(&on(3, None), &one, "3 threads, from scratch");
        assert_same(&on(2, Some(&one)), &one, "2 threads, reusing answers");
    }

    #[test]
    fn any_sequence_of_updates_equals_building_the_final_services() {
        for seed in 1..=6u64 {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1234_5678_9ABC));
            let base = base();
            let mut live = LiveZone::build(&base, Vec::<Service>::new(), 1, None);
            for step in 0..300 {
                let changes: Vec<_> = (0..1 + rng.below(2) * rng.below(3))
                    .map(|_| change(&mut rng, &live))
                    .collect();
                let serial = step + 2;
                live.update(changes.clone(), serial);
                let services: Vec<Service> = live.services().map(|(_, s)| s.clone()).collect();
                let fresh = LiveZone::build(&base, services, serial, None);
                assert_same(
                    live.snapshot(),
                    fresh.snapshot(),
                    &format!("seed {seed}, step {step}, changes {changes:?}"),
                );
            }
        }
    }

    /// An instance of a large service: mostly names and addresses of its
    /// own, sometimes shared with another instance, a tag spelled
    /// otherwise, a target, no address or the service's own name.
    fn large_instance(rng: &mut Rng) -> Instance {
        let mut i = instance(rng);
        if rng.below(8) != 0 {
            i.name = format!("n{}", rng.below(400));
            if rng.below(4) != 0 {
                i.tags.retain(|t| t != "Blue");
            }
        }
        if rng.below(16) != 0 {
            i.endpoint = Endpoint::Addresses(Vec::new());
        }
        if let Endpoint::Addresses(addrs) = &mut i.endpoint
            && rng.below(8) != 0
        {
            *addrs = (0..1 + rng.below(2))
                .map(|k| match k {
                    0 => format!("10.1.{}.{}", rng.below(4), rng.below(250)),
                    _ => format!("fd01::{}", rng.below(1000)),
                })
                .map(|a| a.parse().unwrap())
                .collect();
        }
        if rng.below(64) == 0 {
            i.name = "large".into();
        }
        if rng.below(16) == 0 {
            // Pointing at another instance's host.
            let host = format!("N{}.svc.example.", rng.below(20));
            i.endpoint = Endpoint::Target(Box::new(name(&host)));
        }
        if rng.below(48) == 0 {
            // Pointing at the service's name, whose addresses change with
            // the other instances'.
            i.endpoint = Endpoint::Target(Box::new(name("large.svc.example.")));
        }
        if matches!(&i.endpoint, Endpoint::Target(t) if t.to_ascii().starts_with('N'))
            || (i.name.strip_prefix('n')).is_some_and(|k| k.parse().is_ok_and(|k: u32| k < 20))
        {
            // With the same SRV record as that instance.
            (i.port, i.weight, i.priority) = (8000, 1, 0);
        }
        i
    }

    #[test]
    fn of_two_changes_to_one_service_in_a_batch_the_last_counts() {
        let mut rng = Rng(42);
        let base = base();
        let at = |n: u8, k: u8| Endpoint::Addresses(vec![IpAddr::from([10, 9, n, k])]);
        let mut large = service(&mut rng);
        large.name = "large".into();
        large.tags.clear();
        large.instances = (0..PATCH_FROM as u8 + 8)
            .map(|k| {
                let mut i = large_instance(&mut rng);
                (i.name, i.endpoint) = (format!("m{k}"), at(0, k));
                i.tags.clear();
                Arc::new(i)
            })
            .collect();
        let key = ServiceKey::of(&large);
        let mut live = LiveZone::build(&base, [large.clone()], 1, None);
        // The first is gathered again (another tag), the last alone could
        // be patched (one instance more).
        let mut retagged = large.clone();
        retagged.tags = vec!["blue".into()];
        let mut grown = large.clone();
        let mut more = large_instance(&mut rng);
        (more.name, more.endpoint) = ("m99".into(), at(1, 1));
        more.tags.clear();
        grown.instances.push_back(Arc::new(more));
        let was = patch::PATCHED.get();
        let mut alone = LiveZone::build(&base, [large.clone()], 1, None);
        alone.update([(key.clone(), Some(grown.clone()))], 2);
        assert_eq!(patch::PATCHED.get(), was + 1, "the last alone is patched");
        live.update(
            [
                (key.clone(), Some(retagged)),
                (key.clone(), Some(grown.clone())),
            ],
            2,
        );
        assert!(same_service(live.service(&key).unwrap(), &grown));
        let fresh = LiveZone::build(&base, [grown], 2, None);
        assert_same(live.snapshot(), fresh.snapshot(), "the last change");
    }

    #[test]
    fn changes_to_instances_of_a_large_service_equal_building_the_final_services() {
        let patched = || patch::PATCHED.get();
        let before = patched();
        // Batches of many instances, into a service of hundreds, patched.
        let mut many_patched = 0;
        // Batches with both large services patched.
        let mut two_patched = 0;
        for seed in 1..=6u64 {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9));
            let base = base();
            let mut large = service(&mut rng);
            large.name = "large".into();
            // Seeds past 4: a service of hundreds, taking batches of many
            // instances, each with a name and address of its own but one
            // in 150, which has a recent one's address, and another one in
            // 150, which has its name: shared by few, so that most batches
            // are patched and the maps of what is shared are tried.
            let many = seed > 4;
            let mut made = 0u32;
            let mut large_instance = |rng: &mut Rng| {
                let mut i = large_instance(rng);
                if many {
                    made += 1;
                    let recent = |rng: &mut Rng| made.saturating_sub(1 + rng.below(30) as u32);
                    i.name = match rng.below(150) {
                        0 => format!("m{}", recent(rng)),
                        _ => format!("m{made}"),
                    };
                    i.tags.retain(|t| *t == t.to_lowercase());
                    let n = match rng.below(150) {
                        0 => recent(rng),
                        _ => made,
                    };
                    let [_, _, a, b] = n.to_be_bytes();
                    i.endpoint = Endpoint::Addresses(vec![IpAddr::from([10, 2, a, b])]);
                }
                i
            };
            let size = if many { 300 } else { PATCH_FROM + 8 };
            large.instances = (0..size)
                .map(|_| Arc::new(large_instance(&mut rng)))
                .collect();
            // A second large service, at some steps changed in the same
            // batch as the first: each is patched on its own.
            let mut wide = large.clone();
            wide.name = "wide".into();
            wide.instances = (0..size)
                .map(|k| {
                    let mut i = large_instance(&mut rng);
                    i.name = format!("w{k}");
                    Arc::new(i)
                })
                .collect();
            let wide_key = ServiceKey::of(&wide);
            let small: Vec<Service> = (0..4).map(|_| service(&mut rng)).collect();
            let all = small.into_iter().chain([large.clone(), wide.clone()]);
            let mut live = LiveZone::build(&base, all, 1, None);
            let key = ServiceKey::of(&large);
            for step in 0..300 {
                let mut s = live.service(&key).cloned().unwrap_or_else(|| large.clone());
                let n = s.instances.len();
                let batch = many && rng.below(10) == 2;
                match if batch { 2 } else { rng.below(10) } {
                    0 | 1 => s
                        .instances
                        .insert(rng.below(n + 1), Arc::new(large_instance(&mut rng))),
                    2 => {
                        // A batch: changes spread over the service.
                        let changes = if many {
                            9 + rng.below(40)
                        } else {
                            2 + rng.below(4)
                        };
                        for _ in 0..changes {
                            let n = s.instances.len();
                            if rng.below(3) == 0 && n > PATCH_FROM {
                                s.instances.remove(rng.below(n));
                            } else {
                                s.instances
                                    .insert(rng.below(n + 1), Arc::new(large_instance(&mut rng)));
                            }
                        }
                    }
                    3..=5 if n > PATCH_FROM => {
                        s.instances.remove(rng.below(n));
                    }
                    6 if n > 0 => {
                        // Another port, another address (the records of
                        // its DNS-SD name stay, their additional section
                        // changes), or health leaving no address.
                        let at = rng.below(n);
                        let instance = Arc::make_mut(&mut s.instances[at]);
                        match (&mut instance.endpoint, rng.below(3)) {
                            (Endpoint::Addresses(a), 0) => a.clear(),
                            (Endpoint::Addresses(a), 1) => {
                                let [x, y] = [rng.below(256) as u8, rng.below(256) as u8];
                                *a = vec![IpAddr::from([10, 3, x, y])];
                            }
                            _ => instance.port += 1,
                        }
                    }
                    7 if n > 0 => {
                        let at = rng.below(n);
                        s.instances[at] = Arc::new(large_instance(&mut rng));
                    }
                    8 => {
                        let (k, other) = change(&mut rng, &live);
                        let serial = step + 2;
                        live.update([(k, other)], serial);
                        continue;
                    }
                    _ => s.instances.push_back(Arc::new(large_instance(&mut rng))),
                }
                let serial = step + 2;
                let was = patched();
                let mut changes = vec![(key.clone(), Some(s.clone()))];
                match rng.below(4) {
                    0 => {
                        let mut w =
                            (live.service(&wide_key).cloned()).unwrap_or_else(|| wide.clone());
                        let n = w.instances.len();
                        if rng.below(3) == 0 && n > PATCH_FROM {
                            w.instances.remove(rng.below(n));
                        } else {
                            let mut i = large_instance(&mut rng);
                            i.name = format!("w{}", 1000 + step);
                            w.instances.insert(rng.below(n + 1), Arc::new(i));
                        }
                        changes.push((wide_key.clone(), Some(w)));
                    }
                    1 => changes.push(change(&mut rng, &live)),
                    _ => {}
                }
                live.update(changes, serial);
                if batch && patched() > was {
                    many_patched += 1;
                }
                if patched() >= was + 2 {
                    two_patched += 1;
                }
                let services: Vec<Service> = live.services().map(|(_, s)| s.clone()).collect();
                let fresh = LiveZone::build(&base, services, serial, None);
                assert_same(
                    live.snapshot(),
                    fresh.snapshot(),
                    &format!("seed {seed}, step {step}"),
                );
                // What is counted of a service is what its instances hold.
                if let Some(holdings) = live.holdings.get(&key) {
                    let instances = live.service(&key).unwrap().instances.iter();
                    let counted = holdings::Holdings::of(instances.map(|i| &**i));
                    assert!(*holdings == counted, "seed {seed}, step {step}");
                }
            }
        }
        let patched = patched() - before;
        assert!(patched > 300, "only {patched} changes patched");
        assert!(
            many_patched >= 5,
            "only {many_patched} batches of many patched"
        );
        assert!(
            two_patched >= 50,
            "only {two_patched} batches with two services patched"
        );
    }

    #[test]
    fn building_on_a_previous_snapshot_equals_building_from_scratch() {
        let mut rng = Rng(77);
        let base = base();
        let services: Vec<Service> = (0..12).map(|_| service(&mut rng)).collect();
        let first = LiveZone::build(&base, services.clone(), 1, None);
        let mut changed = services;
        changed[0] = service(&mut rng);
        let reused = LiveZone::build(&base, changed.clone(), 2, Some(first.snapshot()));
        let fresh = LiveZone::build(&base, changed, 2, None);
        assert_same(reused.snapshot(), fresh.snapshot(), "previous");
    }

    #[test]
    fn answers_past_the_largest_message_stop_and_update_like_a_build() {
        // 6 000 instances: SRV, PTR and address answers far past 65535 bytes.
        let instances: Vec<Arc<Instance>> = (0..6000u32)
            .map(|i| Instance {
                name: format!("instance-{i}"),
                endpoint: Endpoint::Addresses(vec![IpAddr::from((0x0A00_0000 + i).to_be_bytes())]),
                port: 80,
                weight: 1 + (i % 2) as u16,
                priority: 0,
                check: None,
                tags: vec!["t".into()],
                metadata: Vec::new(),
            })
            .map(Arc::new)
            .collect();
        let big = Service {
            name: "big".into(),
            protocol: Protocol::Tcp,
            tags: Vec::new(),
            check: None,
            instances: instances.into(),
            max_answers: None,
        };
        // Both without and with the records past a message kept, for
        // zone transfers.
        for whole in [false, true] {
            let make = |services: Vec<Service>, serial| match whole {
                false => LiveZone::build(&base(), services, serial, None),
                true => LiveZone::build_for_transfers(&base(), services, serial, None),
            };
            let mut live = make(vec![big.clone()], 1);
            let mut changed = big.clone();
            Arc::make_mut(&mut changed.instances[10]).endpoint =
                Endpoint::Addresses(vec!["10.200.0.1".parse().unwrap()]);
            changed.instances.push_back(changed.instances[0].clone());
            Arc::make_mut(&mut changed.instances[6000]).name = "late".into();
            let key = ServiceKey::of(&big);
            live.update([(key, Some(changed.clone()))], 2);
            let fresh = make(vec![changed.clone()], 2);
            assert_same(live.snapshot(), fresh.snapshot(), "large");
            for (key, answers) in answers(live.snapshot()) {
                // A service's addresses keep every record: any may be drawn.
                for (t, a) in answers.into_iter().filter(|(_, a)| a.shuffled().is_none()) {
                    let cuts: Vec<Cut> = a.cuts().collect();
                    let before_last = &cuts[..cuts.len() - 1];
                    assert!(
                        before_last.iter().all(|c| c.len as usize <= 65535),
                        "{key:?}/{t}"
                    );
                    assert_eq!(a.full().len as usize, a.body().len());
                }
            }
            let srv = lower_wire(&name("_big._tcp.svc.example."));
            let node = live.snapshot().node(&srv).unwrap();
            let ptr = node.answer(rtype::PTR).unwrap();
            assert!(ptr.full().len > 65535 && ptr.full().counts[0] < 6001);
            assert_eq!(ptr.rest().is_empty(), !whole);

            // One more instance, past what the SRV and PTR answers hold: both
            // are kept as they were, not encoded again, and equal a build's.
            let mut grown = changed.clone();
            let mut last = Instance::clone(&grown.instances[5999]);
            last.name = "zz-last".into();
            last.endpoint = Endpoint::Addresses(vec!["10.201.0.1".parse().unwrap()]);
            grown.instances.push_back(Arc::new(last));
            let kept = KEPT_UNENCODED.with(|k| k.get());
            live.update([(ServiceKey::of(&big), Some(grown.clone()))], 3);
            assert!(KEPT_UNENCODED.with(|k| k.get()) >= kept + 2);
            let fresh = make(vec![grown], 3);
            assert_same(live.snapshot(), fresh.snapshot(), "one more, past the cut");
        }
    }

    #[test]
    fn a_service_list_past_the_largest_message_updates_like_a_build() {
        // 4 000 services: the enumeration name's PTR answer is cut at 65535
        // bytes. Services added and removed past the cut, at it and before
        // it, one at a time and together, must each give a build's answers;
        // past the cut the answer stays the one already encoded.
        let service = |name: String| Service {
            name,
            protocol: Protocol::Tcp,
            tags: Vec::new(),
            check: None,
            instances: Instances::new(),
            max_answers: None,
        };
        let mut services: Vec<Service> = (0..4000).map(|i| service(format!("s{i:05}"))).collect();
        let mut live = LiveZone::build(&base(), services.clone(), 1, None);
        let browse = lower_wire(&name("_services._dns-sd._udp.svc.example."));
        let list = |live: &LiveZone| {
            live.snapshot()
                .node(&browse)
                .unwrap()
                .answer(rtype::PTR)
                .unwrap()
                .clone()
        };
        let held = list(&live)
            .overflowing_records()
            .expect("a list past one message");
        assert!(held < 4000, "{held}");
        // The list is in the order of the names' keys: same-length names
        // alphabetically.
        let at = |i: usize| format!("s{i:05}");
        let steps: Vec<(Vec<String>, Vec<String>)> = vec![
            (vec!["s09000".into()], vec![]),
            (vec![], vec![at(3000)]),
            (vec![], vec![at(held)]),
            (vec![at(held)], vec![]),
            (vec![], vec![at(held - 1)]),
            (vec![at(held - 1)], vec![]),
            (vec!["a00000".into()], vec![]),
            (vec!["t00000".into()], vec![at(10), at(3999)]),
            (vec!["t00001".into()], vec![at(3998)]),
        ];
        let mut kept = 0;
        for (serial, (add, remove)) in (2..).zip(steps) {
            let before = list(&live);
            let encoded_before = KEPT_UNENCODED.with(|k| k.get());
            // Every edit at or past the records the answer holds.
            let last_held = &services[held - 1].name;
            let past = add.iter().chain(&remove).all(|n| n > last_held);
            let mut changes: Vec<(ServiceKey, Option<Service>)> = Vec::new();
            for n in &add {
                let s = service(n.clone());
                services.push(s.clone());
                changes.push((ServiceKey::of(&s), Some(s)));
            }
            for n in &remove {
                let i = services.iter().position(|s| &s.name == n).unwrap();
                changes.push((ServiceKey::of(&services.remove(i)), None));
            }
            services.sort_by(|a, b| a.name.cmp(&b.name));
            live.update(changes, serial);
            let fresh = LiveZone::build(&base(), services.clone(), serial, None);
            let context = format!("adding {add:?}, removing {remove:?}");
            assert_same(live.snapshot(), fresh.snapshot(), &context);
            if past {
                // Kept as it was: the list keeps no records past its body.
                assert!(before.same(&list(&live)), "{context}");
                assert!(list(&live).rest().is_empty(), "{context}");
                // Kept without being encoded again.
                assert!(
                    KEPT_UNENCODED.with(|k| k.get()) > encoded_before,
                    "{context}"
                );
                kept += 1;
            } else {
                assert!(!before.same(&list(&live)), "{context}");
            }
        }
        assert_eq!(kept, 5, "edits past the cut were tried");
    }

    #[test]
    fn an_update_leaves_other_services_answers_shared() {
        let addr = |i: usize| IpAddr::from([10, 9, (i >> 8) as u8, i as u8]);
        let services = (0..50).map(|s| Service {
            name: format!("s{s}"),
            protocol: Protocol::Tcp,
            tags: vec!["t".into()],
            check: None,
            instances: (0..3)
                .map(|i| plain_instance(format!("s{s}-{i}"), vec![addr(s * 4 + i)]))
                .map(Arc::new)
                .collect(),
            max_answers: None,
        });
        let mut live = LiveZone::build(&base(), services, 1, None);
        let before = live.snapshot().clone();
        let key = ServiceKey {
            name: "s7".into(),
            protocol: Protocol::Tcp,
        };
        let old = live.service(&key).unwrap().clone();
        let mut new = old.clone();
        Arc::make_mut(&mut new.instances[1]).endpoint = Endpoint::Addresses(vec![addr(999)]);
        live.update([(key, Some(new.clone()))], 2);
        let after = live.snapshot().clone();

        let apex = base().apex;
        let own: HashSet<Vec<u8>> = gathered(&apex, &old)
            .into_keys()
            .chain(gathered(&apex, &new).into_keys())
            .collect();
        let (b, a) = (answers(&before), answers(&after));
        let mut shared = 0;
        for (key, answers) in &a {
            for ((t, answer), (_, old)) in answers.iter().zip(&b[key]) {
                let same = answer.shares_buffer(old);
                if own.contains(key) || key[..] == *lower_wire(&apex) {
                    continue;
                }
                assert!(same, "{key:?}/{t} was encoded again");
                shared += 1;
            }
        }
        assert!(shared > 49 * 8, "{shared}");
        // The changed instance's own answer is new.
        let host = lower_wire(&name("s7-1.svc.example."));
        assert!(!a[&host][0].1.shares_buffer(b[&host][0].1));
    }
}
