//! The immutable, indexed form of the registry that queries read.
//!
//! Building a zone's snapshot does all the work a query would otherwise do:
//! every (name, type) pair gets its answer encoded once, sections and
//! additional records included, so answering is a hash lookup plus a copy.
//! A snapshot is never changed after it is built; the registry publishes a new
//! one and queries in flight keep the old one alive until they finish.

use std::collections::BTreeMap;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

use tracing::warn;

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
}

/// What makes two records the same, cheap to hash: names as lowercased wire
/// bytes (hashing a `Name` feeds the hasher one byte at a time).
#[derive(PartialEq, Eq, Hash)]
enum RecordKey {
    Addr(IpAddr),
    Srv(u16, u16, u16, Vec<u8>),
    Ns(Vec<u8>),
    Soa,
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
        }
    }

    fn rtype(&self) -> u16 {
        match self {
            RData::Addr(IpAddr::V4(_)) => rtype::A,
            RData::Addr(IpAddr::V6(_)) => rtype::AAAA,
            RData::Srv { .. } => rtype::SRV,
            RData::Ns(_) => rtype::NS,
            RData::Soa => rtype::SOA,
        }
    }
}

/// A name's records while the snapshot is assembled.
struct NodeRecords {
    name: Name,
    rrsets: BTreeMap<u16, Vec<RData>>,
    /// Every record in `rrsets`, so a duplicate is found without scanning
    /// (a service with thousands of instances has RRsets that large).
    seen: HashSet<RecordKey>,
}

/// Builds the answers of one zone.
pub fn build_zone(zone: &Zone, serial: u32) -> ZoneSnapshot {
    let mut names: HashMap<Vec<u8>, NodeRecords> = HashMap::new();
    let mut add = |name: &Name, rdata: RData| {
        let node = names
            .entry(lower_wire(name))
            .or_insert_with(|| NodeRecords {
                name: name.clone(),
                rrsets: BTreeMap::new(),
                seen: HashSet::new(),
            });
        // Two sources of the same record (an address shared by two instances
        // of a service) would be a duplicate RR, which RFC 2181 forbids.
        if node.seen.insert(rdata.key()) {
            node.rrsets.entry(rdata.rtype()).or_default().push(rdata);
        }
    };

    add(&zone.apex, RData::Soa);
    for ns in &zone.nameservers {
        add(&zone.apex, RData::Ns(ns.clone()));
    }
    for host in &zone.hosts {
        for addr in &host.addresses {
            add(&host.name, RData::Addr(*addr));
        }
    }
    for service in &zone.services {
        let Some((service_name, srv_name)) = service_names(&zone.apex, service) else {
            warn!(service = %service.name, zone = %zone.apex, "service name too long; left out");
            continue;
        };
        for instance in &service.instances {
            let target = match &instance.endpoint {
                Endpoint::Addresses(addrs) => {
                    let Some(host) = child(&zone.apex, &instance.name) else {
                        warn!(instance = %instance.name, zone = %zone.apex, "instance name too long; left out");
                        continue;
                    };
                    for addr in addrs {
                        add(&host, RData::Addr(*addr));
                        add(&service_name, RData::Addr(*addr));
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
            add(&srv_name, srv.clone());
            add(&service_name, srv);
        }
    }

    // A service whose instances are all unhealthy (or that has none) still
    // exists, and so does the host name of an instance left out for its
    // health (a host without addresses): their names answer NODATA, not
    // NXDOMAIN, which resolvers would cache as "no such service".
    let empty = |name: Name| NodeRecords {
        name,
        rrsets: BTreeMap::new(),
        seen: HashSet::new(),
    };
    for (service_name, srv_name) in zone
        .services
        .iter()
        .filter_map(|service| service_names(&zone.apex, service))
    {
        for name in [service_name, srv_name] {
            names
                .entry(lower_wire(&name))
                .or_insert_with(|| empty(name));
        }
    }
    for host in zone.hosts.iter().filter(|h| h.addresses.is_empty()) {
        names
            .entry(lower_wire(&host.name))
            .or_insert_with(|| empty(host.name.clone()));
    }

    // Every name between a record's owner and the apex exists (RFC 8020).
    let apex_labels = zone.apex.num_labels();
    let owners: Vec<Name> = names.values().map(|n| n.name.clone()).collect();
    for owner in owners {
        let mut name = owner.base_name();
        while name.num_labels() > apex_labels {
            names
                .entry(lower_wire(&name))
                .or_insert_with(|| NodeRecords {
                    name: name.clone(),
                    rrsets: BTreeMap::new(),
                    seen: HashSet::new(),
                });
            name = name.base_name();
        }
    }

    let encoder = Encoder {
        zone,
        serial,
        names: &names,
    };
    let nodes = names
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

/// `<service>.<zone>` and `_<service>._<protocol>.<zone>`.
fn service_names(apex: &Name, service: &Service) -> Option<(Name, Name)> {
    let srv = child(apex, &format!("_{}", service.protocol.as_str()))
        .and_then(|p| child(&p, &format!("_{}", service.name)))?;
    Some((child(apex, &service.name)?, srv))
}

/// `label.parent`. The zone parser and the admin socket refuse names that
/// would not fit; should one slip through, its records are left out rather
/// than the server stopping.
fn child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

struct Encoder<'a> {
    zone: &'a Zone,
    serial: u32,
    names: &'a HashMap<Vec<u8>, NodeRecords>,
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
        for rdata in rrset {
            self.record(&mut w, &node.name, rdata);
            counts[0] += 1;
            cuts.push(cut(&w, counts));
        }

        // Addresses of in-zone targets, so a client needs no second query.
        let mut glue_for: Vec<(&Name, &NodeRecords)> = Vec::new();
        let mut glued: HashSet<Vec<u8>> = HashSet::new();
        for rdata in rrset {
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
