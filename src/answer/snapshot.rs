//! The immutable, indexed form of the registry that queries read.
//!
//! Building a zone's snapshot does all the work a query would otherwise do:
//! every (name, type) pair gets its answer encoded once, sections and
//! additional records included, so answering is a hash lookup plus a copy.
//! A snapshot is never changed after it is built; the registry publishes a new
//! one and queries in flight keep the old one alive until they finish.

use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::HashMap;

use super::weighted::Orders;

/// Where the query path loads the current snapshot from, and the registry
/// publishes each new one to.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// Everything the server answers from: zones by their lowercased wire apex.
#[derive(Default)]
pub struct Snapshot {
    pub(super) zones: HashMap<Box<[u8]>, Arc<ZoneSnapshot>>,
    /// Labels in the longest apex: no longer suffix of a name can be a zone.
    pub(super) max_apex_labels: usize,
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
}

/// One zone, ready to answer.
pub struct ZoneSnapshot {
    pub(super) apex_key: Box<[u8]>,
    /// The zone's SOA serial.
    pub serial: u32,
    pub(super) nodes: Nodes,
    /// The SOA record of negative answers, from its type field on (the owner is
    /// written per query as a pointer to the apex inside the question).
    pub(super) negative_soa: Box<[u8]>,
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
}

/// A zone's names, split into shards by a hash of the key: a new snapshot
/// that changes a few names shares every other shard with the one before
/// (each is behind an `Arc`), so a change copies a few small maps, not the
/// zone's index. The shards are in groups, each behind an `Arc` too: a
/// change copies the list of groups and the groups of its shards, not a
/// list of every shard (16 384 of them at 100 000 services, whose copy and
/// release took a tenth of a registration's time). A lookup is two hash
/// computations and no allocation.
#[derive(Clone)]
pub(super) struct Nodes {
    groups: Box<[Arc<Group>]>,
    /// Shards in all, a power of two.
    shards: usize,
    len: usize,
}

/// Keys are shared (`Arc`) so that copying a shard allocates nothing per name.
type Shard = hashbrown::HashTable<(Arc<[u8]>, Arc<Node>)>;

/// Consecutive shards, `GROUP_SHARDS` of them (fewer in a zone with fewer),
/// in the group's own allocation: a lookup follows one pointer more than
/// with one list of shards.
type Group = [Arc<Shard>];

/// Names per shard aimed at. A change copies the shards of the names it
/// touches, and a batch of hundreds of registrations touches as many
/// shards: at 64 names a copy is about a microsecond, and the shards' own
/// overhead (a table header and an `Arc`, about 100 bytes) stays small
/// beside the names. 256 made a batch of 350 new services copy a third of
/// the index of a 100 000-service zone.
pub(super) const SHARD_NAMES: usize = 64;

/// Shards per group: a change copies a group of 64 pointers and a list of
/// about 1/4 096 as many groups as there are names.
const GROUP_SHARDS: usize = 64;

/// The one hash of a key: its high bits pick the shard, and the shard's
/// table is probed with it. Fixed, so a key's shard is the same in every
/// snapshot.
const KEY_HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5167_6e70);

fn hash(key: &[u8]) -> u64 {
    KEY_HASH.hash_one(key)
}

impl Nodes {
    /// An empty index sized for about `names` names.
    pub(super) fn with_capacity(names: usize) -> Self {
        let shards = (names / SHARD_NAMES).max(1).next_power_of_two();
        let per_shard = names / shards + names / shards / 8;
        let group = || -> Arc<Group> {
            (0..shards.min(GROUP_SHARDS))
                .map(|_| Arc::new(Shard::with_capacity(per_shard)))
                .collect()
        };
        Nodes {
            groups: (0..shards.div_ceil(GROUP_SHARDS))
                .map(|_| group())
                .collect(),
            shards,
            len: 0,
        }
    }

    /// The group and the place in it of the shard of a key with this hash.
    fn shard_of(&self, hash: u64) -> (usize, usize) {
        // The high bits: the tables use the low ones for their buckets.
        let i = (hash >> 40) as usize & (self.shards - 1);
        (i / GROUP_SHARDS, i % GROUP_SHARDS)
    }

    fn shard(&self, hash: u64) -> &Shard {
        let (g, s) = self.shard_of(hash);
        &self.groups[g][s]
    }

    /// The shard of a key with this hash, to change: its group and it are
    /// copied first if another snapshot shares them.
    fn shard_mut(&mut self, hash: u64) -> &mut Shard {
        let (g, s) = self.shard_of(hash);
        let group = &mut self.groups[g];
        if Arc::get_mut(group).is_none() {
            *group = group.iter().cloned().collect();
        }
        let group = Arc::get_mut(group).expect("not shared: just copied");
        Arc::make_mut(&mut group[s])
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&Node> {
        self.get_arc(key).map(|n| &**n)
    }

    pub(super) fn get_arc(&self, key: &[u8]) -> Option<&Arc<Node>> {
        let h = hash(key);
        self.shard(h).find(h, |(k, _)| **k == *key).map(|(_, n)| n)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn shard_count(&self) -> usize {
        self.shards
    }

    /// Inserts or replaces a name, copying its shard if another snapshot
    /// shares it.
    pub(super) fn insert(&mut self, key: Arc<[u8]>, node: Arc<Node>) {
        let h = hash(&key);
        let shard = self.shard_mut(h);
        match shard.find_mut(h, |(k, _)| *k == key) {
            Some(entry) => entry.1 = node,
            None => {
                shard.insert_unique(h, (key, node), |(k, _)| hash(k));
                self.len += 1;
            }
        }
    }

    /// Removes a name, if it is there.
    pub(super) fn remove(&mut self, key: &[u8]) {
        let h = hash(key);
        if self.shard(h).find(h, |(k, _)| **k == *key).is_none() {
            return;
        }
        if let Ok(entry) = self.shard_mut(h).find_entry(h, |(k, _)| **k == *key) {
            entry.remove();
            self.len -= 1;
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Arc<Node>)> {
        self.groups
            .iter()
            .flat_map(|g| g.iter())
            .flat_map(|s| s.iter().map(|(k, n)| (k, n)))
    }

    /// The names in shards that `other` does not share (all of them when
    /// the two are sharded differently): a superset of the names whose
    /// node differs, found without looking at the shared groups and shards.
    pub(super) fn unshared<'a>(
        &'a self,
        other: &'a Nodes,
    ) -> impl Iterator<Item = (&'a Arc<[u8]>, &'a Arc<Node>)> {
        fn shared<T: ?Sized>(a: &Arc<T>, b: Option<&Arc<T>>) -> bool {
            b.is_some_and(|b| Arc::ptr_eq(a, b))
        }
        // Paired group by group when both have the same shards.
        let theirs = (self.shards == other.shards).then_some(&other.groups);
        (self.groups.iter().enumerate())
            .map(move |(g, group)| (group, theirs.map(|t| &t[g])))
            .filter(|&(group, other)| !shared(group, other))
            .flat_map(|(group, other)| {
                (group.iter().enumerate())
                    .filter(move |&(s, shard)| !shared(shard, other.map(|o| &o[s])))
            })
            .flat_map(|(_, s)| s.iter().map(|(k, n)| (k, n)))
    }

    /// The same names in a number of shards fit for their count now.
    pub(super) fn resharded(&self) -> Nodes {
        let mut nodes = Nodes::with_capacity(self.len);
        for (k, n) in self.iter() {
            nodes.insert(k.clone(), n.clone());
        }
        nodes
    }
}

impl FromIterator<(Arc<[u8]>, Arc<Node>)> for Nodes {
    fn from_iter<I: IntoIterator<Item = (Arc<[u8]>, Arc<Node>)>>(iter: I) -> Self {
        let items: Vec<_> = iter.into_iter().collect();
        let mut nodes = Nodes::with_capacity(items.len());
        for (k, n) in items {
            nodes.insert(k, n);
        }
        nodes
    }
}

/// A name that exists: its answers by type. No RRsets at all means an empty
/// non-terminal (RFC 8020: NODATA, not NXDOMAIN).
pub struct Node {
    pub(super) answers: Box<[Entry]>,
}

/// One type's answer.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) rtype: u16,
    pub(super) answer: Answer,
}

impl Node {
    /// The answer for this type, if the name has records of it.
    pub fn answer(&self, qtype: u16) -> Option<&Answer> {
        self.entry(qtype).map(|e| &e.answer)
    }

    pub(super) fn entry(&self, qtype: u16) -> Option<&Entry> {
        self.answers.iter().find(|e| e.rtype == qtype)
    }

    /// The answer to an ANY query: one RRset (RFC 8482), the lowest type code.
    pub fn any(&self) -> Option<&Answer> {
        self.answers.first().map(|e| &e.answer)
    }
}

/// The sections of one response after the question, pre-encoded for a question
/// name of this node's length at offset 12. Cloning shares the buffer: an
/// unchanged answer moves from one snapshot to the next without a copy.
#[derive(Clone)]
pub struct Answer {
    /// The body, then its cuts: one allocation per answer, as a zone has
    /// about as many answers as records. Cuts are places where the body may
    /// be cut when the message is too large (after each answer record and
    /// after each additional RRset, in order), [`CUT_LEN`] bytes each. A
    /// service's addresses ([`Shuffled`]) have one, the whole body: their
    /// responses are records picked from it, never a prefix of it.
    data: Arc<[u8]>,
    body_len: u32,
    /// After the cuts: the RRset's records past the body when the body
    /// outgrew any message (see [`Answer::overflowing_records`]), each
    /// uncompressed and standalone. No response carries them; a zone
    /// transfer, which is the zone's every record, does.
    rest_len: u32,
    /// For the addresses of a service: the orders the records go out in.
    pub(super) shuffled: Option<Arc<Shuffled>>,
}

/// A cut in an answer's buffer: its length, then its three counts, each in
/// native byte order.
pub(super) const CUT_LEN: usize = 10;

/// An answer whose records are sent in an order picked per query. Its body
/// is the records one after the other, each the same length (an A or AAAA
/// record whose owner is a pointer to the question), so any order of them is
/// a valid answer section and no order is stored twice.
pub struct Shuffled {
    pub(super) record_len: usize,
    /// Records per answer: all of them, or the service's `max_answers`.
    pub(super) count: usize,
    /// The weighted orders, or `None` when every record has the same
    /// priority and weight: then any record is as likely at any place, and
    /// the order is a random start and a random stride through the records
    /// (see [`Shuffled::order`]), drawn per query. Nothing is stored, so a
    /// change to a service of thousands of equal instances draws no orders.
    pub(super) orders: Option<Arc<Orders>>,
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

    /// The weighted orders drawn for this answer (`None`: equal weights).
    #[cfg(test)]
    pub(super) fn drawn(&self) -> Option<&Orders> {
        self.orders.as_deref()
    }

    /// Calls `put` with the indexes of the first `take` records of an order
    /// of `records` records, drawn with `random`. Weighted: the first record
    /// from the alias table, the rest from one of the drawn orders. Equal
    /// weights: record `(start + k * stride) mod records` at place `k`, with
    /// a random start (so each record comes first equally often) and a random
    /// stride coprime to the count (so it visits every record once).
    pub fn order(
        &self,
        records: usize,
        take: usize,
        mut random: impl FnMut() -> u32,
        mut put: impl FnMut(usize),
    ) {
        if take == 0 || records == 0 {
            return;
        }
        match &self.orders {
            Some(orders) => {
                let first = orders.pick_first(random(), random());
                put(usize::from(first));
                let rest = orders.get(random() as usize % orders.variants());
                for &i in rest.iter().filter(|&&i| i != first).take(take - 1) {
                    put(usize::from(i));
                }
            }
            None => {
                let mut at = random() as usize % records;
                let stride = coprime_stride(records, random());
                for _ in 0..take.min(records) {
                    put(at);
                    at += stride;
                    if at >= records {
                        at -= records;
                    }
                }
            }
        }
    }
}

/// A stride in 1..n (1 when n < 3) with no common factor with `n`, from a
/// random number: the next such number at or after a random point, so a
/// visit with that stride reaches every record. Few candidates are tried:
/// a run of numbers sharing a factor with n is short.
fn coprime_stride(n: usize, random: u32) -> usize {
    if n < 3 {
        return 1;
    }
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut stride = 1 + random as usize % (n - 1);
    while gcd(stride, n) != 1 {
        stride = if stride + 1 == n { 1 } else { stride + 1 };
    }
    stride
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
    /// An answer of this body and these cuts (at least one: the whole body).
    /// The cuts go after the body in its buffer, which is copied once, into
    /// the answer's allocation.
    pub(super) fn new(body: Vec<u8>, cuts: &[Cut], shuffled: Option<Arc<Shuffled>>) -> Answer {
        Answer::assembled(body, cuts, &[], shuffled)
    }

    /// [`Answer::new`] with the RRset's records past the body (`rest`).
    pub(super) fn with_rest(
        body: &[u8],
        cuts: &[Cut],
        rest: &[u8],
        shuffled: Option<Arc<Shuffled>>,
    ) -> Answer {
        let mut data = Vec::with_capacity(body.len() + cuts.len() * CUT_LEN + rest.len());
        data.extend_from_slice(body);
        Answer::assembled(data, cuts, rest, shuffled)
    }

    /// The answer whose body is `data` so far: the cuts and `rest` go after it.
    fn assembled(
        mut data: Vec<u8>,
        cuts: &[Cut],
        rest: &[u8],
        shuffled: Option<Arc<Shuffled>>,
    ) -> Answer {
        let body_len = u32::try_from(data.len()).expect("under 4 GiB");
        data.reserve_exact(cuts.len() * CUT_LEN + rest.len());
        for cut in cuts {
            data.extend_from_slice(&cut.len.to_ne_bytes());
            for count in cut.counts {
                data.extend_from_slice(&count.to_ne_bytes());
            }
        }
        data.extend_from_slice(rest);
        Answer {
            data: data.into(),
            body_len,
            rest_len: u32::try_from(rest.len()).expect("under 4 GiB"),
            shuffled,
        }
    }

    /// This answer with another `rest`: what changed is past the body.
    pub(super) fn replace_rest(&self, rest: &[u8]) -> Answer {
        let cuts: Vec<Cut> = (0..self.cut_count()).map(|i| self.cut_at(i)).collect();
        Answer::with_rest(self.body(), &cuts, rest, self.shuffled.clone())
    }

    /// The RRset's records past the body, uncompressed, one after the
    /// other; empty unless the body outgrew any message.
    pub fn rest(&self) -> &[u8] {
        &self.data[self.data.len() - self.rest_len as usize..]
    }

    /// Whether the two answers go out alike: the same bytes, and for a
    /// service's addresses the same count and orders. A rebuild keeps the
    /// previous answer when they do, so unchanged answers stay shared.
    pub(super) fn same(&self, other: &Answer) -> bool {
        let orders = match (&self.shuffled, &other.shuffled) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.record_len == b.record_len
                    && a.count == b.count
                    && match (&a.orders, &b.orders) {
                        (None, None) => true,
                        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
                        _ => false,
                    }
            }
            _ => false,
        };
        orders
            && self.body_len == other.body_len
            && self.rest_len == other.rest_len
            && (Arc::ptr_eq(&self.data, &other.data) || self.data == other.data)
    }

    /// The orders of a service's addresses, when the answer has them.
    pub fn shuffled(&self) -> Option<&Shuffled> {
        self.shuffled.as_deref()
    }

    /// The whole body.
    pub fn body(&self) -> &[u8] {
        &self.data[..self.body_len as usize]
    }

    fn cut_count(&self) -> usize {
        (self.data.len() - self.body_len as usize - self.rest_len as usize) / CUT_LEN
    }

    fn cut_at(&self, i: usize) -> Cut {
        let at = self.body_len as usize + i * CUT_LEN;
        let c = &self.data[at..at + CUT_LEN];
        let u16_at = |j: usize| u16::from_ne_bytes([c[j], c[j + 1]]);
        Cut {
            len: u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
            counts: [u16_at(4), u16_at(6), u16_at(8)],
        }
    }

    /// Every cut, shortest first.
    #[cfg(test)]
    pub(super) fn cuts(&self) -> impl Iterator<Item = Cut> + '_ {
        (0..self.cut_count()).map(|i| self.cut_at(i))
    }

    /// Whether both answers are the same buffer (an answer reused, not
    /// encoded again).
    #[cfg(test)]
    pub(super) fn shares_buffer(&self, other: &Answer) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// The whole body's record counts.
    pub fn full(&self) -> Cut {
        self.cut_at(self.cut_count() - 1)
    }

    /// When the answer section alone outgrew any message (the encoding
    /// stopped at the record that took it past 65535 bytes): how many
    /// records it holds. Those records and their order decide it; the
    /// RRset's later records play no part.
    /// Not for a service's addresses, which go out in an order drawn per
    /// query from all of them.
    pub(super) fn overflowing_records(&self) -> Option<usize> {
        if self.shuffled.is_some() {
            return None;
        }
        let full = self.full();
        (full.len > u32::from(u16::MAX) && full.counts[1] == 0 && full.counts[2] == 0)
            .then_some(usize::from(full.counts[0]))
    }

    /// The longest prefix of whole records (whole RRsets in the additional
    /// section) no longer than `limit` bytes.
    pub fn cut(&self, limit: usize) -> Cut {
        // The first cut longer than `limit`; cuts grow with their index.
        let (mut lo, mut hi) = (0, self.cut_count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.cut_at(mid).len as usize <= limit {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        match lo {
            0 => Cut {
                len: 0,
                counts: [0; 3],
            },
            i => self.cut_at(i - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(x: &mut u32) -> u32 {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        *x
    }

    #[test]
    fn an_order_of_equal_weights_visits_every_record_once() {
        let mut x = 0x9e37_79b9;
        for n in [1, 2, 3, 64, 97, 100, 5000] {
            let s = Shuffled {
                record_len: 16,
                count: n,
                orders: None,
            };
            for _ in 0..50 {
                let mut seen = vec![0u8; n];
                s.order(n, n, || xorshift(&mut x), |i| seen[i] += 1);
                assert!(seen.iter().all(|&c| c == 1), "n={n}: {seen:?}");
            }
            // A shorter answer takes distinct records too.
            let mut taken = Vec::new();
            s.order(n, n.min(7), || xorshift(&mut x), |i| taken.push(i));
            taken.sort();
            taken.dedup();
            assert_eq!(taken.len(), n.min(7));
        }
    }

    #[test]
    fn each_of_many_equal_records_comes_first_and_second_in_its_share() {
        let n = 100;
        let s = Shuffled {
            record_len: 16,
            count: n,
            orders: None,
        };
        let (mut first, mut second) = (vec![0; n], vec![0; n]);
        let mut x = 0x1234_5678;
        for _ in 0..200_000 {
            let mut k = 0;
            s.order(
                n,
                2,
                || xorshift(&mut x),
                |i| {
                    [&mut first, &mut second][k][i] += 1;
                    k += 1;
                },
            );
        }
        // 2000 expected each; the binomial deviation is about 44.
        for places in [&first, &second] {
            assert!(
                places.iter().all(|&c| (1700..2300).contains(&c)),
                "{places:?}"
            );
        }
    }

    /// A change copies only the groups and shards of the names it touches,
    /// in an index of many groups, and `unshared` finds every name changed
    /// without naming those of the groups and shards left shared.
    #[test]
    fn a_change_shares_every_other_group_and_shard() {
        let node = || {
            Arc::new(Node {
                answers: Box::new([]),
            })
        };
        let key = |i: usize| -> Arc<[u8]> { format!("name-{i}").into_bytes().into() };
        let before: Nodes = (0..20_000).map(|i| (key(i), node())).collect();
        assert!(
            before.groups.len() > 4,
            "several groups: {}",
            before.groups.len()
        );
        let mut after = before.clone();
        let seventh = node();
        after.insert(key(7), Arc::clone(&seventh));
        after.insert(key(20_001), node());
        after.remove(&key(9_999));
        assert_eq!(after.len(), 20_000);
        assert!(after.get(&key(9_999)).is_none() && after.get(&key(20_001)).is_some());
        assert!(Arc::ptr_eq(after.get_arc(&key(7)).unwrap(), &seventh));
        assert!(!Arc::ptr_eq(before.get_arc(&key(7)).unwrap(), &seventh));
        let copied = (after.groups.iter().zip(&before.groups))
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert!(copied <= 3, "{copied} groups copied");
        let unshared: Vec<_> = after.unshared(&before).map(|(k, _)| k.clone()).collect();
        assert!(
            unshared.len() < 3 * 2 * SHARD_NAMES,
            "{} names",
            unshared.len()
        );
        for changed in [key(7), key(20_001)] {
            assert!(unshared.contains(&changed));
        }
        let gone: Vec<_> = before.unshared(&after).map(|(k, _)| k.clone()).collect();
        assert!(gone.contains(&key(9_999)));
        assert_eq!(after.iter().count(), after.len());
        // The one before is as it was.
        assert!(before.get(&key(9_999)).is_some() && before.get(&key(20_001)).is_none());
    }
}
