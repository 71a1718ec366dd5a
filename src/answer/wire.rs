//! Small pieces of the DNS wire format (RFC 1035 section 4) shared by the
//! snapshot builder, which encodes answers once, and the query path, which
//! only copies them.
//!
//! hickory-proto's encoder would do, but it compresses at most 120 names per
//! message and searches its pointers linearly; a 1000-instance SRV answer needs
//! every name compressed to fit in 64 KiB, so names are written here.

use std::sync::Arc;

use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// A name in uncompressed wire form, letter case kept: 16 bytes where a
/// `Name` takes 80, for the names a zone keeps between changes (one for
/// each name it serves, and the names in its records). Shared: an
/// instance's SRV target is in the records of several names. Encoding
/// copies the bytes as they are, with no conversion.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WireName(Arc<[u8]>);

impl WireName {
    /// The wire form of `name`.
    pub fn new(name: &Name) -> WireName {
        let len = name.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
        let mut wire = Vec::with_capacity(len);
        for label in name.iter() {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label);
        }
        wire.push(0);
        WireName(wire.into())
    }

    /// The labels, each after its length, and the root's 0.
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// The name again, letter case as given.
    pub fn to_name(&self) -> Name {
        Name::read(&mut BinDecoder::new(&self.0)).expect("a name's own wire form")
    }

    /// The wire form in lowercase: the key of the name in a zone's maps.
    /// Length bytes are under 64, so lowercasing leaves them alone.
    pub fn lower(&self) -> Vec<u8> {
        self.0.to_ascii_lowercase()
    }

    /// The same name with the same letter case; the same `Arc` is not
    /// looked into.
    pub fn same(&self, other: &WireName) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// Record type codes used by the server (RFC 1035, 3596, 2782, 6891).
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Domain name pointer.
    pub const PTR: u16 = 12;
    /// Text strings.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service locator.
    pub const SRV: u16 = 33;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// Transaction signature (RFC 8945).
    pub const TSIG: u16 = 250;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Full zone transfer.
    pub const AXFR: u16 = 252;
    /// Obsolete mailbox queries.
    pub const MAILB: u16 = 253;
    /// Obsolete mail agent queries.
    pub const MAILA: u16 = 254;
    /// Any type (RFC 8482).
    pub const ANY: u16 = 255;
}

/// Header flag bits (RFC 1035 section 4.1.1, RFC 4035 section 3.2) in the
/// 16-bit word after the message ID.
pub mod flag {
    /// A response.
    pub const QR: u16 = 0x8000;
    /// The opcode's four bits.
    pub const OPCODE_MASK: u16 = 0x7800;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Checking disabled.
    pub const CD: u16 = 0x0010;
    /// The response code's four bits.
    pub const RCODE_MASK: u16 = 0x000F;
}

/// Response codes (RFC 1035 section 4.1.1).
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The query could not be interpreted.
    pub const FORMERR: u8 = 1;
    /// The server failed.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented.
    pub const NOTIMP: u8 = 4;
    /// Refused by policy.
    pub const REFUSED: u8 = 5;
    /// Not authorized (RFC 8945: a TSIG that does not check out).
    pub const NOTAUTH: u8 = 9;
}

/// Sets and clears header flag bits of a message already written.
pub fn update_flags(message: &mut [u8], set: u16, clear: u16) {
    if let Some(word) = message.get_mut(2..4) {
        let flags = (u16::from_be_bytes([word[0], word[1]]) & !clear) | set;
        word.copy_from_slice(&flags.to_be_bytes());
    }
}

/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Size of the DNS message header.
pub const HEADER_LEN: usize = 12;

/// The uncompressed wire form of a name, lowercased: the key of every lookup.
pub fn lower_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    lower_wire_into(name, &mut out);
    out
}

/// [`lower_wire`] into `out`, replacing what it held.
pub fn lower_wire_into(name: &Name, out: &mut Vec<u8>) {
    out.clear();
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
}

/// Labels in an uncompressed wire-form name (the root counts none).
pub fn label_count(wire: &[u8]) -> usize {
    let (mut pos, mut count) = (0, 0);
    while let Some(&len) = wire.get(pos).filter(|&&l| l != 0) {
        pos += 1 + len as usize;
        count += 1;
    }
    count
}

/// The uncompressed wire form of a name, with its letter case kept.
pub fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Appends DNS messages with name compression, remembering every name suffix
/// it has written (letter case included, so case is never changed by a pointer).
pub struct MessageWriter {
    /// The message so far.
    pub buf: Vec<u8>,
    /// Hash of each name suffix written so far → its offset in `buf`. A hit
    /// is checked against the bytes at that offset before it is used, so
    /// nothing is allocated per name (building a large zone encodes
    /// millions of names).
    suffixes: foldhash::HashMap<u64, u16>,
    hasher: foldhash::fast::FixedState,
    scratch: Vec<u8>,
    /// `false` for [`MessageWriter::standalone`]: no name is compressed.
    compresses: bool,
}

impl MessageWriter {
    /// Starts a message whose question section holds `qname` (uncompressed wire
    /// form) at offset 12, as it will in every response built from this one.
    pub fn with_question(qname_wire: &[u8], qtype: u16) -> Self {
        let mut writer = MessageWriter {
            buf: Vec::with_capacity(128),
            suffixes: foldhash::HashMap::default(),
            hasher: foldhash::fast::FixedState::default(),
            scratch: Vec::new(),
            compresses: true,
        };
        writer.buf.resize(HEADER_LEN, 0);
        writer.name_wire(qname_wire, true);
        writer.u16(qtype);
        writer.u16(CLASS_IN);
        writer
    }

    /// Writes records one after the other with every name uncompressed, so
    /// that each stands alone (no header, no question).
    pub fn standalone() -> Self {
        MessageWriter {
            buf: Vec::new(),
            suffixes: foldhash::HashMap::default(),
            hasher: foldhash::fast::FixedState::default(),
            scratch: Vec::new(),
            compresses: false,
        }
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a name, compressed against every name already written.
    pub fn name(&mut self, name: &Name) {
        self.name_of(name, true);
    }

    /// Appends a name without compressing it (SRV targets, RFC 2782), though
    /// later names may still point into it.
    pub fn name_uncompressed(&mut self, name: &Name) {
        self.name_of(name, false);
    }

    fn name_of(&mut self, name: &Name, compress: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for label in name.iter() {
            scratch.push(label.len() as u8);
            scratch.extend_from_slice(label);
        }
        scratch.push(0);
        self.name_wire(&scratch, compress);
        self.scratch = scratch;
    }

    /// Appends a name kept in wire form, compressed against every name
    /// already written.
    pub fn wire_name(&mut self, name: &WireName) {
        self.name_wire(name.wire(), true);
    }

    /// Appends a name kept in wire form without compressing it (SRV
    /// targets, RFC 2782), though later names may still point into it.
    pub fn wire_name_uncompressed(&mut self, name: &WireName) {
        self.name_wire(name.wire(), false);
    }

    /// Writes a name; returns where a pointer to the whole name can point
    /// (what a later write of the same name would point at), if anywhere.
    fn name_wire(&mut self, wire: &[u8], compress: bool) -> Option<u16> {
        use std::hash::BuildHasher;
        if !self.compresses {
            self.buf.extend_from_slice(wire);
            return None;
        }
        let start = self.buf.len();
        let reachable = (start < 0x3FFF && wire != [0]).then_some(start as u16);
        let mut pos = 0;
        while wire[pos] != 0 {
            let suffix = &wire[pos..];
            let hash = self.hasher.hash_one(suffix);
            match self.suffixes.get(&hash) {
                Some(&offset) if compress && self.written_at(offset as usize, suffix) => {
                    self.u16(0xC000 | offset);
                    return if pos == 0 { Some(offset) } else { reachable };
                }
                // Pointers have 14 bits; later names just go uncompressed.
                _ if self.buf.len() < 0x3FFF => {
                    self.suffixes.insert(hash, self.buf.len() as u16);
                }
                _ => {}
            }
            let len = wire[pos] as usize;
            self.buf.extend_from_slice(&wire[pos..=pos + len]);
            pos += len + 1;
        }
        self.buf.push(0);
        reachable
    }

    /// Whether the name written at `offset` (following pointers) is exactly
    /// `suffix`, letter case included.
    fn written_at(&self, mut offset: usize, suffix: &[u8]) -> bool {
        let mut i = 0;
        // Bounded by the buffer: a hash collision may point anywhere.
        for _ in 0..self.buf.len() {
            let Some(&len) = self.buf.get(offset) else {
                return false;
            };
            if len & 0xC0 == 0xC0 {
                let Some(&low) = self.buf.get(offset + 1) else {
                    return false;
                };
                offset = (u16::from_be_bytes([len, low]) & 0x3FFF) as usize;
                continue;
            }
            let len = len as usize;
            if self.buf.get(offset..=offset + len) != suffix.get(i..=i + len) {
                return false;
            }
            if len == 0 {
                return true;
            }
            offset += len + 1;
            i += len + 1;
        }
        false
    }

    /// Appends a record header, runs `rdata` to write its data, and fills in
    /// the data length: a record whose owner is looked up, what
    /// [`MessageWriter::record_of`] is checked against.
    #[cfg(test)]
    pub fn record(
        &mut self,
        owner: &WireName,
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Self),
    ) {
        self.record_of(owner, &mut None, rtype, ttl, rdata);
    }

    /// Appends a record header, runs `rdata` to write its data, and fills in
    /// the data length. For one of several records of an owner, `owner_at`
    /// keeps where the first one's owner went, and the others point there
    /// without looking the name up again, as a lookup would.
    pub fn record_of(
        &mut self,
        owner: &WireName,
        owner_at: &mut Option<u16>,
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Self),
    ) {
        match *owner_at {
            Some(at) => self.u16(0xC000 | at),
            None => *owner_at = self.name_wire(owner.wire(), true),
        }
        self.u16(rtype);
        self.u16(CLASS_IN);
        self.u32(ttl);
        let len_at = self.buf.len();
        self.u16(0);
        rdata(self);
        let len = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compress_against_earlier_suffixes_with_their_case() {
        let qname = Name::from_ascii("_web._tcp.svc.example.").unwrap();
        let mut w = MessageWriter::with_question(&lower_wire(&qname), rtype::SRV);
        let start = w.buf.len();
        w.name(&Name::from_ascii("web-1.svc.example.").unwrap());
        // "web-1" then a pointer to "svc.example" inside the question (offset 12 + 10).
        assert_eq!(
            &w.buf[start..],
            &[5, b'w', b'e', b'b', b'-', b'1', 0xC0, 22]
        );
        let start = w.buf.len();
        w.name(&Name::from_ascii("WEB-1.svc.example.").unwrap());
        assert_eq!(&w.buf[start..start + 6], &[5, b'W', b'E', b'B', b'-', b'1']);
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn records_of_one_owner_point_where_a_lookup_would() {
        // The owner as the question spells it, in other case, and written
        // past where pointers reach.
        for (qname, owner, filler) in [
            ("_web._tcp.svc.example.", "_web._tcp.svc.example.", 0),
            ("_web._tcp.svc.example.", "_WEB._tcp.svc.example.", 0),
            ("svc.example.", "web-1.svc.example.", 0),
            ("svc.example.", "web-1.svc.example.", 0x4000),
        ] {
            let owner = WireName::new(&name(owner));
            let [mut looked_up, mut kept] = [(); 2].map(|_| {
                let mut w = MessageWriter::with_question(&lower_wire(&name(qname)), rtype::SRV);
                w.buf.resize(w.buf.len() + filler, 0);
                w
            });
            let mut owner_at = None;
            for i in 0..4u16 {
                let target = WireName::new(&name(&format!("t-{i}.svc.example.")));
                let rdata = |w: &mut MessageWriter| {
                    w.u16(i);
                    w.wire_name(&target);
                };
                looked_up.record(&owner, rtype::SRV, 30, rdata);
                kept.record_of(&owner, &mut owner_at, rtype::SRV, 30, rdata);
            }
            assert_eq!(looked_up.buf, kept.buf, "{qname} {owner:?} {filler}");
        }
    }

    /// Makes the writer's table map `suffix` (uncompressed wire form) to
    /// `offset`, as a hash collision with the name written there would.
    fn collide(w: &mut MessageWriter, suffix: &[u8], offset: u16) {
        use std::hash::BuildHasher;
        let hash = w.hasher.hash_one(suffix);
        w.suffixes.insert(hash, offset);
    }

    #[test]
    fn a_name_is_compressed_to_an_earlier_name_ending_in_a_pointer() {
        let qname = lower_wire(&name("_web._tcp.svc.example."));
        let mut w = MessageWriter::with_question(&qname, rtype::SRV);
        let first = w.buf.len();
        w.name(&name("web-1.svc.example."));
        let start = w.buf.len();
        w.name(&name("web-1.svc.example."));
        assert_eq!(&w.buf[start..], &[0xC0, first as u8]);
        // Uncompressed, it still serves later names.
        let start = w.buf.len();
        w.name_uncompressed(&name("db.svc.example."));
        assert_eq!(&w.buf[start..], &wire(&name("db.svc.example."))[..]);
        let again = w.buf.len();
        w.name(&name("db.svc.example."));
        assert_eq!(&w.buf[again..], &[0xC0, start as u8]);
    }

    #[test]
    fn a_hash_collision_is_never_turned_into_a_pointer() {
        let qname = lower_wire(&name("alpha.example."));
        let mut w = MessageWriter::with_question(&qname, rtype::A);
        // Another name, a longer one and a shorter one with the same first
        // labels.
        for (other, at) in [
            ("beta.example.", HEADER_LEN),
            ("alpha.example.org.", HEADER_LEN),
            ("alpha.", HEADER_LEN),
        ] {
            let other = name(other);
            collide(&mut w, &wire(&other), at as u16);
            let start = w.buf.len();
            w.name(&other);
            let written = &w.buf[start..];
            assert_ne!(written, &[0xC0, at as u8], "{other}");
            assert_eq!(written[0] & 0xC0, 0, "{other}: {written:?}");
        }
    }

    #[test]
    fn a_collision_with_a_pointer_loop_ends() {
        let qname = lower_wire(&name("svc.example."));
        let mut w = MessageWriter::with_question(&qname, rtype::A);
        let at = w.buf.len() as u16;
        w.u16(0xC000 | at);
        let other = name("web.svc.example.");
        collide(&mut w, &wire(&other), at);
        let start = w.buf.len();
        w.name(&other);
        // "web", then the question's "svc.example".
        assert_eq!(&w.buf[start..], &[3, b'w', b'e', b'b', 0xC0, 12]);
    }

    #[test]
    fn names_are_remembered_only_where_a_pointer_can_reach() {
        let qname = lower_wire(&name("example."));
        for (at, compressed) in [(0x3FFE, true), (0x4000, false)] {
            let mut w = MessageWriter::with_question(&qname, rtype::A);
            w.buf.resize(at, 0);
            w.name(&name("web.example."));
            let start = w.buf.len();
            w.name(&name("web.example."));
            let expected: &[u8] = if compressed {
                &[0xFF, 0xFE]
            } else {
                &[3, b'w', b'e', b'b', 0xC0, 12]
            };
            assert_eq!(&w.buf[start..], expected, "at {at:#x}");
        }
    }
}
