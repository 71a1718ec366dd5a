//! How long after a zone file is replaced does the server answer from it?
//!
//! Starts the release binary on a temporary zones directory, then repeatedly
//! writes a new version of a zone file to a temporary name, renames it over
//! the old one (as editors and config management do), and queries the
//! server in a tight loop until the new address comes back. Prints the
//! distribution of rename-to-answer times.
//!
//! `cargo bench --bench reload_latency` runs 500 edits (`-- --edits N` for
//! more); under `cargo test` it runs a few, as a check that it still works.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Server, query, udp_raw};
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

fn zone(i: u32) -> String {
    format!(
        "zone = \"bench.test\"\n[hosts]\ndb = \"10.{}.{}.{}\"\n",
        (i >> 16) & 0xFF,
        (i >> 8) & 0xFF,
        i & 0xFF
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let edits: u32 = args
        .iter()
        .position(|a| a == "--edits")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benching { 500 } else { 5 });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.toml");
    std::fs::write(&file, zone(0)).unwrap();
    let server = Server::start(dir.path());
    let q = query("db.bench.test.", RecordType::A).to_vec().unwrap();
    let answer = |want: std::net::Ipv4Addr| {
        udp_raw(server.addr, &q, Duration::from_millis(200))
            .and_then(|r| Message::from_vec(&r).ok())
            .is_some_and(
                |m| matches!(m.answers.first().map(|r| &r.data), Some(RData::A(a)) if a.0 == want),
            )
    };

    let mut samples = Vec::with_capacity(edits as usize);
    for i in 1..=edits {
        let text = zone(i);
        let want = text.split('"').nth(3).unwrap().parse().unwrap();
        let tmp = dir.path().join(".bench.toml.tmp");
        std::fs::write(&tmp, &text).unwrap();
        let renamed = Instant::now();
        std::fs::rename(&tmp, &file).unwrap();
        while !answer(want) {
            assert!(
                renamed.elapsed() < Duration::from_secs(10),
                "edit {i} never served"
            );
        }
        samples.push(renamed.elapsed());
        // Edits arrive as separate changes, not one burst.
        std::thread::sleep(Duration::from_millis(20));
    }

    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "reload latency over {} edits (rename -> new answer): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        pct(50).as_secs_f64() * 1e3,
        pct(90).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}
