//! How long after a registration does a secondary answer it?
//!
//! Starts signpost with `--notify` to a Knot DNS and an NSD secondary (each
//! on a free loopback port, configured in a temporary directory), registers
//! instances one after the other over the admin socket, and after each one
//! queries both secondaries in a tight loop until they answer the new name.
//! The path measured: the registration made durable and published, the
//! NOTIFY, the secondary's SOA query, the IXFR, and the secondary loading it.
//! Knot DNS starts the refresh a NOTIFY asks for at its next whole-second
//! turn, so its figures spread up to a second; NSD starts at once.
//!
//! `cargo bench --bench secondary_latency` runs 200 registrations
//! (`-- --registrations N` for another number); under `cargo test` it runs
//! a few, as a check that it still works. Needs `knotd` and `nsd` (Debian
//! packages `knot` and `nsd`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, percentile, query, udp_raw, zones_copy};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use serde_json::json;

fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn sbin(name: &str) -> std::path::PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() { path } else { name.into() }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn knot(dir: &Path, primary: SocketAddr, port: u16) -> Daemon {
    let d = dir.display();
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    user: root:root\n    listen: 127.0.0.1@{port}\n\
         database:\n    storage: \"{d}\"\n\
         remote:\n  - id: signpost\n    address: {}@{}\n\
         acl:\n  - id: notify\n    address: {}\n    action: notify\n\
         template:\n  - id: default\n    storage: \"{d}\"\n\
         zone:\n  - domain: svc.example\n    master: signpost\n    acl: notify\n\
         \x20   zonefile-load: none\n    zonefile-sync: -1\n    journal-content: all\n",
        primary.ip(),
        primary.port(),
        primary.ip(),
    );
    let path = dir.join("knot.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(sbin("knotd"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd (apt-get install knot)");
    Daemon(child)
}

fn nsd(dir: &Path, primary: SocketAddr, port: u16) -> Daemon {
    let d = dir.display();
    let conf = format!(
        "server:\n    ip-address: 127.0.0.1@{port}\n    username: \"\"\n    chroot: \"\"\n\
         \x20   zonesdir: \"{d}\"\n    database: \"\"\n    pidfile: \"{d}/nsd.pid\"\n\
         \x20   xfrdfile: \"{d}/xfrd.state\"\n    xfrdir: \"{d}\"\n    zonelistfile: \"{d}/zone.list\"\n\
         \x20   xfrd-reload-timeout: 0\n\
         zone:\n    name: svc.example\n    zonefile: \"svc.example.zone\"\n\
         \x20   request-xfr: {}@{} NOKEY\n    allow-notify: {} NOKEY\n",
        primary.ip(),
        primary.port(),
        primary.ip(),
    );
    let path = dir.join("nsd.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(sbin("nsd"))
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsd (apt-get install nsd)");
    Daemon(child)
}

/// Whether `at` answers `name` with an address.
fn answers(at: SocketAddr, name: &str) -> bool {
    let q = query(name, RecordType::A).to_vec().unwrap();
    udp_raw(at, &q, Duration::from_millis(100))
        .and_then(|r| Message::from_vec(&r).ok())
        .is_some_and(|m| !m.answers.is_empty())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let registrations: usize = args
        .iter()
        .position(|a| a == "--registrations")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benching { 200 } else { 5 });

    let zones = zones_copy();
    let admin_dir = tempfile::tempdir().unwrap();
    let (port, knot_port, nsd_port) = (free_port(), free_port(), free_port());
    let primary = SocketAddr::from(([127, 0, 0, 1], port));
    let (knot_at, nsd_at) = (
        SocketAddr::from(([127, 0, 0, 1], knot_port)),
        SocketAddr::from(([127, 0, 0, 1], nsd_port)),
    );
    let server = Server::start_admin(
        zones.path(),
        admin_dir.path(),
        &[
            "--listen",
            &primary.to_string(),
            "--allow-transfer",
            "127.0.0.1",
            "--notify",
            &knot_at.to_string(),
            "--notify",
            &nsd_at.to_string(),
        ],
    );
    let (knot_dir, nsd_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _knot = knot(knot_dir.path(), primary, knot_port);
    let _nsd = nsd(nsd_dir.path(), primary, nsd_port);
    let loaded =
        |at| common::eventually(Duration::from_secs(10), || answers(at, "web.svc.example."));
    assert!(
        loaded(knot_at) && loaded(nsd_at),
        "the secondaries load the zone"
    );

    let mut admin = server.admin();
    let (mut to_knot, mut to_nsd) = (Vec::new(), Vec::new());
    for i in 0..registrations {
        // Apart by more than the NOTIFY interval: each change is notified
        // on its own, as a registration usually is.
        std::thread::sleep(Duration::from_millis(250));
        let name = format!("lat-{i}");
        let started = Instant::now();
        admin.ok(json!({"op":"register","zone":"svc.example","service":"web",
            "instance": name, "address": [format!("10.9.{}.{}", i / 250, i % 250 + 1)], "port": 8080}));
        let fqdn = format!("{name}.svc.example.");
        let (mut knot_done, mut nsd_done) = (None, None);
        let deadline = started + Duration::from_secs(10);
        while (knot_done.is_none() || nsd_done.is_none()) && Instant::now() < deadline {
            if knot_done.is_none() && answers(knot_at, &fqdn) {
                knot_done = Some(started.elapsed());
            }
            if nsd_done.is_none() && answers(nsd_at, &fqdn) {
                nsd_done = Some(started.elapsed());
            }
        }
        to_knot.push(knot_done.expect("Knot answers the registration"));
        to_nsd.push(nsd_done.expect("NSD answers the registration"));
    }
    for (who, samples) in [("Knot DNS", &mut to_knot), ("NSD", &mut to_nsd)] {
        samples.sort();
        println!(
            "registration to {who} answering, {} registrations: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
            samples.len(),
            percentile(samples, 0.5).as_secs_f64() * 1000.0,
            percentile(samples, 0.9).as_secs_f64() * 1000.0,
            samples.last().unwrap().as_secs_f64() * 1000.0,
        );
    }
}
