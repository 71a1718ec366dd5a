//! A zone's records as a zone transfer carries them, read back from the
//! snapshot's pre-encoded answers: what a secondary loads is what signpost
//! answers, record for record, with nothing kept twice. An RRset larger
//! than a message has the records past it kept beside its answer
//! ([`Answer::rest`]), already in the form read here.
//!
//! Each record is its uncompressed wire form (owner, type, class, TTL,
//! RDATA), the owner as the answer spells it. Walking a zone decodes every
//! answer once; it is the rare path of transfers, never of queries.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::snapshot::{Answer, Entry, Node, Snapshot, ZoneSnapshot};
use crate::answer::wire::{CLASS_IN, HEADER_LEN, flag::QR, rtype};

/// One record in uncompressed wire form.
pub type WireRecord = Vec<u8>;

/// The zone's SOA record.
pub fn soa(zone: &ZoneSnapshot) -> WireRecord {
    let apex = &zone.apex_key;
    let mut out = Vec::new();
    if let Some(entry) = zone.node(apex).and_then(|n| n.entry(rtype::SOA)) {
        decode(apex, entry, &mut out);
    }
    out.pop().expect("every zone has an SOA record at its apex")
}

/// Every record of the zone but the SOA, in no particular order.
pub fn all(zone: &ZoneSnapshot) -> Vec<WireRecord> {
    let mut out = Vec::with_capacity(zone.nodes.len() * 2);
    for (key, node) in zone.nodes.iter() {
        node_records(key, node, &mut out);
    }
    out
}

/// What changed between two versions of a zone, the SOA aside.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Records in the old version only.
    pub removed: BTreeSet<WireRecord>,
    /// Records in the new version only.
    pub added: BTreeSet<WireRecord>,
}

impl Diff {
    /// No record changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }

    /// This diff followed by `next`, as one: a record added then removed
    /// (or removed then added back) cancels out.
    pub fn then(&mut self, next: &Diff) {
        for r in &next.removed {
            if !self.added.remove(r) {
                self.removed.insert(r.clone());
            }
        }
        for r in &next.added {
            if !self.removed.remove(r) {
                self.added.insert(r.clone());
            }
        }
    }
}

/// The records that differ between `old` and `new`. Costs what changed:
/// shards and nodes the two versions share are skipped by pointer, and an
/// answer that encodes the same is not decoded.
pub fn diff(old: &ZoneSnapshot, new: &ZoneSnapshot) -> Diff {
    let mut diff = Diff::default();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for (key, node) in new.nodes.unshared(&old.nodes) {
        let previous = old.nodes.get_arc(key);
        if previous.is_some_and(|p| Arc::ptr_eq(p, node)) {
            continue;
        }
        before.clear();
        after.clear();
        // The records past a message are already standalone: compared in
        // place, and only those that differ copied.
        let (mut rest_before, mut rest_after) = (Vec::new(), Vec::new());
        // A change past what a message holds leaves the body as it was.
        let same_body = |a: Option<&Entry>, b: &Entry| {
            a.is_some_and(|a| {
                a.answer.body() == b.answer.body() && a.answer.full() == b.answer.full()
            })
        };
        for entry in node.answers.iter().filter(|e| e.rtype != rtype::SOA) {
            let was = previous.and_then(|p| p.entry(entry.rtype));
            if !was.is_some_and(|p| p.answer.same(&entry.answer)) {
                if !same_body(was, entry) {
                    decode_body(key, entry, &mut after);
                }
                rest_after.extend(rest_records(entry.answer.rest()));
            }
        }
        if let Some(previous) = previous {
            for entry in previous.answers.iter().filter(|e| e.rtype != rtype::SOA) {
                let now = node.entry(entry.rtype);
                if !now.is_some_and(|n| n.answer.same(&entry.answer)) {
                    if !same_body(now, entry) {
                        decode_body(key, entry, &mut before);
                    }
                    rest_before.extend(rest_records(entry.answer.rest()));
                }
            }
        }
        let (b, a) = trim_alike(&rest_before, &rest_after);
        before.extend(b.iter().map(|r| r.to_vec()));
        after.extend(a.iter().map(|r| r.to_vec()));
        let (b, a) = trim_alike(&before, &after);
        let (b, a): (BTreeSet<&WireRecord>, BTreeSet<&WireRecord>) =
            (b.iter().collect(), a.iter().collect());
        diff.removed.extend(b.difference(&a).map(|r| (*r).clone()));
        diff.added.extend(a.difference(&b).map(|r| (*r).clone()));
    }
    for (key, node) in old.nodes.unshared(&new.nodes) {
        if new.nodes.get_arc(key).is_none() {
            before.clear();
            node_records(key, node, &mut before);
            diff.removed.extend(before.drain(..));
        }
    }
    diff
}

/// `before` and `after` without the records alike at their start and at
/// their end. Records come in the same order in both, and a name never has
/// one twice, so those are in both: they need not be compared as sets,
/// which for an RRset of thousands of records with one changed would cost
/// them all.
fn trim_alike<'r, T: PartialEq>(before: &'r [T], after: &'r [T]) -> (&'r [T], &'r [T]) {
    let start = (before.iter().zip(after))
        .take_while(|(b, a)| b == a)
        .count();
    let (before, after) = (&before[start..], &after[start..]);
    let end = (before.iter().rev())
        .zip(after.iter().rev())
        .take_while(|(b, a)| b == a)
        .count();
    (&before[..before.len() - end], &after[..after.len() - end])
}

/// The standalone records of an answer's rest, one after the other.
fn rest_records(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The owner's labels, then type, class, TTL and the data's length.
        let mut at = 0;
        while rest[at] != 0 {
            at += 1 + rest[at] as usize;
        }
        let rdlen = u16::from_be_bytes([rest[at + 9], rest[at + 10]]) as usize;
        let (record, tail) = rest.split_at(at + 11 + rdlen);
        rest = tail;
        Some(record)
    })
}

/// The zones of `new` that are not as in `old`, each with its version in
/// `old` if it had one.
pub fn changed_zones<'a>(
    old: &'a Snapshot,
    new: &'a Snapshot,
) -> Vec<(Option<&'a ZoneSnapshot>, &'a ZoneSnapshot)> {
    new.zones
        .iter()
        .filter_map(|(key, zone)| match old.zones.get(key) {
            Some(before) if Arc::ptr_eq(before, zone) || before.serial == zone.serial => None,
            before => Some((before.map(|b| &**b), &**zone)),
        })
        .collect()
}

/// How many names the zone has: a floor on its records.
pub fn names(zone: &ZoneSnapshot) -> usize {
    zone.nodes.len()
}

/// The zone's apex, lowercased, in wire form.
pub fn apex(zone: &ZoneSnapshot) -> &[u8] {
    &zone.apex_key
}

/// The records of one name, the SOA aside.
fn node_records(key: &[u8], node: &Node, out: &mut Vec<WireRecord>) {
    for entry in node.answers.iter().filter(|e| e.rtype != rtype::SOA) {
        decode(key, entry, out);
    }
}

/// The answer section of one pre-encoded answer, as records. The answer was
/// encoded for a question at offset 12 (its owners point there), so it is
/// read as the response to a question for `key`.
fn decode(key: &[u8], entry: &Entry, out: &mut Vec<WireRecord>) {
    decode_body(key, entry, out);
    out.extend(rest_records(entry.answer.rest()).map(<[u8]>::to_vec));
}

/// An answer as the response to a question for `key` (its owners point at
/// offset 12), with how many records each section has.
fn response(key: &[u8], entry: &Entry) -> (Vec<u8>, [u16; 3]) {
    let answer: &Answer = &entry.answer;
    let (body, counts) = match answer.shuffled() {
        // Every address, not the `max_answers` a response carries.
        Some(s) => (
            answer.body(),
            [(answer.body().len() / s.record_len()) as u16, 0, 0],
        ),
        None => (answer.body(), answer.full().counts),
    };
    let mut message = Vec::with_capacity(HEADER_LEN + key.len() + 4 + body.len());
    message.extend_from_slice(&[0, 0]);
    message.extend_from_slice(&QR.to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes());
    for c in counts {
        message.extend_from_slice(&c.to_be_bytes());
    }
    message.extend_from_slice(key);
    message.extend_from_slice(&entry.rtype.to_be_bytes());
    message.extend_from_slice(&CLASS_IN.to_be_bytes());
    message.extend_from_slice(body);
    (message, counts)
}

/// The records of an answer's body (all of them but its rest).
fn decode_body(key: &[u8], entry: &Entry, out: &mut Vec<WireRecord>) {
    let (message, counts) = response(key, entry);
    // The snapshot's own encoding: it always reads back. Read here rather
    // than by a DNS library, which would parse the whole message (a large
    // service's DNS-SD answer has thousands of additional records) into
    // records only to write them out again.
    let mut pos = HEADER_LEN + key.len() + 4;
    for _ in 0..counts[0] {
        let mut record = Vec::new();
        pos = read_record(&message, pos, &mut record).expect("a pre-encoded answer reads back");
        out.push(record);
    }
}

/// Appends the record at `pos` of `message` to `out` with its names
/// uncompressed (each record stands alone, to be put in any message);
/// returns where the next record starts. `None` if it does not read.
fn read_record(message: &[u8], pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let pos = read_name(message, pos, out)?;
    let fixed = message.get(pos..pos + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    out.extend_from_slice(&fixed[..8]);
    let (start, end) = (pos + 10, pos + 10 + rdlen);
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    match rtype {
        rtype::PTR | rtype::NS => {
            read_name(message, start, out)?;
        }
        rtype::SRV => {
            out.extend_from_slice(message.get(start..start + 6)?);
            read_name(message, start + 6, out)?;
        }
        rtype::SOA => {
            let rname = read_name(message, start, out)?;
            let numbers = read_name(message, rname, out)?;
            out.extend_from_slice(message.get(numbers..numbers + 20)?);
        }
        _ => out.extend_from_slice(message.get(start..end)?),
    }
    let rdlen = u16::try_from(out.len() - len_at - 2).ok()?;
    out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    Some(end)
}

/// Appends the name at `pos` of `message` to `out`, uncompressed, letter
/// case kept; returns where the name ends in place.
fn read_name(message: &[u8], mut pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut end = None;
    // Each pointer goes back, so a name has at most one per byte before it.
    for _ in 0..=message.len() {
        let len = *message.get(pos)? as usize;
        if len & 0xC0 == 0xC0 {
            let low = *message.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            let target = ((len & 0x3F) << 8) | low;
            if target >= pos {
                return None;
            }
            pos = target;
        } else if len == 0 {
            out.push(0);
            return Some(end.unwrap_or(pos + 1));
        } else {
            out.extend_from_slice(message.get(pos..=pos + len)?);
            pos += len + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, Record, RecordType};
    use hickory_proto::serialize::binary::BinDecodable;

    use super::*;
    use crate::answer::build::build_zone;
    use crate::model::{Endpoint, Instance, Protocol, Service, Soa, Zone};

    fn zone(instances: usize) -> Zone {
        let apex = Name::from_ascii("svc.example.").unwrap();
        let ns = Name::from_ascii("ns1.svc.example.").unwrap();
        Zone {
            apex: apex.clone(),
            ttl: 30,
            nameservers: vec![ns.clone()],
            soa: Soa {
                mname: ns.clone(),
                rname: ns,
                refresh: 1,
                retry: 1,
                expire: 1,
                minimum: 1,
            },
            hosts: vec![],
            services: vec![Service {
                name: "web".into(),
                protocol: Protocol::Tcp,
                tags: vec![],
                check: None,
                instances: (0..instances)
                    .map(|i| Instance {
                        name: format!("web-{i}"),
                        endpoint: Endpoint::Addresses(vec![[10, 0, 0, i as u8].into()]),
                        port: 80,
                        weight: 1,
                        priority: 0,
                        check: None,
                        tags: vec![],
                        metadata: vec![],
                    })
                    .map(Arc::new)
                    .collect(),
                max_answers: Some(1),
            }]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
        }
    }

    /// What a DNS library reads from an answer: the records of its answer
    /// section, each written out again uncompressed.
    fn decoded_by_hickory(key: &[u8], entry: &Entry) -> Vec<WireRecord> {
        use hickory_proto::op::Message;
        use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
        let (message, _) = response(key, entry);
        let decoded = Message::from_vec(&message).unwrap();
        (decoded.answers.iter())
            .map(|record| {
                let mut bytes = Vec::new();
                let mut encoder = BinEncoder::new(&mut bytes);
                encoder.set_name_encoding(NameEncoding::Uncompressed);
                record.emit(&mut encoder).unwrap();
                bytes
            })
            .collect()
    }

    #[test]
    fn the_walk_has_every_record_of_an_rrset_larger_than_a_message() {
        // 3 000 SRV records are about 100 KB: past any message.
        let snapshot = build_zone(&zone(3000), 7, None);
        let records = all(&snapshot);
        assert_eq!(
            has(&records, "_web._tcp.svc.example.", RecordType::SRV),
            3000
        );
        assert_eq!(
            has(&records, "_web._tcp.svc.example.", RecordType::PTR),
            3000
        );
        assert_eq!(has(&records, "web.svc.example.", RecordType::SRV), 3000);
        // Each once.
        let unique: BTreeSet<&WireRecord> = records.iter().collect();
        assert_eq!(unique.len(), records.len());
    }

    #[test]
    fn the_difference_of_rrsets_larger_than_a_message_is_every_record_that_differs() {
        // Instances added past what the answers hold, before it, and one
        // taken out: the difference is what comparing every record gives.
        let mut old_zone = zone(3000);
        let old = build_zone(&old_zone, 7, None);
        let service = Arc::make_mut(&mut old_zone.services[0]);
        let instance = |name: &str| {
            Arc::new(Instance {
                name: name.into(),
                ..Instance::clone(&service.instances[0])
            })
        };
        let (late, early) = (instance("web-zzz"), instance("web-000"));
        service.instances.push_back(late);
        service.instances.insert(1, early);
        service.instances.remove(2000);
        let new = build_zone(&old_zone, 8, Some(&old));
        let (all_old, all_new): (BTreeSet<WireRecord>, BTreeSet<WireRecord>) = (
            all(&old).into_iter().collect(),
            all(&new).into_iter().collect(),
        );
        let d = diff(&old, &new);
        assert_eq!(d.removed, all_old.difference(&all_new).cloned().collect());
        assert_eq!(d.added, all_new.difference(&all_old).cloned().collect());
        assert!(!d.added.is_empty() && !d.removed.is_empty());

        // Only past what the answers hold: their bodies stay as they were.
        let service = Arc::make_mut(&mut old_zone.services[0]);
        service.instances.remove(2500);
        let newer = build_zone(&old_zone, 9, Some(&new));
        let srv =
            crate::answer::wire::lower_wire(&Name::from_ascii("_web._tcp.svc.example.").unwrap());
        let body = |z: &ZoneSnapshot| z.node(&srv).unwrap().answer(33).unwrap().body().to_vec();
        assert_eq!(body(&new), body(&newer));
        let all_newer: BTreeSet<WireRecord> = all(&newer).into_iter().collect();
        let d = diff(&new, &newer);
        assert_eq!(d.removed, all_new.difference(&all_newer).cloned().collect());
        assert!(d.added.is_empty() && !d.removed.is_empty());
    }

    #[test]
    fn records_read_back_as_a_dns_library_reads_them() {
        let mut base = crate::answer::build::test_base_zone();
        let instance = |name: &str, endpoint: Endpoint, tags: &[&str]| Instance {
            name: name.into(),
            endpoint,
            port: 8080,
            weight: 2,
            priority: 1,
            check: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: vec![("path".into(), "/v1".into()), ("Zone".into(), "b".into())],
        };
        let addrs =
            |a: &[&str]| Endpoint::Addresses(a.iter().map(|a| a.parse().unwrap()).collect());
        let target = |t: &str| Endpoint::Target(Box::new(Name::from_ascii(t).unwrap()));
        base.services = vec![Arc::new(Service {
            name: "Web".into(),
            protocol: Protocol::Tcp,
            tags: vec!["blue".into()],
            check: None,
            instances: vec![
                instance("web-1", addrs(&["10.0.0.1", "fd00::1"]), &["Canary"]),
                instance("WEB-2", addrs(&["10.0.0.2"]), &[]),
                instance("ext", target("Host.Elsewhere.example."), &["canary"]),
                instance("in-zone", target("db.svc.example."), &[]),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
            max_answers: None,
        })];
        // And a service large enough for compression to matter.
        base.services.push(Arc::new(Service {
            name: "big".into(),
            protocol: Protocol::Udp,
            tags: vec![],
            check: None,
            instances: (0..300)
                .map(|i| {
                    instance(
                        &format!("b-{i}"),
                        addrs(&[&format!("10.9.{}.{}", i / 250, i % 250)]),
                        &[],
                    )
                })
                .map(Arc::new)
                .collect(),
            max_answers: Some(3),
        }));
        let snapshot = build_zone(&base, 9, None);
        let mut checked = 0;
        for (key, node) in snapshot.nodes.iter() {
            for entry in node.answers.iter() {
                let mut mine = Vec::new();
                decode(key, entry, &mut mine);
                assert_eq!(
                    mine,
                    decoded_by_hickory(key, entry),
                    "{key:?} {}",
                    entry.rtype
                );
                checked += mine.len();
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    fn parse(record: &[u8]) -> Record {
        Record::from_bytes(record).unwrap()
    }

    fn has(records: &[WireRecord], name: &str, rtype: RecordType) -> usize {
        records
            .iter()
            .map(|r| parse(r))
            .filter(|r| r.name.to_ascii() == name && r.record_type() == rtype)
            .count()
    }

    #[test]
    fn the_walk_has_every_record_and_every_address_of_a_capped_service() {
        let snapshot = build_zone(&zone(3), 7, None);
        let soa = parse(&soa(&snapshot));
        assert_eq!(soa.record_type(), RecordType::SOA);
        let records = all(&snapshot);
        assert_eq!(has(&records, "svc.example.", RecordType::SOA), 0);
        assert_eq!(has(&records, "svc.example.", RecordType::NS), 1);
        assert_eq!(has(&records, "_web._tcp.svc.example.", RecordType::SRV), 3);
        // max_answers caps a response, not the zone.
        assert_eq!(has(&records, "web.svc.example.", RecordType::A), 3);
        assert_eq!(has(&records, "web-1.svc.example.", RecordType::A), 1);
        assert_eq!(
            has(
                &records,
                "_services._dns-sd._udp.svc.example.",
                RecordType::PTR
            ),
            1
        );
    }

    #[test]
    fn the_diff_of_two_versions_is_what_one_instance_brings() {
        let old = build_zone(&zone(2), 7, None);
        let new = build_zone(&zone(3), 8, Some(&old));
        let d = diff(&old, &new);
        assert!(
            d.removed.is_empty(),
            "{:?}",
            d.removed.iter().map(|r| parse(r)).collect::<Vec<_>>()
        );
        let added: Vec<WireRecord> = d.added.iter().cloned().collect();
        assert_eq!(has(&added, "web-2.svc.example.", RecordType::A), 1);
        assert_eq!(has(&added, "web.svc.example.", RecordType::A), 1);
        assert_eq!(has(&added, "_web._tcp.svc.example.", RecordType::SRV), 1);
        let back = diff(&new, &old);
        assert_eq!(back.removed, d.added);
        let mut none = d.clone();
        none.then(&back);
        assert!(none.is_empty());
        // The walk of the new version is the walk of the old plus the diff.
        let mut walked: BTreeSet<WireRecord> = all(&old).into_iter().collect();
        walked.extend(d.added.iter().cloned());
        assert_eq!(walked, all(&new).into_iter().collect());
    }
}
