//! Zone transfers with real secondaries: Knot DNS (`knotd`) and NSD run as
//! child processes on free loopback ports, each with its own configuration
//! in a temporary directory, and follow signpost by AXFR, NOTIFY and IXFR.
//! `dig` checks access control, TSIG and the IXFR fallback.
//!
//! The tools come from Debian's `knot`, `nsd` and `dnsutils` packages
//! (scripts/test installs them); a test fails when one is missing.

mod common;
#[path = "transfer/secondaries.rs"]
mod secondaries;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, dig, eventually, query, tcp_raw, udp_raw, zones_copy};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::{Name, RData, RecordType, TSigner};
use secondaries::{NotifyListener, Secondary, free_port};

/// The key of the README's configurations.
const KEY: &str = "xfr-key";
const SECRET: &str = "8Zt0mV6d2nWq3cQ1k9Xy4b7LhJpR5sTuVwE0aGfHiKo=";

fn key_arg() -> String {
    format!("hmac-sha256:{KEY}:{SECRET}")
}

fn soa_serial(short: &str) -> Option<u32> {
    short.split_whitespace().nth(2)?.parse().ok()
}

fn serial_of(server: &Server) -> u32 {
    soa_serial(&dig(server, &["+short", "svc.example", "SOA"])).expect("signpost serves an SOA")
}

/// `dig +short` of one name and type, lines sorted.
fn short(output: String) -> Vec<String> {
    let mut lines: Vec<String> = output.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Names of the example zone, one of each kind signpost serves.
const NAMES: &[(&str, &str)] = &[
    ("svc.example", "NS"),
    ("ns1.svc.example", "A"),
    ("db.svc.example", "AAAA"),
    ("web.svc.example", "A"),
    ("web.svc.example", "AAAA"),
    ("web.svc.example", "SRV"),
    ("web-1.svc.example", "AAAA"),
    ("_web._tcp.svc.example", "SRV"),
    ("_web._tcp.svc.example", "PTR"),
    ("web-1._web._tcp.svc.example", "TXT"),
    ("web-2._web._tcp.svc.example", "SRV"),
    ("_services._dns-sd._udp.svc.example", "PTR"),
    ("_http._sub._web._tcp.svc.example", "PTR"),
    ("http.web.svc.example", "A"),
    ("_web._http.svc.example", "SRV"),
    ("api.svc.example", "SRV"),
    ("mail.svc.example", "SRV"),
];

/// signpost serving the example zones with `extra` flags and transfers to
/// loopback, on a fixed extra port the secondaries are configured with.
fn primary(admin: &Path, zones: &Path, port: u16, extra: &[&str]) -> (Server, SocketAddr) {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", &listen, "--allow-transfer", "127.0.0.1"];
    args.extend_from_slice(extra);
    let server = Server::start_admin(zones, admin, &args);
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Writes `<apex>.toml` in `dir`: a zone with its name server and `n`
/// hosts, `host-<i>` at `10.<net>.<i / 256>.<i % 256>`.
fn write_hosts_zone(dir: &Path, apex: &str, n: usize, net: u8) {
    let mut zone =
        format!("zone = \"{apex}\"\nnameservers = [\"ns1\"]\n[hosts]\nns1 = \"127.0.0.1\"\n");
    for i in 0..n {
        zone.push_str(&format!(
            "host-{i} = \"10.{net}.{}.{}\"\n",
            i / 256,
            i % 256
        ));
    }
    std::fs::write(dir.join(format!("{apex}.toml")), zone).unwrap();
}

fn register(server: &Server, instance: &str, address: &str, extra: &[&str]) {
    let mut args = vec![
        "register",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        instance,
        "--address",
        address,
        "--port",
        "8080",
    ];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deregisters an instance of service `web` of svc.example with the CLI.
fn deregister(server: &Server, instance: &str) {
    let out = server.cli(&[
        "deregister",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        instance,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How long Knot DNS may take to answer a change. Knot schedules the
/// refresh a NOTIFY asks for on whole seconds: traced, it acknowledges the
/// NOTIFY at once and starts the SOA query and the IXFR at the next second's
/// turn, up to 0.9 s later (NSD starts at once). signpost's part, from the
/// registration to the NOTIFY, takes milliseconds.
const KNOT_FOLLOWS: Duration = Duration::from_millis(1500);

/// Waits until `check` holds, returning how long it took; fails after `limit`.
/// `logs` shows what the servers logged when it fails.
fn within(
    logs: &dyn Fn() -> String,
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    assert!(
        eventually(limit, &mut check),
        "{what}: not within {limit:?}\n{}",
        logs()
    );
    start.elapsed()
}

#[test]
fn knot_loads_the_zone_by_axfr_and_answers_every_name_as_signpost_does() {
    let zones = zones_copy();
    let admin = tempfile::tempdir().unwrap();
    let (server, primary_addr) = primary(admin.path(), zones.path(), free_port(), &[]);
    let knot = Secondary::knot(primary_addr, free_port(), false);
    knot.wait_for_serial(serial_of(&server), Duration::from_secs(10));
    assert!(
        knot.log_since(0).contains("AXFR, incoming"),
        "{}",
        knot.log_since(0)
    );
    for (name, rtype) in NAMES {
        let ours = short(dig(&server, &["+short", name, rtype]));
        let theirs = short(knot.dig(&["+short", name, rtype]));
        assert!(!ours.is_empty(), "{name} {rtype}: signpost has records");
        assert_eq!(
            ours,
            theirs,
            "{name} {rtype}\nsignpost:\n{}",
            server.log_text()
        );
    }
    // The whole zone, record for record, as Knot transfers it on.
    let records = |out: String| -> Vec<String> {
        let mut r: Vec<String> = out
            .lines()
            .filter(|l| l.contains("\tIN\t"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        r.sort();
        r
    };
    let ours = records(dig(&server, &["svc.example", "AXFR"]));
    let theirs = records(knot.dig(&["svc.example", "AXFR"]));
    assert!(ours.len() > 50, "{ours:?}");
    assert_eq!(ours, theirs);
    let missing = knot.dig(&["nope.svc.example", "A"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
}

#[test]
fn a_service_larger_than_a_message_is_transferred_whole() {
    // 3 000 instances: SRV RRsets of about 130 KB, more than any response
    // holds, which answers stop short of; the zone still has them all.
    let zones = tempfile::tempdir().unwrap();
    let mut zone = String::from(
        "zone = \"svc.example\"\nnameservers = [\"ns1\"]\n[hosts]\nns1 = \"127.0.0.1\"\n\
         [[services]]\nname = \"big\"\nport = 80\n",
    );
    for i in 0..3000 {
        zone.push_str(&format!(
            "[[services.instances]]\nname = \"b-{i}\"\naddress = \"10.3.{}.{}\"\n",
            i / 256,
            i % 256
        ));
    }
    std::fs::write(zones.path().join("svc.example.toml"), zone).unwrap();
    let admin = tempfile::tempdir().unwrap();
    let (server, primary_addr) = primary(admin.path(), zones.path(), free_port(), &[]);
    let count = |out: &str, owner: &str, rtype: &str| {
        out.lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&owner) && f.get(3) == Some(&rtype)
            })
            .count()
    };
    let ours = dig(&server, &["svc.example", "AXFR"]);
    assert!(!ours.contains("failed"), "{ours}");
    for (owner, rtype) in [
        ("_big._tcp.svc.example.", "SRV"),
        ("_big._tcp.svc.example.", "PTR"),
        ("big.svc.example.", "SRV"),
        ("big.svc.example.", "A"),
    ] {
        assert_eq!(count(&ours, owner, rtype), 3000, "{owner} {rtype}");
    }
    // A response holds what fits, and says it is truncated.
    let srv = dig(
        &server,
        &["+tcp", "+ignore", "_big._tcp.svc.example", "SRV"],
    );
    assert!(srv.contains(" tc"), "{srv}");
    assert!(count(&srv, "_big._tcp.svc.example.", "SRV") < 3000);
    // Knot DNS loads the whole zone (it cannot send an RRset larger than a
    // message on by AXFR itself, so what it holds is not read back here).
    let knot = Secondary::knot(primary_addr, free_port(), false);
    knot.wait_for_serial(serial_of(&server), Duration::from_secs(20));
}

#[test]
fn a_registration_deregistration_and_health_flip_reach_knot_through_notify_and_ixfr() {
    let zones = zones_copy();
    let admin = tempfile::tempdir().unwrap();
    let knot_port = free_port();
    let notify = format!("127.0.0.1:{knot_port}");
    let key = key_arg();
    let (server, primary_addr) = primary(
        admin.path(),
        zones.path(),
        free_port(),
        &["--notify", &notify, "--tsig-key", &key],
    );
    // Signed: SOA queries, transfers and NOTIFY all carry the key.
    let knot = Secondary::knot(primary_addr, knot_port, true);
    knot.wait_for_serial(serial_of(&server), Duration::from_secs(10));
    let logs = || {
        format!(
            "signpost:\n{}\nKnot:\n{}",
            server.log_text(),
            knot.log_since(0)
        )
    };

    let before = knot.log_len();
    register(&server, "web-9", "10.0.0.19", &[]);
    let took = within(&logs, KNOT_FOLLOWS, "registration on the secondary", || {
        knot.dig(&["+short", "web-9.svc.example", "A"]).trim() == "10.0.0.19"
    });
    eprintln!("registration to Knot answering: {took:?}");
    let log = knot.log_since(before);
    assert!(log.contains("notify, incoming"), "{log}");
    assert!(
        log.contains("IXFR, incoming") && !log.contains("AXFR-style"),
        "{log}"
    );
    assert!(
        short(knot.dig(&["+short", "web.svc.example", "A"])).contains(&"10.0.0.19".to_string())
    );

    deregister(&server, "web-9");
    within(
        &logs,
        KNOT_FOLLOWS,
        "deregistration on the secondary",
        || {
            knot.dig(&["web-9.svc.example", "A"])
                .contains("status: NXDOMAIN")
        },
    );

    // A health flip: the checked port closes, the address leaves the zone,
    // and comes back when the port opens again.
    let listener = TcpListener::bind("127.0.0.7:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = server.cli(&[
        "register",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-7",
        "--address",
        "127.0.0.7",
        "--port",
        &port,
        "--check-tcp",
        "--check-interval",
        "1",
        "--check-failures",
        "1",
        "--check-successes",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(
        &logs,
        Duration::from_secs(2),
        "healthy instance on the secondary",
        || knot.dig(&["+short", "web-7.svc.example", "A"]).trim() == "127.0.0.7",
    );
    drop(listener);
    within(
        &logs,
        Duration::from_secs(5),
        "unhealthy address out of signpost's answers",
        || {
            dig(&server, &["+short", "web-7.svc.example", "A"])
                .trim()
                .is_empty()
        },
    );
    within(
        &logs,
        KNOT_FOLLOWS,
        "unhealthy address out of the secondary",
        || {
            knot.dig(&["+short", "web-7.svc.example", "A"])
                .trim()
                .is_empty()
        },
    );
    let listener = TcpListener::bind(("127.0.0.7", port.parse::<u16>().unwrap())).unwrap();
    within(
        &logs,
        Duration::from_secs(5),
        "healthy again in signpost's answers",
        || dig(&server, &["+short", "web-7.svc.example", "A"]).trim() == "127.0.0.7",
    );
    within(
        &logs,
        KNOT_FOLLOWS,
        "healthy again on the secondary",
        || knot.dig(&["+short", "web-7.svc.example", "A"]).trim() == "127.0.0.7",
    );
    drop(listener);

    // status: the journal's reach, and the secondary's last acknowledgement.
    let serial = serial_of(&server);
    let expected = format!("secondary {notify}: acknowledged NOTIFY of serial {serial} ");
    let mut status = String::new();
    let acknowledged = eventually(Duration::from_secs(2), || {
        status = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
        status.contains(&expected)
    });
    assert!(acknowledged, "{status}");
    assert!(
        status.contains("svc.example.: IXFR journal ") && status.contains(&format!("..{serial} (")),
        "{status}"
    );
}

#[test]
fn a_restart_keeps_serials_growing_and_knot_keeps_following() {
    let zones = zones_copy();
    let admin = tempfile::tempdir().unwrap();
    let (port, knot_port) = (free_port(), free_port());
    let notify = format!("127.0.0.1:{knot_port}");
    let flags = ["--notify", &notify, "--reverse", "10.0.0.0/8"];
    let (mut server, primary_addr) = primary(admin.path(), zones.path(), port, &flags);
    let knot = Secondary::knot(primary_addr, knot_port, false);
    let reverse_serial = |server: &Server| {
        soa_serial(&dig(server, &["+short", "10.in-addr.arpa", "SOA"])).expect("a reverse zone")
    };
    // A burst of changes runs the serials ahead of the clock.
    for i in 0..5 {
        register(&server, &format!("burst-{i}"), &format!("10.1.0.{i}"), &[]);
    }
    let (before, reverse_before) = (serial_of(&server), reverse_serial(&server));
    knot.wait_for_serial(before, Duration::from_secs(5));
    server.stop();

    let (server, _) = primary(admin.path(), zones.path(), port, &flags);
    let (after, reverse_after) = (serial_of(&server), reverse_serial(&server));
    assert!(
        after.wrapping_sub(before) as i32 > 0,
        "serial {after} after the restart, {before} before"
    );
    assert!(
        reverse_after.wrapping_sub(reverse_before) as i32 > 0,
        "reverse zone serial {reverse_after} after the restart, {reverse_before} before"
    );
    knot.wait_for_serial(after, Duration::from_secs(5));
    // The journal starts empty after a restart: Knot's IXFR from the old
    // serial gets the whole zone.
    let log = knot.log_since(0);
    assert!(log.contains("receiving AXFR-style IXFR"), "{log}");
    let logs = || {
        format!(
            "signpost:\n{}\nKnot:\n{}",
            server.log_text(),
            knot.log_since(0)
        )
    };
    register(&server, "web-9", "10.0.0.19", &[]);
    within(
        &logs,
        KNOT_FOLLOWS,
        "a registration after the restart",
        || knot.dig(&["+short", "web-9.svc.example", "A"]).trim() == "10.0.0.19",
    );
    assert!(knot.serial().unwrap().wrapping_sub(after) as i32 > 0);
}

#[test]
fn nsd_loads_the_zone_and_follows_a_registration() {
    let zones = zones_copy();
    let admin = tempfile::tempdir().unwrap();
    let nsd_port = free_port();
    let notify = format!("127.0.0.1:{nsd_port}");
    let key = key_arg();
    let (server, primary_addr) = primary(
        admin.path(),
        zones.path(),
        free_port(),
        &["--notify", &notify, "--tsig-key", &key],
    );
    let nsd = Secondary::nsd(primary_addr, nsd_port, true);
    nsd.wait_for_serial(serial_of(&server), Duration::from_secs(10));
    for (name, rtype) in NAMES {
        let ours = short(dig(&server, &["+short", name, rtype]));
        assert_eq!(
            ours,
            short(nsd.dig(&["+short", name, rtype])),
            "{name} {rtype}"
        );
    }
    register(&server, "web-9", "10.0.0.19", &[]);
    let start = Instant::now();
    let reached = eventually(Duration::from_secs(1), || {
        nsd.dig(&["+short", "web-9.svc.example", "A"]).trim() == "10.0.0.19"
    });
    let took = start.elapsed();
    assert!(
        reached,
        "registration on NSD: not within a second\nNSD:\n{}\nsignpost:\n{}",
        nsd.log_since(0),
        server.log_text()
    );
    eprintln!("registration to NSD answering: {took:?}");
    // NSD asked for the difference and got it.
    assert!(
        server.wait_for_log("zone=svc.example. from=", Duration::from_secs(1)),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let ixfr = log
        .lines()
        .filter(|l| l.contains(" IXFR ") && l.contains("added="))
        .count();
    assert!(ixfr >= 1, "{log}");
    // NSD answers NOTIFY signed, and the answer counts.
    let acknowledged = format!("secondary {notify}: acknowledged NOTIFY of serial");
    assert!(
        eventually(Duration::from_secs(2), || {
            String::from_utf8_lossy(&server.cli(&["status"]).stdout).contains(&acknowledged)
        }),
        "{}",
        server.log_text()
    );
    deregister(&server, "web-9");
    assert!(
        eventually(Duration::from_secs(1), || {
            nsd.dig(&["web-9.svc.example", "A"])
                .contains("status: NXDOMAIN")
        }),
        "deregistration on NSD: not within a second\nNSD:\n{}\nsignpost:\n{}",
        nsd.log_since(0),
        server.log_text()
    );
}

/// An AXFR query for the example zone, signed with `signer` at `time` if given.
fn axfr(signer: Option<(&TSigner, u64)>) -> Vec<u8> {
    let mut q = query("svc.example.", RecordType::AXFR);
    q.metadata.recursion_desired = false;
    if let Some((signer, time)) = signer {
        q.finalize(signer, time).unwrap();
    }
    q.to_vec().unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signer(name: &str, secret: &[u8]) -> TSigner {
    TSigner::new(
        secret.to_vec(),
        TsigAlgorithm::HmacSha256,
        Name::from_ascii(name).unwrap(),
        300,
    )
    .unwrap()
}

#[test]
fn transfers_are_refused_from_outside_allow_transfer_and_over_udp() {
    let outside = Server::start_with(
        &common::example_zones(),
        &["--allow-transfer", "192.0.2.0/24"],
    );
    let reply = Message::from_vec(&tcp_raw(outside.addr, &axfr(None)).unwrap()).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
    let out = dig(&outside, &["svc.example", "AXFR"]);
    assert!(
        out.contains("Transfer failed") && !out.contains("\tSOA\t"),
        "{out}"
    );

    let inside = Server::start_with(
        &common::example_zones(),
        &["--allow-transfer", "127.0.0.0/8"],
    );
    let out = dig(&inside, &["svc.example", "AXFR"]);
    assert!(out.contains("\tSOA\t") && !out.contains("failed"), "{out}");
    // RFC 5936 section 4.2: AXFR is for TCP.
    let reply = udp_raw(inside.addr, &axfr(None), Duration::from_secs(2)).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn with_a_key_unsigned_unknown_key_bad_mac_and_stale_transfers_are_refused() {
    let key = key_arg();
    let server = Server::start_with(
        &common::example_zones(),
        &["--allow-transfer", "127.0.0.1", "--tsig-key", &key],
    );
    let out = dig(&server, &["svc.example", "AXFR"]);
    assert!(
        out.contains("Transfer failed") && !out.contains("\tSRV\t"),
        "{out}"
    );
    let reply = Message::from_vec(&tcp_raw(server.addr, &axfr(None)).unwrap()).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

    let wrong_secret = format!("hmac-sha256:{KEY}:c2VjcmV0LWJ1dC1ub3QtdGhlLXJpZ2h0LW9uZQ==");
    let out = dig(&server, &["-y", &wrong_secret, "svc.example", "AXFR"]);
    assert!(!out.contains("\tSRV\t"), "{out}");

    let secret = data_encoding::BASE64.decode(SECRET.as_bytes()).unwrap();
    let cases = [
        (signer("other-key.", &secret), now(), TsigError::BadKey),
        (
            signer(&format!("{KEY}."), b"not the secret"),
            now(),
            TsigError::BadSig,
        ),
        (
            signer(&format!("{KEY}."), &secret),
            now() - 3600,
            TsigError::BadTime,
        ),
    ];
    for (signer, time, expected) in cases {
        let reply = tcp_raw(server.addr, &axfr(Some((&signer, time)))).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotAuth,
            "{expected:?}"
        );
        assert!(reply.answers.is_empty());
        let tsig = reply.signature().expect("a TSIG record says why");
        assert_eq!(tsig.data.error, Some(expected));
    }
}

#[test]
fn dig_with_the_right_key_gets_a_verified_complete_transfer_in_many_messages() {
    let zones = tempfile::tempdir().unwrap();
    write_hosts_zone(zones.path(), "big.example", 2000, 2);
    let keys = [
        format!("hmac-sha256:{KEY}:{SECRET}"),
        format!("hmac-sha512:{KEY}-512:{SECRET}"),
        format!("hmac-sha1:{KEY}-1:{SECRET}"),
    ];
    let server = Server::start_with(
        zones.path(),
        &[
            "--allow-transfer",
            "127.0.0.1",
            "--tsig-key",
            &keys[0],
            "--tsig-key",
            &keys[1],
            "--tsig-key",
            &keys[2],
        ],
    );
    for key in &keys {
        let out = dig(&server, &["-y", key, "big.example", "AXFR"]);
        assert!(
            !out.contains("failed") && !out.contains("verify"),
            "{key}: {out}"
        );
        let records = out.lines().filter(|l| l.contains("\tIN\t")).count();
        // 2000 hosts, ns1, NS, and the SOA first and last.
        assert_eq!(records, 2000 + 1 + 1 + 2, "{out}");
        let size = out
            .lines()
            .find(|l| l.contains("XFR size"))
            .expect("dig reports the size");
        let messages: usize = size
            .split("messages ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("a message count");
        assert!(messages > 1, "{size}");
    }
}

#[test]
fn ixfr_answers_the_difference_and_falls_back_to_the_whole_zone_beyond_the_journal() {
    let zones = zones_copy();
    let server = Server::start_with(
        zones.path(),
        &["--allow-transfer", "127.0.0.1", "--ixfr-journal", "2"],
    );
    let mut serials = vec![serial_of(&server)];
    for i in 0..4 {
        register(&server, &format!("step-{i}"), &format!("10.3.0.{i}"), &[]);
        serials.push(serial_of(&server));
    }
    let current = serials[4];
    let records = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("\tIN\t"))
            .map(|l| {
                l.split('\t')
                    .filter(|f| !f.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    // Within the journal: the condensed difference from serial 2 to 4.
    let out = dig(
        &server,
        &["+tcp", "svc.example", &format!("IXFR={}", serials[2])],
    );
    let rr = records(&out);
    assert!(
        rr[0].contains(" SOA ") && rr[0].contains(&current.to_string()),
        "{out}"
    );
    assert!(
        rr[1].contains(" SOA ") && rr[1].contains(&serials[2].to_string()),
        "{out}"
    );
    assert!(
        out.contains("step-2.svc.example.") && out.contains("step-3.svc.example."),
        "{out}"
    );
    assert!(!out.contains("step-1.svc.example."), "{out}");
    assert!(rr.len() < 40, "{out}");
    // Older than the journal: the whole zone, as AXFR would send it.
    let out = dig(
        &server,
        &["+tcp", "svc.example", &format!("IXFR={}", serials[0])],
    );
    let rr = records(&out);
    assert!(!rr[1].contains(" SOA "), "{out}");
    let axfr = records(&dig(&server, &["svc.example", "AXFR"]));
    assert_eq!(rr.len(), axfr.len(), "{out}");
    // Current: the SOA alone, over UDP too.
    let out = dig(
        &server,
        &["+notcp", "svc.example", &format!("IXFR={current}")],
    );
    assert_eq!(records(&out).len(), 1, "{out}");
    // Behind, over UDP: truncated, so the client comes back over TCP.
    let mut q = query("svc.example.", RecordType::IXFR);
    q.add_authority(hickory_proto::rr::Record::from_rdata(
        Name::from_ascii("svc.example.").unwrap(),
        0,
        RData::SOA(hickory_proto::rr::rdata::SOA::new(
            Name::root(),
            Name::root(),
            serials[3],
            0,
            0,
            0,
            0,
        )),
    ));
    let reply = udp_raw(server.addr, &q.to_vec().unwrap(), Duration::from_secs(2)).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert!(reply.metadata.truncation && reply.answers.is_empty());
}

/// In a zone of 20 000 names the name index is split into many groups of
/// shards, and a change copies only the groups it touches: the IXFR that
/// registrations and a deregistration make is worked out from the groups
/// and shards that differ, and must hold exactly what AXFR shows changed.
#[test]
fn ixfr_of_a_large_zone_holds_exactly_what_axfr_shows_changed() {
    let zones = tempfile::tempdir().unwrap();
    write_hosts_zone(zones.path(), "svc.example", 20_000, 4);
    let server = Server::start_with(
        zones.path(),
        &["--allow-transfer", "127.0.0.1", "--ixfr-journal", "64"],
    );
    let records = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("\tIN\t"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let zone_records = || -> std::collections::BTreeSet<String> {
        let out = dig(&server, &["svc.example", "AXFR"]);
        assert!(!out.contains("failed"), "{out}");
        (records(&out).into_iter())
            .filter(|r| !r.contains(" SOA "))
            .collect()
    };
    register(&server, "old-0", "10.5.1.0", &[]);
    let from = serial_of(&server);
    let before = zone_records();
    for i in 0..24 {
        register(&server, &format!("app-{i}"), &format!("10.5.0.{i}"), &[]);
    }
    deregister(&server, "old-0");
    let after = zone_records();
    let out = dig(&server, &["+tcp", "svc.example", &format!("IXFR={from}")]);
    let rr = records(&out);
    // SOA (new), SOA (old), what went, SOA (new), what came, SOA (new).
    assert!(
        rr.len() > 4 && rr[1].contains(" SOA "),
        "not a difference: {out}"
    );
    let middle = 2 + rr[2..]
        .iter()
        .position(|r| r.contains(" SOA "))
        .expect("{out}");
    let went: std::collections::BTreeSet<String> = rr[2..middle].iter().cloned().collect();
    let came: std::collections::BTreeSet<String> =
        rr[middle + 1..rr.len() - 1].iter().cloned().collect();
    assert_eq!(came, after.difference(&before).cloned().collect(), "{out}");
    assert_eq!(went, before.difference(&after).cloned().collect(), "{out}");
    assert!(
        came.iter().any(|r| r.starts_with("app-23.svc.example. ")),
        "{out}"
    );
    assert!(
        went.iter().any(|r| r.starts_with("old-0.svc.example. ")),
        "{out}"
    );
}

#[test]
fn a_signed_query_gets_a_signed_answer_and_a_server_without_keys_says_badkey() {
    let key = key_arg();
    let server = Server::start_with(
        &common::example_zones(),
        &["--allow-transfer", "127.0.0.1", "--tsig-key", &key],
    );
    // dig checks the answer's signature and says so when it does not verify.
    for transport in ["+notcp", "+tcp"] {
        let out = dig(&server, &["-y", &key, transport, "web-1.svc.example", "A"]);
        assert!(
            out.contains("status: NOERROR") && out.contains("10.0.0.11"),
            "{out}"
        );
        assert!(
            out.contains("TSIG") && !out.contains("Couldn't verify"),
            "{out}"
        );
    }

    // An answer that fits in 512 bytes, but not with its signature: TC, and
    // dig comes back over TCP for the signed answer.
    let zones = tempfile::tempdir().unwrap();
    let mut zone = String::from("zone = \"big.example\"\n[hosts]\nmany = [");
    for i in 0..27 {
        zone.push_str(&format!("\"10.4.0.{i}\", "));
    }
    zone.push_str("]\n");
    std::fs::write(zones.path().join("big.toml"), zone).unwrap();
    let big = Server::start_with(zones.path(), &["--tsig-key", &key]);
    let unsigned = dig(&big, &["+notcp", "+noedns", "many.big.example", "A"]);
    assert!(!unsigned.contains("Truncated"), "{unsigned}");
    let out = dig(
        &big,
        &["-y", &key, "+notcp", "+noedns", "many.big.example", "A"],
    );
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(
        out.contains("ANSWER: 27") && !out.contains("Couldn't verify"),
        "{out}"
    );

    let plain = Server::start(&common::example_zones());
    let secret = data_encoding::BASE64.decode(SECRET.as_bytes()).unwrap();
    let signer = signer(&format!("{KEY}."), &secret);
    let mut q = query("web-1.svc.example.", RecordType::A);
    q.finalize(&signer, now()).unwrap();
    let reply = udp_raw(plain.addr, &q.to_vec().unwrap(), Duration::from_secs(2)).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotAuth);
    assert_eq!(
        reply.signature().unwrap().data.error,
        Some(TsigError::BadKey)
    );
}

#[test]
fn a_bad_key_says_what_is_wrong_and_the_config_file_reads_keys_from_a_file() {
    let admin = tempfile::tempdir().unwrap();
    let zones = common::example_zones();
    let (status, stderr) = common::serve_failure(&zones, admin.path(), &["--tsig-key", "xfr-key"]);
    assert!(!status.success());
    assert!(stderr.contains("[ALG:]NAME:BASE64SECRET"), "{stderr}");
    let (_, stderr) =
        common::serve_failure(&zones, admin.path(), &["--tsig-key", "hmac-md5:k:c2VjcmV0"]);
    assert!(stderr.contains("unknown algorithm `hmac-md5`"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("xfr.key"),
        format!("# the transfer key\n{}\nnot a key\n", key_arg()),
    )
    .unwrap();
    let config = dir.path().join("signpost.toml");
    std::fs::write(
        &config,
        "allow-transfer = [\"127.0.0.1\"]\ntsig-key-file = \"xfr.key\"\nnotify = [\"127.0.0.1:9\"]\nixfr-journal = 10\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let (_, stderr) = common::serve_failure(&zones, admin.path(), &["--config", &config_arg]);
    assert!(
        stderr.contains("xfr.key:3:"),
        "the bad line is named: {stderr}"
    );

    std::fs::write(dir.path().join("xfr.key"), format!("{}\n", key_arg())).unwrap();
    let server = Server::start_with(&zones, &["--config", &config_arg]);
    let out = dig(&server, &["-y", &key_arg(), "svc.example", "AXFR"]);
    assert!(out.contains("\tSRV\t") && !out.contains("failed"), "{out}");
    let out = dig(&server, &["svc.example", "AXFR"]);
    assert!(out.contains("Transfer failed"), "{out}");
}

#[test]
fn notify_is_coalesced_retried_until_acknowledged_and_never_sent_for_a_heartbeat() {
    let secondary = NotifyListener::bind();
    let notify = secondary.addr();
    let server = Server::start_with(
        &common::example_zones(),
        &["--allow-transfer", "127.0.0.1", "--notify", &notify],
    );
    // At start: one NOTIFY, acknowledged.
    let start = secondary.listen(Duration::from_millis(500), 0);
    assert_eq!(start.len(), 1, "{start:?}");

    // A burst of 20 registrations from 4 clients at once.
    let burst = std::thread::scope(|s| {
        let listening = s.spawn(|| secondary.listen(Duration::from_millis(1500), 0));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let server = &server;
                s.spawn(move || {
                    for i in 0..5 {
                        let name = format!("burst-{c}-{i}");
                        register(server, &name, &format!("10.5.{c}.{i}"), &[]);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        listening.join().unwrap()
    });
    let last = serial_of(&server);
    // At most one per 200 ms, the last one with the latest serial.
    assert!(!burst.is_empty() && burst.len() < 20, "{burst:?}");
    for pair in burst.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(150),
            "{burst:?}"
        );
    }
    assert_eq!(burst.last().unwrap().1, last, "{burst:?}");

    // A heartbeat that changes nothing sends nothing.
    register(&server, "hb", "10.6.0.1", &["--ttl", "60"]);
    secondary.listen(Duration::from_millis(400), 0);
    let out = server.cli(&[
        "heartbeat",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "hb",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quiet = secondary.listen(Duration::from_millis(600), 0);
    assert!(quiet.is_empty(), "{quiet:?}");
    // Nor does registering the same instance again, which changes no record.
    register(&server, "hb", "10.6.0.1", &["--ttl", "60"]);
    let quiet = secondary.listen(Duration::from_millis(600), 0);
    assert!(quiet.is_empty(), "{quiet:?}");

    // Unanswered: asked again after about 1 s, then 2 s, then answered. (The
    // first NOTIFY may wait in the socket until the CLI has returned, so its
    // time here is late by as much.)
    register(&server, "retry", "10.6.0.2", &[]);
    let retries = secondary.listen(Duration::from_millis(4500), 2);
    assert_eq!(retries.len(), 3, "{retries:?}");
    let gaps: Vec<Duration> = retries.windows(2).map(|p| p[1].0 - p[0].0).collect();
    assert!(
        gaps[0] >= Duration::from_millis(700) && gaps[0] < Duration::from_millis(1700),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(1900) && gaps[1] < Duration::from_millis(2900),
        "{gaps:?}"
    );
    assert!(secondary.listen(Duration::from_millis(1500), 0).is_empty());
}
