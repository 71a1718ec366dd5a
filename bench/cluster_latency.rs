//! How long after etcd acknowledged a registration does every node of a
//! cluster answer it, and how many registrations per second go through?
//!
//! Starts a three-member etcd cluster and three signpost nodes (`--etcd`)
//! on loopback, in a temporary directory. Latency: registers instances one
//! after the other, each through the next node, and from the moment the
//! reply "ok" arrives (etcd committed the write) queries all three nodes in
//! a tight loop until each answers the new name; reports p50, p99 and the
//! maximum. Throughput: 8 clients (a connection to a node's admin socket
//! apiece, spread over the nodes) register into 200 services as fast as
//! their replies come,
//! and the rate is the registrations acknowledged per second, then the time
//! until every node answers the last of them.
//!
//! `cargo bench --features etcd --bench cluster_latency` runs 500
//! registrations for the latency and 4000 for the throughput
//! (`-- --registrations N` for another latency count); under `cargo test`
//! it runs a few, as a check that it still works. Needs `etcd` and
//! `etcdctl` (Debian packages `etcd-server` and `etcd-client`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/cluster/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use common::{AdminClient, percentile};
use harness::{Etcd, Node};
use serde_json::json;

fn register(service: &str, instance: &str, address: &str) -> serde_json::Value {
    json!({"op":"register","zone":"svc.example","service":service,"instance":instance,
           "address":[address],"port":8080})
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// The services the throughput run registers into.
const SERVICES: usize = 200;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let registrations: usize = args
        .iter()
        .position(|a| a == "--registrations")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benching { 500 } else { 5 });
    let burst = if benching { 4000 } else { 40 };

    let etcd = Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&etcd, &dir.path().join(format!("node{i}"))))
        .collect();
    let mut admins: Vec<AdminClient> = nodes.iter().map(|n| n.server.admin()).collect();

    // Latency: acknowledged → answered by every node.
    let mut latencies = Vec::with_capacity(registrations);
    for i in 0..registrations {
        let name = format!("lat-{i}");
        let addr = address(i + 1);
        admins[i % 3].ok(register("lat", &name, &addr));
        let acked = Instant::now();
        let fqdn = format!("{name}.svc.example.");
        let mut waiting: Vec<&Node> = nodes.iter().collect();
        while !waiting.is_empty() {
            waiting.retain(|n| !n.answers(&fqdn, &addr));
            assert!(
                acked.elapsed() < Duration::from_secs(10),
                "{fqdn} not answered by every node"
            );
        }
        latencies.push(acked.elapsed());
    }
    latencies.sort();
    println!(
        "registration acknowledged -> answered by all 3 nodes ({registrations} registrations, \
         one at a time, round robin over the nodes): p50 {}, p99 {}, max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );

    // Throughput: 8 clients at once, spread over the nodes, into 200
    // services (what one change costs grows with its service's size, which
    // the single-node benchmark measures: tests/admin_latency.rs).
    let clients = 8;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let socket = nodes[c % 3].socket();
            std::thread::spawn(move || {
                let mut admin = AdminClient::connect(&socket);
                for i in (c..burst).step_by(clients) {
                    let service = format!("tp{}", i % SERVICES);
                    admin.ok(register(
                        &service,
                        &format!("tp-{i}"),
                        &address(100_000 + i),
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let acked = started.elapsed();
    let last: Vec<(String, String)> = (burst - clients..burst)
        .map(|i| (format!("tp-{i}.svc.example."), address(100_000 + i)))
        .collect();
    assert!(
        common::eventually(Duration::from_secs(30), || nodes
            .iter()
            .all(|n| last.iter().all(|(name, a)| n.answers(name, a)))),
        "every node answers the last registrations"
    );
    let converged = started.elapsed();
    println!(
        "throughput: {burst} registrations from {clients} clients acknowledged in {} \
         ({:.0}/s); every node answered all of them after {}",
        ms(acked),
        burst as f64 / acked.as_secs_f64(),
        ms(converged)
    );
}
