//! A cluster against real processes: three etcd members and three signpost
//! nodes (`serve --etcd`) on loopback. A registration made through any node
//! is answered by every node, TTLs are etcd leases, and the nodes ride out
//! the loss of an etcd member, of a node, and of etcd altogether.

mod common;
#[path = "cluster/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use common::{AdminClient, cli, eventually};
use harness::{Etcd, Node, PREFIX};
use serde_json::{Value, json};

const WEB_9: &str = "web-9.svc.example.";

fn register(instance: &str, address: &str) -> Value {
    json!({"op":"register","zone":"svc.example","service":"web","instance":instance,
           "address":[address],"port":8080})
}

fn deregister(instance: &str) -> Value {
    json!({"op":"deregister","zone":"svc.example","service":"web","instance":instance})
}

/// Three etcd members and three nodes, each node in its own directory.
fn cluster() -> (Etcd, Vec<Node>, tempfile::TempDir) {
    let etcd = Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    let nodes = (0..3)
        .map(|i| Node::start(&etcd, &dir.path().join(format!("node{i}"))))
        .collect();
    (etcd, nodes, dir)
}

/// Waits until every node answers `name` with `address` alone.
fn all_answer(nodes: &[Node], name: &str, address: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        nodes.iter().all(|n| n.answers(name, address))
    })
}

/// Waits until no node answers `name`.
fn none_answer(nodes: &[Node], name: &str, within: Duration) -> bool {
    eventually(within, || {
        nodes.iter().all(|n| n.addresses(name).is_empty())
    })
}

fn status_text(node: &Node) -> String {
    let out = cli(&node.socket(), &["status"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_registration_on_one_node_is_answered_by_all_and_a_deregistration_on_another_removes_it() {
    let (etcd, nodes, _dir) = cluster();
    // Before: nobody answers it.
    assert!(nodes.iter().all(|n| n.addresses(WEB_9).is_empty()));

    let started = Instant::now();
    nodes[0].server.admin().ok(register("web-9", "10.0.0.19"));
    // The node that took it answers as soon as it acknowledged it.
    assert!(nodes[0].answers(WEB_9, "10.0.0.19"));
    assert!(all_answer(&nodes, WEB_9, "10.0.0.19"), "every node answers");
    assert!(started.elapsed() < Duration::from_secs(2));

    // One key, its value the registration with a format version.
    let out = etcd.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("{PREFIX}svc.example./web-9"),
    ]);
    let value: Value = serde_json::from_slice(&out.stdout).expect("a JSON value in etcd");
    assert_eq!(value["format"], 1);
    assert_eq!(value["registration"]["instance"], "web-9");
    assert_eq!(value["registration"]["address"], json!(["10.0.0.19"]));

    // Replaced through another node: every node follows.
    nodes[2].server.admin().ok(register("web-9", "10.0.0.29"));
    assert!(all_answer(&nodes, WEB_9, "10.0.0.29"));

    // Deregistered through a third node: gone everywhere.
    nodes[1].server.admin().ok(deregister("web-9"));
    assert!(nodes[1].addresses(WEB_9).is_empty());
    assert!(none_answer(&nodes, WEB_9, Duration::from_secs(5)));
    let out = etcd.etcdctl(&["get", "--prefix", "--keys-only", PREFIX]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // Another tool writes the documented format: every node serves it.
    let value = json!({"format":1,"registration":{"zone":"svc.example","service":"web",
        "instance":"web-7","address":"10.0.0.17","port":8080}});
    let out = etcd.etcdctl(&[
        "put",
        &format!("{PREFIX}svc.example./web-7"),
        &value.to_string(),
    ]);
    assert!(out.status.success());
    assert!(all_answer(&nodes, "web-7.svc.example.", "10.0.0.17"));
    // And every node lists it as a runtime registration.
    for n in &nodes {
        let list = AdminClient::connect(&n.socket()).ok(json!({"op":"list"}));
        assert!(
            list["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["instance"] == "web-7")
        );
    }
    assert!(
        etcd.etcdctl(&["del", &format!("{PREFIX}svc.example./web-7")])
            .status
            .success()
    );
    assert!(none_answer(
        &nodes,
        "web-7.svc.example.",
        Duration::from_secs(5)
    ));
}

#[test]
fn a_ttl_is_an_etcd_lease_kept_by_heartbeats_through_any_node_and_it_lapses_everywhere() {
    let (etcd, nodes, _dir) = cluster();
    let mut r = register("web-9", "10.0.0.19");
    r["ttl"] = 2.into();
    nodes[0].server.admin().ok(r);
    assert!(
        all_answer(&nodes, WEB_9, "10.0.0.19"),
        "{:?} {}",
        nodes.iter().map(|n| n.addresses(WEB_9)).collect::<Vec<_>>(),
        nodes[1].server.log_text()
    );
    let out = etcd.etcdctl(&["get", "-w", "json", &format!("{PREFIX}svc.example./web-9")]);
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(
        got["kvs"][0]["lease"],
        Value::Null,
        "the key has a lease: {got}"
    );

    // Heartbeats through other nodes keep it alive past its TTL.
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 1;
    while Instant::now() < until {
        let beat =
            json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9"});
        nodes[i % 3].server.admin().ok(beat);
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            nodes.iter().all(|n| n.answers(WEB_9, "10.0.0.19")),
            "kept by heartbeats"
        );
    }

    // Without them the lease lapses: the key goes, and every node stops answering.
    let stopped = Instant::now();
    assert!(none_answer(&nodes, WEB_9, Duration::from_secs(6)));
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "not before the TTL"
    );
    let out = etcd.etcdctl(&["get", "--prefix", "--keys-only", PREFIX]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // A heartbeat now says so, and a registration brings it back.
    let beat = json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9"});
    let error = nodes[2].server.admin().error(beat);
    assert!(
        error.contains("not registered") || error.contains("lapsed"),
        "{error}"
    );
}

#[test]
fn losing_an_etcd_member_then_a_node_changes_nothing_and_a_restarted_node_catches_up() {
    let (mut etcd, mut nodes, dir) = cluster();
    nodes[0].server.admin().ok(register("web-9", "10.0.0.19"));
    assert!(all_answer(&nodes, WEB_9, "10.0.0.19"));

    etcd.kill_member(0);
    nodes[1].server.admin().ok(register("web-10", "10.0.0.20"));
    assert!(all_answer(&nodes, "web-10.svc.example.", "10.0.0.20"));
    assert!(all_answer(&nodes, WEB_9, "10.0.0.19"));

    // A node goes away without a goodbye; the others go on.
    nodes[2].server.kill_9();
    nodes[0].server.admin().ok(register("web-11", "10.0.0.21"));
    nodes[1].server.admin().ok(deregister("web-9"));
    let alive = &nodes[..2];
    assert!(all_answer(alive, "web-11.svc.example.", "10.0.0.21"));
    assert!(none_answer(alive, WEB_9, Duration::from_secs(5)));

    // Back, it has what it missed and not what went away meanwhile.
    nodes[2] = Node::start(&etcd, &dir.path().join("node2"));
    assert!(nodes[2].answers("web-11.svc.example.", "10.0.0.21"));
    assert!(nodes[2].answers("web-10.svc.example.", "10.0.0.20"));
    assert!(nodes[2].addresses(WEB_9).is_empty());
    // And takes registrations again.
    nodes[2].server.admin().ok(register("web-12", "10.0.0.22"));
    assert!(all_answer(&nodes, "web-12.svc.example.", "10.0.0.22"));

    // A clean shutdown keeps the registrations made through the node: they
    // belong to the services.
    assert!(nodes[2].server.stop().success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(all_answer(&nodes[..2], "web-12.svc.example.", "10.0.0.22"));
    let out = etcd.etcdctl(&[
        "get",
        "--keys-only",
        &format!("{PREFIX}svc.example./web-12"),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web-12"));
}

#[test]
fn with_etcd_down_nodes_answer_from_their_snapshot_refuse_registrations_quickly_and_resume() {
    let (mut etcd, nodes, _dir) = cluster();
    nodes[0].server.admin().ok(register("web-9", "10.0.0.19"));
    assert!(all_answer(&nodes, WEB_9, "10.0.0.19"));
    assert!(!status_text(&nodes[1]).contains("STALE"));

    etcd.kill_all();
    // Every node keeps answering what it had.
    assert!(nodes.iter().all(|n| n.answers(WEB_9, "10.0.0.19")));
    // A registration fails within a few seconds, saying why.
    let asked = Instant::now();
    let error = nodes[1]
        .server
        .admin()
        .error(register("web-10", "10.0.0.20"));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    assert!(error.contains("etcd"), "{error}");
    assert!(error.contains("nothing changed"), "{error}");
    assert!(nodes[1].addresses("web-10.svc.example.").is_empty());
    // The CLI says the same and exits non-zero.
    let out = cli(
        &nodes[2].socket(),
        &[
            "register",
            "--zone",
            "svc.example",
            "--service",
            "web",
            "--instance",
            "web-10",
            "--address",
            "10.0.0.20",
            "--port",
            "8080",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd"));
    // Status says the registrations are stale, and since when.
    assert!(
        eventually(Duration::from_secs(5), || status_text(&nodes[0])
            .contains("STALE since")),
        "{}",
        status_text(&nodes[0])
    );
    assert!(nodes.iter().all(|n| n.answers(WEB_9, "10.0.0.19")));

    // etcd is back: registrations go through and every node follows again.
    etcd.start_all();
    assert!(eventually(Duration::from_secs(10), || {
        nodes[1]
            .server
            .admin()
            .request(register("web-10", "10.0.0.20"))["ok"]
            == true
    }));
    assert!(all_answer(&nodes, "web-10.svc.example.", "10.0.0.20"));
    assert!(eventually(Duration::from_secs(5), || {
        nodes.iter().all(|n| !status_text(n).contains("STALE"))
    }));
    nodes[2].server.admin().ok(deregister("web-9"));
    assert!(none_answer(&nodes, WEB_9, Duration::from_secs(5)));
}

#[test]
fn a_node_cut_off_while_etcd_compacts_reads_everything_again_without_a_gap() {
    let etcd = Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    // One node talks to the first two members, the other to the third only.
    let node = Node::start_on(&etcd.endpoints()[..2], &dir.path().join("node0"));
    let lonely = Node::start_on(&[etcd.endpoints()[2].clone()], &dir.path().join("node1"));
    node.server.admin().ok(register("web-9", "10.0.0.19"));
    node.server.admin().ok(register("web-10", "10.0.0.20"));
    assert!(all_answer(
        std::slice::from_ref(&lonely),
        WEB_9,
        "10.0.0.19"
    ));

    // Its member freezes: the other two go on, and compact the history.
    // If it led, they elect a leader first (half a second, more on a busy
    // machine): a write meanwhile is refused, nothing changed, and a client
    // tries again.
    etcd.pause_member(2);
    let mut admin = node.server.admin();
    assert!(eventually(Duration::from_secs(10), || admin
        .raw(&deregister("web-9").to_string())["ok"]
        == true));
    node.server.admin().ok(register("web-11", "10.0.0.21"));
    node.server.admin().ok(register("web-10", "10.0.0.30"));
    let out = etcd.etcdctl_on(&[0, 1], &["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    let out = etcd.etcdctl_on(&[0, 1], &["compact", &revision.to_string(), "--physical"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(eventually(Duration::from_secs(5), || status_text(&lonely)
        .contains("STALE")));
    // Meanwhile it answers what it had.
    let had = lonely.addresses(WEB_9);
    assert_eq!(
        had,
        vec!["10.0.0.19".parse::<std::net::IpAddr>().unwrap()],
        "the cut-off node's log:\n{}",
        lonely.server.log_text()
    );

    // The node waits, stopped, while its member catches up with the
    // compaction: else it may watch from the member's history before the
    // member applies it, and never meet the compaction.
    let kill = |signal: &str| {
        let pid = lonely.server.pid().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
        assert!(status.unwrap().success());
    };
    kill("-STOP");
    etcd.resume_member(2);
    let compacted = (revision - 1).to_string();
    assert!(eventually(Duration::from_secs(10), || {
        let get = ["get", "web", "--rev", &compacted, "--consistency=s"];
        let out = etcd.etcdctl_on(&[2], &get);
        String::from_utf8_lossy(&out.stderr).contains("compacted")
    }));
    kill("-CONT");
    let nodes = [lonely];
    assert!(none_answer(&nodes, WEB_9, Duration::from_secs(10)));
    assert!(all_answer(&nodes, "web-11.svc.example.", "10.0.0.21"));
    assert!(all_answer(&nodes, "web-10.svc.example.", "10.0.0.30"));
    assert!(
        nodes[0]
            .server
            .wait_for_log("compacted", Duration::from_secs(1))
    );
    // And it follows on from there.
    node.server.admin().ok(register("web-12", "10.0.0.22"));
    assert!(all_answer(&nodes, "web-12.svc.example.", "10.0.0.22"));
}
