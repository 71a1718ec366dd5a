//! Forwarding names outside the zones to upstream resolvers: an "upstream"
//! signpost serves `upstream.test`, and the server under test serves the
//! example zones and forwards everything else to it.

mod common;
use common::*;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// A zone for the upstream: one host, and a service too large for one UDP
/// answer, so that forwarding has to retry over TCP.
fn upstream_zone() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut zone = String::from(
        "zone = \"upstream.test\"\nttl = 300\n[soa]\nminimum = 60\n[hosts]\nwww = \"192.0.2.80\"\n\
         [[services]]\nname = \"big\"\nport = 80\n",
    );
    for i in 0..100 {
        zone.push_str(&format!(
            "[[services.instances]]\nname = \"big-{i}\"\naddress = \"198.51.100.{i}\"\n"
        ));
    }
    std::fs::write(dir.path().join("upstream.test.toml"), zone).unwrap();
    dir
}

/// The server under test: the example zones, forwarding to `upstream`.
fn forwarding_server(upstream: SocketAddr, extra: &[&str]) -> Server {
    let upstream = upstream.to_string();
    let mut args = vec!["--forward", upstream.as_str()];
    args.extend_from_slice(extra);
    Server::start_with(&example_zones(), &args)
}

/// One UDP exchange from a chosen source address.
fn udp_from(source: &str, server: SocketAddr, query: &Message) -> Message {
    let socket = UdpSocket::bind(source).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(&query.to_vec().unwrap(), server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = socket.recv_from(&mut buf).expect("a UDP reply");
    Message::from_vec(&buf[..len]).unwrap()
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            RData::AAAA(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn names_outside_the_zones_are_forwarded_over_udp_and_tcp() {
    let zone = upstream_zone();
    let upstream = Server::start(zone.path());
    let server = forwarding_server(upstream.addr, &[]);

    for m in [
        server.udp(&query("www.upstream.test.", RecordType::A)),
        server.tcp(&query("www.upstream.test.", RecordType::A)),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), ["192.0.2.80"]);
        assert!(m.metadata.recursion_available, "RA set for allowed clients");
        assert!(!m.metadata.authoritative, "a forwarded answer is not ours");
    }

    // Authoritative answers are unchanged, with RA now that recursion is offered.
    let m = server.udp(&query("web-3.svc.example.", RecordType::A));
    assert_eq!(addresses(&m), ["10.0.0.13"]);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
}

#[test]
fn forwarding_can_be_set_in_the_config_file() {
    let zone = upstream_zone();
    let upstream = Server::start(zone.path());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signpost.toml");
    std::fs::write(
        &config,
        format!(
            "forward = [\"{}\"]\nforward-allow = [\"127.0.0.0/8\"]\nforward-timeout = 2\n\
             forward-cache-size = 100\n",
            upstream.addr
        ),
    )
    .unwrap();
    let server = Server::start_with(&example_zones(), &["--config", config.to_str().unwrap()]);
    let m = server.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(addresses(&m), ["192.0.2.80"]);
}

#[test]
fn large_forwarded_answers_are_fetched_over_tcp_and_truncated_for_small_clients() {
    let zone = upstream_zone();
    let upstream = Server::start(zone.path());
    let server = forwarding_server(upstream.addr, &[]);

    // The upstream's answer does not fit in 1232 bytes: we must have used TCP.
    let m = server.tcp(&query("big.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 100);

    // A UDP client without EDNS takes 512 bytes: TC, so it retries over TCP.
    let m = server.udp(&query("big.upstream.test.", RecordType::A));
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
}

#[test]
fn forwarded_answers_are_cached_with_decreasing_ttls() {
    let zone = upstream_zone();
    let mut upstream = Server::start(zone.path());
    let server = forwarding_server(upstream.addr, &[]);

    let first = server.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(addresses(&first), ["192.0.2.80"]);
    let ttl = first.answers[0].ttl;
    assert!(ttl <= 300);

    drop_server(&mut upstream);

    // The client's letter case is echoed, as from the zones.
    let cached = server.udp(&query("WWW.Upstream.TEST.", RecordType::A));
    assert_eq!(cached.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&cached), ["192.0.2.80"]);
    assert!(
        cached.answers[0].ttl <= ttl,
        "TTL not greater than the original"
    );
    assert_eq!(cached.queries[0].name().to_ascii(), "WWW.Upstream.TEST.");
    let cached = server.tcp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(addresses(&cached), ["192.0.2.80"]);
}

#[test]
fn negative_forwarded_answers_are_cached() {
    let zone = upstream_zone();
    let mut upstream = Server::start(zone.path());
    let server = forwarding_server(upstream.addr, &[]);

    let nxdomain = server.udp(&query("nothing.upstream.test.", RecordType::A));
    assert_eq!(nxdomain.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nxdomain.authorities[0].record_type(), RecordType::SOA);
    let nodata = server.udp(&query("www.upstream.test.", RecordType::AAAA));
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());

    drop_server(&mut upstream);

    let m = server.udp(&query("nothing.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.authorities[0].ttl <= 60, "min(SOA TTL, SOA minimum)");
    let m = server.udp(&query("www.upstream.test.", RecordType::AAAA));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn a_dead_upstream_gives_servfail_quickly_and_zones_keep_answering() {
    // Bound, so nothing reports the port closed, but never answering.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = forwarding_server(silent.local_addr().unwrap(), &["--forward-timeout", "1"]);

    let started = Instant::now();
    let pending = {
        let addr = server.addr;
        std::thread::spawn(move || {
            udp_from(
                "127.0.0.1:0",
                addr,
                &query("www.upstream.test.", RecordType::A),
            )
        })
    };
    // While that query waits for the upstream, authoritative names answer at once.
    let m = server.udp(&query("web-1.svc.example.", RecordType::A));
    assert_eq!(addresses(&m), ["10.0.0.11"]);
    assert!(started.elapsed() < Duration::from_millis(800));

    let m = pending.join().unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");

    // SERVFAIL is not cached: the next query tries again, and also fails in time.
    let started = Instant::now();
    let m = server.tcp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[test]
fn a_closed_upstream_port_gives_servfail_at_once() {
    let port = free_port();
    let server = forwarding_server(SocketAddr::from(([127, 0, 0, 1], port)), &[]);
    let started = Instant::now();
    let m = server.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn names_outside_the_zones_are_refused_without_upstreams() {
    let server = Server::start(&example_zones());
    let m = server.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    let m = server.udp(&query("web-1.svc.example.", RecordType::A));
    assert!(!m.metadata.recursion_available);
}

#[test]
fn clients_outside_the_allow_list_are_refused() {
    let zone = upstream_zone();
    let upstream = Server::start(zone.path());
    let server = forwarding_server(upstream.addr, &["--forward-allow", "127.0.0.1/32"]);

    let m = udp_from(
        "127.0.0.2:0",
        server.addr,
        &query("www.upstream.test.", RecordType::A),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    // Authoritative answers are for everyone.
    let m = udp_from(
        "127.0.0.2:0",
        server.addr,
        &query("web-1.svc.example.", RecordType::A),
    );
    assert_eq!(addresses(&m), ["10.0.0.11"]);
    assert!(!m.metadata.recursion_available);

    let m = udp_from(
        "127.0.0.1:0",
        server.addr,
        &query("www.upstream.test.", RecordType::A),
    );
    assert_eq!(addresses(&m), ["192.0.2.80"]);
    // Even once cached, the answer is only for allowed clients.
    let m = udp_from(
        "127.0.0.2:0",
        server.addr,
        &query("www.upstream.test.", RecordType::A),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn forwarding_to_itself_is_refused_at_startup() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let run = |listen: &str, forward: &str| {
        Command::new(env!("CARGO_BIN_EXE_signpost"))
            .args(["serve", "--zones"])
            .arg(example_zones())
            .args(["--listen", listen, "--forward", forward])
            .arg("--socket")
            .arg(dir.path().join("admin.sock"))
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .output()
            .unwrap()
    };

    let output = run(&listen, &listen);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forwarding loop"), "{stderr}");
    assert!(stderr.contains(&format!("upstream {listen}")), "{stderr}");

    // A wildcard listener is reached through any local address.
    let output = run(&format!("0.0.0.0:{port}"), &format!("127.0.0.2:{port}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forwarding loop"), "{stderr}");
}

#[test]
fn bad_forwarding_flags_are_rejected() {
    let output = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["serve", "--forward-allow", "10.0.0.0/8"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no upstream"));
    let output = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["serve", "--forward", "resolver.example"])
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an IP address"));
}

/// A port free for UDP and TCP on 127.0.0.1, right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Stops a server now (its Drop kills it too; this is for the middle of a test).
fn drop_server(server: &mut Server) {
    let _ = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status();
    assert!(server.wait(Duration::from_secs(5)).is_some());
}
