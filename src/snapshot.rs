//! The immutable, indexed form of the registry that queries read.
//!
//! Building a zone's snapshot does all the work a query would otherwise do:
//! every (name, type) pair gets its answer encoded once, sections and
//! additional records included, so answering is a hash lookup plus a copy.
//! A snapshot is never changed after it is built; the registry publishes a new
//! one and queries in flight keep the old one alive until they finish.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use tracing::warn;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::model::{Endpoint, Service, Zone};
use crate::wire::{MessageWriter, lower_wire, rtype};

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
            .map(|k| crate::wire::label_count(k))
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
    answers: Box<[(u16, Answer)]>,
}

impl Node {
    /// The answer for this type, if the name has records of it.
    pub fn answer(&self, qtype: u16) -> Option<&Answer> {
        self.answers
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, a)| a)
    }

    /// The answer to an ANY query: one RRset (RFC 8482), the lowest type code.
    pub fn any(&self) -> Option<&Answer> {
        self.answers.first().map(|(_, a)| a)
    }
}

/// The sections of one response after the question, pre-encoded for a question
/// name of this node's length at offset 12.
pub struct Answer {
    body: Box<[u8]>,
    /// Places where the body may be cut when the message is too large: after
    /// each answer record and after each additional RRset, in order.
    cuts: Box<[Cut]>,
    /// For the addresses of a service: the orders the records go out in.
    shuffled: Option<Box<Shuffled>>,
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
}

/// [`ORDER_VARIANTS`] orders of `n` records, drawn once for a list of
/// (priority, weight): by weighted random sampling without replacement within
/// each priority level, lowest priority first. The first record of each
/// level is drawn by stratified sampling (the i-th order uses the point
/// (i + 1/2) / [`ORDER_VARIANTS`] of the cumulative weight), so a record comes
/// first in a share of the orders that matches its weight; the rest are drawn
/// with a fixed-seed generator, so a zone's answers are the same at every build.
pub struct Orders {
    n: usize,
    indexes: Box<[u16]>,
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
                race.sort_by(|a, b| a.0.total_cmp(&b.0));
                indexes.extend(race.iter().map(|&(_, i)| i));
            }
        }
        Orders {
            n,
            indexes: indexes.into(),
        }
    }

    fn variants(&self) -> usize {
        ORDER_VARIANTS
    }

    fn get(&self, variant: usize) -> &[u16] {
        &self.indexes[variant * self.n..(variant + 1) * self.n]
    }
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
    name: Name,
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
    names: HashMap<Vec<u8>, NodeRecords>,
    /// Orders already drawn, by the (priority, weight) list they were drawn
    /// for: most services share a handful of weight patterns.
    orders: HashMap<Vec<(u16, u64)>, Arc<Orders>>,
}

impl<'z> Builder<'z> {
    fn new(zone: &'z Zone) -> Self {
        Builder {
            zone,
            names: HashMap::new(),
            orders: HashMap::new(),
        }
    }

    fn node(&mut self, name: &Name) -> &mut NodeRecords {
        self.names
            .entry(lower_wire(name))
            .or_insert_with(|| NodeRecords {
                name: name.clone(),
                rrsets: RRsets::default(),
                seen: None,
                weighted: None,
            })
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

    /// The orders for records of these priorities and weights.
    fn orders(&mut self, weights: &[(u16, f64)]) -> Arc<Orders> {
        let key: Vec<(u16, u64)> = weights.iter().map(|&(p, w)| (p, w.to_bits())).collect();
        self.orders
            .entry(key)
            .or_insert_with(|| Arc::new(Orders::draw(weights)))
            .clone()
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
                // Consul's RFC 2782 form, `_<service>._<tag>`; a tag named
                // like a protocol would be the service's own SRV name.
                let is_protocol = ["tcp", "udp"].iter().any(|p| p.eq_ignore_ascii_case(tag));
                if !is_protocol
                    && let Some(rfc) = try_child(apex, &format!("_{tag}"))
                        .and_then(|n| try_child(&n, &format!("_{}", service.name)))
                {
                    self.add(&rfc, srv.clone());
                }
                // DNS-SD subtype (RFC 6763 section 7.1).
                if let Some(sub) =
                    try_child(&srv_name, "_sub").and_then(|n| try_child(&n, &format!("_{tag}")))
                {
                    self.add(&sub, RData::Ptr(sd_name.clone()));
                }
            }
        }
    }

    /// Adds the empty non-terminals and encodes every answer.
    fn finish(mut self, serial: u32) -> ZoneSnapshot {
        let zone = self.zone;
        // Every name between a record's owner and the apex exists (RFC 8020).
        let apex_labels = zone.apex.num_labels();
        let owners: Vec<Name> = self.names.values().map(|n| n.name.clone()).collect();
        for owner in owners {
            let mut name = owner.base_name();
            while name.num_labels() > apex_labels {
                self.node(&name);
                name = name.base_name();
            }
        }

        // Orders for every answer that has them, drawn before encoding.
        let mut wanted: Vec<Vec<(u16, f64)>> = Vec::new();
        for node in self.names.values() {
            for weights in node.weighted.iter().flat_map(|w| w.by_type.values()) {
                if weights.len() >= 2 {
                    wanted.push(weights.clone());
                }
            }
        }
        for weights in wanted {
            self.orders(&weights);
        }

        let encoder = Encoder {
            zone,
            serial,
            names: &self.names,
            orders: &self.orders,
        };
        let nodes = self
            .names
            .iter()
            .map(|(key, node)| {
                let answers = node
                    .rrsets
                    .keys()
                    .map(|&t| (t, encoder.answer(key, node, t)))
                    .collect();
                (key.clone().into_boxed_slice(), Node { answers })
            })
            .collect();

        let mut negative = MessageWriter::with_question(&[0], 0);
        let start = negative.buf.len();
        negative.u16(rtype::SOA);
        negative.u16(crate::wire::CLASS_IN);
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

/// Builds the answers of one zone.
pub fn build_zone(zone: &Zone, serial: u32) -> ZoneSnapshot {
    let mut builder = Builder::new(zone);
    builder.add_zone();
    builder.finish(serial)
}

/// Builds a reverse zone (under in-addr.arpa or ip6.arpa) from its SOA
/// settings (`zone`, which has no hosts or services) and (owner, target)
/// PTR pairs.
pub fn build_reverse_zone<'a>(
    zone: &Zone,
    ptrs: impl IntoIterator<Item = (&'a Name, &'a Name)>,
    serial: u32,
) -> ZoneSnapshot {
    let mut builder = Builder::new(zone);
    builder.add_zone();
    for (owner, target) in ptrs {
        builder.add(owner, RData::Ptr(target.clone()));
    }
    builder.finish(serial)
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

struct Encoder<'a> {
    zone: &'a Zone,
    serial: u32,
    names: &'a HashMap<Vec<u8>, NodeRecords>,
    orders: &'a HashMap<Vec<(u16, u64)>, Arc<Orders>>,
}

impl Encoder<'_> {
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
        for rdata in rrset {
            self.record(&mut w, &node.name, rdata);
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
                && let Some(target_node) = self.names.get(&lower_wire(n))
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
        let key: Vec<(u16, u64)> = weights.iter().map(|&(p, w)| (p, w.to_bits())).collect();
        let orders = self.orders[&key].clone();
        let mut body = Vec::new();
        let mut cuts = Vec::new();
        for (i, rdata) in rrset.iter().enumerate() {
            let (rtype, data): (u16, &[u8]) = match rdata {
                RData::Addr(IpAddr::V4(a)) => (rtype::A, &a.octets()[..]),
                RData::Addr(IpAddr::V6(a)) => (rtype::AAAA, &a.octets()[..]),
                _ => unreachable!("only addresses are weighted"),
            };
            body.extend_from_slice(&[0xC0, crate::wire::HEADER_LEN as u8]);
            body.extend_from_slice(&rtype.to_be_bytes());
            body.extend_from_slice(&crate::wire::CLASS_IN.to_be_bytes());
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
            shuffled: Some(Box::new(Shuffled {
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
