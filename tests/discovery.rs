//! Service discovery beyond plain A/AAAA/SRV, over real DNS queries to the
//! real server: weighted address order and `max_answers`, tag names, DNS-SD
//! browsing (with `dig` and with Python's dnspython), and reverse lookups.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use tempfile::TempDir;

fn zone_dir(text: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("d.toml"), text).expect("write zone file");
    dir
}

/// Addresses of the answer section, in order.
fn answer_addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// SRV targets of the answer section, lowercased and sorted.
fn srv_targets(m: &Message) -> Vec<String> {
    let mut out: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_lowercase().to_ascii()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `dig +short` lines, sorted.
fn short(server: &Server, args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("+short");
    let mut lines: Vec<String> = dig(server, &args).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

const WEIGHTED: &str = r#"zone = "d.test"
[[services]]
name = "web"
port = 80
[[services.instances]]
name = "light"
address = ["10.1.0.1", "fd00:1::1"]
weight = 1
[[services.instances]]
name = "heavy"
address = ["10.1.0.3", "fd00:1::3"]
weight = 3

[[services]]
name = "three"
port = 80
[[services.instances]]
name = "t-1"
address = "10.2.0.1"
weight = 1
[[services.instances]]
name = "t-2"
address = "10.2.0.2"
weight = 1
[[services.instances]]
name = "t-3"
address = "10.2.0.3"
weight = 2

[[services]]
name = "tiered"
port = 80
[[services.instances]]
name = "main-1"
address = "10.3.0.1"
[[services.instances]]
name = "main-2"
address = "10.3.0.2"
[[services.instances]]
name = "backup"
address = "10.3.0.9"
priority = 1
weight = 100

[[services]]
name = "capped"
port = 80
max_answers = 2
[[services.instances]]
name = "c-1"
address = "10.4.0.1"
[[services.instances]]
name = "c-2"
address = "10.4.0.2"
[[services.instances]]
name = "c-3"
address = "10.4.0.3"
[[services.instances]]
name = "c-4"
address = "10.4.0.4"
"#;

/// How often each address comes first over `n` UDP queries.
fn first_counts(
    server: &Server,
    name: &str,
    rtype: RecordType,
    n: usize,
) -> BTreeMap<IpAddr, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = server.udp(&query(name, rtype));
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let addrs = answer_addrs(&reply);
        *counts.entry(addrs[0]).or_insert(0) += 1;
    }
    counts
}

/// The share of first places follows the weights. Tolerance: ±5 percentage
/// points over 2000 queries. The server's 32 orders give each instance
/// exactly its weight's share of first places for these weights (1:3 is
/// 8:24 of 32, 1:1:2 is 8:8:16), and each query picks an order uniformly, so
/// the observed share is binomial with n = 2000: its standard deviation is
/// under 1.2 points, and 5 points is more than 4 standard deviations (a
/// false failure less than once in 30 000 runs).
#[test]
fn addresses_come_first_in_proportion_to_the_weights() {
    let dir = zone_dir(WEIGHTED);
    let server = Server::start(dir.path());
    let n = 2000;
    let share = |counts: &BTreeMap<IpAddr, usize>, a: &str| {
        counts.get(&ip(a)).copied().unwrap_or(0) as f64 / n as f64
    };

    let a = first_counts(&server, "web.d.test.", RecordType::A, n);
    eprintln!("first-address split over {n} queries, weights 1:3: {a:?}");
    assert!((share(&a, "10.1.0.1") - 0.25).abs() < 0.05, "{a:?}");
    assert!((share(&a, "10.1.0.3") - 0.75).abs() < 0.05, "{a:?}");
    let aaaa = first_counts(&server, "web.d.test.", RecordType::AAAA, n);
    assert!((share(&aaaa, "fd00:1::1") - 0.25).abs() < 0.05, "{aaaa:?}");

    let three = first_counts(&server, "three.d.test.", RecordType::A, n);
    for (addr, expected) in [("10.2.0.1", 0.25), ("10.2.0.2", 0.25), ("10.2.0.3", 0.5)] {
        assert!((share(&three, addr) - expected).abs() < 0.05, "{three:?}");
    }

    // Every answer still has every address, and SRV carries the weights.
    let reply = server.udp(&query("web.d.test.", RecordType::A));
    let all: BTreeSet<IpAddr> = answer_addrs(&reply).into_iter().collect();
    assert_eq!(all, BTreeSet::from([ip("10.1.0.1"), ip("10.1.0.3")]));
    let srv = dig(&server, &["_web._tcp.d.test.", "SRV", "+short"]);
    assert!(srv.contains("0 1 80 light.d.test."), "{srv}");
    assert!(srv.contains("0 3 80 heavy.d.test."), "{srv}");
}

#[test]
fn higher_priority_levels_come_after_the_lowest() {
    let dir = zone_dir(WEIGHTED);
    let server = Server::start(dir.path());
    let mut firsts = BTreeSet::new();
    for _ in 0..300 {
        let addrs = answer_addrs(&server.udp(&query("tiered.d.test.", RecordType::A)));
        assert_eq!(addrs.len(), 3);
        // The backup's weight of 100 does not matter: its priority is 1.
        assert_eq!(addrs[2], ip("10.3.0.9"), "{addrs:?}");
        firsts.insert(addrs[0]);
    }
    // Same-weight instances take turns in first place.
    assert_eq!(firsts, BTreeSet::from([ip("10.3.0.1"), ip("10.3.0.2")]));
}

#[test]
fn max_answers_caps_the_addresses_and_rotates_them() {
    let dir = zone_dir(WEIGHTED);
    let server = Server::start(dir.path());
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        let addrs = answer_addrs(&server.udp(&query("capped.d.test.", RecordType::A)));
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_ne!(addrs[0], addrs[1]);
        seen.extend(addrs);
    }
    assert_eq!(seen.len(), 4, "every instance gets its turn: {seen:?}");
    // Over TCP too, and the SRV answer keeps every instance.
    let tcp = server.tcp(&query("capped.d.test.", RecordType::A));
    assert_eq!(answer_addrs(&tcp).len(), 2);
    let srv = server.udp(&query("_capped._tcp.d.test.", RecordType::SRV));
    assert_eq!(srv_targets(&srv).len(), 4);
    // An instance's own name is not capped or weighted.
    let dig_out = short(&server, &["c-1.d.test.", "A"]);
    assert_eq!(dig_out, ["10.4.0.1"]);
}

const TAGGED: &str = r#"zone = "t.test"
[[services]]
name = "web"
port = 80
tags = ["http"]
[[services.instances]]
name = "web-1"
address = ["10.0.0.1", "fd00::1"]
tags = ["canary", "eu"]
metadata = { version = "2", path = "/api" }
[[services.instances]]
name = "web-2"
address = "10.0.0.2"
tags = ["eu"]
[[services.instances]]
name = "web-3"
address = "10.0.0.3"
port = 8443

[[services]]
name = "db"
protocol = "udp"
port = 5432
[[services.instances]]
name = "db-1"
target = "db.elsewhere.example."
"#;

#[test]
fn tag_names_answer_only_the_tagged_instances() {
    let dir = zone_dir(TAGGED);
    let server = Server::start(dir.path());
    // Consul form: <tag>.<service>.<zone>, A, AAAA and SRV.
    assert_eq!(short(&server, &["canary.web.t.test.", "A"]), ["10.0.0.1"]);
    assert_eq!(short(&server, &["canary.web.t.test.", "AAAA"]), ["fd00::1"]);
    assert_eq!(
        short(&server, &["eu.web.t.test.", "A"]),
        ["10.0.0.1", "10.0.0.2"]
    );
    let srv = server.udp(&query("eu.web.t.test.", RecordType::SRV));
    assert_eq!(srv_targets(&srv), ["web-1.t.test.", "web-2.t.test."]);
    // The service's tags apply to every instance.
    assert_eq!(
        short(&server, &["http.web.t.test.", "A"]),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    // Consul's RFC 2782 form: _<service>._<tag>.<zone>.
    let rfc = server.udp(&query("_web._canary.t.test.", RecordType::SRV));
    assert_eq!(srv_targets(&rfc), ["web-1.t.test."]);
    let rfc = server.udp(&query("_web._eu.t.test.", RecordType::SRV));
    assert_eq!(srv_targets(&rfc), ["web-1.t.test.", "web-2.t.test."]);
    // Tags are matched without regard to letter case.
    assert_eq!(short(&server, &["CANARY.Web.t.test.", "A"]), ["10.0.0.1"]);
    // An unknown tag does not exist; a tag name has no TXT.
    let none = server.udp(&query("nope.web.t.test.", RecordType::A));
    assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
    let nodata = server.udp(&query("canary.web.t.test.", RecordType::TXT));
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
}

#[test]
fn dns_sd_browse_sequence_with_dig() {
    let dir = zone_dir(TAGGED);
    let server = Server::start(dir.path());
    // 1. Service types (RFC 6763 section 9).
    assert_eq!(
        short(&server, &["_services._dns-sd._udp.t.test.", "PTR"]),
        ["_db._udp.t.test.", "_web._tcp.t.test."]
    );
    // 2. Instances of a type.
    assert_eq!(
        short(&server, &["_web._tcp.t.test.", "PTR"]),
        [
            "web-1._web._tcp.t.test.",
            "web-2._web._tcp.t.test.",
            "web-3._web._tcp.t.test."
        ]
    );
    // 3. An instance: SRV with its host's addresses as additional records.
    let srv = dig(&server, &["web-1._web._tcp.t.test.", "SRV"]);
    assert!(srv.contains("status: NOERROR"), "{srv}");
    assert!(srv.contains("SRV\t0 1 80 web-1.t.test."), "{srv}");
    let additional = srv.split("ADDITIONAL SECTION").nth(1).unwrap_or("");
    assert!(
        additional.contains("web-1.t.test.\t\t30\tIN\tA\t10.0.0.1"),
        "{srv}"
    );
    assert!(additional.contains("fd00::1"), "{srv}");
    assert_eq!(
        short(&server, &["web-3._web._tcp.t.test.", "SRV"]),
        ["0 1 8443 web-3.t.test."]
    );
    // 4. Its TXT record: key=value metadata, or one empty string.
    assert_eq!(
        short(&server, &["web-1._web._tcp.t.test.", "TXT"]),
        ["\"version=2\" \"path=/api\""]
    );
    assert_eq!(
        short(&server, &["web-2._web._tcp.t.test.", "TXT"]),
        ["\"\""]
    );
    // An instance elsewhere: SRV to its target, no glue.
    assert_eq!(
        short(&server, &["db-1._db._udp.t.test.", "SRV"]),
        ["0 1 5432 db.elsewhere.example."]
    );
    // Subtypes: _<tag>._sub._<service>._<proto> (RFC 6763 section 7.1).
    assert_eq!(
        short(&server, &["_eu._sub._web._tcp.t.test.", "PTR"]),
        ["web-1._web._tcp.t.test.", "web-2._web._tcp.t.test."]
    );
    assert_eq!(
        short(&server, &["_http._sub._web._tcp.t.test.", "PTR"]).len(),
        3
    );
    // The PTR answer carries each instance's SRV and TXT (section 12.1).
    let browse = server.udp(&query("_web._tcp.t.test.", RecordType::PTR));
    let extra: BTreeSet<RecordType> = browse.additionals.iter().map(|r| r.record_type()).collect();
    assert!(
        extra.is_superset(&BTreeSet::from([
            RecordType::SRV,
            RecordType::TXT,
            RecordType::A
        ])),
        "{extra:?}"
    );
    // Unknown instance names do not exist.
    let none = server.udp(&query("web-9._web._tcp.t.test.", RecordType::SRV));
    assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
}

/// A Python interpreter with dnspython: Debian's `python3-dnspython` is for
/// /usr/bin/python3, which may not be the first python3 on the PATH.
fn python_with_dnspython() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import dns.resolver"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A DNS-SD client walking PTR -> SRV -> TXT -> A as RFC 6763 describes,
/// written with dnspython; prints one line per instance.
const BROWSE_PY: &str = r#"
import sys
import dns.resolver

server, port, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = dns.resolver.Resolver(configure=False)
r.nameservers = [server]
r.port = port

for stype in sorted(str(p.target) for p in r.resolve("_services._dns-sd._udp." + domain, "PTR")):
    subtype = sys.argv[4] if len(sys.argv) > 4 else None
    browse = stype if subtype is None else "_%s._sub.%s" % (subtype, stype)
    try:
        instances = r.resolve(browse, "PTR")
    except dns.resolver.NXDOMAIN:
        continue
    for ptr in sorted(str(p.target) for p in instances):
        srv = r.resolve(ptr, "SRV")[0]
        txt = b" ".join(s for t in r.resolve(ptr, "TXT") for s in t.strings).decode()
        try:
            addrs = sorted(a.address for a in r.resolve(srv.target, "A"))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            addrs = []
        print("%s port=%d txt=[%s] a=%s" % (ptr, srv.port, txt, ",".join(addrs)))
"#;

/// The instances a DNS-SD client finds. dnspython is a requirement of the
/// suite (scripts/test installs it): without it this fails, never skips.
fn python_browse(server: &Server, domain: &str, subtype: Option<&str>) -> Vec<String> {
    let python = python_with_dnspython()
        .expect("dnspython is installed (apt-get install python3-dnspython; scripts/test does)");
    let mut command = Command::new(python);
    command
        .args(["-c", BROWSE_PY])
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg(domain);
    if let Some(s) = subtype {
        command.arg(s);
    }
    let out = command.output().expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn dns_sd_browse_with_dnspython() {
    let dir = zone_dir(TAGGED);
    let server = Server::start(dir.path());
    let lines = python_browse(&server, "t.test.", None);
    assert_eq!(
        lines,
        [
            "db-1._db._udp.t.test. port=5432 txt=[] a=",
            "web-1._web._tcp.t.test. port=80 txt=[version=2 path=/api] a=10.0.0.1",
            "web-2._web._tcp.t.test. port=80 txt=[] a=10.0.0.2",
            "web-3._web._tcp.t.test. port=8443 txt=[] a=10.0.0.3",
        ]
    );
    let canary = python_browse(&server, "t.test.", Some("canary"));
    assert_eq!(
        canary,
        ["web-1._web._tcp.t.test. port=80 txt=[version=2 path=/api] a=10.0.0.1"]
    );
}

#[test]
fn a_runtime_registration_is_browsable_with_its_metadata_and_tags() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let reply = admin.ok(json!({"op":"register","zone":"svc.example","service":"web",
        "instance":"web-9","address":["10.0.0.19"],"port":8081,"weight":5,
        "tags":["canary"],"metadata":{"version":"3","region":"eu"}}));
    assert_eq!(reply["instance"]["metadata"]["region"], "eu");
    let ptrs = short(&server, &["_web._tcp.svc.example.", "PTR"]);
    assert!(
        ptrs.contains(&"web-9._web._tcp.svc.example.".to_string()),
        "{ptrs:?}"
    );
    assert_eq!(
        short(&server, &["web-9._web._tcp.svc.example.", "SRV"]),
        ["0 5 8081 web-9.svc.example."]
    );
    // Metadata from a JSON object: keys in order.
    assert_eq!(
        short(&server, &["web-9._web._tcp.svc.example.", "TXT"]),
        ["\"region=eu\" \"version=3\""]
    );
    assert_eq!(
        short(&server, &["_canary._sub._web._tcp.svc.example.", "PTR"]),
        ["web-9._web._tcp.svc.example."]
    );
    assert_eq!(
        short(&server, &["canary.web.svc.example.", "A"]),
        ["10.0.0.19"]
    );
    // The service's own tag (http, in the zone file) applies to it too.
    assert!(short(&server, &["http.web.svc.example.", "A"]).contains(&"10.0.0.19".to_string()));
    assert_eq!(
        python_browse(&server, "svc.example.", Some("canary")),
        ["web-9._web._tcp.svc.example. port=8081 txt=[region=eu version=3] a=10.0.0.19"]
    );
    // Bad metadata is refused with a reason.
    let e = admin.error(json!({"op":"register","zone":"svc.example","service":"web",
        "instance":"web-8","address":"10.0.0.18","port":80,"metadata":{"a=b":"1"}}));
    assert!(e.contains("contains '='"), "{e}");
    // Deregistered: gone from browsing.
    admin.ok(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-9"}));
    let gone = server.udp(&query("web-9._web._tcp.svc.example.", RecordType::TXT));
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn reverse_lookups_name_instances_and_hosts() {
    let server = Server::start_with(
        &example_zones(),
        &["--reverse", "10.0.0.0/8", "--reverse", "fd00::/64"],
    );
    assert_eq!(short(&server, &["-x", "10.0.0.11"]), ["web-1.svc.example."]);
    assert_eq!(short(&server, &["-x", "10.0.0.21"]), ["db.svc.example."]);
    assert_eq!(short(&server, &["-x", "fd00::11"]), ["web-1.svc.example."]);
    assert_eq!(short(&server, &["-x", "fd00::21"]), ["db.svc.example."]);

    // An address inside the network that nothing has: NXDOMAIN with the SOA.
    let unknown = dig(&server, &["-x", "10.9.9.9"]);
    assert!(unknown.contains("status: NXDOMAIN"), "{unknown}");
    assert!(unknown.contains("flags: qr aa"), "{unknown}");
    assert!(
        unknown.contains(
            "10.in-addr.arpa.\t30\tIN\tSOA\t10.in-addr.arpa. hostmaster.10.in-addr.arpa."
        ),
        "{unknown}"
    );
    // Names between the apex and an address exist (NODATA, not NXDOMAIN).
    let ent = server.udp(&query("0.0.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
    assert!(ent.answers.is_empty());
    // Outside the configured networks: not ours.
    for outside in ["192.168.1.1", "2001:db8::1"] {
        let refused = dig(&server, &["-x", outside]);
        assert!(refused.contains("status: REFUSED"), "{refused}");
    }

    // Runtime instances are named too, and leave with their registration.
    let mut admin = server.admin();
    admin.ok(json!({"op":"register","zone":"svc.example","service":"web",
        "instance":"web-9","address":["10.0.0.19"],"port":8080}));
    assert_eq!(short(&server, &["-x", "10.0.0.19"]), ["web-9.svc.example."]);
    admin.ok(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-9"}));
    let gone = dig(&server, &["-x", "10.0.0.19"]);
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
}

#[test]
fn overlapping_reverse_networks_put_each_address_in_the_most_specific_zone() {
    // The wider network first: the order on the command line must not matter.
    let server = Server::start_with(
        &example_zones(),
        &["--reverse", "10.0.0.0/8", "--reverse", "10.0.0.0/24"],
    );
    assert_eq!(short(&server, &["-x", "10.0.0.11"]), ["web-1.svc.example."]);
    assert_eq!(short(&server, &["-x", "10.0.0.21"]), ["db.svc.example."]);
}

#[test]
fn reverse_zones_follow_zone_file_changes() {
    let dir = zones_copy();
    let server = Server::start_with(dir.path(), &["--reverse", "10.0.0.0/24"]);
    assert_eq!(short(&server, &["-x", "10.0.0.31"]), ["cache.svc.example."]);
    let path = dir.path().join("svc.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let tmp = dir.path().join(".edit");
    std::fs::write(
        &tmp,
        text.replace("cache = \"10.0.0.31\"", "cache = \"10.0.0.32\""),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(eventually(std::time::Duration::from_secs(5), || {
        short(&server, &["-x", "10.0.0.32"]) == ["cache.svc.example."]
    }));
    let old = dig(&server, &["-x", "10.0.0.31"]);
    assert!(old.contains("status: NXDOMAIN"), "{old}");
    // A /24 is one zone: 10.0.1.x is outside it.
    let outside = dig(&server, &["-x", "10.0.1.1"]);
    assert!(outside.contains("status: REFUSED"), "{outside}");
}
