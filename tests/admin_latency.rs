//! Benchmark: time from sending a registration to the moment DNS answers
//! for it. Not part of the normal suite (timing depends on the machine and
//! its disk); run it with
//!
//! ```sh
//! cargo test --release --test admin_latency -- --ignored --nocapture
//! ```
//!
//! `SIGNPOST_BENCH_N` sets the registrations per run (default 1000) and
//! `SIGNPOST_BENCH_DIR` where the state file goes (default: a temporary
//! directory under $TMPDIR), so different disks can be compared.
//!
//! `SIGNPOST_BENCH_SERVICES=100000` serves, instead of the example zone, a
//! zone of that many services of 3 instances each, plus the service the
//! registrations go to, which the file gives `SIGNPOST_BENCH_INSTANCES`
//! instances to start with (default 5000): a change to a large service in a
//! large zone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::json;

/// `svc.example` with `services` services of 3 instances and the service
/// `bench` with `instances` instances.
fn large_zone(services: usize, instances: usize) -> String {
    let addr = |n: usize| format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
    let mut text = String::from("zone = \"svc.example\"\n");
    for s in 0..services {
        text.push_str(&format!("[[services]]\nname = \"svc-{s}\"\nport = 80\n"));
        for i in 0..3 {
            text.push_str(&format!(
                "[[services.instances]]\nname = \"i-{s}-{i}\"\naddress = \"{}\"\n",
                addr(s * 3 + i + 1)
            ));
        }
    }
    text.push_str("[[services]]\nname = \"bench\"\nport = 9000\n");
    for i in 0..instances {
        text.push_str(&format!(
            "[[services.instances]]\nname = \"b-{i}\"\naddress = \"{}\"\n",
            addr(4_000_000 + i)
        ));
    }
    text
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(what: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
    percentile(&samples, 0.99)
}

/// Registers `n` instances from `clients` threads, each measuring send →
/// reply → first DNS answer for its instance.
fn run(server: &Server, prefix: &str, n: usize, clients: usize) -> Vec<Duration> {
    let per_client = n / clients;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let socket = server.socket.clone();
            let addr = server.addr;
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut admin = AdminClient::connect(&socket);
                let mut samples = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let name = format!("{prefix}-{c}-{i}");
                    let host = format!("{name}.svc.example.");
                    let address = format!("10.{}.{}.{}", c + 100, i / 250, i % 250 + 1);
                    let request = json!({"op":"register","zone":"svc.example","service":"bench",
                        "instance":name,"address":address,"port":9000});
                    let start = Instant::now();
                    admin.ok(request);
                    // Poll until DNS answers: "ok" should already mean answerable.
                    let q = query(&host, RecordType::A).to_vec().unwrap();
                    let mut polls = 0;
                    loop {
                        let reply = udp_raw(addr, &q, Duration::from_secs(2)).expect("a reply");
                        // ANCOUNT > 0
                        if u16::from_be_bytes([reply[6], reply[7]]) > 0 {
                            break;
                        }
                        polls += 1;
                        assert!(polls < 10_000, "{host} never answered");
                    }
                    samples.push(start.elapsed());
                }
                samples
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn registration_to_answer_latency() {
    let n: usize = std::env::var("SIGNPOST_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = match std::env::var_os("SIGNPOST_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let services: usize = std::env::var("SIGNPOST_BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let zones = tempfile::tempdir().unwrap();
    let zones_dir = if services == 0 {
        example_zones()
    } else {
        let instances: usize = std::env::var("SIGNPOST_BENCH_INSTANCES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5000);
        std::fs::write(
            zones.path().join("svc.example.toml"),
            large_zone(services, instances),
        )
        .unwrap();
        println!("zone: {services} services of 3 instances, and bench with {instances}");
        zones.path().to_path_buf()
    };
    let server = Server::start_admin(&zones_dir, dir.path(), &[]);
    println!(
        "state file in {} ({} registrations per run)",
        dir.path().display(),
        n
    );
    let one = report("1 client, request -> answerable", run(&server, "seq", n, 1));
    report(
        "8 clients, request -> answerable",
        run(&server, "par", n, 8),
    );
    println!("zone now has {} runtime instances", 2 * n);
    // Not an assertion on the figure (that depends on the disk); just a sanity bound.
    assert!(one < Duration::from_secs(1));
}
