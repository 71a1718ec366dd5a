//! Answering what the query path hands over: zone transfers, and queries
//! signed with TSIG. (request bytes, snapshot) → response messages; no I/O.
//!
//! hickory-server's `Catalog` and `Authority` would serve AXFR from a zone
//! kept as hickory records; signpost's zones are pre-encoded answers in a
//! snapshot, so the transfer walks those (see `answer::records`) and only
//! the message framing is here.

use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use tracing::{debug, info};

use super::tsig::{self, Checked, Signing};
use super::{Transfers, unix_now};
use crate::answer::records::{self, WireRecord};
use crate::answer::respond::{self, Outcome, Transport};
use crate::answer::snapshot::{Snapshot, ZoneSnapshot};
use crate::answer::wire::{HEADER_LEN, flag, lower_wire, rcode};

/// Bytes of records per transfer message: well under 64 KiB, so the header,
/// the question and a TSIG record always fit (Knot DNS and BIND send
/// messages of this order too).
const MESSAGE_RECORDS: usize = 16 * 1024;

/// The responses to send for a query the query path did not answer itself
/// (`outcome` is [`Outcome::Transfer`] or [`Outcome::Signed`]), in order;
/// none to send nothing. `response` is what the query path wrote.
pub fn answer(
    transfers: &Transfers,
    snapshot: &Snapshot,
    query: &[u8],
    client: IpAddr,
    transport: Transport,
    outcome: Outcome,
    response: &[u8],
) -> Vec<Vec<u8>> {
    match outcome {
        Outcome::Transfer => transfer(transfers, snapshot, query, client, transport, None),
        Outcome::Signed => signed(transfers, snapshot, query, client, transport),
        _ => vec![response.to_vec()],
    }
}

/// A TSIG-signed query: checked, answered as it would be unsigned, and the
/// answer signed.
fn signed(
    transfers: &Transfers,
    snapshot: &Snapshot,
    query: &[u8],
    client: IpAddr,
    transport: Transport,
) -> Vec<Vec<u8>> {
    let now = unix_now();
    let mut signing = match tsig::check(&transfers.config.keys, query, now) {
        None => return vec![tsig::header_and_question(query, rcode::FORMERR)],
        Some(Checked::Refused(reply, error)) => {
            debug!(%client, ?error, "TSIG-signed query refused");
            return vec![reply];
        }
        Some(Checked::Valid(signing)) => signing,
    };
    let Some(unsigned) = tsig::unsigned(query) else {
        return vec![tsig::header_and_question(query, rcode::FORMERR)];
    };
    let mut out = Vec::new();
    match respond::respond(snapshot, &unsigned, transport, &mut out) {
        Outcome::Drop => Vec::new(),
        Outcome::Transfer => transfer(
            transfers,
            snapshot,
            &unsigned,
            client,
            transport,
            Some(signing),
        ),
        _ => {
            let unsigned_out = out.clone();
            signing.clone().sign(&mut out, now);
            if transport == Transport::Udp && out.len() > udp_limit(&unsigned) {
                // The signature made it too big: empty, with TC, so the
                // client asks again over TCP.
                out = unsigned_out;
                out.truncate(tsig::header_and_question(&unsigned, rcode::NOERROR).len());
                out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
                crate::answer::wire::update_flags(&mut out, flag::TC, 0);
                signing.sign(&mut out, now);
            }
            vec![out]
        }
    }
}

/// The largest UDP response the client of `query` takes (RFC 6891), as the
/// query path caps it.
fn udp_limit(query: &[u8]) -> usize {
    let offered = Message::from_vec(query)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload()));
    match offered {
        Some(payload) => usize::from(payload.clamp(512, respond::MAX_UDP_PAYLOAD)),
        None => 512,
    }
}

/// An AXFR or IXFR query for a name in a zone served here.
fn transfer(
    transfers: &Transfers,
    snapshot: &Snapshot,
    query: &[u8],
    client: IpAddr,
    transport: Transport,
    mut signing: Option<Signing>,
) -> Vec<Vec<u8>> {
    let now = unix_now();
    let signed = signing.is_some();
    let mut finish = |mut messages: Vec<Vec<u8>>| {
        if let Some(s) = signing.as_mut() {
            for m in &mut messages {
                s.sign(m, now);
            }
        }
        messages
    };
    let error = |code| vec![tsig::header_and_question(query, code)];
    let Ok(request) = Message::from_vec(query) else {
        return finish(error(rcode::FORMERR));
    };
    let Some(question) = request.queries.first() else {
        return finish(error(rcode::FORMERR));
    };
    let qtype = question.query_type();
    if !transfers.config.allows(client, signed) {
        debug!(%client, zone = %question.name(), %qtype, signed, "zone transfer refused");
        return finish(error(rcode::REFUSED));
    }
    let Some(zone) = snapshot.zone(&lower_wire(question.name())) else {
        // A name inside a zone, not its apex: not a zone of ours.
        return finish(error(rcode::NOTAUTH));
    };
    let edns = request.edns.is_some();
    let current = records::soa(zone);
    match (qtype, transport) {
        (RecordType::AXFR, Transport::Udp) => {
            // RFC 5936 section 4.2: AXFR is a TCP transaction.
            finish(error(rcode::NOTIMP))
        }
        (RecordType::AXFR, Transport::Tcp) => {
            info!(%client, zone = %question.name(), serial = zone.serial, "AXFR");
            finish(full(query, zone, current, edns))
        }
        (_, transport) => {
            let Some(from) = client_serial(&request) else {
                return finish(error(rcode::FORMERR));
            };
            if serial_ge(from, zone.serial) {
                // Up to date: the current SOA alone (RFC 1995 section 2).
                return finish(pack(query, [current.as_slice()].into_iter(), edns));
            }
            if transport == Transport::Udp {
                // Too big for a datagram: over TCP, please (RFC 1995 section 2).
                let mut m = tsig::header_and_question(query, rcode::NOERROR);
                crate::answer::wire::update_flags(&mut m, flag::TC | flag::AA, 0);
                return finish(vec![m]);
            }
            let condensed = transfers
                .between(records::apex(zone), from, zone.serial)
                // A difference bigger than the zone goes as the zone.
                .filter(|(_, d)| d.removed.len() + d.added.len() <= records::names(zone));
            match condensed {
                Some((old_soa, diff)) => {
                    info!(%client, zone = %question.name(), from, to = zone.serial, removed = diff.removed.len(), added = diff.added.len(), "IXFR");
                    let sequence = std::iter::once(current.as_slice())
                        .chain(std::iter::once(old_soa.as_slice()))
                        .chain(diff.removed.iter().map(Vec::as_slice))
                        .chain(std::iter::once(current.as_slice()))
                        .chain(diff.added.iter().map(Vec::as_slice))
                        .chain(std::iter::once(current.as_slice()));
                    finish(pack(query, sequence, edns))
                }
                None => {
                    info!(%client, zone = %question.name(), from, to = zone.serial, "IXFR from a serial the journal does not reach (or a difference bigger than the zone); sending the whole zone");
                    finish(full(query, zone, current, edns))
                }
            }
        }
    }
}

/// The whole zone: SOA, every other record, SOA.
fn full(query: &[u8], zone: &ZoneSnapshot, soa: WireRecord, edns: bool) -> Vec<Vec<u8>> {
    let all = records::all(zone);
    debug!(records = all.len() + 1, "zone walked for a full transfer");
    let sequence = std::iter::once(soa.as_slice())
        .chain(all.iter().map(Vec::as_slice))
        .chain(std::iter::once(soa.as_slice()));
    pack(query, sequence, edns)
}

/// The serial in the SOA record of an IXFR query's authority section.
fn client_serial(request: &Message) -> Option<u32> {
    request.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// `a` is at or past `b` in RFC 1982 arithmetic.
fn serial_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

/// Packs records into as many messages as needed: each a response to
/// `query` (the question in the first only, as RFC 5936 section 2.2 allows),
/// authoritative, with an OPT record when the query had one.
fn pack<'r>(query: &[u8], records: impl Iterator<Item = &'r [u8]>, edns: bool) -> Vec<Vec<u8>> {
    let first = tsig::header_and_question(query, rcode::NOERROR);
    let mut messages = Vec::new();
    let mut current = first;
    crate::answer::wire::update_flags(&mut current, flag::AA, 0);
    let mut count: u16 = 0;
    let mut bytes = 0;
    let close = |m: &mut Vec<u8>, count: u16| {
        m[6..8].copy_from_slice(&count.to_be_bytes());
        if edns {
            m.extend_from_slice(&[0, 0, 41]);
            m.extend_from_slice(&respond::MAX_UDP_PAYLOAD.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            m[10..12].copy_from_slice(&1u16.to_be_bytes());
        }
    };
    for record in records {
        if count > 0 && (bytes + record.len() > MESSAGE_RECORDS || count == u16::MAX) {
            close(&mut current, count);
            let mut next = current[..HEADER_LEN].to_vec();
            next[4..12].fill(0);
            messages.push(std::mem::replace(&mut current, next));
            count = 0;
            bytes = 0;
        }
        current.extend_from_slice(record);
        count += 1;
        bytes += record.len();
    }
    close(&mut current, count);
    messages.push(current);
    messages
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::Name;

    use super::*;
    use crate::answer::build::build_zone;
    use crate::model::{Host, Soa, Zone};
    use crate::transfer::TransferConfig;

    fn snapshot() -> Snapshot {
        Snapshot::new([Arc::new(build_zone(&zone("h"), 7, None))])
    }

    /// A zone of 3000 hosts named `prefix0` and on.
    fn zone(prefix: &str) -> Zone {
        let apex = Name::from_ascii("svc.example.").unwrap();
        let ns = Name::from_ascii("ns1.svc.example.").unwrap();
        Zone {
            apex: apex.clone(),
            ttl: 30,
            nameservers: vec![ns.clone()],
            soa: Soa {
                mname: ns.clone(),
                rname: ns.clone(),
                refresh: 1,
                retry: 1,
                expire: 1,
                minimum: 1,
            },
            hosts: (0..3000)
                .map(|i| Host {
                    name: Name::from_ascii(format!("{prefix}{i}.svc.example.")).unwrap(),
                    addresses: vec![[10, 0, (i / 256) as u8, (i % 256) as u8].into()],
                })
                .chain(std::iter::once(Host {
                    name: ns,
                    addresses: vec![[127, 0, 0, 1].into()],
                }))
                .collect(),
            services: vec![],
        }
    }

    fn axfr_query() -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("SVC.example.").unwrap(),
            hickory_proto::rr::RecordType::AXFR,
        ));
        q.to_vec().unwrap()
    }

    fn ask(config: TransferConfig, client: [u8; 4], transport: Transport) -> Vec<Message> {
        let snapshot = snapshot();
        let transfers = Transfers::new(config);
        let query = axfr_query();
        let mut out = Vec::new();
        let outcome = respond::respond(&snapshot, &query, transport, &mut out);
        assert_eq!(outcome, Outcome::Transfer);
        answer(
            &transfers,
            &snapshot,
            &query,
            client.into(),
            transport,
            outcome,
            &out,
        )
        .iter()
        .map(|m| Message::from_vec(m).unwrap())
        .collect()
    }

    fn allow_loopback() -> TransferConfig {
        TransferConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..TransferConfig::default()
        }
    }

    #[test]
    fn an_axfr_is_every_record_between_two_soas_in_several_messages() {
        let messages = ask(allow_loopback(), [127, 0, 0, 1], Transport::Tcp);
        assert!(messages.len() > 1);
        let records: Vec<_> = messages.iter().flat_map(|m| m.answers.iter()).collect();
        assert_eq!(records.len(), 3000 + 1 + 1 + 2);
        let soa = hickory_proto::rr::RecordType::SOA;
        assert_eq!(records.first().unwrap().record_type(), soa);
        assert_eq!(records.last().unwrap().record_type(), soa);
        assert_eq!(records.iter().filter(|r| r.record_type() == soa).count(), 2);
        assert!(messages.iter().all(|m| m.metadata.authoritative));
        assert_eq!(messages[0].queries.len(), 1);
    }

    #[test]
    fn an_ixfr_sends_the_difference_unless_it_is_bigger_than_the_zone() {
        let transfers = Transfers::new(TransferConfig {
            journal: 10,
            ..allow_loopback()
        });
        let mut hook = transfers.publish_hook(None);
        let v1 = Arc::new(build_zone(&zone("h"), 1, None));
        let mut small = zone("h");
        small.hosts.remove(0);
        let v2 = Arc::new(build_zone(&small, 2, Some(&v1)));
        let v3 = Arc::new(build_zone(&zone("g"), 3, Some(&v2)));
        let snap = |z: &Arc<crate::answer::snapshot::ZoneSnapshot>| Snapshot::new([z.clone()]);
        let _ = hook(&Snapshot::default(), &snap(&v1));
        let _ = hook(&snap(&v1), &snap(&v2));
        let _ = hook(&snap(&v2), &snap(&v3));
        let ixfr = |snapshot: &Snapshot, from: u32| -> Vec<Message> {
            let mut q = Message::query();
            q.add_query(Query::query(
                Name::from_ascii("svc.example.").unwrap(),
                hickory_proto::rr::RecordType::IXFR,
            ));
            q.add_authority(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("svc.example.").unwrap(),
                0,
                RData::SOA(hickory_proto::rr::rdata::SOA::new(
                    Name::root(),
                    Name::root(),
                    from,
                    0,
                    0,
                    0,
                    0,
                )),
            ));
            let query = q.to_vec().unwrap();
            let mut out = Vec::new();
            let outcome = respond::respond(snapshot, &query, Transport::Tcp, &mut out);
            answer(
                &transfers,
                snapshot,
                &query,
                [127, 0, 0, 1].into(),
                Transport::Tcp,
                outcome,
                &out,
            )
            .iter()
            .map(|m| Message::from_vec(m).unwrap())
            .collect()
        };
        let count = |ms: &[Message]| ms.iter().map(|m| m.answers.len()).sum::<usize>();
        // One host fewer: SOA, old SOA, its A record, SOA, SOA.
        assert_eq!(count(&ixfr(&snap(&v2), 1)), 5);
        // Every host renamed: the whole zone, as AXFR sends it.
        let full = ixfr(&snap(&v3), 2);
        assert_eq!(count(&full), 3000 + 2 + 2);
        assert_ne!(
            full[0].answers[1].record_type(),
            hickory_proto::rr::RecordType::SOA
        );
    }

    #[test]
    fn an_axfr_is_refused_by_default_from_elsewhere_and_over_udp() {
        let code =
            |config, client, transport| ask(config, client, transport)[0].metadata.response_code;
        assert_eq!(
            code(TransferConfig::default(), [127, 0, 0, 1], Transport::Tcp),
            ResponseCode::Refused
        );
        assert_eq!(
            code(allow_loopback(), [192, 0, 2, 1], Transport::Tcp),
            ResponseCode::Refused
        );
        assert_eq!(
            code(allow_loopback(), [127, 0, 0, 1], Transport::Udp),
            ResponseCode::NotImp
        );
    }

    #[test]
    fn serials_compare_in_serial_arithmetic() {
        assert!(serial_ge(5, 5));
        assert!(serial_ge(6, 5));
        assert!(!serial_ge(4, 5));
        assert!(serial_ge(1, u32::MAX));
    }

    #[test]
    fn records_are_packed_into_messages_of_bounded_size() {
        let query = tsig::header_and_question(
            &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 252, 0, 1],
            rcode::NOERROR,
        );
        let query: Vec<u8> = {
            let mut q = query;
            q[2] = 0;
            q[3] = 0;
            q
        };
        let record = vec![0u8; 1000];
        let messages = pack(&query, std::iter::repeat_n(record.as_slice(), 40), true);
        assert_eq!(messages.len(), 3);
        let counts: Vec<u16> = messages
            .iter()
            .map(|m| u16::from_be_bytes([m[6], m[7]]))
            .collect();
        assert_eq!(counts.iter().sum::<u16>(), 40);
        assert_eq!(u16::from_be_bytes([messages[0][4], messages[0][5]]), 1);
        assert_eq!(u16::from_be_bytes([messages[1][4], messages[1][5]]), 0);
        assert!(messages.iter().all(|m| m.len() < MESSAGE_RECORDS + 512));
    }
}
