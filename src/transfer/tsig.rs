//! TSIG (RFC 8945): the keys transfers and NOTIFY are signed with, checking
//! a request's signature, and signing the messages of a response.
//!
//! hickory-proto parses and encodes the TSIG record, lays out the bytes a MAC
//! covers and computes the HMAC (its `TSigner`). Its signer offers SHA-256,
//! SHA-384 and SHA-512; HMAC-SHA1, which older secondaries still use, comes
//! from ring (the library hickory-proto computes its own HMACs with), so no
//! MAC is computed here by hand.

use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::tsig::{TSIG, TsigAlgorithm, TsigError, signed_bitmessage_to_buf};
use hickory_proto::rr::{DNSClass, TSigner};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use crate::answer::wire::{HEADER_LEN, flag, lower_wire, rcode, rtype};

/// Seconds a signature's time may be off from ours (RFC 8945 recommends 300).
pub const FUDGE: u16 = 300;

/// A shared secret: `[ALG:]NAME:BASE64SECRET`, as `dig -y` takes it.
#[derive(Clone)]
pub struct Key {
    /// The key's name, as a TSIG record carries it.
    pub name: Name,
    /// The algorithm, as its name (`hmac-sha256`).
    pub algorithm: TsigAlgorithm,
    mac: Mac,
}

#[derive(Clone)]
enum Mac {
    Signer(TSigner),
    // Boxed: ring keeps the key padded inline, hundreds of bytes.
    Sha1(Box<ring::hmac::Key>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "{}:{}", self.algorithm, self.name)
    }
}

/// What `--tsig-key` expects.
pub const KEY_FORM: &str = "[ALG:]NAME:BASE64SECRET, ALG one of hmac-sha256 (the default), hmac-sha512, hmac-sha384, hmac-sha1";

impl Key {
    /// Parses `[ALG:]NAME:BASE64SECRET`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Key, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (algorithm, name, secret) = match parts.as_slice() {
            [name, secret] => ("hmac-sha256", *name, *secret),
            [alg, name, secret] => (*alg, *name, *secret),
            parts => {
                // Not echoed: the text may be a secret.
                return Err(format!(
                    "a TSIG key has {} `:`-separated parts; expected {KEY_FORM}",
                    parts.len()
                ));
            }
        };
        let secret = secret.trim();
        let secret = data_encoding::BASE64
            .decode(secret.as_bytes())
            .map_err(|e| format!("TSIG key `{name}`: the secret is not valid base64 ({e})"))?;
        if secret.is_empty() {
            return Err(format!("TSIG key `{name}`: the secret is empty"));
        }
        if name.is_empty() {
            return Err(format!("TSIG key with an empty name: expected {KEY_FORM}"));
        }
        let name = Name::from_ascii(name)
            .map(|n| n.to_lowercase())
            .map_err(|e| format!("TSIG key name `{name}` is not a domain name: {e}"))?;
        let mut name = name;
        name.set_fqdn(true);
        let algorithm = match algorithm.to_ascii_lowercase().trim_end_matches('.') {
            "hmac-sha1" => TsigAlgorithm::HmacSha1,
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(format!(
                    "TSIG key `{name}`: unknown algorithm `{other}`; expected hmac-sha256, hmac-sha512, hmac-sha384 or hmac-sha1"
                ));
            }
        };
        Key::new(name, algorithm, secret)
    }

    fn new(name: Name, algorithm: TsigAlgorithm, secret: Vec<u8>) -> Result<Key, String> {
        let mac = match algorithm {
            TsigAlgorithm::HmacSha1 => Mac::Sha1(Box::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                &secret,
            ))),
            _ => Mac::Signer(
                TSigner::new(secret, algorithm.clone(), name.clone(), FUDGE)
                    .map_err(|e| format!("TSIG key `{name}`: {e}"))?,
            ),
        };
        Ok(Key {
            name,
            algorithm,
            mac,
        })
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        match &self.mac {
            Mac::Signer(s) => s
                .sign(data)
                .expect("the algorithm was checked when the key was made"),
            Mac::Sha1(k) => ring::hmac::sign(k, data).as_ref().to_vec(),
        }
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        match &self.mac {
            Mac::Signer(s) => s.verify(data, tag).is_ok(),
            Mac::Sha1(k) => ring::hmac::verify(k, data, tag).is_ok(),
        }
    }

    /// Signs a request (a NOTIFY): appends the TSIG record to `message`,
    /// and returns its MAC, which the response's signature covers.
    pub fn sign_request(&self, message: &mut Vec<u8>, now: u64) -> Vec<u8> {
        let id = u16::from_be_bytes([message[0], message[1]]);
        let tsig = TSIG::new(
            self.algorithm.clone(),
            now,
            FUDGE,
            Vec::new(),
            id,
            None,
            Vec::new(),
        );
        let mut tbs = message.clone();
        tsig_variables(&mut tbs, &self.name, &tsig);
        let mac = self.sign(&tbs);
        append_tsig(message, &self.name, &tsig.set_mac(mac.clone()));
        mac
    }

    /// Whether `response` is signed with this key, in answer to the request
    /// whose MAC was `request_mac`, within the fudge of `now`.
    pub fn verifies_response(&self, response: &[u8], request_mac: &[u8], now: u64) -> bool {
        let Ok((tbv, record)) = signed_bitmessage_to_buf(response, Some(request_mac), true) else {
            return false;
        };
        let tsig = &record.data;
        record.name == self.name
            && tsig.algorithm == self.algorithm
            && tsig.error.is_none()
            && self.verify(&tbv, &tsig.mac)
            && now.abs_diff(tsig.time) <= u64::from(tsig.fudge)
    }
}

/// How a request's signature checked out.
pub enum Checked {
    /// Signed with this key, in time: the response is signed with it.
    Valid(Signing),
    /// Refused (RFC 8945 section 5.2): this is the whole NOTAUTH response,
    /// with a TSIG record that says why.
    Refused(Vec<u8>, TsigError),
}

/// The state of signing one response, message after message (RFC 8945
/// section 5.3.1: the first covers the request's MAC and every TSIG
/// variable, each later one the MAC before it and the timers).
#[derive(Clone)]
pub struct Signing {
    key: Key,
    id: u16,
    prior: Vec<u8>,
    first: bool,
}

impl Signing {
    /// The key the request was signed with.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Signs the next message of the response in place: appends its TSIG
    /// record and counts it in the header.
    pub fn sign(&mut self, message: &mut Vec<u8>, now: u64) {
        self.sign_with_error(message, now, None, Vec::new());
    }

    fn sign_with_error(
        &mut self,
        message: &mut Vec<u8>,
        now: u64,
        error: Option<TsigError>,
        other: Vec<u8>,
    ) {
        let tsig = TSIG::new(
            self.key.algorithm.clone(),
            now,
            FUDGE,
            Vec::new(),
            self.id,
            error,
            other,
        );
        let mut tbs = Vec::with_capacity(self.prior.len() + message.len() + 64);
        tbs.extend_from_slice(&(self.prior.len() as u16).to_be_bytes());
        tbs.extend_from_slice(&self.prior);
        tbs.extend_from_slice(message);
        if self.first {
            tsig_variables(&mut tbs, &self.key.name, &tsig);
        } else {
            tbs.extend_from_slice(&((now >> 32) as u16).to_be_bytes());
            tbs.extend_from_slice(&(now as u32).to_be_bytes());
            tbs.extend_from_slice(&FUDGE.to_be_bytes());
        }
        let mac = self.key.sign(&tbs);
        self.prior = mac.clone();
        self.first = false;
        append_tsig(message, &self.key.name, &tsig.set_mac(mac));
    }
}

/// The TSIG variables a first message's MAC covers (RFC 8945 section 4.3.3).
fn tsig_variables(out: &mut Vec<u8>, key_name: &Name, tsig: &TSIG) {
    // An encoder writes from the start of its buffer: a fresh one.
    let mut variables = Vec::new();
    let mut encoder = BinEncoder::new(&mut variables);
    tsig.emit_tsig_for_mac(&mut encoder, key_name)
        .expect("TSIG variables encode");
    out.extend_from_slice(&variables);
}

/// Appends a TSIG record to a message and counts it in ARCOUNT.
fn append_tsig(message: &mut Vec<u8>, key_name: &Name, tsig: &TSIG) {
    let mut rdata = Vec::new();
    {
        let mut encoder = BinEncoder::new(&mut rdata);
        encoder.set_name_encoding(NameEncoding::Uncompressed);
        tsig.emit(&mut encoder).expect("a TSIG record encodes");
    }
    message.extend_from_slice(&lower_wire(key_name));
    message.extend_from_slice(&rtype::TSIG.to_be_bytes());
    message.extend_from_slice(&u16::from(DNSClass::ANY).to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    message.extend_from_slice(&rdata);
    let arcount = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// Where the TSIG record starts in a message that ends with one, so the
/// unsigned request is `&message[..start]` with ARCOUNT one less.
pub fn unsigned(message: &[u8]) -> Option<Vec<u8>> {
    let count = |i: usize| u16::from_be_bytes([message[4 + 2 * i], message[5 + 2 * i]]) as usize;
    if message.len() < HEADER_LEN || count(3) == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..count(0) {
        pos = skip_name(message, pos)? + 4;
    }
    let records = count(1) + count(2) + count(3);
    let mut last = pos;
    for _ in 0..records {
        last = pos;
        pos = skip_name(message, pos)?;
        let rdlen = u16::from_be_bytes([*message.get(pos + 8)?, *message.get(pos + 9)?]);
        pos += 10 + rdlen as usize;
    }
    if pos > message.len() {
        return None;
    }
    let mut out = message[..last].to_vec();
    let arcount = count(3) as u16 - 1;
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    Some(out)
}

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

/// Checks a signed request against `keys` at time `now` (RFC 8945 section
/// 5.2): the key, then the MAC, then the time. `None` if the message does
/// not parse as a signed message.
pub fn check(keys: &[Key], request: &[u8], now: u64) -> Option<Checked> {
    let (tbv, record) = signed_bitmessage_to_buf(request, None, true).ok()?;
    let tsig = &record.data;
    let id = u16::from_be_bytes([request[0], request[1]]);
    let key = keys
        .iter()
        .find(|k| k.name == record.name && k.algorithm == tsig.algorithm);
    // Unsigned, reflecting the key name and algorithm (RFC 8945 5.2.1, 5.2.2).
    let unsigned = |name: &Name, error: TsigError| {
        let reply = error_response(request, |m| {
            let t = TSIG::new(
                tsig.algorithm.clone(),
                tsig.time,
                tsig.fudge,
                Vec::new(),
                id,
                Some(error),
                Vec::new(),
            );
            append_tsig(m, name, &t);
        });
        Some(Checked::Refused(reply, error))
    };
    let Some(key) = key else {
        return unsigned(&record.name, TsigError::BadKey);
    };
    if !key.verify(&tbv, &tsig.mac) {
        return unsigned(&key.name, TsigError::BadSig);
    }
    let signing = Signing {
        key: key.clone(),
        id: tsig.oid,
        prior: tsig.mac.clone(),
        first: true,
    };
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        // Signed, with the request's time and ours in Other Data (5.2.3).
        let mut signing = signing;
        let reply = error_response(request, |m| {
            let other = now.to_be_bytes()[2..].to_vec();
            signing.sign_with_error(m, tsig.time, Some(TsigError::BadTime), other);
        });
        return Some(Checked::Refused(reply, TsigError::BadTime));
    }
    Some(Checked::Valid(signing))
}

/// A NOTAUTH response to `request`: its header and question, then what
/// `finish` appends (the TSIG record).
fn error_response(request: &[u8], finish: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = header_and_question(request, rcode::NOTAUTH);
    finish(&mut out);
    out
}

/// A response header for `request` with this response code, and the
/// request's question; no records.
pub fn header_and_question(request: &[u8], rcode: u8) -> Vec<u8> {
    let flags = u16::from_be_bytes([request[2], request[3]]);
    let question_end = if u16::from_be_bytes([request[4], request[5]]) == 1 {
        skip_name(request, HEADER_LEN).map(|p| p + 4)
    } else {
        None
    }
    .filter(|&end| end <= request.len());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&request[..2]);
    let flags = flag::QR | (flags & (flag::OPCODE_MASK | flag::RD)) | u16::from(rcode);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&u16::from(question_end.is_some()).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    if let Some(end) = question_end {
        out.extend_from_slice(&request[HEADER_LEN..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::RecordType;
    use hickory_proto::serialize::binary::BinEncodable as _;

    use super::*;

    const SECRET: &str = "c2lnbnBvc3QtdGVzdC1zZWNyZXQ=";

    fn signed_query(signer: &TSigner, time: u64) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("svc.example.").unwrap(),
            RecordType::AXFR,
        ));
        q.finalize(signer, time).unwrap();
        q.to_bytes().unwrap()
    }

    #[test]
    fn a_key_names_what_is_wrong_with_it() {
        assert!(Key::parse(&format!("xfr:{SECRET}")).is_ok());
        let k = Key::parse(&format!("hmac-sha512:xfr.:{SECRET}")).unwrap();
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha512);
        let e = Key::parse("justaname").unwrap_err();
        assert!(e.contains("[ALG:]NAME:BASE64SECRET"), "{e}");
        let e = Key::parse("hmac-md5:xfr:c2VjcmV0").unwrap_err();
        assert!(e.contains("unknown algorithm `hmac-md5`"), "{e}");
        let e = Key::parse("xfr:not base64!").unwrap_err();
        assert!(e.contains("not valid base64"), "{e}");
        assert!(!e.contains("not base64!"), "the secret is not echoed: {e}");
    }

    #[test]
    fn a_response_signed_message_by_message_verifies_with_hickory() {
        let key = Key::parse(&format!("xfr:{SECRET}")).unwrap();
        let secret = data_encoding::BASE64.decode(SECRET.as_bytes()).unwrap();
        let client = TSigner::new(
            secret,
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("xfr.").unwrap(),
            FUDGE,
        )
        .unwrap();
        let now = 1_800_000_000;
        let query = signed_query(&client, now);
        let Some(Checked::Valid(mut signing)) = check(std::slice::from_ref(&key), &query, now + 5)
        else {
            panic!("a valid signature");
        };
        let request_mac = Message::from_vec(&query)
            .unwrap()
            .signature()
            .unwrap()
            .data
            .mac
            .clone();
        let mut previous = request_mac;
        for i in 0..3 {
            let mut m = header_and_question(&query, rcode::NOERROR);
            signing.sign(&mut m, now + 5);
            let (mac, _, _) = client
                .verify_message_byte(&m, Some(&previous), i == 0)
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            previous = mac;
        }
    }

    #[test]
    fn a_signed_request_and_its_signed_response_verify_both_ways() {
        let key = Key::parse(&format!("hmac-sha1:xfr:{SECRET}")).unwrap();
        let now = 1_800_000_000;
        let mut request = header_and_question(
            &[0x12, 0x34, 0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1],
            rcode::NOERROR,
        );
        request[2] &= !0x80; // a request, not a response
        let mac = key.sign_request(&mut request, now);
        let Some(Checked::Valid(mut signing)) = check(std::slice::from_ref(&key), &request, now)
        else {
            panic!("the request verifies");
        };
        let mut response = header_and_question(&request[..17], rcode::NOERROR);
        signing.sign(&mut response, now);
        assert!(key.verifies_response(&response, &mac, now));
        assert!(!key.verifies_response(&response, &mac, now + 1000));
        let other = Key::parse(&format!("hmac-sha1:xfr:{}", "c2VjcmV0")).unwrap();
        assert!(!other.verifies_response(&response, &mac, now));
    }

    #[test]
    fn unknown_keys_bad_macs_and_stale_times_are_refused_with_their_error() {
        let key = Key::parse(&format!("xfr:{SECRET}")).unwrap();
        let now = 1_800_000_000;
        let other = TSigner::new(
            b"another".to_vec(),
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("other.").unwrap(),
            FUDGE,
        )
        .unwrap();
        let wrong = TSigner::new(
            b"wrong".to_vec(),
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("xfr.").unwrap(),
            FUDGE,
        )
        .unwrap();
        let secret = data_encoding::BASE64.decode(SECRET.as_bytes()).unwrap();
        let right = TSigner::new(
            secret,
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("xfr.").unwrap(),
            FUDGE,
        )
        .unwrap();
        for (signer, time, expected) in [
            (&other, now, TsigError::BadKey),
            (&wrong, now, TsigError::BadSig),
            (&right, now - 1000, TsigError::BadTime),
        ] {
            let query = signed_query(signer, time);
            let Some(Checked::Refused(reply, error)) =
                check(std::slice::from_ref(&key), &query, now)
            else {
                panic!("refused");
            };
            assert_eq!(error, expected);
            let m = Message::from_vec(&reply).unwrap();
            assert_eq!(
                u16::from(m.metadata.response_code),
                u16::from(rcode::NOTAUTH)
            );
            assert_eq!(m.signature().unwrap().data.error, Some(expected));
        }
    }
}
