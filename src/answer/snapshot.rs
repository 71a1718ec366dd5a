//! The immutable, indexed form of the registry that queries read.
//!
//! Building a zone's snapshot does all the work a query would otherwise do:
//! every (name, type) pair gets its answer encoded once, sections and
//! additional records included, so answering is a hash lookup plus a copy.
//! A snapshot is never changed after it is built; the registry publishes a new
//! one and queries in flight keep the old one alive until they finish.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use tracing::warn;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::answer::wire::{MessageWriter, lower_wire, lower_wire_into, rtype};
use crate::model::{Endpoint, Service, Zone};

/// Where the query path loads the current snapshot from, and the registry
/// publishes each new one to.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// Everything the server answers from: zones by their lowercased wire apex.
#[derive(Default)]
pub struct Snapshot {
    zones: HashMap<Box<[u8]>, Arc<ZoneSnapshot>>,
    /// Labels in the longest apex: no longer suffix of a name can be a zone.
    max_apex_labels: usize,
}

impl Snapshot {
    /// A snapshot holding these zones.
    pub fn new(zones: impl IntoIterator<Item = Arc<ZoneSnapshot>>) -> Self {
        let zones: HashMap<Box<[u8]>, Arc<ZoneSnapshot>> =
            zones.into_iter().map(|z| (z.apex_key.clone(), z)).collect();
        let max_apex_labels = zones
            .keys()
            .map(|k| crate::answer::wire::label_count(k))
            .max()
            .unwrap_or(0);
        Snapshot {
            zones,
            max_apex_labels,
        }
    }

    /// Labels in the longest apex.
    pub fn max_apex_labels(&self) -> usize {
        self.max_apex_labels
    }

    /// The zone whose apex is exactly this lowercased wire name.
    pub fn zone(&self, lower_wire: &[u8]) -> Option<&ZoneSnapshot> {
        self.zones.get(lower_wire).map(|z| &**z)
    }

    /// Whether any zone is served at all.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

/// One zone, ready to answer.
pub struct ZoneSnapshot {
    apex_key: Box<[u8]>,
    /// The zone's SOA serial.
    pub serial: u32,
    nodes: HashMap<Box<[u8]>, Node>,
    /// The SOA record of negative answers, from its type field on (the owner is
    /// written per query as a pointer to the apex inside the question).
    negative_soa: Box<[u8]>,
}

impl ZoneSnapshot {
    /// The node at this lowercased wire name, if the name exists.
    pub fn node(&self, lower_wire: &[u8]) -> Option<&Node> {
        self.nodes.get(lower_wire)
    }

    /// Length of the apex in wire form.
    pub fn apex_len(&self) -> usize {
        self.apex_key.len()
    }

    /// The SOA record of negative answers, without its owner name.
    pub fn negative_soa(&self) -> &[u8] {
        &self.negative_soa
    }

    /// Number of names (including empty non-terminals) in the zone.
    pub fn name_count(&self) -> usize {
        self.nodes.len()
    }
}

/// A name that exists: its answers by type. No RRsets at all means an empty
/// non-terminal (RFC 8020: NODATA, not NXDOMAIN).
pub struct Node {
    answers: Box<[Entry]>,
}

/// One type's answer, with the fingerprint of what it was encoded from.
struct Entry {
    rtype: u16,
    fingerprint: Fingerprint,
    answer: Answer,
}

/// A 128-bit digest of everything an answer's encoding depends on: when a
/// zone is built again, an answer whose fingerprint is unchanged is taken
/// from the previous snapshot instead of being encoded.
type Fingerprint = [u64; 2];

impl Node {
    /// The answer for this type, if the name has records of it.
    pub fn answer(&self, qtype: u16) -> Option<&Answer> {
        self.entry(qtype).map(|e| &e.answer)
    }

    fn entry(&self, qtype: u16) -> Option<&Entry> {
        self.answers.iter().find(|e| e.rtype == qtype)
    }

    /// The answer to an ANY query: one RRset (RFC 8482), the lowest type code.
    pub fn any(&self) -> Option<&Answer> {
        self.answers.first().map(|e| &e.answer)
    }
}

/// The sections of one response after the question, pre-encoded for a question
/// name of this node's length at offset 12. Cloning shares the buffers: an
/// unchanged answer moves from one snapshot to the next without a copy.
#[derive(Clone)]
pub struct Answer {
    body: Arc<[u8]>,
    /// Places where the body may be cut when the message is too large: after
    /// each answer record and after each additional RRset, in order.
    cuts: Arc<[Cut]>,
    /// For the addresses of a service: the orders the records go out in.
    shuffled: Option<Arc<Shuffled>>,
}

/// An answer whose records are sent in one of several weighted orders, picked
/// per query. Its body is the records one after the other, each the same
/// length (an A or AAAA record whose owner is a pointer to the question), so
/// any order of them is a valid answer section and no order is stored twice.
pub struct Shuffled {
    record_len: usize,
    /// Records per answer: all of them, or the service's `max_answers`.
    count: usize,
    orders: Arc<Orders>,
}

impl Shuffled {
    /// Records per response.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of each record.
    pub fn record_len(&self) -> usize {
        self.record_len
    }

    /// Number of orders to choose from.
    pub fn variants(&self) -> usize {
        self.orders.variants()
    }

    /// The record indexes of order `variant`, first to last.
    pub fn order(&self, variant: usize) -> &[u16] {
        self.orders.get(variant)
    }

    /// The record that goes first, drawn by weight from two random numbers.
    pub fn pick_first(&self, r1: u32, r2: u32) -> u16 {
        self.orders.pick_first(r1, r2)
    }
}

/// [`ORDER_VARIANTS`] orders of `n` records, drawn once for a list of
/// (priority, weight): by weighted random sampling without replacement within
/// each priority level, lowest priority first. The first record of each
/// level is drawn by stratified sampling (the i-th order uses the point
/// (i + 1/2) / [`ORDER_VARIANTS`] of the cumulative weight), so a record comes
/// first in a share of the orders that matches its weight; the rest are drawn
/// with a fixed-seed generator, so a zone's answers are the same at every build.
///
/// 32 orders alone would leave instances of a large service out: with 100
/// equal instances, most would never come first. So the first record is
/// drawn per query from the lowest priority level with an alias table
/// (Vose), which gives every record exactly its weight's share of first
/// places at any size; the rest of the answer follows one of the orders.
pub struct Orders {
    n: usize,
    indexes: Box<[u16]>,
    /// Alias table over the lowest priority level: (record index,
    /// threshold out of 2^32 to keep it, record index of its alias).
    first: Box<[(u16, u32, u16)]>,
}

impl Orders {
    fn draw(weights: &[(u16, f64)]) -> Orders {
        let n = weights.len();
        let mut indexes = Vec::with_capacity(n * ORDER_VARIANTS);
        let mut levels: BTreeMap<u16, Vec<(u16, f64)>> = BTreeMap::new();
        for (i, &(p, w)) in weights.iter().enumerate() {
            levels.entry(p).or_default().push((i as u16, w));
        }
        let by_level: Vec<Vec<(u16, f64)>> = levels.into_values().collect();
        let mut rng = SplitMix(0x5167_6e70_6f73_7400 ^ n as u64);
        let mut race: Vec<(f64, u16)> = Vec::with_capacity(n);
        for v in 0..ORDER_VARIANTS {
            let stratum = (v as f64 + 0.5) / ORDER_VARIANTS as f64;
            for level in &by_level {
                // The first record: where the stratum falls in the level's
                // cumulative weight.
                let total: f64 = level.iter().map(|&(_, w)| w).sum();
                let mut point = stratum * total;
                let mut first = level.len() - 1;
                for (k, &(_, w)) in level.iter().enumerate() {
                    if point < w {
                        first = k;
                        break;
                    }
                    point -= w;
                }
                indexes.push(level[first].0);
                // The others: weighted sampling without replacement as a race
                // of exponential clocks (Efraimidis and Spirakis), n log n.
                race.clear();
                for (k, &(i, w)) in level.iter().enumerate() {
                    if k != first {
                        let u = 1.0 - rng.next_f64(); // in (0, 1]
                        race.push((-u.ln() / w, i));
                    }
                }
                race.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
                indexes.extend(race.iter().map(|&(_, i)| i));
            }
        }
        Orders {
            n,
            indexes: indexes.into(),
            first: alias_table(by_level.first().map_or(&[][..], Vec::as_slice)),
        }
    }

    /// The record that goes first, from two random numbers.
    pub fn pick_first(&self, r1: u32, r2: u32) -> u16 {
        let (index, keep, alias) = self.first[r1 as usize % self.first.len()];
        if r2 < keep { index } else { alias }
    }

    fn variants(&self) -> usize {
        ORDER_VARIANTS
    }

    fn get(&self, variant: usize) -> &[u16] {
        &self.indexes[variant * self.n..(variant + 1) * self.n]
    }
}

/// Vose's alias table over (record index, weight): each slot keeps its own
/// record with probability threshold/2^32 and otherwise gives its alias.
fn alias_table(level: &[(u16, f64)]) -> Box<[(u16, u32, u16)]> {
    let k = level.len();
    let total: f64 = level.iter().map(|&(_, w)| w).sum();
    let mut scaled: Vec<f64> = level.iter().map(|&(_, w)| w * k as f64 / total).collect();
    let mut table: Vec<(u16, u32, u16)> = level.iter().map(|&(i, _)| (i, u32::MAX, i)).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..k).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        table[s] = (level[s].0, (scaled[s] * u32::MAX as f64) as u32, level[l].0);
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    table.into()
}

/// A small deterministic generator (SplitMix64) for drawing orders.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A prefix of an answer's body and how many records of each section it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Length of the prefix.
    pub len: u32,
    /// Records in the answer, authority and additional sections.
    pub counts: [u16; 3],
}

impl Answer {
    /// The orders of a service's addresses, when the answer has them.
    pub fn shuffled(&self) -> Option<&Shuffled> {
        self.shuffled.as_deref()
    }

    /// The whole body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The whole body's record counts.
    pub fn full(&self) -> Cut {
        *self.cuts.last().expect("an answer has at least one record")
    }

    /// The longest prefix of whole records (whole RRsets in the additional
    /// section) no longer than `limit` bytes.
    pub fn cut(&self, limit: usize) -> Cut {
        let i = self.cuts.partition_point(|c| c.len as usize <= limit);
        match i {
            0 => Cut {
                len: 0,
                counts: [0; 3],
            },
            i => self.cuts[i - 1],
        }
    }
}

/// One record's data, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RData {
    Addr(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    Ns(Name),
    Soa,
    Ptr(Name),
    Txt(Vec<Vec<u8>>),
}

/// What makes two records the same, cheap to hash: names as lowercased wire
/// bytes (hashing a `Name` feeds the hasher one byte at a time).
#[derive(PartialEq, Eq, Hash)]
enum RecordKey {
    Addr(IpAddr),
    Srv(u16, u16, u16, Vec<u8>),
    Ns(Vec<u8>),
    Soa,
    Ptr(Vec<u8>),
    Txt(Vec<Vec<u8>>),
}

impl RData {
    fn key(&self) -> RecordKey {
        match self {
            RData::Addr(a) => RecordKey::Addr(*a),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => RecordKey::Srv(*priority, *weight, *port, lower_wire(target)),
            RData::Ns(n) => RecordKey::Ns(lower_wire(n)),
            RData::Soa => RecordKey::Soa,
            RData::Ptr(n) => RecordKey::Ptr(lower_wire(n)),
            RData::Txt(t) => RecordKey::Txt(t.clone()),
        }
    }

    fn rtype(&self) -> u16 {
        match self {
            RData::Addr(IpAddr::V4(_)) => rtype::A,
            RData::Addr(IpAddr::V6(_)) => rtype::AAAA,
            RData::Srv { .. } => rtype::SRV,
            RData::Ns(_) => rtype::NS,
            RData::Soa => rtype::SOA,
            RData::Ptr(_) => rtype::PTR,
            RData::Txt(_) => rtype::TXT,
        }
    }
}

/// A name's records while the snapshot is assembled.
struct NodeRecords {
    /// The name with its letter case; `None` for an empty non-terminal.
    name: Option<Name>,
    rrsets: RRsets,
    /// Every record in `rrsets`, so a duplicate is found without scanning
    /// (a service with thousands of instances has RRsets that large).
    /// Made only when an RRset grows past [`SCAN_LIMIT`]: most names have a
    /// record or two, and a set for each would dominate the build's memory.
    seen: Option<HashSet<RecordKey>>,
    /// For a service's names: the (priority, weight) of each address record.
    weighted: Option<Weighted>,
}

/// RRsets by type, in type order: a name has few types, so a sorted vector
/// is smaller than a map.
#[derive(Default)]
struct RRsets(Vec<(u16, Vec<RData>)>);

impl RRsets {
    fn get(&self, rtype: &u16) -> Option<&Vec<RData>> {
        self.0.iter().find(|(t, _)| t == rtype).map(|(_, v)| v)
    }

    fn contains_key(&self, rtype: &u16) -> bool {
        self.get(rtype).is_some()
    }

    fn keys(&self) -> impl Iterator<Item = &u16> {
        self.0.iter().map(|(t, _)| t)
    }

    fn values(&self) -> impl Iterator<Item = &Vec<RData>> {
        self.0.iter().map(|(_, v)| v)
    }

    fn push(&mut self, rdata: RData) {
        let rtype = rdata.rtype();
        match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(i) => self.0[i].1.push(rdata),
            Err(i) => self.0.insert(i, (rtype, vec![rdata])),
        }
    }
}

impl std::ops::Index<&u16> for RRsets {
    type Output = Vec<RData>;
    fn index(&self, rtype: &u16) -> &Vec<RData> {
        self.get(rtype).expect("an RRset of this type")
    }
}

/// RRsets up to this size are searched for duplicates; larger ones get a set.
const SCAN_LIMIT: usize = 8;

impl NodeRecords {
    fn new(name: Option<Name>) -> Self {
        NodeRecords {
            name,
            rrsets: RRsets::default(),
            seen: None,
            weighted: None,
        }
    }

    /// Whether `rdata` is not in the node yet. Two sources of the same record
    /// (an address shared by two instances of a service) would be a duplicate
    /// RR, which RFC 2181 forbids.
    fn is_new(&mut self, rdata: &RData) -> bool {
        if let Some(seen) = &mut self.seen {
            return seen.insert(rdata.key());
        }
        let same_type = self.rrsets.get(&rdata.rtype());
        if same_type.is_none_or(|v| v.len() < SCAN_LIMIT) {
            return !same_type.is_some_and(|v| v.contains(rdata));
        }
        let mut seen: HashSet<RecordKey> = self.rrsets.values().flatten().map(RData::key).collect();
        let new = seen.insert(rdata.key());
        self.seen = Some(seen);
        new
    }
}

/// The weights of a service name's address records, in RRset order.
struct Weighted {
    max_answers: Option<u16>,
    by_type: BTreeMap<u16, Vec<(u16, f64)>>,
}

/// How many weighted orders each multi-address A/AAAA answer of a service
/// has. The first position of the orders is drawn by stratified sampling, so
/// an instance's share of first places is its share of the weight to within
/// 1/32 (exactly, for weights such as 1:3 or 1:1:2); a query picks one of the
/// orders at random. 32 keeps that error small while the orders stay cheap:
/// they are shared by every answer with the same weights (see [`Orders`]).
pub const ORDER_VARIANTS: usize = 32;

/// The weight that a weight-0 instance counts for when orders are drawn:
/// RFC 2782 gives such targets "a very small chance" of being chosen.
const ZERO_WEIGHT: f64 = 0.01;

/// Assembles a zone's records by owner name, then encodes every answer.
struct Builder<'z> {
    zone: &'z Zone,
    /// Length of the apex's key.
    apex_len: usize,
    names: HashMap<Vec<u8>, NodeRecords>,
    /// Room for the key of the name being looked up.
    key: Vec<u8>,
}

impl<'z> Builder<'z> {
    /// A builder for `zone`, sized like its previous snapshot.
    fn new(zone: &'z Zone, previous: Option<&ZoneSnapshot>) -> Self {
        Builder {
            zone,
            apex_len: lower_wire(&zone.apex).len(),
            names: HashMap::with_capacity(previous.map_or(0, |p| p.nodes.len())),
            key: Vec::new(),
        }
    }

    fn node(&mut self, name: &Name) -> &mut NodeRecords {
        lower_wire_into(name, &mut self.key);
        // Most names are looked up many times (a service's names once per
        // instance): the key is copied only when the name is new.
        if !self.names.contains_key(&self.key) {
            self.names
                .insert(self.key.clone(), NodeRecords::new(Some(name.clone())));
        }
        self.names.get_mut(&self.key).expect("just inserted")
    }

    fn add(&mut self, name: &Name, rdata: RData) {
        let node = self.node(name);
        if node.is_new(&rdata) {
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
        let node = self.node(name);
        let rdata = RData::Addr(addr);
        if node.is_new(&rdata) {
            let rtype = rdata.rtype();
            node.rrsets.push(rdata);
            let weighted = node.weighted.get_or_insert_with(|| Weighted {
                max_answers,
                by_type: BTreeMap::new(),
            });
            weighted
                .by_type
                .entry(rtype)
                .or_default()
                .push((priority, weight));
        }
    }

    /// Adds every record of the zone's hosts and services.
    fn add_zone(&mut self) {
        let zone = self.zone;
        self.add(&zone.apex, RData::Soa);
        for ns in &zone.nameservers {
            self.add(&zone.apex, RData::Ns(ns.clone()));
        }
        for host in &zone.hosts {
            for addr in &host.addresses {
                self.add(&host.name, RData::Addr(*addr));
            }
        }
        // DNS-SD service type enumeration (RFC 6763 section 9).
        let browse = ["_udp", "_dns-sd", "_services"]
            .iter()
            .try_fold(zone.apex.clone(), |n, l| try_child(&n, l));
        for service in &zone.services {
            self.add_service(service, browse.as_ref());
        }
        // A service whose instances are all unhealthy (or that has none)
        // still exists, and so does the host name of an instance left out
        // for its health (a host without addresses): their names answer
        // NODATA, not NXDOMAIN, which resolvers would cache as "no such
        // service".
        for (service_name, srv_name) in zone
            .services
            .iter()
            .filter_map(|service| service_names(&zone.apex, service))
        {
            self.node(&service_name);
            self.node(&srv_name);
        }
        for host in zone.hosts.iter().filter(|h| h.addresses.is_empty()) {
            self.node(&host.name);
        }
    }

    fn add_service(&mut self, service: &Service, browse: Option<&Name>) {
        let apex = &self.zone.apex;
        let Some((service_name, srv_name)) = service_names(apex, service) else {
            warn!(service = %service.name, zone = %apex, "service name too long; left out");
            return;
        };
        if let Some(browse) = browse {
            self.add(browse, RData::Ptr(srv_name.clone()));
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
                    self.node(name);
                }
                continue;
            }
            let target = match &instance.endpoint {
                Endpoint::Addresses(addrs) => {
                    let Some(host) = try_child(apex, &instance.name) else {
                        warn!(instance = %instance.name, zone = %apex, "instance name too long; left out");
                        continue;
                    };
                    // An instance's weight is shared by its addresses of a
                    // family, so one with two IPv4 addresses is not chosen
                    // twice as often as one with a single address.
                    let per_family = |v4: bool| addrs.iter().filter(|a| a.is_ipv4() == v4).count();
                    let (v4, v6) = (per_family(true), per_family(false));
                    let weight = match instance.weight {
                        0 => ZERO_WEIGHT,
                        w => f64::from(w),
                    };
                    for addr in addrs {
                        self.add(&host, RData::Addr(*addr));
                        let share = weight / if addr.is_ipv4() { v4 } else { v6 } as f64;
                        for name in std::iter::once(&service_name).chain(&tag_names) {
                            self.add_weighted(
                                name,
                                *addr,
                                instance.priority,
                                share,
                                service.max_answers,
                            );
                        }
                    }
                    host
                }
                Endpoint::Target(target) => target.clone(),
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
            self.add(&srv_name, RData::Ptr(sd_name.clone()));
            self.add(&sd_name, srv.clone());
            self.add(&sd_name, RData::Txt(txt_strings(&instance.metadata)));

            for (tag, tag_name) in tags.iter().zip(&tag_names) {
                self.add(tag_name, srv.clone());
                if let Some(rfc) = rfc_name(tag) {
                    self.add(&rfc, srv.clone());
                }
                if let Some(sub) = sub_name(tag) {
                    self.add(&sub, RData::Ptr(sd_name.clone()));
                }
            }
        }
    }

    /// Adds the empty non-terminals and encodes every answer, taking from
    /// `previous` (the zone's last snapshot) each answer whose inputs have
    /// not changed.
    fn finish(mut self, serial: u32, previous: Option<&ZoneSnapshot>) -> ZoneSnapshot {
        let zone = self.zone;
        // Every name between a record's owner and the apex exists (RFC 8020):
        // the suffixes of the owners' keys, a label at a time. A suffix that
        // is a node already has its own ancestors added when it is reached.
        let apex_len = self.apex_len;
        let mut ents: HashSet<&[u8]> = HashSet::new();
        for key in self.names.keys() {
            let mut suffix = &key[..];
            while suffix.len() > apex_len {
                suffix = &suffix[1 + suffix[0] as usize..];
                if suffix.len() <= apex_len
                    || self.names.contains_key(suffix)
                    || !ents.insert(suffix)
                {
                    break;
                }
            }
        }
        let ents: Vec<Vec<u8>> = ents.into_iter().map(<[u8]>::to_vec).collect();
        for key in ents {
            self.names.insert(key, NodeRecords::new(None));
        }

        let encoder = Encoder {
            zone,
            serial,
            names: &self.names,
            orders: RefCell::new(HashMap::new()),
            scratch: RefCell::new(Vec::new()),
        };
        let mut input = Vec::new();
        let nodes = self
            .names
            .iter()
            .map(|(key, node)| {
                let before = previous.and_then(|p| p.nodes.get(&key[..]));
                let answers = node
                    .rrsets
                    .keys()
                    .map(|&rtype| {
                        let fingerprint = encoder.fingerprint(key, node, rtype, &mut input);
                        let answer = match before.and_then(|n| n.entry(rtype)) {
                            Some(e) if e.fingerprint == fingerprint => e.answer.clone(),
                            _ => encoder.answer(key, node, rtype),
                        };
                        Entry {
                            rtype,
                            fingerprint,
                            answer,
                        }
                    })
                    .collect();
                (key.clone().into_boxed_slice(), Node { answers })
            })
            .collect();

        let mut negative = MessageWriter::with_question(&[0], 0);
        let start = negative.buf.len();
        negative.u16(rtype::SOA);
        negative.u16(crate::answer::wire::CLASS_IN);
        // RFC 2308 section 5: negative answers live min(SOA TTL, SOA minimum).
        negative.u32(zone.ttl.min(zone.soa.minimum));
        let len_at = negative.buf.len();
        negative.u16(0);
        encoder.soa_rdata(&mut negative, false);
        let rdlen = (negative.buf.len() - len_at - 2) as u16;
        negative.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());

        ZoneSnapshot {
            apex_key: lower_wire(&zone.apex).into_boxed_slice(),
            serial,
            nodes,
            negative_soa: negative.buf[start..].into(),
        }
    }
}

/// Builds the answers of one zone. `previous`, the zone's last snapshot,
/// lends every answer whose inputs are unchanged, so a small change to a
/// large zone re-encodes only what it touches.
pub fn build_zone(zone: &Zone, serial: u32, previous: Option<&ZoneSnapshot>) -> ZoneSnapshot {
    let mut builder = Builder::new(zone, previous);
    builder.add_zone();
    builder.finish(serial, previous)
}

/// Builds a reverse zone (under in-addr.arpa or ip6.arpa) from its SOA
/// settings (`zone`, which has no hosts or services) and (owner, target)
/// PTR pairs, reusing `previous` as [`build_zone`] does.
pub fn build_reverse_zone<'a>(
    zone: &Zone,
    ptrs: impl IntoIterator<Item = (&'a Name, &'a Name)>,
    serial: u32,
    previous: Option<&ZoneSnapshot>,
) -> ZoneSnapshot {
    let mut builder = Builder::new(zone, previous);
    builder.add_zone();
    for (owner, target) in ptrs {
        builder.add(owner, RData::Ptr(target.clone()));
    }
    builder.finish(serial, previous)
}

/// The TXT strings of an instance (RFC 6763 section 6): `key=value` each, or
/// one empty string when there is no metadata, since a DNS-SD instance must
/// have a TXT record (section 6.1).
fn txt_strings(metadata: &[(String, String)]) -> Vec<Vec<u8>> {
    if metadata.is_empty() {
        return vec![Vec::new()];
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect()
}

/// `<service>.<zone>` and `_<service>._<protocol>.<zone>`.
fn service_names(apex: &Name, service: &Service) -> Option<(Name, Name)> {
    let srv = try_child(apex, &format!("_{}", service.protocol.as_str()))
        .and_then(|p| try_child(&p, &format!("_{}", service.name)))?;
    Some((try_child(apex, &service.name)?, srv))
}

/// `label.parent`, or `None` when the name would be too long (an underscore
/// added to a 63-character label, or a long zone): such a name cannot exist,
/// so it is not served.
fn try_child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

/// Appends a name's wire form, letter case kept, to a fingerprint's input.
fn put_name(input: &mut Vec<u8>, name: Option<&Name>) {
    let Some(name) = name else {
        input.push(0xFF);
        return;
    };
    for label in name.iter() {
        input.push(label.len() as u8);
        input.extend_from_slice(label);
    }
    input.push(0);
}

/// Appends an RRset (or its absence) to a fingerprint's input.
fn put_rrset(input: &mut Vec<u8>, rrset: Option<&Vec<RData>>) {
    let Some(rrset) = rrset else {
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        return;
    };
    input.extend_from_slice(&(rrset.len() as u32).to_be_bytes());
    for rdata in rrset {
        match rdata {
            RData::Addr(IpAddr::V4(a)) => {
                input.push(1);
                input.extend_from_slice(&a.octets());
            }
            RData::Addr(IpAddr::V6(a)) => {
                input.push(2);
                input.extend_from_slice(&a.octets());
            }
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                input.push(3);
                for v in [priority, weight, port] {
                    input.extend_from_slice(&v.to_be_bytes());
                }
                put_name(input, Some(target));
            }
            RData::Ns(n) => {
                input.push(4);
                put_name(input, Some(n));
            }
            RData::Soa => input.push(5),
            RData::Ptr(n) => {
                input.push(6);
                put_name(input, Some(n));
            }
            RData::Txt(strings) => {
                input.push(7);
                input.extend_from_slice(&(strings.len() as u32).to_be_bytes());
                for s in strings {
                    input.push(s.len() as u8);
                    input.extend_from_slice(s);
                }
            }
        }
    }
}

struct Encoder<'a> {
    zone: &'a Zone,
    serial: u32,
    names: &'a HashMap<Vec<u8>, NodeRecords>,
    /// Orders drawn so far, by the (priority, weight) list they were drawn
    /// for: most services share a handful of weight patterns.
    orders: RefCell<OrdersByWeights>,
    /// Room for the key of a name being looked up.
    scratch: RefCell<Vec<u8>>,
}

/// Orders by the (priority, weight bits) list they were drawn for.
type OrdersByWeights = HashMap<Vec<(u16, u64)>, Arc<Orders>>;

/// The keys of answer fingerprints, drawn once per process.
static FINGERPRINT_KEYS: LazyLock<[RandomState; 2]> =
    LazyLock::new(|| [RandomState::new(), RandomState::new()]);

impl Encoder<'_> {
    /// The node at `name`, if the zone has it.
    fn lookup(&self, name: &Name) -> Option<&NodeRecords> {
        let mut key = self.scratch.borrow_mut();
        lower_wire_into(name, &mut key);
        self.names.get(&key[..])
    }

    /// The fingerprint of the answer for (`key`, `qtype`): a digest of
    /// everything [`Encoder::answer`] reads for it, written to `input` first.
    /// Reading more than the answer uses only costs a needless encoding;
    /// missing an input would serve a stale answer.
    fn fingerprint(
        &self,
        key: &[u8],
        node: &NodeRecords,
        qtype: u16,
        input: &mut Vec<u8>,
    ) -> Fingerprint {
        input.clear();
        input.extend_from_slice(&qtype.to_be_bytes());
        input.extend_from_slice(&self.zone.ttl.to_be_bytes());
        input.extend_from_slice(key);
        put_name(input, node.name.as_ref());
        let rrset = &node.rrsets[&qtype];
        put_rrset(input, Some(rrset));
        match node.weighted.as_ref() {
            Some(w) => {
                input.push(1);
                input.extend_from_slice(
                    &w.max_answers.map_or(0, |m| u32::from(m) + 1).to_be_bytes(),
                );
                let weights = w.by_type.get(&qtype).map_or(&[][..], Vec::as_slice);
                input.extend_from_slice(&(weights.len() as u32).to_be_bytes());
                for &(p, w) in weights {
                    input.extend_from_slice(&p.to_be_bytes());
                    input.extend_from_slice(&w.to_bits().to_be_bytes());
                }
            }
            None => input.push(0),
        }
        if rrset.contains(&RData::Soa) {
            let soa = &self.zone.soa;
            put_name(input, Some(&soa.mname));
            put_name(input, Some(&soa.rname));
            for v in [self.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
                input.extend_from_slice(&v.to_be_bytes());
            }
        }
        // The additional section: the nodes it is read from.
        let addresses = |input: &mut Vec<u8>, target: &Name| match self.lookup(target) {
            Some(t) => {
                input.push(1);
                put_rrset(input, t.rrsets.get(&rtype::A));
                put_rrset(input, t.rrsets.get(&rtype::AAAA));
            }
            None => input.push(0),
        };
        for rdata in rrset {
            match rdata {
                // A DNS-SD instance's records, when the target is one (has TXT).
                RData::Ptr(n) => match self.lookup(n) {
                    Some(t) if t.rrsets.contains_key(&rtype::TXT) => {
                        input.push(1);
                        put_rrset(input, t.rrsets.get(&rtype::SRV));
                        put_rrset(input, t.rrsets.get(&rtype::TXT));
                        for r in t.rrsets.get(&rtype::SRV).into_iter().flatten() {
                            if let RData::Srv { target, .. } = r {
                                addresses(input, target);
                            }
                        }
                    }
                    _ => input.push(0),
                },
                RData::Srv { target: n, .. } | RData::Ns(n) => addresses(input, n),
                _ => {}
            }
        }
        let [a, b] = &*FINGERPRINT_KEYS;
        [a.hash_one(&input[..]), b.hash_one(&input[..])]
    }

    /// The orders for records of these priorities and weights.
    fn orders(&self, weights: &[(u16, f64)]) -> Arc<Orders> {
        let key: Vec<(u16, u64)> = weights.iter().map(|&(p, w)| (p, w.to_bits())).collect();
        self.orders
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Arc::new(Orders::draw(weights)))
            .clone()
    }

    fn answer(&self, key: &[u8], node: &NodeRecords, qtype: u16) -> Answer {
        let mut w = MessageWriter::with_question(key, qtype);
        let question_end = w.buf.len();
        let mut cuts = Vec::new();
        let mut counts = [0u16; 3];
        let cut = |w: &MessageWriter, counts: [u16; 3]| Cut {
            len: (w.buf.len() - question_end) as u32,
            counts,
        };

        let rrset = &node.rrsets[&qtype];
        let weights = node
            .weighted
            .as_ref()
            .and_then(|w| Some((w.max_answers, w.by_type.get(&qtype)?)));
        if let Some((max_answers, weights)) = weights
            && rrset.len() >= 2
            && weights.len() == rrset.len()
        {
            return self.shuffled(rrset, weights, max_answers);
        }
        let owner = node.name.as_ref().expect("a name with records");
        for rdata in rrset {
            self.record(&mut w, owner, rdata);
            counts[0] += 1;
            cuts.push(cut(&w, counts));
        }

        // DNS-SD (RFC 6763 section 12.1): a PTR answer for a service type
        // carries each instance's SRV and TXT records.
        let mut glue_for: Vec<(&Name, &NodeRecords)> = Vec::new();
        let mut glued: HashSet<Vec<u8>> = HashSet::new();
        let mut srv_targets: Vec<&RData> = Vec::new();
        for rdata in rrset {
            if let RData::Ptr(n) = rdata
                && let Some(target_node) = self.lookup(n)
                && target_node.rrsets.contains_key(&rtype::TXT)
            {
                for t in [rtype::SRV, rtype::TXT] {
                    if let Some(records) = target_node.rrsets.get(&t) {
                        for r in records {
                            self.record(&mut w, n, r);
                            counts[2] += 1;
                        }
                        cuts.push(cut(&w, counts));
                    }
                }
                srv_targets.extend(target_node.rrsets.get(&rtype::SRV).into_iter().flatten());
            }
        }

        // Addresses of in-zone targets, so a client needs no second query.
        for rdata in rrset.iter().chain(srv_targets) {
            if let RData::Srv { target: n, .. } | RData::Ns(n) = rdata {
                let key = lower_wire(n);
                if let Some(target_node) = self.names.get(&key)
                    && glued.insert(key)
                {
                    glue_for.push((n, target_node));
                }
            }
        }
        for (target, target_node) in glue_for {
            for t in [rtype::A, rtype::AAAA] {
                let Some(addrs) = target_node.rrsets.get(&t) else {
                    continue;
                };
                for rdata in addrs {
                    self.record(&mut w, target, rdata);
                    counts[2] += 1;
                }
                cuts.push(cut(&w, counts));
            }
        }

        Answer {
            body: w.buf[question_end..].into(),
            cuts: cuts.into(),
            shuffled: None,
        }
    }

    /// A service's addresses: each record encoded alone, with its owner a
    /// pointer to the question (offset 12), so that records can go out in
    /// any order and any number.
    fn shuffled(&self, rrset: &[RData], weights: &[(u16, f64)], max: Option<u16>) -> Answer {
        let orders = self.orders(weights);
        let mut body = Vec::new();
        let mut cuts = Vec::new();
        for (i, rdata) in rrset.iter().enumerate() {
            let (rtype, data): (u16, &[u8]) = match rdata {
                RData::Addr(IpAddr::V4(a)) => (rtype::A, &a.octets()[..]),
                RData::Addr(IpAddr::V6(a)) => (rtype::AAAA, &a.octets()[..]),
                _ => unreachable!("only addresses are weighted"),
            };
            body.extend_from_slice(&[0xC0, crate::answer::wire::HEADER_LEN as u8]);
            body.extend_from_slice(&rtype.to_be_bytes());
            body.extend_from_slice(&crate::answer::wire::CLASS_IN.to_be_bytes());
            body.extend_from_slice(&self.zone.ttl.to_be_bytes());
            body.extend_from_slice(&(data.len() as u16).to_be_bytes());
            body.extend_from_slice(data);
            cuts.push(Cut {
                len: body.len() as u32,
                counts: [i as u16 + 1, 0, 0],
            });
        }
        let record_len = body.len() / rrset.len();
        let count = max.map_or(rrset.len(), |m| rrset.len().min(m.into()));
        Answer {
            body: body.into(),
            cuts: cuts.into(),
            shuffled: Some(Arc::new(Shuffled {
                record_len,
                count,
                orders,
            })),
        }
    }

    fn record(&self, w: &mut MessageWriter, owner: &Name, rdata: &RData) {
        w.record(owner, rdata.rtype(), self.zone.ttl, |w| match rdata {
            RData::Addr(IpAddr::V4(a)) => w.buf.extend_from_slice(&a.octets()),
            RData::Addr(IpAddr::V6(a)) => w.buf.extend_from_slice(&a.octets()),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                w.u16(*priority);
                w.u16(*weight);
                w.u16(*port);
                // RFC 2782: the SRV target is not compressed.
                w.name_uncompressed(target);
            }
            RData::Ns(name) => w.name(name),
            RData::Soa => self.soa_rdata(w, true),
            RData::Ptr(name) => w.name(name),
            RData::Txt(strings) => {
                for s in strings {
                    w.buf.push(s.len() as u8);
                    w.buf.extend_from_slice(s);
                }
            }
        });
    }

    fn soa_rdata(&self, w: &mut MessageWriter, compress: bool) {
        let soa = &self.zone.soa;
        if compress {
            w.name(&soa.mname);
            w.name(&soa.rname);
        } else {
            w.name_uncompressed(&soa.mname);
            w.name_uncompressed(&soa.rname);
        }
        for v in [self.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
            w.u32(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Host, Instance, Protocol, Soa};

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
            Endpoint::Target(name("db.svc.example.")),
            5,
        ));
        instances.push(instance(
            "dual",
            Endpoint::Addresses(vec![addr("10.0.1.1"), addr("fd00::1")]),
            0,
        ));
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
            services: vec![Service {
                name: "web".into(),
                protocol: Protocol::Tcp,
                tags: vec!["prod".into()],
                check: None,
                instances,
                max_answers: Some(8),
            }],
        }
    }

    /// Every (name, type) answer of a snapshot, by key and type.
    fn answers(z: &ZoneSnapshot) -> BTreeMap<(Vec<u8>, u16), &Answer> {
        let mut all = BTreeMap::new();
        for (key, node) in &z.nodes {
            for e in &node.answers {
                assert!(all.insert((key.to_vec(), e.rtype), &e.answer).is_none());
            }
        }
        all
    }

    type Flat<'a> = (&'a [u8], &'a [Cut], Option<(usize, usize, Vec<&'a [u16]>)>);

    fn flat(a: &Answer) -> Flat<'_> {
        let shuffled = a.shuffled().map(|s| {
            let orders = (0..s.variants()).map(|v| s.order(v)).collect();
            (s.record_len(), s.count(), orders)
        });
        (a.body(), &a.cuts, shuffled)
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
        let mut nodes: Vec<&[u8]> = reused.nodes.keys().map(|k| &k[..]).collect();
        let mut fresh_nodes: Vec<&[u8]> = fresh.nodes.keys().map(|k| &k[..]).collect();
        nodes.sort();
        fresh_nodes.sort();
        assert_eq!(nodes, fresh_nodes, "the same names, empty ones included");
        assert_eq!(reused.negative_soa, fresh.negative_soa);
        let old_answers = answers(&old);
        r.iter()
            .filter(|(k, a)| {
                old_answers
                    .get(*k)
                    .is_some_and(|o| Arc::ptr_eq(&o.body, &a.body))
            })
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
        z.services[0].instances[3].endpoint =
            Endpoint::Addresses(vec!["10.9.9.9".parse().unwrap()]);
        let reused = rebuild_matches(&base, &z, 2);
        assert!(reused > 0 && reused < total - 1, "{reused} of {total}");

        // A target name's letter case: SRV answers change, lookups do not.
        let mut z = base.clone();
        z.services[0].instances[40].endpoint = Endpoint::Target(name("DB.svc.example."));
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
        z.services[0].instances[5].weight = 9;
        z.services[0].instances[6]
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
        z.services[0].max_answers = None;
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.hosts[2].name = name("A.b.c.svc.example.");
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.hosts[2].name = name("x.y.z.svc.example.");
        rebuild_matches(&base, &z, 1);
        let mut z = base.clone();
        z.services[0].instances.remove(0);
        rebuild_matches(&base, &z, 1);
    }
}
