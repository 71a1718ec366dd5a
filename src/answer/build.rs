//! Building a zone's snapshot from the model: records gathered by owner
//! name, then every (name, type) answer encoded once (see `encode`),
//! reusing the previous snapshot's answers whose inputs are unchanged.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use tracing::warn;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashMapExt, HashSet};

use super::encode::{Encoder, NodeRecords, RData};
use super::snapshot::ZoneSnapshot;
use super::weighted::{Weighted, ZERO_WEIGHT};
use crate::answer::wire::{WireName, lower_wire, lower_wire_into};
use crate::model::{Endpoint, Instance, Service, ServiceKey, Zone};

/// Assembles a zone's records by owner name, then encodes every answer.
pub(super) struct Builder<'z> {
    apex: &'z Name,
    /// Length of the apex's key.
    apex_len: usize,
    pub(super) names: HashMap<Vec<u8>, NodeRecords>,
    /// Room for the key of the name being looked up.
    key: Vec<u8>,
    /// When set, only these names are gathered: an update recomputes the
    /// names it touches by running the same steps as a full build.
    filter: Option<&'z HashSet<Vec<u8>>>,
}

impl<'z> Builder<'z> {
    /// A builder for a zone at `apex`, with room for `names` names.
    pub(super) fn new(apex: &'z Name, names: usize) -> Self {
        Builder {
            apex,
            apex_len: lower_wire(apex).len(),
            names: HashMap::with_capacity(names),
            key: Vec::new(),
            filter: None,
        }
    }

    /// A builder that gathers only the names in `filter`.
    pub(super) fn filtered(apex: &'z Name, filter: &'z HashSet<Vec<u8>>) -> Self {
        Builder {
            filter: Some(filter),
            ..Builder::new(apex, filter.len())
        }
    }

    fn node(&mut self, name: &Name) -> Option<&mut NodeRecords> {
        lower_wire_into(name, &mut self.key);
        if self.filter.is_some_and(|f| !f.contains(&self.key)) {
            return None;
        }
        // Most names are looked up many times (a service's names once per
        // instance): the key is copied only when the name is new.
        if !self.names.contains_key(&self.key) {
            self.names
                .insert(self.key.clone(), NodeRecords::new(Some(name)));
        }
        self.names.get_mut(&self.key)
    }

    /// Whether records at `name` are gathered (an update skips making the
    /// records of names it does not touch).
    fn wants(&mut self, name: &Name) -> bool {
        let Some(filter) = self.filter else {
            return true;
        };
        lower_wire_into(name, &mut self.key);
        filter.contains(&self.key)
    }

    pub(super) fn add(&mut self, name: &Name, rdata: RData) {
        if let Some(node) = self.node(name)
            && node.is_new(&rdata)
        {
            node.rrsets.push(rdata);
        }
    }

    /// Adds an address of a service name, whose answer is ordered per query
    /// by weighted random choice among the lowest priority.
    fn add_weighted(
        &mut self,
        name: &Name,
        addr: IpAddr,
        priority: u16,
        weight: f64,
        max_answers: Option<u16>,
    ) {
        let Some(node) = self.node(name) else {
            return;
        };
        let rdata = RData::Addr(addr);
        if node.is_new(&rdata) {
            let rtype = rdata.rtype();
            node.rrsets.push(rdata);
            let weighted = node.weighted.get_or_insert_with(|| {
                Box::new(Weighted {
                    max_answers,
                    by_type: Default::default(),
                })
            });
            weighted.by_type.or_default(rtype).push((priority, weight));
        }
    }

    /// Adds every record of the zone's hosts and services, in the order
    /// that decides the order of records in RRsets: the apex and hosts
    /// first, then the services in the order given.
    pub(super) fn add_zone<'s>(
        &mut self,
        zone: &Zone,
        services: impl Iterator<Item = &'s Service> + Clone,
    ) {
        self.add_base(zone);
        self.add_services(services, true);
        self.add_empty_hosts(zone);
    }

    /// The apex's records and the hosts with addresses.
    pub(super) fn add_base(&mut self, zone: &Zone) {
        self.add(&zone.apex, RData::Soa);
        for ns in &zone.nameservers {
            self.add(&zone.apex, RData::Ns(WireName::new(ns)));
        }
        for host in &zone.hosts {
            for addr in &host.addresses {
                self.add(&host.name, RData::Addr(*addr));
            }
        }
    }

    /// Adds the records of these services; with `browse`, the DNS-SD
    /// enumeration name's PTR records too.
    pub(super) fn add_services<'s>(
        &mut self,
        services: impl Iterator<Item = &'s Service> + Clone,
        browse: bool,
    ) {
        let apex = self.apex;
        // DNS-SD service type enumeration (RFC 6763 section 9).
        let browse = browse.then(|| browse_name(apex)).flatten();
        for service in services.clone() {
            self.add_service(service, browse.as_ref());
        }
        // A service whose instances are all unhealthy (or that has none)
        // still exists: its names answer NODATA, not NXDOMAIN, which
        // resolvers would cache as "no such service".
        for (service_name, srv_name) in services.filter_map(|service| service_names(apex, service))
        {
            self.node(&service_name);
            self.node(&srv_name);
        }
    }

    /// The host name of an instance left out for its health (a host without
    /// addresses) still exists, like a service without instances.
    pub(super) fn add_empty_hosts(&mut self, zone: &Zone) {
        for host in zone.hosts.iter().filter(|h| h.addresses.is_empty()) {
            self.node(&host.name);
        }
    }

    pub(super) fn add_service(&mut self, service: &Service, browse: Option<&Name>) {
        let apex = self.apex;
        let Some((service_name, srv_name)) = service_names(apex, service) else {
            warn!(service = %service.name, zone = %apex, "service name too long; left out");
            return;
        };
        if let Some(browse) = browse {
            self.add(browse, RData::Ptr(WireName::new(&srv_name)));
        }
        for instance in &service.instances {
            // The service's tags apply to all its instances.
            let mut tags: Vec<&str> = Vec::new();
            for t in service.tags.iter().chain(&instance.tags) {
                if !tags.iter().any(|o| o.eq_ignore_ascii_case(t)) {
                    tags.push(t);
                }
            }
            let tag_names: Vec<Name> = tags
                .iter()
                .filter_map(|t| try_child(&service_name, t))
                .collect();
            let rfc_name = |tag: &str| {
                // Consul's RFC 2782 form, `_<service>._<tag>`; a tag named
                // like a protocol would be the service's own SRV name.
                let is_protocol = ["tcp", "udp"].iter().any(|p| p.eq_ignore_ascii_case(tag));
                try_child(apex, &format!("_{tag}"))
                    .and_then(|n| try_child(&n, &format!("_{}", service.name)))
                    .filter(|_| !is_protocol)
            };
            // DNS-SD subtype (RFC 6763 section 7.1).
            let sub_name = |tag: &str| {
                try_child(&srv_name, "_sub").and_then(|n| try_child(&n, &format!("_{tag}")))
            };
            if matches!(&instance.endpoint, Endpoint::Addresses(a) if a.is_empty()) {
                // Every address fails its health check: the instance is in
                // no answer, but its names still exist (NODATA, not NXDOMAIN,
                // which resolvers would cache).
                let own = [
                    try_child(apex, &instance.name),
                    try_child(&srv_name, &instance.name),
                ];
                let by_tag = tags.iter().flat_map(|t| [rfc_name(t), sub_name(t)]);
                let names: Vec<Name> = own
                    .into_iter()
                    .chain(by_tag)
                    .flatten()
                    .chain(tag_names.iter().cloned())
                    .collect();
                for name in &names {
                    let _ = self.node(name);
                }
                continue;
            }
            let target = match &instance.endpoint {
                Endpoint::Addresses(addrs) => {
                    let Some(host) = try_child(apex, &instance.name) else {
                        warn!(instance = %instance.name, zone = %apex, "instance name too long; left out");
                        continue;
                    };
                    let share = address_share(instance, addrs);
                    for addr in addrs {
                        self.add(&host, RData::Addr(*addr));
                        for name in std::iter::once(&service_name).chain(&tag_names) {
                            self.add_weighted(
                                name,
                                *addr,
                                instance.priority,
                                share(addr),
                                service.max_answers,
                            );
                        }
                    }
                    WireName::new(&host)
                }
                Endpoint::Target(target) => WireName::new(target),
            };
            let srv = RData::Srv {
                priority: instance.priority,
                weight: instance.weight,
                port: instance.port,
                target,
            };
            self.add(&srv_name, srv.clone());
            self.add(&service_name, srv.clone());

            // DNS-SD (RFC 6763): the service type lists its instances, and
            // each instance name has its SRV and TXT records.
            let Some(sd_name) = try_child(&srv_name, &instance.name) else {
                continue;
            };
            let sd_ptr = RData::Ptr(WireName::new(&sd_name));
            self.add(&srv_name, sd_ptr.clone());
            if self.wants(&sd_name) {
                self.add(&sd_name, srv.clone());
                self.add(&sd_name, RData::Txt(txt_strings(&instance.metadata)));
            }

            for (tag, tag_name) in tags.iter().zip(&tag_names) {
                self.add(tag_name, srv.clone());
                if let Some(rfc) = rfc_name(tag) {
                    self.add(&rfc, srv.clone());
                }
                if let Some(sub) = sub_name(tag) {
                    self.add(&sub, sd_ptr.clone());
                }
            }
        }
    }
}

/// The weight of each of an instance's addresses in its service's weighted
/// answers: the instance's weight shared by its addresses of a family, so
/// one with two IPv4 addresses is not chosen twice as often as one with a
/// single address.
pub(super) fn address_share(instance: &Instance, addrs: &[IpAddr]) -> impl Fn(&IpAddr) -> f64 {
    let per_family = |v4: bool| addrs.iter().filter(|a| a.is_ipv4() == v4).count();
    let (v4, v6) = (per_family(true), per_family(false));
    let weight = match instance.weight {
        0 => ZERO_WEIGHT,
        w => f64::from(w),
    };
    move |addr| weight / if addr.is_ipv4() { v4 } else { v6 } as f64
}

/// For each name above a name of `names` and below the apex: how many names
/// of `names` are under it. Those not in `names` themselves are the empty
/// non-terminals, which exist (RFC 8020: NODATA, not NXDOMAIN).
pub(super) fn count_below(
    names: &HashMap<Vec<u8>, NodeRecords>,
    apex_len: usize,
) -> HashMap<Vec<u8>, u32> {
    let mut below: HashMap<Vec<u8>, u32> = HashMap::new();
    for key in names.keys() {
        for suffix in ancestors(key, apex_len) {
            match below.get_mut(suffix) {
                Some(n) => *n += 1,
                None => {
                    below.insert(suffix.to_vec(), 1);
                }
            }
        }
    }
    below
}

/// The suffixes of `key` longer than the apex, the name itself left out.
pub(super) fn ancestors(key: &[u8], apex_len: usize) -> impl Iterator<Item = &[u8]> {
    let mut suffix = key;
    std::iter::from_fn(move || {
        if suffix.len() <= apex_len {
            return None;
        }
        suffix = &suffix[1 + suffix[0] as usize..];
        (suffix.len() > apex_len).then_some(suffix)
    })
}

/// Encodes every name's answers, taking from `previous` (the zone's last
/// snapshot) each answer that encodes the same, so that it stays shared. A large zone is
/// encoded on every core: encoding is most of a build, each name's answers
/// depend only on the gathered records, and the orders a service's answers
/// use are drawn from a fixed seed, so the result is the same on any
/// number of threads.
/// `whole_rrsets`: answers keep their RRset's records past a message, for
/// zone transfers (see [`Answer::rest`](super::snapshot::Answer::rest)).
pub(super) fn snapshot_of(
    zone: &Zone,
    names: &HashMap<Vec<u8>, NodeRecords>,
    below: &HashMap<Vec<u8>, u32>,
    (serial, whole_rrsets): (u32, bool),
    previous: Option<&ZoneSnapshot>,
) -> ZoneSnapshot {
    let threads = crate::parallel::cores()
        .min((names.len() + below.len()) / PARALLEL_NAMES)
        .max(1);
    snapshot_on(
        threads,
        zone,
        names,
        below,
        (serial, whole_rrsets),
        previous,
    )
}

/// [`snapshot_of`] on this many threads.
pub(super) fn snapshot_on(
    threads: usize,
    zone: &Zone,
    names: &HashMap<Vec<u8>, NodeRecords>,
    below: &HashMap<Vec<u8>, u32>,
    (serial, whole_rrsets): (u32, bool),
    previous: Option<&ZoneSnapshot>,
) -> ZoneSnapshot {
    let ents = below.keys().filter(|k| !names.contains_key(*k));
    let work: Vec<(&Vec<u8>, Option<&NodeRecords>)> = names
        .iter()
        .map(|(key, node)| (key, Some(node)))
        .chain(ents.map(|k| (k, None)))
        .collect();
    let encode = |part: &[(&Vec<u8>, Option<&NodeRecords>)]| {
        let encoder = Encoder::new(zone, serial, names, whole_rrsets);
        part.iter()
            .map(|&(key, node)| {
                let before = previous.and_then(|p| p.nodes.get_arc(key));
                let node = encoder.node(key, node, before, |_| false);
                (Arc::<[u8]>::from(&key[..]), node)
            })
            .collect::<Vec<_>>()
    };
    let parts = crate::parallel::in_runs(&work, threads, encode);
    ZoneSnapshot {
        apex_key: lower_wire(&zone.apex).into_boxed_slice(),
        serial,
        nodes: parts.into_iter().flatten().collect(),
        negative_soa: Encoder::new(zone, serial, names, whole_rrsets).negative_soa(),
    }
}

/// Names per thread below which a build is encoded on one thread: a thread
/// costs tens of microseconds, a name's answers about one.
const PARALLEL_NAMES: usize = 16_384;

/// The services in the order their records are gathered in: by
/// [`ServiceKey`]; two with the same key (which a zone file may declare)
/// both, in the order given.
fn in_order(services: &[Arc<Service>]) -> Vec<&Service> {
    let mut keyed: Vec<(ServiceKey, &Service)> =
        services.iter().map(|s| (ServiceKey::of(s), &**s)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, s)| s).collect()
}

/// Builds the answers of one zone. `previous`, the zone's last snapshot,
/// lends every answer whose inputs are unchanged, so a small change to a
/// large zone re-encodes only what it touches. Records of several services
/// at one name go in the order of [`ServiceKey`] (what [`LiveZone`] keeps).
///
/// [`LiveZone`]: super::live::LiveZone
pub fn build_zone(zone: &Zone, serial: u32, previous: Option<&ZoneSnapshot>) -> ZoneSnapshot {
    let mut builder = Builder::new(&zone.apex, previous.map_or(0, |p| p.nodes.len()));
    builder.add_zone(zone, in_order(&zone.services).into_iter());
    let below = count_below(&builder.names, builder.apex_len);
    snapshot_of(zone, &builder.names, &below, (serial, true), previous)
}

/// Builds a reverse zone (under in-addr.arpa or ip6.arpa) from its SOA
/// settings (`zone`, which has no hosts or services) and (owner, target)
/// PTR pairs, reusing `previous` as [`build_zone`] does: what the reverse
/// zones, kept up to date change by change, are checked against.
#[cfg(test)]
pub fn build_reverse_zone<'a>(
    zone: &Zone,
    ptrs: impl IntoIterator<Item = (&'a Name, &'a Name)>,
    serial: u32,
    previous: Option<&ZoneSnapshot>,
) -> ZoneSnapshot {
    let mut builder = Builder::new(&zone.apex, previous.map_or(0, |p| p.nodes.len()));
    builder.add_zone(zone, in_order(&zone.services).into_iter());
    for (owner, target) in ptrs {
        builder.add(owner, RData::Ptr(WireName::new(target)));
    }
    let below = count_below(&builder.names, builder.apex_len);
    snapshot_of(zone, &builder.names, &below, (serial, false), previous)
}

/// `_services._dns-sd._udp.<zone>`, the DNS-SD service type enumeration
/// name (RFC 6763 section 9).
pub(super) fn browse_name(apex: &Name) -> Option<Name> {
    ["_udp", "_dns-sd", "_services"]
        .iter()
        .try_fold(apex.clone(), |n, l| try_child(&n, l))
}

/// The TXT strings of an instance (RFC 6763 section 6): `key=value` each, or
/// one empty string when there is no metadata, since a DNS-SD instance must
/// have a TXT record (section 6.1).
fn txt_strings(metadata: &[(String, String)]) -> Box<[Box<[u8]>]> {
    if metadata.is_empty() {
        return Box::new([Box::new([])]);
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes().into_boxed_slice())
        .collect()
}

/// `<service>.<zone>` and `_<service>._<protocol>.<zone>`.
pub(super) fn service_names(apex: &Name, service: &Service) -> Option<(Name, Name)> {
    let srv = try_child(apex, &format!("_{}", service.protocol.as_str()))
        .and_then(|p| try_child(&p, &format!("_{}", service.name)))?;
    Some((try_child(apex, &service.name)?, srv))
}

/// `label.parent`, or `None` when the name would be too long (an underscore
/// added to a 63-character label, or a long zone): such a name cannot exist,
/// so it is not served.
pub(super) fn try_child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

/// The zone the snapshot tests build on: name servers (one with glue),
/// hosts (one deep under the apex, one also a service's target) and SOA
/// settings, no services.
#[cfg(test)]
pub(super) fn test_base_zone() -> Zone {
    use crate::model::{Host, Soa};
    let name = |s: &str| Name::from_ascii(s).unwrap();
    let addr = |s: &str| s.parse::<IpAddr>().unwrap();
    Zone {
        apex: name("svc.example."),
        ttl: 30,
        nameservers: vec![name("ns1.svc.example."), name("ns.other.")],
        soa: Soa {
            mname: name("ns1.svc.example."),
            rname: name("admin.svc.example."),
            refresh: 1,
            retry: 2,
            expire: 3,
            minimum: 4,
        },
        hosts: vec![
            Host {
                name: name("ns1.svc.example."),
                addresses: vec![addr("10.1.0.1")],
            },
            Host {
                name: name("db.svc.example."),
                addresses: vec![addr("10.2.0.1"), addr("fd00::2")],
            },
            Host {
                name: name("a.b.c.svc.example."),
                addresses: vec![addr("10.3.0.1")],
            },
        ],
        services: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::snapshot::{Answer, Cut};
    use crate::answer::weighted::Orders;
    use crate::model::{Instance, Protocol};
    use std::collections::BTreeMap;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// First places over a sweep of random numbers, per record.
    fn first_places(orders: &Orders, n: usize) -> Vec<usize> {
        let mut seen = vec![0; n];
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            };
            let (a, b) = (next(), next());
            seen[orders.pick_first(a, b) as usize] += 1;
        }
        seen
    }

    #[test]
    fn every_record_of_a_large_level_comes_first_in_its_share() {
        // 32 pre-drawn orders alone cannot put each of 100 records first.
        let orders = Orders::draw(&vec![(0, 1.0); 100]);
        let seen = first_places(&orders, 100);
        assert!(seen.iter().all(|&c| (1500..2500).contains(&c)), "{seen:?}");
    }

    #[test]
    fn first_places_follow_the_weights_of_the_lowest_priority_only() {
        // Weights 1:3 at priority 0; a heavy record at priority 1 never comes first.
        let orders = Orders::draw(&[(0, 1.0), (0, 3.0), (1, 100.0)]);
        let seen = first_places(&orders, 3);
        assert_eq!(seen[2], 0);
        let share = seen[0] as f64 / 200_000.0;
        assert!((0.24..0.26).contains(&share), "{share}");
    }

    fn instance(n: &str, endpoint: Endpoint, weight: u16) -> Instance {
        Instance {
            name: n.into(),
            endpoint,
            port: 8080,
            weight,
            priority: 1,
            check: None,
            tags: vec!["blue".into()],
            metadata: vec![("v".into(), n.into())],
        }
    }

    /// A zone with every kind of answer: NS with glue, hosts, a weighted
    /// service with tags, DNS-SD names, and instances pointing at a host.
    fn zone() -> Zone {
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut instances: Vec<Instance> = (0..40)
            .map(|i| {
                let a = Endpoint::Addresses(vec![addr(&format!("10.0.0.{}", i + 1))]);
                instance(&format!("web-{i}"), a, 1 + i as u16 % 3)
            })
            .collect();
        instances.push(instance(
            "ext",
            Endpoint::Target(Box::new(name("db.svc.example."))),
            5,
        ));
        instances.push(instance(
            "dual",
            Endpoint::Addresses(vec![addr("10.0.1.1"), addr("fd00::1")]),
            0,
        ));
        Zone {
            services: vec![Arc::new(Service {
                name: "web".into(),
                protocol: Protocol::Tcp,
                tags: vec!["prod".into()],
                check: None,
                instances: instances.into_iter().map(Arc::new).collect(),
                max_answers: Some(8),
            })],
            ..test_base_zone()
        }
    }

    /// Every (name, type) answer of a snapshot, by key and type.
    fn answers(z: &ZoneSnapshot) -> BTreeMap<(Vec<u8>, u16), &Answer> {
        let mut all = BTreeMap::new();
        for (key, node) in z.nodes.iter() {
            for e in &node.answers {
                assert!(all.insert((key.to_vec(), e.rtype), &e.answer).is_none());
            }
        }
        all
    }

    type Flat<'a> = (
        &'a [u8],
        Vec<Cut>,
        Option<(usize, usize, Option<Vec<&'a [u16]>>)>,
    );

    fn flat(a: &Answer) -> Flat<'_> {
        let shuffled = a.shuffled().map(|s| {
            let orders = s
                .drawn()
                .map(|o| (0..o.variants()).map(|v| o.get(v)).collect());
            (s.record_len(), s.count(), orders)
        });
        (a.body(), a.cuts().collect(), shuffled)
    }

    /// Builds `changed` on top of a snapshot of `base` and checks it against
    /// a build from scratch; returns how many answers were taken over.
    fn rebuild_matches(base: &Zone, changed: &Zone, serial: u32) -> usize {
        let old = build_zone(base, 1, None);
        let reused = build_zone(changed, serial, Some(&old));
        let fresh = build_zone(changed, serial, None);
        let (r, f) = (answers(&reused), answers(&fresh));
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            f.keys().collect::<Vec<_>>(),
            "the same names and types"
        );
        for (k, a) in &r {
            assert!(flat(a) == flat(f[k]), "answer for {k:?} differs");
        }
        let mut nodes: Vec<&[u8]> = reused.nodes.iter().map(|(k, _)| &k[..]).collect();
        let mut fresh_nodes: Vec<&[u8]> = fresh.nodes.iter().map(|(k, _)| &k[..]).collect();
        nodes.sort();
        fresh_nodes.sort();
        assert_eq!(nodes, fresh_nodes, "the same names, empty ones included");
        assert_eq!(reused.negative_soa, fresh.negative_soa);
        let old_answers = answers(&old);
        r.iter()
            .filter(|(k, a)| old_answers.get(*k).is_some_and(|o| o.shares_buffer(a)))
            .count()
    }

    #[test]
    fn rebuilding_on_a_previous_snapshot_equals_building_from_scratch() {
        let base = zone();
        let total = answers(&build_zone(&base, 1, None)).len();

        // Nothing changed but the serial: only the SOA answer is new.
        let reused = rebuild_matches(&base, &base, 2);
        assert_eq!(reused, total - 1);

        // One instance's address.
        let mut z = base.clone();
        Arc::make_mut(&mut Arc::make_mut(&mut z.services[0]).instances[3]).endpoint =
            Endpoint::Addresses(vec!["10.9.9.9".parse().unwrap()]);
        let reused = rebuild_matches(&base, &z, 2);
        assert!(reused > 0 && reused < total - 1, "{reused} of {total}");

        // A target name's letter case: SRV answers change, lookups do not.
        let mut z = base.clone();
        Arc::make_mut(&mut Arc::make_mut(&mut z.services[0]).instances[40]).endpoint =
            Endpoint::Target(Box::new(name("DB.svc.example.")));
        rebuild_matches(&base, &z, 1);

        // A glue host's address (SRV target and NS).
        let mut z = base.clone();
        z.hosts[1].addresses = vec!["10.2.0.2".parse().unwrap()];
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.hosts[0].addresses.push("10.1.0.2".parse().unwrap());
        rebuild_matches(&base, &z, 1);

        // A weight and an instance's metadata.
        let mut z = base.clone();
        Arc::make_mut(&mut Arc::make_mut(&mut z.services[0]).instances[5]).weight = 9;
        Arc::make_mut(&mut Arc::make_mut(&mut z.services[0]).instances[6])
            .metadata
            .push(("k".into(), "v".into()));
        rebuild_matches(&base, &z, 1);

        // SOA fields, the TTL, max answers, an owner's letter case, a new
        // empty non-terminal, an instance removed.
        let mut z = base.clone();
        z.soa.retry = 20;
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.ttl = 60;
        assert_eq!(rebuild_matches(&base, &z, 1), 0);
        let mut z = base.clone();
        Arc::make_mut(&mut z.services[0]).max_answers = None;
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.hosts[2].name = name("A.b.c.svc.example.");
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.hosts[2].name = name("x.y.z.svc.example.");
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        Arc::make_mut(&mut z.services[0]).instances.remove(0);
        rebuild_matches(&base, &z, 1);
    }
}
