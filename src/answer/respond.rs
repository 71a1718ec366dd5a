//! Answering one query from a snapshot: (snapshot, query bytes) → response
//! bytes. Nothing here knows about sockets or files, so it is tested without a
//! network.
//!
//! This is the hot path. It parses only what it needs (header, question, OPT),
//! lowercases the name into a stack buffer, finds the zone and the name with
//! hash lookups, and copies a pre-encoded answer behind the client's own
//! question, so letter case is echoed and nothing is allocated once `out` has
//! grown to its working size.

use crate::answer::snapshot::{Answer, Snapshot, ZoneSnapshot};
use crate::answer::wire::flag::{AA, CD, OPCODE_MASK, QR, RD, TC};
use crate::answer::wire::{CLASS_IN, HEADER_LEN, rcode, rtype};

/// The largest UDP payload this server sends, whatever the client offers: the
/// DNS Flag Day 2020 value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// How the query arrived; decides the size limit of the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 bytes, or the EDNS payload size up to [`MAX_UDP_PAYLOAD`].
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

/// What to do with `out` after [`respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send `out`.
    Reply,
    /// The name is outside every zone; `out` holds a REFUSED response to send
    /// unless the query is forwarded elsewhere.
    NotAuthoritative,
    /// Send nothing: not a query (too short to answer, or a response).
    Drop,
    /// A zone transfer (AXFR or IXFR) of a zone served here; `out` holds a
    /// REFUSED response for a caller that offers no transfers.
    Transfer,
    /// The query is signed (TSIG, RFC 8945): its signature must be checked
    /// and the answer signed, which is the caller's rare path. `out` holds
    /// a REFUSED response for a caller that does not check signatures.
    Signed,
}

/// The EDNS DO bit in the OPT record's TTL field (RFC 3225).
const DO_BIT: u16 = 0x8000;
/// Encoded size of the OPT record we send.
const OPT_LEN: usize = 11;
/// RFC 6891 6.1.3: BADVERS is extended RCODE 16, whose high 8 bits (1) go
/// in the OPT record and low 4 bits (0) in the header.
const BADVERS_HIGH: u8 = 1;

/// What the query's OPT record said.
#[derive(Clone, Copy)]
struct Edns {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
}

/// A parsed question: the name lowercased into a stack buffer.
struct Question {
    lower: [u8; 255],
    len: usize,
    /// Offsets of each label in the name, for finding the zone by suffix.
    labels: [u8; 128],
    label_count: usize,
    qtype: u16,
    qclass: u16,
    /// Where the question section ends in the query.
    end: usize,
}

impl Question {
    fn name(&self) -> &[u8] {
        &self.lower[..self.len]
    }
}

/// Writes the response to `query` into `out` and says what to do with it.
pub fn respond(
    snapshot: &Snapshot,
    query: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    if query.len() < HEADER_LEN {
        return Outcome::Drop;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & QR != 0 {
        // Never answer a response: that is how reflection loops start.
        return Outcome::Drop;
    }
    let count = |i: usize| u16::from_be_bytes([query[4 + 2 * i], query[5 + 2 * i]]);
    // An unknown opcode is NOTIMP even when its sections are not shaped like a
    // query's (a STATUS request with no question, say).
    let malformed = if flags & OPCODE_MASK != 0 {
        rcode::NOTIMP
    } else {
        rcode::FORMERR
    };
    let counts = [count(1), count(2), count(3)];
    if count(0) != 1 {
        let edns = edns_past_questions(query, count(0), counts);
        header_only(query, flags, malformed, edns, out);
        return Outcome::Reply;
    }
    let Some(question) = parse_question(query) else {
        let edns = edns_past_questions(query, 1, counts);
        header_only(query, flags, malformed, edns, out);
        return Outcome::Reply;
    };
    let Ok((edns, signed)) = parse_edns(query, question.end, counts) else {
        header_only(query, flags, malformed, None, out);
        return Outcome::Reply;
    };
    let response = Response {
        query,
        flags,
        question: &question,
        edns,
        transport,
        limit: match (transport, edns) {
            (Transport::Tcp, _) => u16::MAX as usize,
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some(e)) => e.payload.clamp(512, MAX_UDP_PAYLOAD) as usize,
        },
    };

    if let Some(e) = edns
        && e.version > 0
    {
        response.write(out, 0, rcode::NOERROR, Body::Empty, BADVERS_HIGH);
        return Outcome::Reply;
    }
    if signed {
        response.write(out, 0, rcode::REFUSED, Body::Empty, 0);
        return Outcome::Signed;
    }
    if flags & OPCODE_MASK != 0 {
        response.write(out, 0, rcode::NOTIMP, Body::Empty, 0);
        return Outcome::Reply;
    }
    if question.qclass != CLASS_IN {
        response.write(out, 0, rcode::REFUSED, Body::Empty, 0);
        return Outcome::Reply;
    }
    match question.qtype {
        rtype::OPT => {
            response.write(out, 0, rcode::FORMERR, Body::Empty, 0);
            return Outcome::Reply;
        }
        rtype::MAILA | rtype::MAILB => {
            response.write(out, 0, rcode::NOTIMP, Body::Empty, 0);
            return Outcome::Reply;
        }
        _ => {}
    }

    let Some(zone) = find_zone(snapshot, &question) else {
        response.write(out, 0, rcode::REFUSED, Body::Empty, 0);
        return Outcome::NotAuthoritative;
    };
    if matches!(question.qtype, rtype::AXFR | rtype::IXFR) {
        // Refused unless the caller serves transfers (see `crate::transfer`).
        response.write(out, 0, rcode::REFUSED, Body::Empty, 0);
        return Outcome::Transfer;
    }
    match zone.node(question.name()) {
        None => response.write(out, AA, rcode::NXDOMAIN, Body::Negative(zone), 0),
        Some(node) => {
            let answer = match question.qtype {
                rtype::ANY => node.any(),
                qtype => node.answer(qtype),
            };
            match answer {
                Some(answer) => response.write(out, AA, rcode::NOERROR, Body::Answer(answer), 0),
                None => response.write(out, AA, rcode::NOERROR, Body::Negative(zone), 0),
            }
        }
    }
    Outcome::Reply
}

/// The longest zone apex that is a suffix of the question name.
///
/// Only suffixes with at most as many labels as the longest apex are tried,
/// so a name of 127 one-letter labels costs a few lookups, not 128.
fn find_zone<'s>(snapshot: &'s Snapshot, question: &Question) -> Option<&'s ZoneSnapshot> {
    let skip = question
        .label_count
        .saturating_sub(snapshot.max_apex_labels());
    question.labels[skip..question.label_count]
        .iter()
        .chain(std::iter::once(&(question.len as u8 - 1)))
        .find_map(|&start| snapshot.zone(&question.lower[start as usize..question.len]))
}

/// Parses the question section; `None` if it is malformed.
fn parse_question(query: &[u8]) -> Option<Question> {
    let mut q = Question {
        lower: [0; 255],
        len: 0,
        labels: [0; 128],
        label_count: 0,
        qtype: 0,
        qclass: 0,
        end: 0,
    };
    let mut pos = HEADER_LEN;
    loop {
        let len = *query.get(pos)? as usize;
        if len == 0 {
            break;
        }
        // A compression pointer (or a reserved label type) in the question
        // cannot be copied back verbatim, and no real client sends one.
        if len > 63 {
            return None;
        }
        let label = query.get(pos + 1..pos + 1 + len)?;
        if q.len + 1 + len + 1 > 255 {
            return None;
        }
        q.labels[q.label_count] = q.len as u8;
        q.label_count += 1;
        q.lower[q.len] = len as u8;
        for (dst, src) in q.lower[q.len + 1..q.len + 1 + len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        q.len += 1 + len;
        pos += 1 + len;
    }
    q.lower[q.len] = 0;
    q.len += 1;
    let fixed = query.get(pos + 1..pos + 5)?;
    q.qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    q.qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    q.end = pos + 5;
    Some(q)
}

/// Walks the answer, authority and additional sections after the question and
/// returns the OPT record's contents, if any, and whether the message ends
/// with a TSIG record. More than one OPT record, an OPT record with a
/// non-root owner, or bytes that do not parse are errors.
fn parse_edns(query: &[u8], mut pos: usize, counts: [u16; 3]) -> Result<(Option<Edns>, bool), ()> {
    let mut edns = None;
    let mut signed = false;
    for (section, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let owner_start = pos;
            pos = skip_name(query, pos).ok_or(())?;
            let fixed = query.get(pos..pos + 10).ok_or(())?;
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
            signed = section == 2 && rtype == rtype::TSIG;
            if section == 2 && rtype == rtype::OPT {
                if edns.is_some() || query[owner_start] != 0 {
                    return Err(());
                }
                edns = Some(Edns {
                    payload: u16::from_be_bytes([fixed[2], fixed[3]]),
                    version: fixed[5],
                    dnssec_ok: u16::from_be_bytes([fixed[6], fixed[7]]) & DO_BIT != 0,
                });
            }
            pos += 10 + rdlen;
            if pos > query.len() {
                return Err(());
            }
        }
    }
    Ok((edns, signed))
}

/// The position after a (possibly compressed) name.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + len as usize,
            0xC0..=0xFF => return msg.get(pos + 1).map(|_| pos + 2),
            _ => return None,
        }
    }
}

/// The query's flags a response repeats: the opcode and RD, and CD only for
/// standard queries (RFC 4035 3.1.6); like Knot DNS, a reply to an unknown
/// opcode clears it.
fn echoed_flags(flags: u16) -> u16 {
    let cd = if flags & OPCODE_MASK == 0 { CD } else { 0 };
    flags & (OPCODE_MASK | RD | cd)
}

/// The OPT record of a query whose question section cannot be used, found
/// by skipping `qdcount` questions; `None` if there is none or the rest of
/// the message does not parse.
fn edns_past_questions(query: &[u8], qdcount: u16, counts: [u16; 3]) -> Option<Edns> {
    let mut pos = HEADER_LEN;
    for _ in 0..qdcount {
        pos = skip_name(query, pos)? + 4;
    }
    parse_edns(query, pos, counts)
        .ok()
        .and_then(|(edns, _)| edns)
}

/// A FORMERR (or other) response with no question: used when the question
/// itself could not be read. RFC 6891 6.1.1: a query's OPT record still gets
/// one back, and an unknown EDNS version is BADVERS whatever else is wrong
/// (as the question-bearing path checks it first).
fn header_only(query: &[u8], flags: u16, rcode: u8, edns: Option<Edns>, out: &mut Vec<u8>) {
    let (rcode, ext_rcode) = match edns {
        Some(e) if e.version > 0 => (rcode::NOERROR, BADVERS_HIGH),
        _ => (rcode, 0),
    };
    out.extend_from_slice(&query[..2]);
    let flags = QR | echoed_flags(flags) | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&(edns.is_some() as u16).to_be_bytes());
    if let Some(edns) = edns {
        write_opt(out, ext_rcode, edns.dnssec_ok);
    }
}

/// Appends our OPT record: the payload size we accept, `ext_rcode` (the high
/// bits of the response code) and the client's DO bit echoed (RFC 3225 3).
fn write_opt(out: &mut Vec<u8>, ext_rcode: u8, dnssec_ok: bool) {
    out.push(0); // root owner
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.push(ext_rcode);
    out.push(0); // version
    let do_bit = if dnssec_ok { DO_BIT } else { 0 };
    out.extend_from_slice(&do_bit.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

thread_local! {
    /// Per-thread xorshift state for choosing answer orders: no lock, no
    /// shared cache line. Seeded from the thread's own stack address so that
    /// threads do not walk in step.
    static RANDOM: std::cell::Cell<u32> = {
        let local = 0u8;
        let seed = (&local as *const u8 as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        std::cell::Cell::new((seed >> 32) as u32 | 1)
    };
}

/// A pseudo-random number (xorshift32).
fn next_random() -> u32 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        state.set(x);
        x
    })
}

enum Body<'a> {
    Empty,
    Answer(&'a Answer),
    /// NXDOMAIN or NODATA: the zone's SOA in the authority section.
    Negative(&'a ZoneSnapshot),
}

struct Response<'q> {
    query: &'q [u8],
    flags: u16,
    question: &'q Question,
    edns: Option<Edns>,
    transport: Transport,
    limit: usize,
}

impl Response<'_> {
    fn write(&self, out: &mut Vec<u8>, aa: u16, rcode: u8, body: Body, ext_rcode: u8) {
        let question = &self.query[HEADER_LEN..self.question.end];
        let opt_len = if self.edns.is_some() { OPT_LEN } else { 0 };
        let room = self
            .limit
            .saturating_sub(HEADER_LEN + question.len() + opt_len);

        // A service's addresses: as many as allowed and fit, in the
        // weighted order drawn for this query.
        let mut shuffled = None;
        // Choose what of the body goes out.
        let (bytes, counts, truncated): (&[u8], [u16; 3], bool) = match body {
            Body::Empty => (&[], [0; 3], false),
            Body::Answer(answer) if answer.shuffled().is_some() => {
                let s = answer.shuffled().expect("checked");
                let fit = room / s.record_len();
                let (n, truncated) = match (fit >= s.count(), self.transport) {
                    (true, _) => (s.count(), false),
                    (false, Transport::Tcp) => (fit, true),
                    (false, Transport::Udp) => (0, true),
                };
                shuffled = Some((s, n, answer.body()));
                (&[], [n as u16, 0, 0], truncated)
            }
            Body::Answer(answer) => {
                let full = answer.full();
                if full.len as usize <= room {
                    (answer.body(), full.counts, false)
                } else {
                    let cut = answer.cut(room);
                    let complete = cut.counts[..2] == full.counts[..2];
                    // RFC 2181 9: dropping additional records needs no TC; an
                    // incomplete answer over UDP is better sent empty with TC,
                    // so the client retries over TCP at once.
                    match (complete, self.transport == Transport::Tcp) {
                        (true, _) | (false, true) => {
                            (&answer.body()[..cut.len as usize], cut.counts, !complete)
                        }
                        (false, false) => (&[], [0; 3], true),
                    }
                }
            }
            // Only absurdly long names make a negative answer too big; then
            // it goes empty with TC, like any other answer that does not fit.
            Body::Negative(zone) if 2 + zone.negative_soa().len() > room => (&[], [0; 3], true),
            Body::Negative(_) => (&[], [0, 1, 0], false),
        };

        let mut flags = QR | echoed_flags(self.flags) | aa | rcode as u16;
        if truncated {
            flags |= TC;
        }
        out.extend_from_slice(&self.query[..2]);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&counts[0].to_be_bytes());
        out.extend_from_slice(&counts[1].to_be_bytes());
        out.extend_from_slice(&(counts[2] + self.edns.is_some() as u16).to_be_bytes());
        out.extend_from_slice(question);
        match body {
            Body::Negative(zone) if !truncated => {
                // The SOA's owner is the apex: a pointer to where the apex
                // starts inside the question name.
                let apex_at = HEADER_LEN + self.question.len - zone.apex_len();
                out.extend_from_slice(&(0xC000 | apex_at as u16).to_be_bytes());
                out.extend_from_slice(zone.negative_soa());
            }
            _ => out.extend_from_slice(bytes),
        }
        if let Some((s, n, records)) = shuffled
            && n > 0
        {
            let len = s.record_len();
            s.order(records.len() / len, n, next_random, |i| {
                out.extend_from_slice(&records[i * len..(i + 1) * len]);
            });
        }
        if let Some(edns) = self.edns {
            write_opt(out, ext_rcode, edns.dnssec_ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::answer::build::build_zone;
    use crate::model::{Endpoint, Host, Instance, Protocol, Service, Soa, Zone};

    /// A zone with no names but its apex, whose SOA has `mname` as both the
    /// primary server and the mailbox.
    fn empty_zone(apex: &str, mname: &str) -> Zone {
        let apex = Name::from_ascii(apex).unwrap();
        let mname = Name::from_ascii(mname).unwrap();
        Zone {
            apex: apex.clone(),
            ttl: 30,
            nameservers: vec![],
            soa: Soa {
                mname: mname.clone(),
                rname: mname,
                refresh: 1,
                retry: 1,
                expire: 1,
                minimum: 1,
            },
            hosts: vec![],
            services: vec![],
        }
    }

    fn snapshot(apex: &str, mname: &str) -> Snapshot {
        Snapshot::new([Arc::new(build_zone(&empty_zone(apex, mname), 1, None))])
    }

    /// A zone at `svc.example.` with a host of 40 addresses and a service
    /// `web` of 40 instances, each with one address.
    fn example() -> Snapshot {
        let apex = Name::from_ascii("svc.example.").unwrap();
        let mname = Name::from_ascii("ns.svc.example.").unwrap();
        let ip = |i: u8| std::net::IpAddr::from([10, 0, 0, i]);
        let zone = Zone {
            apex: apex.clone(),
            ttl: 30,
            nameservers: vec![],
            soa: Soa {
                mname: mname.clone(),
                rname: mname,
                refresh: 1,
                retry: 1,
                expire: 1,
                minimum: 1,
            },
            hosts: vec![Host {
                name: Name::from_ascii("many.svc.example.").unwrap(),
                addresses: (1..=40).map(ip).collect(),
            }],
            services: vec![Service {
                name: "web".into(),
                protocol: Protocol::Tcp,
                tags: vec![],
                check: None,
                instances: (1..=40)
                    .map(|i| Instance {
                        name: format!("web-{i}"),
                        endpoint: Endpoint::Addresses(vec![ip(100 + i)]),
                        port: 80,
                        weight: 1,
                        priority: 0,
                        check: None,
                        tags: vec![],
                        metadata: vec![],
                    })
                    .map(Arc::new)
                    .collect(),
                max_answers: None,
            }]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
        };
        Snapshot::new([Arc::new(build_zone(&zone, 1, None))])
    }

    /// A name in uncompressed wire form, letter case kept.
    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// A message: id 0x1234, `flags`, these section counts, then `parts`.
    fn message(flags: u16, counts: [u16; 4], parts: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0x12, 0x34];
        out.extend_from_slice(&flags.to_be_bytes());
        for c in counts {
            out.extend_from_slice(&c.to_be_bytes());
        }
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }

    /// A question entry of class IN.
    fn question(name: &str, qtype: u16) -> Vec<u8> {
        let mut out = wire_name(name);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    /// An OPT record with no options.
    fn opt(payload: u16, version: u8, flags: u16) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&rtype::OPT.to_be_bytes());
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0, version]);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// A record of type A with this owner (wire form) and address 192.0.2.1.
    fn a_record(owner: &[u8]) -> Vec<u8> {
        let mut out = owner.to_vec();
        out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
        out
    }

    fn answer(snapshot: &Snapshot, query: &[u8], transport: Transport) -> Vec<u8> {
        let mut out = Vec::new();
        let outcome = respond(snapshot, query, transport, &mut out);
        assert_ne!(outcome, Outcome::Drop);
        out
    }

    fn flags_of(reply: &[u8]) -> u16 {
        u16::from_be_bytes([reply[2], reply[3]])
    }

    fn count_of(reply: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]])
    }

    /// The OPT record a reply ends with: (payload, extended rcode, version,
    /// flags), checking it is well formed and has no options.
    fn trailing_opt(reply: &[u8]) -> (u16, u8, u8, u16) {
        let opt = &reply[reply.len() - OPT_LEN..];
        assert_eq!(opt[0], 0, "root owner");
        assert_eq!(u16::from_be_bytes([opt[1], opt[2]]), rtype::OPT);
        assert_eq!(&opt[9..], &[0, 0], "no options");
        (
            u16::from_be_bytes([opt[3], opt[4]]),
            opt[5],
            opt[6],
            u16::from_be_bytes([opt[7], opt[8]]),
        )
    }

    fn ask(snapshot: &Snapshot, name: &str, transport: Transport) -> (Outcome, Vec<u8>) {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut out = Vec::new();
        let outcome = respond(snapshot, &query.to_vec().unwrap(), transport, &mut out);
        (outcome, out)
    }

    #[test]
    fn a_negative_answer_too_big_for_512_bytes_is_truncated() {
        let long = |c: char| {
            std::iter::repeat_n(c.to_string().repeat(60), 4)
                .collect::<Vec<_>>()
                .join(".")
        };
        let apex = format!("{}.", long('a'));
        let snapshot = snapshot(&apex, &format!("{}.", long('m')));
        let name = format!("x.{apex}");

        let (outcome, udp) = ask(&snapshot, &name, Transport::Udp);
        assert_eq!(outcome, Outcome::Reply);
        assert!(udp.len() <= 512, "{} bytes", udp.len());
        let reply = Message::from_vec(&udp).unwrap();
        assert!(reply.metadata.truncation);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

        let (_, tcp) = ask(&snapshot, &name, Transport::Tcp);
        let reply = Message::from_vec(&tcp).unwrap();
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.authorities.len(), 1);
    }

    #[test]
    fn names_outside_every_zone_are_left_to_the_caller() {
        let snapshot = snapshot("svc.example.", "ns.svc.example.");
        let (outcome, out) = ask(&snapshot, "example.com.", Transport::Udp);
        assert_eq!(outcome, Outcome::NotAuthoritative);
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn too_short_or_response_packets_are_dropped() {
        let snapshot = snapshot("svc.example.", "ns.svc.example.");
        let mut out = Vec::new();
        assert_eq!(
            respond(&snapshot, &[0; 11], Transport::Udp, &mut out),
            Outcome::Drop
        );
        let mut response = [0u8; 12];
        response[2] = 0x80;
        assert_eq!(
            respond(&snapshot, &response, Transport::Udp, &mut out),
            Outcome::Drop
        );
    }

    #[test]
    fn replies_without_a_question_keep_the_clients_opt_record() {
        let snapshot = example();
        let q = question("many.svc.example.", rtype::A);
        let pointer_question = [0xC0, 12, 0, 1, 0, 1];
        let cases: [(&str, Vec<u8>, u8); 5] = [
            (
                "no question",
                message(RD, [0, 0, 0, 1], &[&opt(4096, 0, DO_BIT)]),
                rcode::FORMERR,
            ),
            (
                "two questions",
                message(RD, [2, 0, 0, 1], &[&q, &q, &opt(4096, 0, DO_BIT)]),
                rcode::FORMERR,
            ),
            (
                "a compressed question name",
                message(
                    RD,
                    [1, 0, 0, 1],
                    &[&pointer_question, &opt(4096, 0, DO_BIT)],
                ),
                rcode::FORMERR,
            ),
            (
                "STATUS without a question",
                message(2 << 11, [0, 0, 0, 1], &[&opt(4096, 0, DO_BIT)]),
                rcode::NOTIMP,
            ),
            (
                "an answer record before the OPT",
                message(
                    RD,
                    [0, 1, 0, 1],
                    &[
                        &a_record(&wire_name("xy.svc.example.")),
                        &opt(512, 0, DO_BIT),
                    ],
                ),
                rcode::FORMERR,
            ),
        ];
        for (what, query, rcode) in cases {
            let reply = answer(&snapshot, &query, Transport::Udp);
            assert_eq!(reply.len(), HEADER_LEN + OPT_LEN, "{what}");
            assert_eq!(flags_of(&reply) & 0xF, rcode as u16, "{what}");
            assert_eq!(
                [0, 1, 2, 3].map(|i| count_of(&reply, i)),
                [0, 0, 0, 1],
                "{what}"
            );
            assert_eq!(
                trailing_opt(&reply),
                (MAX_UDP_PAYLOAD, 0, 0, DO_BIT),
                "{what}"
            );
        }
        // DO clear is echoed clear.
        let query = message(RD, [0, 0, 0, 1], &[&opt(1232, 0, 0)]);
        let reply = answer(&snapshot, &query, Transport::Tcp);
        assert_eq!(trailing_opt(&reply), (MAX_UDP_PAYLOAD, 0, 0, 0));
    }

    #[test]
    fn replies_without_a_question_have_no_opt_unless_the_query_has_a_sound_one() {
        let snapshot = example();
        let two_opts = [opt(1232, 0, 0), opt(1232, 0, 0)].concat();
        let mut overrun = opt(1232, 0, 0);
        overrun[10] = 1; // rdata runs past the end
        for (what, query) in [
            ("no OPT", message(RD, [0, 0, 0, 0], &[])),
            ("two OPTs", message(RD, [0, 0, 0, 2], &[&two_opts])),
            ("OPT overrun", message(RD, [0, 0, 0, 1], &[&overrun])),
            (
                "label type 0x40",
                message(
                    RD,
                    [1, 0, 0, 1],
                    &[&[0x40, 0, 0, 1, 0, 1], &opt(1232, 0, 0)],
                ),
            ),
        ] {
            let reply = answer(&snapshot, &query, Transport::Udp);
            assert_eq!(reply.len(), HEADER_LEN, "{what}");
            assert_eq!(flags_of(&reply) & 0xF, rcode::FORMERR as u16, "{what}");
            assert_eq!(count_of(&reply, 3), 0, "{what}");
        }
    }

    #[test]
    fn an_unknown_edns_version_without_a_question_is_badvers() {
        let snapshot = example();
        for (what, query) in [
            (
                "no question",
                message(RD, [0, 0, 0, 1], &[&opt(1232, 1, 0)]),
            ),
            (
                "STATUS",
                message(2 << 11, [0, 0, 0, 1], &[&opt(1232, 3, DO_BIT)]),
            ),
        ] {
            let reply = answer(&snapshot, &query, Transport::Udp);
            assert_eq!(reply.len(), HEADER_LEN + OPT_LEN, "{what}");
            assert_eq!(
                flags_of(&reply) & 0xF,
                0,
                "{what}: low bits of BADVERS (16)"
            );
            assert_eq!(count_of(&reply, 3), 1, "{what}");
            let (payload, ext, version, _) = trailing_opt(&reply);
            assert_eq!((payload, ext, version), (MAX_UDP_PAYLOAD, 1, 0), "{what}");
        }
    }

    /// Every header flag a query can set besides QR and the opcode: AA, TC,
    /// RD, RA, Z, AD and CD.
    const ALL_FLAGS: u16 = 0x07F0;

    #[test]
    fn error_replies_echo_opcode_and_rd_and_cd_only_for_queries() {
        let snapshot = example();
        let q = question("many.svc.example.", rtype::A);
        let status = 2 << 11;
        let notify = 4 << 11;
        for (what, query, flags) in [
            (
                "FORMERR",
                message(ALL_FLAGS, [0, 0, 0, 0], &[]),
                QR | RD | CD | rcode::FORMERR as u16,
            ),
            (
                "FORMERR, RD and CD clear",
                message(ALL_FLAGS & !(RD | CD), [0, 0, 0, 0], &[]),
                QR | rcode::FORMERR as u16,
            ),
            (
                "STATUS without a question",
                message(status | ALL_FLAGS, [0, 0, 0, 0], &[]),
                QR | status | RD | rcode::NOTIMP as u16,
            ),
            (
                "NOTIFY with a question",
                message(notify | ALL_FLAGS, [1, 0, 0, 0], &[&q]),
                QR | notify | RD | rcode::NOTIMP as u16,
            ),
            (
                "MAILB",
                message(
                    ALL_FLAGS,
                    [1, 0, 0, 0],
                    &[&question("many.svc.example.", rtype::MAILB)],
                ),
                QR | RD | CD | rcode::NOTIMP as u16,
            ),
            (
                "a query",
                message(ALL_FLAGS, [1, 0, 0, 0], &[&q]),
                QR | AA | RD | CD,
            ),
        ] {
            let reply = answer(&snapshot, &query, Transport::Tcp);
            assert_eq!(flags_of(&reply), flags, "{what}: {:#06x}", flags_of(&reply));
        }
    }

    #[test]
    fn the_question_name_may_be_255_bytes_and_no_longer() {
        let snapshot = example();
        // 3 labels of 63 bytes, one of 49, then svc.example: 192 + 50 + 13.
        let name = |last: usize| {
            let long = "a".repeat(63);
            format!("{long}.{long}.{long}.{}.svc.example.", "b".repeat(last))
        };
        let longest = name(49);
        assert_eq!(wire_name(&longest).len(), 255);
        let query = message(0, [1, 0, 0, 0], &[&question(&longest, rtype::A)]);
        let reply = answer(&snapshot, &query, Transport::Tcp);
        assert_eq!(flags_of(&reply) & 0xF, rcode::NXDOMAIN as u16);
        assert_eq!(&reply[HEADER_LEN..query.len()], &query[HEADER_LEN..]);

        let query = message(0, [1, 0, 0, 0], &[&question(&name(50), rtype::A)]);
        let reply = answer(&snapshot, &query, Transport::Tcp);
        assert_eq!(flags_of(&reply) & 0xF, rcode::FORMERR as u16);
        assert_eq!(reply.len(), HEADER_LEN);
    }

    #[test]
    fn records_before_the_opt_record_are_skipped() {
        let snapshot = example();
        let q = question("many.svc.example.", rtype::A);
        // Owners uncompressed with labels of several lengths, and a pointer.
        let answer_rr = a_record(&wire_name("yz.x.svc.example."));
        let authority_rr = a_record(&[0xC0, 12]);
        let additional_rr = a_record(&wire_name("abc.d."));
        let query = message(
            RD,
            [1, 1, 1, 2],
            &[
                &q,
                &answer_rr,
                &authority_rr,
                &additional_rr,
                &opt(1232, 0, DO_BIT),
            ],
        );
        let reply = answer(&snapshot, &query, Transport::Udp);
        assert_eq!(flags_of(&reply) & 0xF, rcode::NOERROR as u16);
        assert_eq!(count_of(&reply, 1), 40);
        assert_eq!(count_of(&reply, 3), 1);
        assert_eq!(trailing_opt(&reply), (MAX_UDP_PAYLOAD, 0, 0, DO_BIT));

        // Without an OPT record: an answer with none.
        let query = message(RD, [1, 1, 0, 1], &[&q, &answer_rr, &authority_rr]);
        let reply = answer(&snapshot, &query, Transport::Tcp);
        assert_eq!(flags_of(&reply) & 0xF, rcode::NOERROR as u16);
        assert_eq!(count_of(&reply, 3), 0);
        assert_eq!(reply.len(), HEADER_LEN + q.len() + 40 * 16);
    }

    #[test]
    fn a_misplaced_or_repeated_opt_record_is_a_format_error() {
        let snapshot = example();
        let q = question("many.svc.example.", rtype::A);
        let mut named_opt = wire_name("xy.");
        named_opt.extend_from_slice(&opt(1232, 0, 0)[1..]);
        let two = [opt(1232, 0, 0), opt(1232, 0, 0)].concat();
        for (what, query) in [
            (
                "owner not the root",
                message(RD, [1, 0, 0, 1], &[&q, &named_opt]),
            ),
            ("two OPT records", message(RD, [1, 0, 0, 2], &[&q, &two])),
            (
                "cut short",
                message(RD, [1, 0, 0, 1], &[&q, &opt(1232, 0, 0)[..10]]),
            ),
        ] {
            let reply = answer(&snapshot, &query, Transport::Udp);
            assert_eq!(flags_of(&reply) & 0xF, rcode::FORMERR as u16, "{what}");
            assert_eq!(reply.len(), HEADER_LEN, "{what}");
        }
        // An OPT record outside the additional section is not EDNS.
        let query = message(RD, [1, 1, 0, 0], &[&q, &opt(1232, 0, 0)]);
        let reply = answer(&snapshot, &query, Transport::Udp);
        assert_eq!(flags_of(&reply) & 0xF, rcode::NOERROR as u16);
        assert_eq!(count_of(&reply, 3), 0);
    }

    #[test]
    fn meta_query_types_get_formerr_or_notimp() {
        let snapshot = example();
        for (qtype, rcode) in [
            (rtype::OPT, rcode::FORMERR),
            (rtype::MAILA, rcode::NOTIMP),
            (rtype::MAILB, rcode::NOTIMP),
        ] {
            let query = message(0, [1, 0, 0, 0], &[&question("many.svc.example.", qtype)]);
            let reply = answer(&snapshot, &query, Transport::Udp);
            assert_eq!(flags_of(&reply), QR | rcode as u16, "type {qtype}");
            assert_eq!(&reply[HEADER_LEN..], &query[HEADER_LEN..], "type {qtype}");
            assert_eq!(count_of(&reply, 0), 1);
        }
    }

    /// Asks `name` over TCP to learn the full reply's size, then over UDP
    /// with exactly that EDNS payload size (it fits) and one byte less.
    fn fits_exactly(snapshot: &Snapshot, name: &str, qtype: u16) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let ask = |payload: u16, transport| {
            let query = message(
                0,
                [1, 0, 0, 1],
                &[&question(name, qtype), &opt(payload, 0, 0)],
            );
            answer(snapshot, &query, transport)
        };
        let full = ask(MAX_UDP_PAYLOAD, Transport::Tcp);
        let size = full.len() as u16;
        assert!((513..MAX_UDP_PAYLOAD).contains(&size), "{size}");
        (
            full,
            ask(size, Transport::Udp),
            ask(size - 1, Transport::Udp),
        )
    }

    #[test]
    fn an_answer_exactly_as_big_as_the_udp_payload_size_is_not_truncated() {
        let snapshot = example();
        // A service's addresses (sent in a shuffled order) and a host's.
        for name in ["web.svc.example.", "many.svc.example."] {
            let (full, fits, over) = fits_exactly(&snapshot, name, rtype::A);
            assert_eq!(flags_of(&fits) & TC, 0, "{name}");
            assert_eq!(fits.len(), full.len(), "{name}");
            assert_eq!(count_of(&fits, 1), 40, "{name}");
            assert_ne!(flags_of(&over) & TC, 0, "{name}");
            assert_eq!(count_of(&over, 1), 0, "{name}");
            assert_eq!(count_of(&over, 3), 1, "{name}: the OPT stays");
        }
    }

    #[test]
    fn a_negative_answer_exactly_as_big_as_the_udp_payload_size_is_not_truncated() {
        let long = |c: &str| [c.repeat(60), c.repeat(60), c.repeat(60)].join(".");
        let mut zone = empty_zone("svc.example.", &format!("{}.example.", long("m")));
        zone.soa.rname = Name::from_ascii(format!("{}.example.", long("r"))).unwrap();
        let snapshot = Snapshot::new([Arc::new(build_zone(&zone, 1, None))]);
        let name = format!("{}.svc.example.", "x".repeat(60));
        let (full, fits, over) = fits_exactly(&snapshot, &name, rtype::A);
        assert_eq!(flags_of(&fits), QR | AA | rcode::NXDOMAIN as u16);
        assert_eq!(fits, full);
        assert_eq!(flags_of(&over), QR | AA | TC | rcode::NXDOMAIN as u16);
        assert_eq!(count_of(&over, 2), 0);
    }

    #[test]
    fn random_numbers_follow_xorshift32() {
        RANDOM.with(|state| state.set(1));
        let got: Vec<u32> = (0..4).map(|_| next_random()).collect();
        assert_eq!(got, [270369, 67634689, 2647435461, 307599695]);
    }

    #[test]
    fn random_numbers_differ_and_spread_over_every_bit() {
        let values: Vec<u32> = (0..4096).map(|_| next_random()).collect();
        let distinct: std::collections::BTreeSet<_> = values.iter().collect();
        assert_eq!(distinct.len(), values.len());
        for bit in 0..32 {
            let set = values.iter().filter(|&&v| v >> bit & 1 == 1).count();
            assert!((1648..2448).contains(&set), "bit {bit} set {set} times");
        }
    }

    #[test]
    fn threads_start_from_different_random_states() {
        // Both threads live at once, so their stacks differ.
        let barrier = std::sync::Barrier::new(2);
        let [a, b] = std::thread::scope(|scope| {
            [(); 2]
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        (next_random(), next_random())
                    })
                })
                .map(|handle| handle.join().unwrap())
        });
        assert_ne!(a, b);
        assert_ne!(a.0, a.1);
    }
}
