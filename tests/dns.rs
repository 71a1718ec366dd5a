//! End-to-end tests of the DNS behaviour: the real `signpost` binary, real
//! UDP and TCP sockets, hickory-net as a normal client and hand-made bytes for
//! malformed or unusual packets.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Helpers

/// A temporary zones directory holding these files.
fn zone_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write zone file");
    }
    dir
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// SRV records as (priority, weight, port, lowercased target), sorted.
fn srvs(records: &[Record]) -> Vec<(u16, u16, u16, String)> {
    let mut out: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((
                s.priority,
                s.weight,
                s.port,
                s.target.to_lowercase().to_ascii(),
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A and AAAA records as (lowercased owner, address), sorted.
fn addrs(records: &[Record]) -> Vec<(String, IpAddr)> {
    let mut out: Vec<_> = records
        .iter()
        .filter_map(|r| {
            let ip = match &r.data {
                RData::A(A(ip)) => IpAddr::V4(*ip),
                RData::AAAA(AAAA(ip)) => IpAddr::V6(*ip),
                _ => return None,
            };
            Some((r.name.to_lowercase().to_ascii(), ip))
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every record's type.
fn types(records: &[Record]) -> Vec<RecordType> {
    records.iter().map(Record::record_type).collect()
}

/// Asserts a negative answer (NXDOMAIN or NODATA): authoritative, no answers,
/// exactly the zone's SOA in the authority section with `ttl`.
fn assert_negative(m: &Message, rcode: ResponseCode, apex: &str, ttl: u32) {
    assert_eq!(m.metadata.response_code, rcode, "{m}");
    assert!(m.metadata.authoritative, "AA must be set: {m}");
    assert!(m.answers.is_empty(), "{m}");
    assert_eq!(m.authorities.len(), 1, "{m}");
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA, "{m}");
    assert_eq!(soa.name, name(apex), "{m}");
    assert_eq!(soa.ttl, ttl, "negative TTL: {m}");
}

fn soa_of(record: &Record) -> &SOA {
    match &record.data {
        RData::SOA(soa) => soa,
        other => panic!("not an SOA: {other:?}"),
    }
}

// Raw packets ----------------------------------------------------------------

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;

const T_A: u16 = 1;
const T_AAAA: u16 = 28;
const T_SRV: u16 = 33;

/// A name in uncompressed wire form, with its letter case.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A header with these flags and counts.
fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

/// A query with one question (class IN) and these additional records.
fn raw_query(id: u16, flags: u16, qname: &str, qtype: u16, additional: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header(id, flags, [1, 0, 0, additional.len() as u16]);
    out.extend_from_slice(&wire_name(qname));
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    for rr in additional {
        out.extend_from_slice(rr);
    }
    out
}

/// An OPT pseudo-record (RFC 6891 6.1.2).
fn opt(payload: u16, version: u8, flags: u16, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut rdata = Vec::new();
    for (code, data) in options {
        rdata.extend_from_slice(&code.to_be_bytes());
        rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rdata.extend_from_slice(data);
    }
    let mut out = vec![0];
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.push(0); // extended rcode
    out.push(version);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    out
}

fn r_id(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[0], reply[1]])
}

fn r_flags(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[2], reply[3]])
}

fn r_rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0F
}

fn r_count(reply: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]])
}

/// The OPT record a reply ends with (the server always writes it last):
/// (payload, extended rcode, version, flags, rdata length).
fn trailing_opt(reply: &[u8]) -> (u16, u8, u8, u16, u16) {
    let opt = &reply[reply.len() - 11..];
    assert_eq!(opt[0], 0, "OPT owner is the root");
    assert_eq!(u16::from_be_bytes([opt[1], opt[2]]), 41, "type OPT");
    (
        u16::from_be_bytes([opt[3], opt[4]]),
        opt[5],
        opt[6],
        u16::from_be_bytes([opt[7], opt[8]]),
        u16::from_be_bytes([opt[9], opt[10]]),
    )
}

fn decode(reply: &[u8]) -> Message {
    Message::from_vec(reply).expect("a well-formed reply")
}

/// Sends `packet` over `socket`, then a well-formed sentinel query, and returns
/// every reply that arrived before the sentinel's answer. The server answers
/// one socket's datagrams in order, so these are exactly the replies to
/// `packet`; the sentinel's answer also proves the server is still serving.
fn replies_before_sentinel(socket: &UdpSocket, server: SocketAddr, packet: &[u8]) -> Vec<Vec<u8>> {
    let packet_id = packet
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let sentinel_id = packet_id.wrapping_add(0x5A5A);
    let sentinel = raw_query(sentinel_id, RD, "ns1.svc.example.", T_A, &[]);
    socket.send_to(packet, server).unwrap();
    socket.send_to(&sentinel, server).unwrap();
    let mut before = Vec::new();
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the server stopped answering after {packet:02x?}"
        );
        let Ok(len) = socket.recv(&mut buf) else {
            continue;
        };
        let reply = buf[..len].to_vec();
        let is_sentinel = len >= 12
            && r_id(&reply) == sentinel_id
            && reply.get(12..12 + sentinel.len() - 12) == Some(&sentinel[12..])
            && r_rcode(&reply) == 0
            && r_count(&reply, 1) == 1;
        if is_sentinel {
            return before;
        }
        before.push(reply);
    }
}

/// A TCP connection with DNS framing.
fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("TCP connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn tcp_send(stream: &mut TcpStream, msg: &[u8]) {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    stream.write_all(&framed).unwrap();
}

fn tcp_recv(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg)?;
    Ok(msg)
}

/// Reads until EOF or error; true if the server closed the connection (no data)
/// before `deadline`.
fn closed_without_data(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

// Zones ------------------------------------------------------------------------

/// A service `many` with `n` IPv4-only instances `i0000`…, in zone big.test.
fn many_instances_zone(n: usize) -> String {
    let mut z = String::from("zone = \"big.test\"\n[[services]]\nname = \"many\"\nport = 80\n");
    for i in 0..n {
        z.push_str(&format!(
            "[[services.instances]]\nname = \"i{i:04}\"\naddress = \"10.1.{}.{}\"\n",
            i / 256,
            i % 256
        ));
    }
    z
}

/// Zone `apex` with one service of `n` dual-stack instances `<prefix>0000`….
fn dual_stack_zone(apex: &str, service: &str, prefix: &str, n: usize) -> String {
    let mut z = format!("zone = \"{apex}\"\n[[services]]\nname = \"{service}\"\nport = 443\n");
    for i in 0..n {
        z.push_str(&format!(
            "[[services.instances]]\nname = \"{prefix}{i:04}\"\naddress = [\"10.2.{}.{}\", \"fd00::2:{i:x}\"]\n",
            i / 256,
            i % 256
        ));
    }
    z
}

// ---------------------------------------------------------------------------
// SRV

#[tokio::test]
async fn srv_query_returns_one_record_per_instance_with_glue_for_in_zone_targets() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "_web._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.truncation);
    assert_eq!(
        srvs(&m.answers),
        [
            (0, 1, 8080, "web-1.svc.example.".to_string()),
            (0, 20, 8080, "web-2.svc.example.".to_string()),
            (1, 1, 8080, "web-3.svc.example.".to_string()),
        ]
    );
    assert!(
        m.answers
            .iter()
            .all(|r| r.name == name("_web._tcp.svc.example.") && r.ttl == 30)
    );
    assert!(m.authorities.is_empty());
    assert_eq!(
        addrs(&m.additionals),
        [
            ("web-1.svc.example.".to_string(), ip("10.0.0.11")),
            ("web-1.svc.example.".to_string(), ip("fd00::11")),
            ("web-2.svc.example.".to_string(), ip("10.0.0.12")),
            ("web-2.svc.example.".to_string(), ip("fd00::12")),
            ("web-3.svc.example.".to_string(), ip("10.0.0.13")),
        ]
    );

    // The same over TCP.
    let mut tcp = tcp_client(server.addr).await;
    let t = ask(&mut tcp, "_web._tcp.svc.example.", RecordType::SRV).await;
    assert!(t.metadata.authoritative);
    assert_eq!(srvs(&t.answers), srvs(&m.answers));
    assert_eq!(addrs(&t.additionals), addrs(&m.additionals));

    // Per-instance ports, and the udp protocol label.
    let m = ask(&mut client, "_api._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(
        srvs(&m.answers),
        [
            (0, 1, 9000, "api-1.svc.example.".to_string()),
            (0, 1, 9001, "api-2.svc.example.".to_string()),
        ]
    );
    let m = ask(&mut client, "_dns._udp.svc.example.", RecordType::SRV).await;
    assert_eq!(
        srvs(&m.answers),
        [(0, 1, 53, "resolver-1.svc.example.".to_string())]
    );
    assert_eq!(
        addrs(&m.additionals),
        [("resolver-1.svc.example.".to_string(), ip("10.0.0.53"))]
    );
    // A service is only under its own protocol.
    let m = ask(&mut client, "_dns._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn srv_for_an_instance_with_an_external_target_points_there_without_glue() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "_mail._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        srvs(&m.answers),
        [(0, 1, 25, "mx.example.net.".to_string())]
    );
    assert!(
        m.additionals.is_empty(),
        "no glue for an out-of-zone target: {m}"
    );
    // And the instance name itself is not a host.
    let m = ask(&mut client, "mx-external.svc.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn srv_target_naming_an_in_zone_host_gets_that_hosts_addresses_as_glue() {
    let dir = zone_dir(&[(
        "t.toml",
        r#"zone = "t.test"
[hosts]
backend = ["192.0.2.7", "2001:db8::7"]
[[services]]
name = "app"
port = 7000
[[services.instances]]
name = "app-1"
target = "backend"
[[services.instances]]
name = "app-2"
target = "far.example.org."
"#,
    )]);
    let server = Server::start(dir.path());
    let mut client = tcp_client(server.addr).await;
    let m = ask(&mut client, "_app._tcp.t.test.", RecordType::SRV).await;
    assert_eq!(
        srvs(&m.answers),
        [
            (0, 1, 7000, "backend.t.test.".to_string()),
            (0, 1, 7000, "far.example.org.".to_string()),
        ]
    );
    assert_eq!(
        addrs(&m.additionals),
        [
            ("backend.t.test.".to_string(), ip("192.0.2.7")),
            ("backend.t.test.".to_string(), ip("2001:db8::7")),
        ]
    );
}

#[tokio::test]
async fn service_name_answers_srv_like_the_rfc2782_name_and_a_aaaa_of_all_instances() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    let rfc = ask(&mut client, "_web._tcp.svc.example.", RecordType::SRV).await;
    let short = ask(&mut client, "web.svc.example.", RecordType::SRV).await;
    assert_eq!(short.metadata.response_code, ResponseCode::NoError);
    assert!(short.metadata.authoritative);
    assert_eq!(srvs(&short.answers), srvs(&rfc.answers));
    assert_eq!(addrs(&short.additionals), addrs(&rfc.additionals));
    assert!(
        short
            .answers
            .iter()
            .all(|r| r.name == name("web.svc.example."))
    );

    let a = ask(&mut client, "web.svc.example.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(
        addrs(&a.answers),
        [
            ("web.svc.example.".to_string(), ip("10.0.0.11")),
            ("web.svc.example.".to_string(), ip("10.0.0.12")),
            ("web.svc.example.".to_string(), ip("10.0.0.13")),
        ]
    );
    let aaaa = ask(&mut client, "web.svc.example.", RecordType::AAAA).await;
    assert_eq!(
        addrs(&aaaa.answers),
        [
            ("web.svc.example.".to_string(), ip("fd00::11")),
            ("web.svc.example.".to_string(), ip("fd00::12")),
        ]
    );
    // A service whose only instance is elsewhere has no addresses: NODATA.
    let m = ask(&mut client, "mail.svc.example.", RecordType::A).await;
    assert_negative(&m, ResponseCode::NoError, "svc.example.", 30);
}

#[test]
fn dig_shows_srv_answers_and_additional_addresses() {
    let server = Server::start(&example_zones());
    let out = dig(&server, &["+norec", "SRV", "_web._tcp.svc.example"]);
    // Collapse dig's tabs so lines compare as words.
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |s: &str| lines.iter().any(|l| l == s);
    assert!(lines.iter().any(|l| l.contains("status: NOERROR")), "{out}");
    assert!(lines.iter().any(|l| l.contains("flags: qr aa;")), "{out}");
    // dig sends EDNS by default: five addresses and the OPT record.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ANSWER: 3, AUTHORITY: 0, ADDITIONAL: 6")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.contains("; EDNS: version: 0")),
        "{out}"
    );
    let answer = lines
        .iter()
        .position(|l| l == ";; ANSWER SECTION:")
        .expect(&out);
    let additional = lines
        .iter()
        .position(|l| l == ";; ADDITIONAL SECTION:")
        .expect(&out);
    assert!(answer < additional, "{out}");
    for l in [
        "_web._tcp.svc.example. 30 IN SRV 0 1 8080 web-1.svc.example.",
        "_web._tcp.svc.example. 30 IN SRV 0 20 8080 web-2.svc.example.",
        "_web._tcp.svc.example. 30 IN SRV 1 1 8080 web-3.svc.example.",
        "web-1.svc.example. 30 IN A 10.0.0.11",
        "web-1.svc.example. 30 IN AAAA fd00::11",
        "web-3.svc.example. 30 IN A 10.0.0.13",
    ] {
        assert!(has(l), "missing {l:?} in:\n{out}");
    }
    // The same over TCP.
    let out = dig(
        &server,
        &["+tcp", "+noedns", "+norec", "SRV", "_web._tcp.svc.example"],
    );
    assert!(
        out.contains("ANSWER: 3, AUTHORITY: 0, ADDITIONAL: 5"),
        "{out}"
    );
    assert!(!out.contains("OPT PSEUDOSECTION"), "{out}");
}

// ---------------------------------------------------------------------------
// Hosts, instances, apex

#[tokio::test]
async fn instance_and_host_names_answer_a_and_aaaa() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for (qname, rtype, expected) in [
        ("web-1.svc.example.", RecordType::A, vec!["10.0.0.11"]),
        ("web-1.svc.example.", RecordType::AAAA, vec!["fd00::11"]),
        ("api-2.svc.example.", RecordType::A, vec!["10.0.0.42"]),
        ("db.svc.example.", RecordType::A, vec!["10.0.0.21"]),
        ("db.svc.example.", RecordType::AAAA, vec!["fd00::21"]),
        ("ns1.svc.example.", RecordType::A, vec!["127.0.0.1"]),
        ("cache.svc.example.", RecordType::A, vec!["10.0.0.31"]),
    ] {
        let m = ask(&mut client, qname, rtype).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{qname} {rtype}"
        );
        assert!(m.metadata.authoritative, "{qname} {rtype}");
        assert_eq!(types(&m.answers), vec![rtype; expected.len()]);
        let got: Vec<IpAddr> = addrs(&m.answers).into_iter().map(|(_, a)| a).collect();
        let want: Vec<IpAddr> = expected.iter().map(|s| ip(s)).collect();
        assert_eq!(got, want, "{qname} {rtype}");
        assert!(
            m.answers
                .iter()
                .all(|r| r.name == name(qname) && r.ttl == 30)
        );
    }
}

#[tokio::test]
async fn apex_answers_soa_and_ns_with_glue_for_in_zone_name_servers() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "svc.example.", RecordType::SOA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    let soa = soa_of(&m.answers[0]);
    assert_eq!(soa.mname, name("ns1.svc.example."));
    assert_eq!(soa.rname, name("hostmaster.svc.example."));
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (3600, 600, 86400, 30)
    );
    assert!(soa.serial > 0);

    let m = ask(&mut client, "svc.example.", RecordType::NS).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let ns: Vec<&Name> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::NS(NS(n)) => n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ns, [&name("ns1.svc.example.")]);
    assert_eq!(
        addrs(&m.additionals),
        [("ns1.svc.example.".to_string(), ip("127.0.0.1"))]
    );

    // No address at the apex: NODATA.
    let m = ask(&mut client, "svc.example.", RecordType::A).await;
    assert_negative(&m, ResponseCode::NoError, "svc.example.", 30);
}

#[tokio::test]
async fn out_of_zone_name_servers_get_no_glue() {
    let dir = zone_dir(&[(
        "o.toml",
        "zone = \"o.test\"\nnameservers = [\"ns1\", \"ns.elsewhere.example.\"]\n[hosts]\nns1 = [\"192.0.2.53\", \"2001:db8::53\"]\n",
    )]);
    let server = Server::start(dir.path());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "o.test.", RecordType::NS).await;
    assert_eq!(m.answers.len(), 2);
    assert_eq!(
        addrs(&m.additionals),
        [
            ("ns1.o.test.".to_string(), ip("192.0.2.53")),
            ("ns1.o.test.".to_string(), ip("2001:db8::53")),
        ]
    );
}

// ---------------------------------------------------------------------------
// Flags and the echoed question

/// Two instances whose SRV records differ only in the letter case of the
/// target are one record (RFC 4343, RFC 2181 5): the answer holds it once,
/// spelled as the first instance gives it, in a small RRset and in one
/// past the size at which duplicates are found through a set.
#[test]
fn srv_records_whose_targets_differ_only_in_letter_case_are_one() {
    let mut zone = String::from("zone = \"case.example\"\n");
    for (service, others) in [("small", 0), ("large", 12)] {
        zone.push_str(&format!("[[services]]\nname = \"{service}\"\nport = 80\n"));
        for i in 0..others {
            zone.push_str(&format!(
                "[[services.instances]]\nname = \"{service}-{i}\"\naddress = \"10.0.1.{i}\"\n"
            ));
        }
        let upper = service.to_ascii_uppercase();
        zone.push_str(&format!(
            "[[services.instances]]\nname = \"{service}-web\"\naddress = \"10.0.0.1\"\n\
             [[services.instances]]\nname = \"{service}-alias\"\n\
             target = \"{upper}-WEB.case.example.\"\n"
        ));
    }
    let dir = zone_dir(&[("case.example.toml", &zone)]);
    let server = Server::start(dir.path());
    for (service, others) in [("small", 0), ("large", 12)] {
        let qname = format!("_{service}._tcp.case.example.");
        let reply = server.udp(&query_edns(&qname, RecordType::SRV, 4096));
        let targets: Vec<String> = (reply.answers.iter())
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.target.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(targets.len(), others + 1, "{service}: {reply}");
        let host = format!("{service}-web.case.example.");
        let web: Vec<&String> = (targets.iter())
            .filter(|t| t.eq_ignore_ascii_case(&host))
            .collect();
        assert_eq!(web, [&host], "{service}: once, as first spelled");
    }
}

#[test]
fn question_is_echoed_with_the_clients_letter_case() {
    let server = Server::start(&example_zones());
    for (qname, qtype, rcode) in [
        ("WeB.SvC.ExAmPlE.", T_A, 0),
        ("_WEB._TcP.sVc.ExAmPlE.", T_SRV, 0),
        ("DB.SVC.EXAMPLE.", T_AAAA, 0),
        ("NoPe.SvC.ExAmPlE.", T_A, 3),
    ] {
        let q = raw_query(0x1234, RD, qname, qtype, &[]);
        let reply = server.udp_raw(&q).expect("a reply");
        assert_eq!(r_id(&reply), 0x1234);
        assert_eq!(r_rcode(&reply), rcode, "{qname}");
        assert_eq!(r_count(&reply, 0), 1, "qdcount");
        assert_eq!(
            &reply[12..q.len()],
            &q[12..],
            "question of {qname} echoed byte for byte"
        );
        let flags = r_flags(&reply);
        assert_ne!(flags & QR, 0);
        assert_ne!(flags & AA, 0, "{qname}");
        assert_ne!(flags & RD, 0, "RD is copied");
        let m = decode(&reply);
        // Records still decode, owned by the (case-insensitively) same name.
        assert!(m.answers.iter().all(|r| r.name == name(qname)), "{m}");
        if rcode == 0 {
            assert!(!m.answers.is_empty(), "{m}");
        }
    }
}

#[tokio::test]
async fn aa_is_set_on_positive_nodata_and_nxdomain_answers() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for (qname, rtype, rcode) in [
        ("web-1.svc.example.", RecordType::A, ResponseCode::NoError),
        ("web-1.svc.example.", RecordType::TXT, ResponseCode::NoError),
        (
            "missing.svc.example.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
    ] {
        let m = ask(&mut client, qname, rtype).await;
        assert_eq!(m.metadata.response_code, rcode, "{qname}");
        assert!(m.metadata.authoritative, "{qname} {rtype}: {m}");
        assert!(!m.metadata.recursion_available, "{qname}");
    }
}

// ---------------------------------------------------------------------------
// Negative answers

#[tokio::test]
async fn existing_name_without_the_type_is_nodata_with_the_soa() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for (qname, rtype) in [
        ("web-1.svc.example.", RecordType::TXT),
        ("web-1.svc.example.", RecordType::SRV),
        ("_web._tcp.svc.example.", RecordType::A),
        ("db.svc.example.", RecordType::MX),
        ("svc.example.", RecordType::SRV),
    ] {
        let m = ask(&mut client, qname, rtype).await;
        assert_negative(&m, ResponseCode::NoError, "svc.example.", 30);
    }
    // The SOA of a negative answer is the zone's SOA.
    let positive = ask(&mut client, "svc.example.", RecordType::SOA).await;
    let negative = ask(&mut client, "db.svc.example.", RecordType::MX).await;
    assert_eq!(
        soa_of(&negative.authorities[0]),
        soa_of(&positive.answers[0])
    );
}

#[tokio::test]
async fn aaaa_for_an_ipv4_only_name_is_nodata_not_an_error() {
    let dir = zone_dir(&[(
        "v4.toml",
        "zone = \"v4.test\"\n[hosts]\nonly4 = \"192.0.2.4\"\n[[services]]\nname = \"svc\"\nport = 1\n[[services.instances]]\nname = \"inst4\"\naddress = \"192.0.2.5\"\n",
    )]);
    let server = Server::start(dir.path());
    for qname in ["only4.v4.test.", "inst4.v4.test.", "svc.v4.test."] {
        // As glibc does: A and AAAA in parallel on one socket.
        let mut client = udp_client(server.addr).await;
        let mut client2 = client.clone();
        let (a, aaaa) = tokio::join!(
            ask(&mut client, qname, RecordType::A),
            ask(&mut client2, qname, RecordType::AAAA)
        );
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1, "{a}");
        assert_negative(&aaaa, ResponseCode::NoError, "v4.test.", 30);
    }
}

#[tokio::test]
async fn negative_ttl_is_the_smaller_of_soa_ttl_and_soa_minimum() {
    let dir = zone_dir(&[
        (
            "low.toml",
            "zone = \"low.test\"\nttl = 300\n[soa]\nminimum = 60\n[hosts]\nh = \"192.0.2.1\"\n",
        ),
        (
            "high.toml",
            "zone = \"high.test\"\nttl = 300\n[soa]\nminimum = 600\n[hosts]\nh = \"192.0.2.1\"\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let mut client = udp_client(server.addr).await;
    for (zone, ttl, minimum) in [("low.test.", 60, 60), ("high.test.", 300, 600)] {
        let nodata = ask(&mut client, &format!("h.{zone}"), RecordType::AAAA).await;
        assert_negative(&nodata, ResponseCode::NoError, zone, ttl);
        assert_eq!(soa_of(&nodata.authorities[0]).minimum, minimum);
        let nx = ask(&mut client, &format!("nope.{zone}"), RecordType::A).await;
        assert_negative(&nx, ResponseCode::NXDomain, zone, ttl);
        // Positive records keep the zone TTL.
        let a = ask(&mut client, &format!("h.{zone}"), RecordType::A).await;
        assert_eq!(a.answers[0].ttl, 300);
        let soa = ask(&mut client, zone, RecordType::SOA).await;
        assert_eq!(soa.answers[0].ttl, 300);
    }
}

#[tokio::test]
async fn missing_name_under_the_zone_is_nxdomain_with_the_soa() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for qname in [
        "missing.svc.example.",
        "x.web-1.svc.example.",
        "a.b.c.svc.example.",
        "_nope._tcp.svc.example.",
        "x._web._tcp.svc.example.",
    ] {
        for rtype in [RecordType::A, RecordType::SRV] {
            let m = ask(&mut client, qname, rtype).await;
            assert_negative(&m, ResponseCode::NXDomain, "svc.example.", 30);
        }
    }
}

#[tokio::test]
async fn empty_non_terminal_is_nodata_not_nxdomain() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for qname in ["_tcp.svc.example.", "_udp.svc.example."] {
        for rtype in [RecordType::A, RecordType::SRV, RecordType::ANY] {
            let m = ask(&mut client, qname, rtype).await;
            assert_negative(&m, ResponseCode::NoError, "svc.example.", 30);
        }
    }
    // Host names with several labels create empty non-terminals too.
    let dir = zone_dir(&[(
        "e.toml",
        "zone = \"e.test\"\n[hosts]\n\"a.b\" = \"192.0.2.1\"\n",
    )]);
    let server = Server::start(dir.path());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "b.e.test.", RecordType::A).await;
    assert_negative(&m, ResponseCode::NoError, "e.test.", 30);
    let m = ask(&mut client, "a.b.e.test.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn name_outside_every_zone_is_refused_without_aa() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    for qname in [
        "example.com.",
        "example.",
        "xsvc.example.",
        "svc.example.org.",
        ".",
    ] {
        let m = ask(&mut client, qname, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
        assert!(!m.metadata.authoritative, "{qname}");
        assert!(m.answers.is_empty() && m.authorities.is_empty(), "{qname}");
        assert_eq!(m.queries.len(), 1, "the question is echoed");
    }
}

#[test]
fn more_specific_zone_wins_over_its_parent() {
    let dir = zone_dir(&[
        (
            "parent.toml",
            "zone = \"test\"\n[hosts]\n\"x.sub\" = \"192.0.2.1\"\n",
        ),
        (
            "child.toml",
            "zone = \"sub.test\"\n[hosts]\nx = \"192.0.2.2\"\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let m = server.udp(&query("x.sub.test.", RecordType::A));
    assert_eq!(
        addrs(&m.answers),
        [("x.sub.test.".to_string(), ip("192.0.2.2"))]
    );
    let m = server.udp(&query("y.sub.test.", RecordType::A));
    assert_negative(&m, ResponseCode::NXDomain, "sub.test.", 30);
}

// ---------------------------------------------------------------------------
// Other classes, types and opcodes

#[test]
fn zone_transfers_and_non_in_classes_are_refused() {
    let server = Server::start(&example_zones());
    let axfr = server.tcp(&query("svc.example.", RecordType::AXFR));
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
    assert!(axfr.answers.is_empty());

    // version.bind CH TXT, and an IN name asked in class CH.
    for qname in ["version.bind.", "web.svc.example."] {
        let mut q = header(7, 0, [1, 0, 0, 0]);
        q.extend_from_slice(&wire_name(qname));
        q.extend_from_slice(&16u16.to_be_bytes());
        q.extend_from_slice(&3u16.to_be_bytes()); // CH
        let reply = server.udp_raw(&q).expect("a reply");
        assert_eq!(r_rcode(&reply), 5, "{qname}: REFUSED");
        assert_eq!(r_count(&reply, 1), 0);
        assert_eq!(r_flags(&reply) & AA, 0);
    }
}

#[test]
fn unknown_opcodes_get_notimp() {
    let server = Server::start(&example_zones());
    // STATUS (2) and NOTIFY (4) with a question, as a plain query would have.
    for opcode in [2u16, 4, 6, 15] {
        let q = raw_query(0x4242, opcode << 11, "web.svc.example.", T_A, &[]);
        let reply = server.udp_raw(&q).expect("a reply");
        assert_eq!(r_rcode(&reply), 4, "opcode {opcode}: NOTIMP");
        assert_eq!((r_flags(&reply) >> 11) & 0xF, opcode, "opcode echoed");
        assert_eq!(r_count(&reply, 1), 0, "no answers");
        assert_eq!(
            decode(&reply).metadata.op_code,
            OpCode::from_u8(opcode as u8)
        );
    }
    // UPDATE (5): zone section, no prerequisites, one update RR (add an A record).
    let mut q = header(0x5555, 5 << 11, [1, 0, 1, 0]);
    q.extend_from_slice(&wire_name("svc.example."));
    q.extend_from_slice(&6u16.to_be_bytes()); // SOA
    q.extend_from_slice(&1u16.to_be_bytes());
    q.extend_from_slice(&wire_name("new.svc.example."));
    q.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
    let reply = server.udp_raw(&q).expect("a reply");
    assert_eq!(r_rcode(&reply), 4, "UPDATE: NOTIMP");
    // STATUS carries no question at all (RFC 1035 leaves it undefined).
    let q = header(0x2222, 2 << 11, [0, 0, 0, 0]);
    let reply = server.udp_raw(&q).expect("a reply");
    assert_eq!(
        r_rcode(&reply),
        4,
        "STATUS without a question: NOTIMP, not FORMERR"
    );
}

#[tokio::test]
async fn any_query_gets_a_nonempty_subset_per_rfc8482() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    // Names with several types: any answer must be one of them, not all.
    for (qname, has) in [
        (
            "web.svc.example.",
            vec![RecordType::A, RecordType::AAAA, RecordType::SRV],
        ),
        ("svc.example.", vec![RecordType::NS, RecordType::SOA]),
        ("db.svc.example.", vec![RecordType::A, RecordType::AAAA]),
    ] {
        let m = ask(&mut client, qname, RecordType::ANY).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qname}");
        assert!(m.metadata.authoritative);
        assert!(!m.answers.is_empty(), "{qname}: {m}");
        let got: BTreeSet<RecordType> = types(&m.answers).into_iter().collect();
        assert!(got.iter().all(|t| has.contains(t)), "{qname}: {m}");
        assert!(got.len() < has.len(), "{qname}: not everything: {m}");
        assert!(m.answers.iter().all(|r| r.name == name(qname)));
    }
    let m = ask(&mut client, "missing.svc.example.", RecordType::ANY).await;
    assert_negative(&m, ResponseCode::NXDomain, "svc.example.", 30);
}

// ---------------------------------------------------------------------------
// EDNS(0)

#[test]
fn opt_record_is_in_the_reply_only_when_the_query_has_one() {
    let server = Server::start(&example_zones());
    let plain = server
        .udp_raw(&raw_query(1, RD, "web-1.svc.example.", T_A, &[]))
        .unwrap();
    assert_eq!(r_count(&plain, 3), 0);
    assert!(decode(&plain).edns.is_none());

    let with = server
        .udp_raw(&raw_query(
            2,
            RD,
            "web-1.svc.example.",
            T_A,
            &[opt(1232, 0, 0, &[])],
        ))
        .unwrap();
    assert_eq!(r_rcode(&with), 0);
    assert_eq!(r_count(&with, 0), 1);
    assert_eq!(r_count(&with, 3), 1, "just the OPT");
    let (payload, ext, version, flags, rdlen) = trailing_opt(&with);
    assert_eq!((ext, version, flags, rdlen), (0, 0, 0, 0));
    assert!(payload >= 512, "{payload}");
    let m = decode(&with);
    assert!(m.edns.is_some());
    assert!(m.additionals.is_empty(), "OPT is not an additional record");

    // Negative answers carry it too.
    for (qname, rcode) in [("nope.svc.example.", 3), ("db.svc.example.", 0)] {
        let q = raw_query(3, RD, qname, 99, &[opt(4096, 0, 0, &[])]);
        let reply = server.udp_raw(&q).unwrap();
        assert_eq!(r_rcode(&reply), rcode);
        assert_eq!(
            (r_count(&reply, 2), r_count(&reply, 3)),
            (1, 1),
            "SOA and OPT"
        );
        trailing_opt(&reply);
    }
}

#[test]
fn edns_version_above_zero_gets_badvers() {
    let server = Server::start(&example_zones());
    for version in [1u8, 2, 255] {
        let q = raw_query(
            9,
            RD,
            "web-1.svc.example.",
            T_A,
            &[opt(1232, version, 0, &[])],
        );
        let reply = server.udp_raw(&q).expect("a reply");
        assert_eq!(r_rcode(&reply), 0, "low bits of BADVERS (16) are 0");
        assert_eq!(r_count(&reply, 1), 0, "no answer");
        assert_eq!(r_count(&reply, 3), 1, "the OPT");
        let (_, ext, reply_version, _, _) = trailing_opt(&reply);
        assert_eq!(ext, 1, "extended rcode 16 >> 4");
        assert_eq!(reply_version, 0, "the version we do support");
        // hickory names extended rcode 16 BADSIG (it is both BADVERS and BADSIG).
        assert_eq!(u16::from(decode(&reply).metadata.response_code), 16);
        assert_eq!(
            &reply[12..12 + 4 + wire_name("web-1.svc.example.").len()],
            &q[12..12 + 4 + wire_name("web-1.svc.example.").len()]
        );
    }
}

#[test]
fn unknown_edns_options_are_ignored_and_do_bit_is_echoed() {
    let server = Server::start(&example_zones());
    let options: &[(u16, &[u8])] = &[
        (65001, b"whatever"),
        (10, &[1, 2, 3, 4, 5, 6, 7, 8]), // a client cookie
        (8, &[0, 1, 24, 0, 192, 0, 2]),  // client subnet
        (65002, &[]),
    ];
    for (do_flag, echoed) in [(0x8000u16, 0x8000u16), (0, 0)] {
        let q = raw_query(
            11,
            RD,
            "web.svc.example.",
            T_SRV,
            &[opt(1232, 0, do_flag, options)],
        );
        let reply = server.udp_raw(&q).expect("a reply");
        assert_eq!(r_rcode(&reply), 0);
        let m = decode(&reply);
        assert_eq!(m.answers.len(), 3, "{m}");
        let (_, ext, version, flags, rdlen) = trailing_opt(&reply);
        assert_eq!((ext, version), (0, 0));
        assert_eq!(flags, echoed, "DO bit");
        assert_eq!(rdlen, 0, "no options are sent back");
    }
}

#[test]
fn two_opt_records_are_a_format_error() {
    let server = Server::start(&example_zones());
    let q = raw_query(
        12,
        RD,
        "web.svc.example.",
        T_A,
        &[opt(1232, 0, 0, &[]), opt(1232, 0, 0, &[])],
    );
    let reply = server.udp_raw(&q).expect("a reply");
    assert_eq!(r_rcode(&reply), 1);
    assert_eq!(r_count(&reply, 1), 0);
}

// ---------------------------------------------------------------------------
// Malformed packets

#[test]
fn malformed_packets_get_formerr_or_no_reply_and_the_server_keeps_answering() {
    let server = Server::start(&example_zones());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let good = raw_query(0x0101, 0, "web.svc.example.", T_A, &[]);
    let q_end = good.len();

    // (description, packet, whether a FORMERR reply is required)
    let mut cases: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expect {
        /// FORMERR with the query's id, or nothing.
        FormerrOrNothing,
        /// Certainly nothing (it is not a query).
        Nothing,
    }
    use Expect::*;
    cases.push(("empty".into(), vec![], Nothing));
    for n in [1, 2, 11] {
        cases.push((format!("header cut at {n}"), good[..n].to_vec(), Nothing));
    }
    for n in [12, 13, 20, q_end - 4, q_end - 1] {
        cases.push((
            format!("question cut at {n}"),
            good[..n].to_vec(),
            FormerrOrNothing,
        ));
    }
    // A pointer to itself, two pointers to each other, a pointer forward.
    let mut p = header(0x0201, 0, [1, 0, 0, 0]);
    p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    cases.push(("pointer loop".into(), p, FormerrOrNothing));
    let mut p = header(0x0202, 0, [1, 0, 0, 0]);
    p.extend_from_slice(&[1, b'a', 0xC0, 16, 0xC0, 14, 0, 1, 0, 1]);
    cases.push(("pointer ping-pong".into(), p, FormerrOrNothing));
    let mut p = header(0x0203, 0, [1, 0, 0, 0]);
    p.extend_from_slice(&[3, b'w', b'e', b'b', 0xC0, 0x3F, 0, 1, 0, 1]);
    cases.push(("pointer past the end".into(), p, FormerrOrNothing));
    // Label lengths 64 and 0x80 (reserved label types).
    for len in [64u8, 0x80] {
        let mut p = header(0x0300 + len as u16, 0, [1, 0, 0, 0]);
        p.push(len);
        p.extend_from_slice(&[b'a'; 64]);
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        cases.push((format!("label length {len}"), p, FormerrOrNothing));
    }
    // A name longer than 255 bytes.
    let mut p = header(0x0400, 0, [1, 0, 0, 0]);
    for _ in 0..5 {
        p.push(63);
        p.extend_from_slice(&[b'x'; 63]);
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    cases.push(("name over 255 bytes".into(), p, FormerrOrNothing));
    // Question counts other than one.
    let mut p = good.clone();
    p[0..2].copy_from_slice(&0x0500u16.to_be_bytes());
    p[5] = 0;
    cases.push(("qdcount 0".into(), p, FormerrOrNothing));
    let mut p = good.clone();
    p[0..2].copy_from_slice(&0x0501u16.to_be_bytes());
    p[5] = 2;
    p.extend_from_slice(&good[12..]);
    cases.push(("qdcount 2".into(), p, FormerrOrNothing));
    // Huge counts with nothing behind them.
    for (i, idx) in [4usize, 6, 8, 10].into_iter().enumerate() {
        let mut p = good.clone();
        p[0..2].copy_from_slice(&(0x0600 + i as u16).to_be_bytes());
        p[idx] = 0xFF;
        p[idx + 1] = 0xFF;
        cases.push((format!("count at byte {idx} = 65535"), p, FormerrOrNothing));
    }
    // An OPT whose rdata length runs past the end.
    let mut o = opt(1232, 0, 0, &[]);
    let n = o.len();
    o[n - 2..].copy_from_slice(&500u16.to_be_bytes());
    let p = raw_query(0x0700, 0, "web.svc.example.", T_A, &[o]);
    cases.push(("OPT rdata overrun".into(), p, FormerrOrNothing));
    // A response (QR=1), well-formed otherwise, and a FORMERR response.
    let mut p = good.clone();
    p[2] |= 0x80;
    cases.push(("response".into(), p, Nothing));
    let p = header(0x0801, QR | 1, [0, 0, 0, 0]);
    cases.push(("FORMERR response".into(), p, Nothing));
    // Random garbage (a fixed xorshift, so failures reproduce).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..200 {
        let len = (next() % 600) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        cases.push((format!("random #{i}"), bytes, FormerrOrNothing));
    }
    // Random bytes after a plausible header (QR=0, qdcount=1).
    for i in 0..100 {
        let mut p = header(next() as u16, 0, [1, 0, 0, 0]);
        let len = (next() % 300) as usize;
        p.extend((0..len).map(|_| next() as u8));
        cases.push((format!("random question #{i}"), p, FormerrOrNothing));
    }

    for (what, packet, expect) in &cases {
        let replies = replies_before_sentinel(&socket, server.addr, packet);
        match expect {
            Nothing => assert!(
                replies.is_empty(),
                "{what}: expected no reply, got {replies:02x?}"
            ),
            FormerrOrNothing => {
                assert!(replies.len() <= 1, "{what}: {} replies", replies.len());
                if let Some(reply) = replies.first() {
                    assert!(reply.len() >= 12, "{what}: short reply");
                    assert_eq!(&reply[..2], &packet[..2], "{what}: id echoed");
                    assert_ne!(r_flags(reply) & QR, 0, "{what}: QR");
                    let rcode = r_rcode(reply);
                    if what.starts_with("random") {
                        // Random bytes may happen to parse; any response code
                        // is fine as long as nothing is answered.
                        assert_eq!(r_count(reply, 1), 0, "{what}");
                    } else {
                        assert_eq!(rcode, 1, "{what}: FORMERR");
                        assert_eq!(r_count(reply, 1) + r_count(reply, 2), 0, "{what}");
                    }
                }
            }
        }
    }
    // FORMERR is actually sent for the plain cases (not silently dropped).
    for what in ["qdcount 0", "qdcount 2", "pointer loop", "label length 64"] {
        let (_, packet, _) = cases.iter().find(|(w, _, _)| w == what).unwrap();
        let replies = replies_before_sentinel(&socket, server.addr, packet);
        assert_eq!(replies.len(), 1, "{what}");
        assert_eq!(r_rcode(&replies[0]), 1, "{what}");
    }

    // Over TCP too: garbage gets FORMERR or a closed connection, and the next
    // connection is answered.
    for (what, packet, _) in cases.iter().filter(|(_, p, _)| !p.is_empty()).take(40) {
        let mut stream = tcp_connect(server.addr);
        tcp_send(&mut stream, packet);
        if let Ok(reply) = tcp_recv(&mut stream) {
            assert!(reply.len() >= 12, "{what}");
            assert_eq!(r_count(&reply, 1), 0, "{what}");
        }
    }
    // A length prefix promising more than is ever sent, then a hang-up.
    let mut stream = tcp_connect(server.addr);
    stream.write_all(&[0x01, 0x00, 0, 0, 0]).unwrap();
    drop(stream);
    let m = server.tcp(&query("web.svc.example.", RecordType::A));
    assert_eq!(m.answers.len(), 3);
    let m = server.udp(&query("web.svc.example.", RecordType::A));
    assert_eq!(m.answers.len(), 3);
}

// ---------------------------------------------------------------------------
// Truncation and message size

#[test]
fn answer_too_big_for_udp_without_edns_is_truncated_within_512_bytes() {
    let dir = zone_dir(&[("big.toml", &many_instances_zone(1000))]);
    let server = Server::start(dir.path());
    let reply = server
        .udp_raw(&raw_query(21, RD, "_many._tcp.big.test.", T_SRV, &[]))
        .unwrap();
    assert!(reply.len() <= 512, "{} bytes", reply.len());
    assert_ne!(r_flags(&reply) & TC, 0, "TC");
    assert_ne!(r_flags(&reply) & AA, 0, "AA");
    assert_eq!(r_rcode(&reply), 0);
    let m = decode(&reply);
    assert!(m.answers.len() < 1000);
    assert!(m.answers.iter().all(|r| r.record_type() == RecordType::SRV));
}

#[test]
fn answer_too_big_for_the_edns_size_is_truncated_within_that_size() {
    let dir = zone_dir(&[("big.toml", &many_instances_zone(1000))]);
    let server = Server::start(dir.path());
    for (offered, limit) in [
        (1232u16, 1232usize),
        (4096, 1232),
        (65535, 1232),
        (800, 800),
        (100, 512),
    ] {
        let q = raw_query(
            22,
            RD,
            "_many._tcp.big.test.",
            T_SRV,
            &[opt(offered, 0, 0, &[])],
        );
        let reply = server.udp_raw(&q).unwrap();
        assert!(
            reply.len() <= limit,
            "offered {offered}: {} bytes",
            reply.len()
        );
        assert_ne!(r_flags(&reply) & TC, 0, "offered {offered}: TC");
        trailing_opt(&reply);
        assert!(decode(&reply).edns.is_some());
    }
}

#[tokio::test]
async fn service_with_1000_instances_returns_all_srv_records_over_tcp() {
    let dir = zone_dir(&[("big.toml", &many_instances_zone(1000))]);
    let server = Server::start(dir.path());
    let mut client = tcp_client(server.addr).await;
    for qname in ["_many._tcp.big.test.", "many.big.test."] {
        let m = ask(&mut client, qname, RecordType::SRV).await;
        assert!(!m.metadata.truncation, "{qname}");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let targets: BTreeSet<String> = srvs(&m.answers).into_iter().map(|s| s.3).collect();
        assert_eq!(targets.len(), 1000, "{qname}");
        assert!(targets.contains("i0000.big.test.") && targets.contains("i0999.big.test."));
        assert_eq!(m.additionals.len(), 1000, "one A per instance");
    }
    let m = ask(&mut client, "many.big.test.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1000);
    // The same over UDP is truncated.
    let m = server.udp(&query("_many._tcp.big.test.", RecordType::SRV));
    assert!(m.metadata.truncation);
}

#[test]
fn at_64k_additional_records_are_dropped_before_answers() {
    // 1500 dual-stack instances: the SRV records fit in 64 KiB, their glue does not.
    let n = 1500;
    let dir = zone_dir(&[(
        "huge.toml",
        &dual_stack_zone("huge.test", "huge", "inst-", n),
    )]);
    let server = Server::start(dir.path());
    let q = raw_query(23, RD, "_huge._tcp.huge.test.", T_SRV, &[]);
    let reply = tcp_raw(server.addr, &q).expect("a TCP reply");
    assert!(reply.len() < 65536);
    assert!(
        reply.len() > 60_000,
        "filled close to the limit: {}",
        reply.len()
    );
    assert_eq!(r_flags(&reply) & TC, 0, "all answers are there: no TC");
    let m = decode(&reply);
    assert_eq!(m.answers.len(), n, "every SRV record");
    let targets: BTreeSet<String> = srvs(&m.answers).into_iter().map(|s| s.3).collect();
    assert_eq!(targets.len(), n);
    assert!(!m.additionals.is_empty(), "some glue fits");
    assert!(
        m.additionals.len() < 2 * n,
        "glue trimmed: {}",
        m.additionals.len()
    );
    // What glue remains is whole RRsets for targets of the answer.
    for (owner, _) in addrs(&m.additionals) {
        assert!(targets.contains(&owner), "{owner}");
    }
    // A larger zone whose answers alone overflow: TC over TCP, still < 64 KiB.
    let dir = zone_dir(&[(
        "huger.toml",
        &dual_stack_zone("huger.test", "huger", "a-rather-long-instance-name-", 2500),
    )]);
    let server = Server::start(dir.path());
    let q = raw_query(24, RD, "_huger._tcp.huger.test.", T_SRV, &[]);
    let reply = tcp_raw(server.addr, &q).expect("a TCP reply");
    assert_ne!(r_flags(&reply) & TC, 0);
    let m = decode(&reply);
    assert!(!m.answers.is_empty() && m.answers.len() < 2500);
    assert!(
        m.additionals.is_empty(),
        "no glue while answers are missing"
    );
}

#[test]
fn when_only_glue_does_not_fit_over_udp_answers_go_without_tc() {
    // 12 dual-stack instances: 12 SRV records fit in 512 bytes, 24 glue records do not.
    let dir = zone_dir(&[("glue.toml", &dual_stack_zone("glue.test", "web", "w-", 12))]);
    let server = Server::start(dir.path());
    let reply = server
        .udp_raw(&raw_query(25, RD, "_web._tcp.glue.test.", T_SRV, &[]))
        .unwrap();
    assert!(reply.len() <= 512, "{}", reply.len());
    assert_eq!(r_flags(&reply) & TC, 0, "no TC: RFC 2181 9");
    let m = decode(&reply);
    assert_eq!(m.answers.len(), 12);
    assert!(
        !m.additionals.is_empty() && m.additionals.len() < 24,
        "{}",
        m.additionals.len()
    );
    // Whole RRsets: an instance's A and AAAA come together or its AAAA is the cut.
    let targets: BTreeSet<String> = srvs(&m.answers).into_iter().map(|s| s.3).collect();
    for (owner, _) in addrs(&m.additionals) {
        assert!(targets.contains(&owner));
    }
    // With EDNS room for everything, everything comes.
    let q = raw_query(
        26,
        RD,
        "_web._tcp.glue.test.",
        T_SRV,
        &[opt(1232, 0, 0, &[])],
    );
    let reply = server.udp_raw(&q).unwrap();
    assert_eq!(r_flags(&reply) & TC, 0);
    let m = decode(&reply);
    assert_eq!((m.answers.len(), m.additionals.len()), (12, 24));
}

// ---------------------------------------------------------------------------
// TCP

#[test]
fn pipelined_tcp_queries_are_all_answered_in_order() {
    let server = Server::start(&example_zones());
    let mut stream = tcp_connect(server.addr);
    let questions = [
        ("web.svc.example.", T_A, 3),
        ("_web._tcp.svc.example.", T_SRV, 3),
        ("db.svc.example.", T_AAAA, 1),
        ("nope.svc.example.", T_A, 0),
        ("api-1.svc.example.", T_A, 1),
        ("web-2.svc.example.", T_AAAA, 1),
    ];
    let mut all = Vec::new();
    for (i, (qname, qtype, _)) in questions.iter().enumerate() {
        let q = raw_query(100 + i as u16, RD, qname, *qtype, &[]);
        all.extend_from_slice(&(q.len() as u16).to_be_bytes());
        all.extend_from_slice(&q);
    }
    // All in one write, so they arrive together.
    stream.write_all(&all).unwrap();
    for (i, (qname, _, answers)) in questions.iter().enumerate() {
        let reply = tcp_recv(&mut stream).expect("a reply per query");
        assert_eq!(r_id(&reply), 100 + i as u16, "{qname}");
        assert_eq!(r_count(&reply, 1), *answers, "{qname}");
    }
    // The connection stays usable.
    tcp_send(
        &mut stream,
        &raw_query(200, RD, "cache.svc.example.", T_A, &[]),
    );
    assert_eq!(r_id(&tcp_recv(&mut stream).unwrap()), 200);
}

#[test]
fn idle_tcp_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start_with(&example_zones(), &["--tcp-idle-timeout", "1"]);
    let mut stream = tcp_connect(server.addr);
    // Answered first: the connection works.
    tcp_send(&mut stream, &raw_query(1, RD, "web.svc.example.", T_A, &[]));
    assert_eq!(r_count(&tcp_recv(&mut stream).unwrap(), 1), 3);
    let idle_since = Instant::now();
    assert!(
        closed_without_data(&mut stream, Duration::from_secs(5)),
        "closed by the server"
    );
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "not before the timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "closed in time: {waited:?}"
    );

    // A connection that never sends anything is closed too.
    let mut stream = tcp_connect(server.addr);
    let start = Instant::now();
    assert!(closed_without_data(&mut stream, Duration::from_secs(5)));
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_tcp_connection_beyond_the_cap_replaces_the_idlest_while_udp_still_answers() {
    let server = Server::start_with(&example_zones(), &["--max-tcp-connections", "5"]);
    let q = raw_query(5, RD, "web.svc.example.", T_A, &[]);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = tcp_connect(server.addr);
        // Answered, so the server has accepted it and holds a slot for it.
        tcp_send(&mut s, &q);
        assert_eq!(r_count(&tcp_recv(&mut s).unwrap(), 1), 3);
        held.push(s);
    }
    // A sixth is served: the connection idle the longest, the first, makes
    // room, closed without an answer.
    let mut sixth = tcp_connect(server.addr);
    tcp_send(&mut sixth, &q);
    assert_eq!(r_count(&tcp_recv(&mut sixth).unwrap(), 1), 3);
    assert!(
        closed_without_data(&mut held[0], Duration::from_secs(3)),
        "the idlest is closed"
    );
    // The others still work, and UDP is unaffected.
    tcp_send(&mut held[4], &q);
    assert_eq!(r_count(&tcp_recv(&mut held[4]).unwrap(), 1), 3);
    assert_eq!(
        server
            .udp(&query("web.svc.example.", RecordType::A))
            .answers
            .len(),
        3
    );

    // With more than three quarters of the slots taken, idle connections
    // are closed after a second rather than the default ten. (Only until
    // enough are closed to bring the count down, so look at the first.)
    let idle_since = Instant::now();
    let closed = |s: &mut TcpStream| {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    while !held[1..4].iter_mut().any(closed) {
        assert!(
            idle_since.elapsed() < Duration::from_secs(4),
            "no idle connection closed early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Once they are closed, every slot comes back: five at once are all
    // answered.
    drop(held);
    drop(sixth);
    let deadline = Instant::now() + Duration::from_secs(5);
    let all_five = || {
        let mut again: Vec<TcpStream> = (0..5).map(|_| tcp_connect(server.addr)).collect();
        again.iter_mut().all(|s| {
            tcp_send(s, &q);
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            tcp_recv(s).is_ok_and(|reply| r_count(&reply, 1) == 3)
        })
    };
    while !all_five() {
        assert!(
            Instant::now() < deadline,
            "fewer than 5 TCP slots after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Idle TCP clients that connect, send nothing, and connect again as soon as
/// the server closes them, until `stop`. Each client gives up after 60 s
/// whatever happens, so a failed test leaves nothing behind.
fn reconnecting_idle_clients(
    addr: SocketAddr,
    clients: usize,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let stop = stop.clone();
        flood.spawn(async move {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.is_cancelled() && tokio::time::Instant::now() < give_up {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut buf = [0u8; 64];
                tokio::select! {
                    _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf) => {}
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(give_up) => return,
                }
            }
        });
    }
    flood
}

/// One query on a new TCP connection; true if answered within 2 s.
async fn legitimate_tcp_query(addr: SocketAddr, id: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let q = raw_query(id, RD, "web.svc.example.", T_A, &[]);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await?;
        let len = s.read_u16().await?;
        let mut reply = vec![0u8; len as usize];
        s.read_exact(&mut reply).await?;
        std::io::Result::Ok(reply)
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(Ok(reply)) => r_id(&reply) == id && r_count(&reply, 1) == 3,
        _ => false,
    }
}

/// `queries` legitimate TCP queries, 50 ms apart, while `clients`
/// reconnecting idle clients flood the server (after `held` idle
/// connections have taken slots). Returns how many were answered.
async fn queries_answered_during_a_flood(
    addr: SocketAddr,
    held: usize,
    clients: usize,
    queries: u16,
) -> usize {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut held_idle = Vec::new();
    for _ in 0..held {
        held_idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut flood = reconnecting_idle_clients(addr, clients, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answered = 0;
    for id in 0..queries {
        if legitimate_tcp_query(addr, 1000 + id).await {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    while flood.join_next().await.is_some() {}
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_tcp_queries_are_answered_during_a_connection_flood() {
    let server = Server::start_with(&example_zones(), &["--max-tcp-connections", "64"]);
    // Every slot held by an idle connection, and 64 more idle clients
    // reconnecting as soon as they are closed.
    let answered = queries_answered_during_a_flood(server.addr, 64, 64, 20).await;
    assert!(answered >= 18, "{answered} of 20 answered");
    // UDP is not part of it, and the server is still up.
    assert_eq!(
        server
            .udp(&query("web.svc.example.", RecordType::A))
            .answers
            .len(),
        3
    );
}

/// A measurement, not a test: 3000 reconnecting idle TCP clients against the
/// default limits (512 connections, 10 s idle timeout), and 20 legitimate
/// TCP queries during the flood. Run with
/// `cargo test --release --test dns -- --ignored --nocapture tcp_flood_measurement`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn tcp_flood_measurement() {
    let server = Server::start(&example_zones());
    let started = Instant::now();
    let answered = queries_answered_during_a_flood(server.addr, 0, 3000, 20).await;
    println!(
        "tcp flood: 3000 reconnecting idle clients, default limits: {answered} of 20 legitimate TCP queries answered ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Startup

#[tokio::test]
async fn broken_zone_file_is_logged_with_its_position_and_the_valid_one_is_served() {
    let dir = zone_dir(&[
        (
            "a-broken.toml",
            "zone = \"broken.test\"\n[hosts]\nx = \"10.0.0.300\"\n",
        ),
        (
            "b-good.toml",
            "zone = \"good.test\"\n[hosts]\nx = \"192.0.2.10\"\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "x.good.test.", RecordType::A).await;
    assert_eq!(
        addrs(&m.answers),
        [("x.good.test.".to_string(), ip("192.0.2.10"))]
    );
    let m = ask(&mut client, "x.broken.test.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::Refused,
        "the broken zone is not served"
    );
    let expected = format!(
        "{}:3:5: invalid IP address",
        dir.path().join("a-broken.toml").display()
    );
    assert!(
        server.wait_for_log(&expected, Duration::from_secs(5)),
        "log lacks {expected:?}:\n{}",
        server.log_text()
    );
}

#[test]
fn a_tcp_client_that_stops_reading_loses_its_connection_slot() {
    let zones = zone_dir(&[("big.toml", &many_instances_zone(1000))]);
    let server = Server::start_with(
        zones.path(),
        &["--max-tcp-connections", "1", "--tcp-idle-timeout", "1"],
    );
    // Pipeline many 50 KiB answers and never read them: the server's writes
    // fill the socket buffers and stall.
    let stalled = TcpStream::connect(server.addr).unwrap();
    socket2::SockRef::from(&stalled)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut stalled = stalled;
    let q = raw_query(1, RD, "_many._tcp.big.test.", T_SRV, &[]);
    for _ in 0..200 {
        tcp_send(&mut stalled, &q);
    }

    // The one slot frees up once the stalled write times out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let small = raw_query(2, RD, "big.test.", T_A, &[]);
    loop {
        let mut s = tcp_connect(server.addr);
        tcp_send(&mut s, &small);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if tcp_recv(&mut s).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a client that does not read held the only TCP slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stalled);
}
