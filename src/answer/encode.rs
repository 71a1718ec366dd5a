//! Encoding one answer: the sections after the question, with name
//! compression, record counts and cut points.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::{HashMap, HashSet, HashSetExt};

use super::snapshot::{Answer, CUT_LEN, Cut, Entry, Node, Shuffled};
use super::weighted::{Orders, Weighted};
use crate::answer::wire::{MessageWriter, WireName, lower_wire, rtype};
use crate::model::Zone;

/// One record's data, before encoding. Names are in wire form and shared
/// (see [`WireName`]), which keeps a record at 24 bytes whatever its kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum RData {
    Addr(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: WireName,
    },
    Ns(WireName),
    Soa,
    Ptr(WireName),
    Txt(Box<[Box<[u8]>]>),
}

/// What makes two records the same, cheap to hash: names as lowercased wire
/// bytes (hashing a `Name` feeds the hasher one byte at a time).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum RecordKey {
    Addr(IpAddr),
    Srv(u16, u16, u16, Vec<u8>),
    Ns(Vec<u8>),
    Soa,
    Ptr(Vec<u8>),
    Txt(Vec<Vec<u8>>),
}

impl RData {
    pub(super) fn key(&self) -> RecordKey {
        match self {
            RData::Addr(a) => RecordKey::Addr(*a),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => RecordKey::Srv(*priority, *weight, *port, target.lower()),
            RData::Ns(n) => RecordKey::Ns(n.lower()),
            RData::Soa => RecordKey::Soa,
            RData::Ptr(n) => RecordKey::Ptr(n.lower()),
            RData::Txt(t) => RecordKey::Txt(t.iter().map(|s| s.to_vec()).collect()),
        }
    }

    /// Equal with the letter case of names too, as an answer carries the
    /// case it was given (`==` is the same).
    pub(super) fn same(&self, other: &RData) -> bool {
        self.equal_by(other, WireName::same)
    }

    /// The same record as DNS compares records, names without regard to
    /// letter case (RFC 4343), as their keys are equal; nothing allocated.
    pub(super) fn same_record(&self, other: &RData) -> bool {
        self.equal_by(other, |a, b| a.wire().eq_ignore_ascii_case(b.wire()))
    }

    /// Equal, names compared by `same_name`.
    fn equal_by(&self, other: &RData, same_name: impl Fn(&WireName, &WireName) -> bool) -> bool {
        match (self, other) {
            (
                RData::Srv {
                    priority: p1,
                    weight: w1,
                    port: o1,
                    target: t1,
                },
                RData::Srv {
                    priority: p2,
                    weight: w2,
                    port: o2,
                    target: t2,
                },
            ) => (p1, w1, o1) == (p2, w2, o2) && same_name(t1, t2),
            (RData::Ns(a), RData::Ns(b)) | (RData::Ptr(a), RData::Ptr(b)) => same_name(a, b),
            (a, b) => a == b,
        }
    }

    pub(super) fn rtype(&self) -> u16 {
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
#[derive(Clone)]
pub(super) struct NodeRecords {
    /// The name with its letter case; `None` for an empty non-terminal.
    pub(super) name: Option<WireName>,
    pub(super) rrsets: RRsets,
    /// Every record in `rrsets`, so a duplicate is found without scanning
    /// (a service with thousands of instances has RRsets that large).
    /// Made only when an RRset grows past [`SCAN_LIMIT`]: most names have a
    /// record or two, and a set for each would dominate the build's memory.
    pub(super) seen: Option<Box<HashSet<RecordKey>>>,
    /// For a service's names: the (priority, weight) of each address record.
    /// Boxed, as `seen` is: most names have neither.
    pub(super) weighted: Option<Box<Weighted>>,
}

/// RRsets by type, in type order: a name has few types, so a sorted vector
/// is smaller than a map.
#[derive(Clone, Default)]
pub(super) struct RRsets(Vec<(u16, Vec<RData>)>);

impl RRsets {
    pub(super) fn get(&self, rtype: &u16) -> Option<&Vec<RData>> {
        self.0.iter().find(|(t, _)| t == rtype).map(|(_, v)| v)
    }

    pub(super) fn contains_key(&self, rtype: &u16) -> bool {
        self.get(rtype).is_some()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &u16> {
        self.0.iter().map(|(t, _)| t)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Vec<RData>> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Replaces the RRset of this type; an empty one removes it.
    pub(super) fn set(&mut self, rtype: u16, records: Vec<RData>) {
        match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(i) if records.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = records,
            Err(_) if records.is_empty() => {}
            Err(i) => self.0.insert(i, (rtype, records)),
        }
    }

    /// Removes the RRset of this type and returns it (empty if none).
    pub(super) fn take(&mut self, rtype: u16) -> Vec<RData> {
        match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(i) => self.0.remove(i).1,
            Err(_) => Vec::new(),
        }
    }

    pub(super) fn push(&mut self, rdata: RData) {
        let rtype = rdata.rtype();
        match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(i) => self.0[i].1.push(rdata),
            Err(i) => {
                // One type more, not the four a growing vector makes room
                // for: most names have one or two.
                self.0.reserve_exact(1);
                self.0.insert(i, (rtype, vec![rdata]));
            }
        }
    }
}

impl std::ops::Index<&u16> for RRsets {
    type Output = Vec<RData>;
    fn index(&self, rtype: &u16) -> &Vec<RData> {
        self.get(rtype).expect("an RRset of this type")
    }
}

/// The longest answer body that can be sent (a message is at most 65535
/// bytes, the body follows a header and a question).
const MAX_BODY: usize = u16::MAX as usize;

/// RRsets up to this size are searched for duplicates; larger ones get a set.
const SCAN_LIMIT: usize = 8;

impl NodeRecords {
    pub(super) fn new(name: Option<&Name>) -> Self {
        NodeRecords {
            name: name.map(WireName::new),
            rrsets: RRsets::default(),
            seen: None,
            weighted: None,
        }
    }

    /// The same records, names and weights, letter case included.
    pub(super) fn same(&self, other: &NodeRecords) -> bool {
        self.name == other.name
            && self.rrsets.0.len() == other.rrsets.0.len()
            && self
                .rrsets
                .0
                .iter()
                .zip(&other.rrsets.0)
                .all(|((t1, r1), (t2, r2))| {
                    t1 == t2 && r1.len() == r2.len() && r1.iter().zip(r2).all(|(a, b)| a.same(b))
                })
            && self.weighted == other.weighted
    }

    /// Whether `rdata` is not in the node yet. Two sources of the same record
    /// (an address shared by two instances of a service, or SRV targets
    /// spelled in other letter case) would be a duplicate RR, which RFC 2181
    /// forbids. The first one's spelling stays, whether the RRset is
    /// scanned or has a set.
    pub(super) fn is_new(&mut self, rdata: &RData) -> bool {
        if let Some(seen) = &mut self.seen {
            return seen.insert(rdata.key());
        }
        let same_type = self.rrsets.get(&rdata.rtype());
        if same_type.is_none_or(|v| v.len() < SCAN_LIMIT) {
            return !same_type.is_some_and(|v| v.iter().any(|r| r.same_record(rdata)));
        }
        let mut seen: HashSet<RecordKey> = self.rrsets.values().flatten().map(RData::key).collect();
        let new = seen.insert(rdata.key());
        self.seen = Some(Box::new(seen));
        new
    }
}

#[cfg(test)]
thread_local! {
    /// Answers this thread took over as known unchanged, without encoding.
    pub(super) static KEPT_UNENCODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(super) struct Encoder<'a> {
    pub(super) zone: &'a Zone,
    pub(super) serial: u32,
    pub(super) names: &'a HashMap<Vec<u8>, NodeRecords>,
    /// Orders drawn so far, by the (priority, weight) list they were drawn
    /// for: most services share a handful of weight patterns.
    pub(super) orders: RefCell<OrdersByWeights>,
    /// Room for the key of a name being looked up.
    pub(super) scratch: RefCell<Vec<u8>>,
    /// Whether answers keep their RRset's records past a message, which
    /// only zone transfers read (see [`Encoder::keeps_rest`]).
    whole_rrsets: bool,
    /// The DNS-SD service type list's key (see [`Encoder::keeps_rest`]).
    browse_key: Option<Vec<u8>>,
}

/// Orders by the (priority, weight bits) list they were drawn for.
type OrdersByWeights = HashMap<Vec<(u16, u64)>, Arc<Orders>>;

impl<'a> Encoder<'a> {
    pub(super) fn new(
        zone: &'a Zone,
        serial: u32,
        names: &'a HashMap<Vec<u8>, NodeRecords>,
        whole_rrsets: bool,
    ) -> Self {
        Encoder {
            zone,
            serial,
            names,
            whole_rrsets,
            orders: RefCell::new(HashMap::default()),
            scratch: RefCell::new(Vec::new()),
            browse_key: super::build::browse_name(&zone.apex).map(|n| lower_wire(&n)),
        }
    }

    /// Whether an answer at `key` keeps its RRset's records past a message
    /// ([`Answer::rest`]), which only zone transfers read: when transfers
    /// are allowed, every name's but the DNS-SD service type list's (one
    /// record per service of the zone, which a change to any service would
    /// then cost in full; past what a message holds, about 3 000 services,
    /// that list is transferred in part). Keeping them costs a change to a
    /// service of thousands of instances about 0.3 ms more, so a server
    /// that allows no transfers does not.
    fn keeps_rest(&self, key: &[u8]) -> bool {
        self.whole_rrsets && self.browse_key.as_deref() != Some(key)
    }

    /// The answers of the name at `key` (`None`: an empty non-terminal),
    /// each taken from `before` (the name in the previous snapshot) when it
    /// encodes to the same bytes; `before` itself when all do. Comparing the
    /// encodings, rather than what they were made from, cannot miss an input
    /// that changed, and costs about what encoding does.
    ///
    /// `unchanged` says of a type whose previous answer is known to be the
    /// same: it is taken over without encoding it.
    pub(super) fn node(
        &self,
        key: &[u8],
        node: Option<&NodeRecords>,
        before: Option<&Arc<Node>>,
        unchanged: impl Fn(u16) -> bool,
    ) -> Arc<Node> {
        let Some(node) = node else {
            return match before {
                Some(b) if b.answers.is_empty() => b.clone(),
                _ => Arc::new(Node {
                    answers: Box::new([]),
                }),
            };
        };
        let mut reused = 0;
        let answers: Box<[Entry]> = node
            .rrsets
            .keys()
            .map(|&rtype| {
                let previous = before.and_then(|n| n.entry(rtype));
                if let Some(e) = previous.filter(|_| unchanged(rtype)) {
                    #[cfg(test)]
                    KEPT_UNENCODED.with(|k| k.set(k.get() + 1));
                    // The body is as it was; what changed is past it.
                    let held = e.answer.overflowing_records().unwrap_or(usize::MAX);
                    let records = node.rrsets.get(&rtype).map_or(&[][..], Vec::as_slice);
                    let owner = node.name.as_ref().expect("a name with records");
                    let rest = match self.keeps_rest(key) {
                        true => self.rest(owner, records.get(held..).unwrap_or_default()),
                        false => Vec::new(),
                    };
                    if rest == e.answer.rest() {
                        reused += 1;
                        return e.clone();
                    }
                    return Entry {
                        rtype,
                        answer: e.answer.replace_rest(&rest),
                    };
                }
                let answer = self.answer(key, node, rtype);
                match previous {
                    Some(e) if e.answer.same(&answer) => {
                        reused += 1;
                        e.clone()
                    }
                    _ => Entry { rtype, answer },
                }
            })
            .collect();
        match before {
            Some(b) if reused == answers.len() && b.answers.len() == answers.len() => b.clone(),
            _ => Arc::new(Node { answers }),
        }
    }

    /// The SOA record of negative answers, from its type field on.
    pub(super) fn negative_soa(&self) -> Box<[u8]> {
        let zone = self.zone;
        let mut negative = MessageWriter::with_question(&[0], 0);
        let start = negative.buf.len();
        negative.u16(rtype::SOA);
        negative.u16(crate::answer::wire::CLASS_IN);
        // RFC 2308 section 5: negative answers live min(SOA TTL, SOA minimum).
        negative.u32(zone.ttl.min(zone.soa.minimum));
        let len_at = negative.buf.len();
        negative.u16(0);
        self.soa_rdata(&mut negative, false);
        let rdlen = (negative.buf.len() - len_at - 2) as u16;
        negative.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        negative.buf[start..].into()
    }

    /// The node at `name`, if the zone has it.
    pub(super) fn lookup(&self, name: &WireName) -> Option<&NodeRecords> {
        let mut key = self.scratch.borrow_mut();
        key.clear();
        key.extend(name.wire().iter().map(u8::to_ascii_lowercase));
        self.names.get(&key[..])
    }

    /// The orders for records of these priorities and weights.
    pub(super) fn orders(&self, weights: &[(u16, f64)], len: usize) -> Arc<Orders> {
        let mut key: Vec<(u16, u64)> = weights.iter().map(|&(p, w)| (p, w.to_bits())).collect();
        key.push((u16::MAX, len as u64));
        self.orders
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Arc::new(Orders::draw_prefix(weights, len)))
            .clone()
    }

    pub(super) fn answer(&self, key: &[u8], node: &NodeRecords, qtype: u16) -> Answer {
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
        // A message is at most 65535 bytes: past the first cut longer than
        // that, no cut can ever be chosen, so encoding stops there.
        let over = |cuts: &[Cut]| cuts.last().is_some_and(|c| c.len as usize > MAX_BODY);
        // Appends one RRset to the additional section, with the cut after
        // it; true when the body has outgrown any message.
        let additional = |w: &mut MessageWriter,
                          counts: &mut [u16; 3],
                          cuts: &mut Vec<Cut>,
                          owner: &WireName,
                          records: &[RData]| {
            let mut owner_at = None;
            for r in records {
                self.record(w, owner, &mut owner_at, r);
                counts[2] += 1;
            }
            cuts.push(cut(w, *counts));
            over(cuts)
        };
        'sections: {
            let mut owner_at = None;
            for rdata in rrset {
                self.record(&mut w, owner, &mut owner_at, rdata);
                counts[0] += 1;
                cuts.push(cut(&w, counts));
                if over(&cuts) {
                    break 'sections;
                }
            }

            // DNS-SD (RFC 6763 section 12.1): a PTR answer for a service type
            // carries each instance's SRV and TXT records.
            let mut glued: HashSet<Vec<u8>> = HashSet::new();
            let mut srv_targets: Vec<&RData> = Vec::new();
            for rdata in rrset {
                if let RData::Ptr(n) = rdata
                    && let Some(target_node) = self.lookup(n)
                    && target_node.rrsets.contains_key(&rtype::TXT)
                {
                    for t in [rtype::SRV, rtype::TXT] {
                        if let Some(records) = target_node.rrsets.get(&t)
                            && additional(&mut w, &mut counts, &mut cuts, n, records)
                        {
                            break 'sections;
                        }
                    }
                    srv_targets.extend(target_node.rrsets.get(&rtype::SRV).into_iter().flatten());
                }
            }

            // Addresses of in-zone targets, so a client needs no second
            // query; each target once, in the order of first mention, and
            // no more looked up once the message is full.
            for rdata in rrset.iter().chain(srv_targets) {
                if let RData::Srv { target: n, .. } | RData::Ns(n) = rdata {
                    let key = n.lower();
                    if let Some(target_node) = self.names.get(&key)
                        && glued.insert(key)
                    {
                        for t in [rtype::A, rtype::AAAA] {
                            if let Some(addrs) = target_node.rrsets.get(&t)
                                && additional(&mut w, &mut counts, &mut cuts, n, addrs)
                            {
                                break 'sections;
                            }
                        }
                    }
                }
            }
        }

        // Past a message, the RRset's other records still belong to the zone.
        let held = usize::from(counts[0]);
        let rest = match self.keeps_rest(key) {
            true => self.rest(owner, &rrset[held..]),
            false => Vec::new(),
        };
        Answer::with_rest(&w.buf[question_end..], &cuts, &rest, None)
    }

    /// Records of `owner` each uncompressed and standalone, one after the
    /// other: the part of an RRset no message holds (see [`Answer::rest`]).
    pub(super) fn rest(&self, owner: &WireName, records: &[RData]) -> Vec<u8> {
        let mut w = MessageWriter::standalone();
        for rdata in records {
            self.record(&mut w, owner, &mut None, rdata);
        }
        w.buf
    }

    /// A service's addresses: each record encoded alone, with its owner a
    /// pointer to the question (offset 12), so that records can go out in
    /// any order and any number.
    pub(super) fn shuffled(
        &self,
        rrset: &[RData],
        weights: &[(u16, f64)],
        max: Option<u16>,
    ) -> Answer {
        // Every record is the same length: the body is sized once, and its
        // one cut is the whole of it (a response takes as many records as
        // fit, in the order drawn, never a prefix of the body).
        let (rtype, record_len) = match rrset.first() {
            Some(RData::Addr(IpAddr::V6(_))) => (rtype::AAAA, 12 + 16),
            _ => (rtype::A, 12 + 4),
        };
        // What every record starts with: its owner, a pointer to the
        // question; its type, class, TTL and data length.
        let mut head = [0u8; 12];
        head[..2].copy_from_slice(&[0xC0, crate::answer::wire::HEADER_LEN as u8]);
        head[2..4].copy_from_slice(&rtype.to_be_bytes());
        head[4..6].copy_from_slice(&crate::answer::wire::CLASS_IN.to_be_bytes());
        head[6..10].copy_from_slice(&self.zone.ttl.to_be_bytes());
        head[10..12].copy_from_slice(&((record_len - 12) as u16).to_be_bytes());
        // Room for the cut too, which goes after the body. Written record
        // by record in place: a service of thousands re-encodes this on
        // every change to it.
        let mut body = Vec::with_capacity(rrset.len() * record_len + CUT_LEN);
        body.resize(rrset.len() * record_len, 0);
        for (record, rdata) in body.chunks_exact_mut(record_len).zip(rrset) {
            let (head_of, data) = record.split_at_mut(12);
            head_of.copy_from_slice(&head);
            match rdata {
                RData::Addr(IpAddr::V4(a)) => data.copy_from_slice(&a.octets()),
                RData::Addr(IpAddr::V6(a)) => data.copy_from_slice(&a.octets()),
                _ => unreachable!("only addresses are weighted"),
            }
        }
        let cuts = [Cut {
            len: body.len() as u32,
            counts: [rrset.len() as u16, 0, 0],
        }];
        let count = max.map_or(rrset.len(), |m| rrset.len().min(m.into()));
        // One level of equal weights needs no drawn orders (see Shuffled).
        let uniform = weights.windows(2).all(|p| p[0] == p[1]);
        let orders = (!uniform).then(|| self.orders(weights, count.min(MAX_BODY / record_len)));
        let shuffled = Shuffled {
            record_len,
            count,
            orders,
        };
        Answer::new(body, &cuts, Some(Arc::new(shuffled)))
    }

    /// Writes one record of `owner` (see [`MessageWriter::record_of`]).
    pub(super) fn record(
        &self,
        w: &mut MessageWriter,
        owner: &WireName,
        owner_at: &mut Option<u16>,
        rdata: &RData,
    ) {
        w.record_of(
            owner,
            owner_at,
            rdata.rtype(),
            self.zone.ttl,
            |w| match rdata {
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
                    w.wire_name_uncompressed(target);
                }
                RData::Ns(name) => w.wire_name(name),
                RData::Soa => self.soa_rdata(w, true),
                RData::Ptr(name) => w.wire_name(name),
                RData::Txt(strings) => {
                    for s in strings {
                        w.buf.push(s.len() as u8);
                        w.buf.extend_from_slice(s);
                    }
                }
            },
        );
    }

    pub(super) fn soa_rdata(&self, w: &mut MessageWriter, compress: bool) {
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

    fn srv(target: &str) -> RData {
        RData::Srv {
            priority: 0,
            weight: 1,
            port: 80,
            target: WireName::new(&Name::from_ascii(target).unwrap()),
        }
    }

    #[test]
    fn a_record_spelled_in_other_letter_case_is_a_duplicate_in_any_rrset() {
        // A few records (scanned) and many (kept in a set).
        for before in [0, 3, 20] {
            let mut node = NodeRecords::new(None);
            for i in 0..before {
                let other = srv(&format!("h{i}.example."));
                assert!(node.is_new(&other));
                node.rrsets.push(other);
            }
            let first = srv("Web.example.");
            assert!(node.is_new(&first), "{before} before");
            node.rrsets.push(first);
            assert!(!node.is_new(&srv("web.EXAMPLE.")), "{before} before");
            assert!(node.is_new(&srv("web2.example.")), "{before} before");
        }
    }
}
