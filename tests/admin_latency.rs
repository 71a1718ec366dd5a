//! Benchmark: time from sending a registration to the moment DNS answers
//! for it. Not part of the normal suite (timing depends on the machine and
//! its disk); run it with
//!
//! ```sh
//! cargo test --release --test admin_latency registration_to_answer -- --ignored --nocapture
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
//! large zone. `SIGNPOST_BENCH_ARGS` adds flags to the server's command
//! line (`--reverse 10.0.0.0/8`), to measure what they cost.
//!
//! `pipelined_registration_throughput` measures acknowledged registrations
//! a second: 8 clients, each over one connection keeping
//! `SIGNPOST_BENCH_PIPELINE` requests in flight (default 64; 1 is a client
//! that waits for each reply), `SIGNPOST_BENCH_REQUESTS` registrations in
//! all per run (default 40 000), each at an address of its own. One run
//! registers into the service `bench`, one registers each instance into a
//! new service of its own, one gives each client a new service of its own
//! (`SIGNPOST_BENCH_RUNS=2` runs the second alone, to profile it).
//! It prints the rate and request → reply percentiles:
//!
//! ```sh
//! SIGNPOST_BENCH_SERVICES=100000 cargo test --release --test admin_latency \
//!     pipelined -- --ignored --nocapture
//! ```
//!
//! `registration_during_reload` registers into the example zone, one
//! client waiting for each reply, while another zone's file of
//! `SIGNPOST_BENCH_SERVICES` services (default 100 000) is replaced
//! `SIGNPOST_BENCH_RELOADS` times (default 3). It prints the request →
//! reply percentiles, and how long each new version of the large zone took
//! to be answered:
//!
//! ```sh
//! cargo test --release --test admin_latency registration_during_reload -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::json;

/// `zone` with `services` services of 3 instances and the service
/// `bench` with `instances` instances.
fn large_zone(zone: &str, services: usize, instances: usize) -> String {
    let addr = |n: usize| format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
    let mut text = format!("zone = \"{zone}\"\n");
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

/// A server on the zone the environment asks for, with its state file in
/// `SIGNPOST_BENCH_DIR`; the directories live as long as it.
struct Bench {
    server: Server,
    state: tempfile::TempDir,
    _zones: tempfile::TempDir,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench_server() -> Bench {
    let state = match std::env::var_os("SIGNPOST_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let services = env("SIGNPOST_BENCH_SERVICES", 0);
    let zones = tempfile::tempdir().unwrap();
    let zones_dir = if services == 0 {
        example_zones()
    } else {
        let instances = env("SIGNPOST_BENCH_INSTANCES", 5000);
        std::fs::write(
            zones.path().join("svc.example.toml"),
            large_zone("svc.example", services, instances),
        )
        .unwrap();
        println!("zone: {services} services of 3 instances, and bench with {instances}");
        zones.path().to_path_buf()
    };
    // More server flags, such as `--reverse 10.0.0.0/8`, to measure what they cost.
    let extra = std::env::var("SIGNPOST_BENCH_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut command = serve_command(&zones_dir, state.path(), &extra);
    // The writer logs where each batch's time went.
    command
        .stdout(std::process::Stdio::null())
        .env("RUST_LOG", "info,signpost::registry::writer=debug");
    let server = Server::start_command(command, state.path());
    println!("state file in {}", state.path().display());
    Bench {
        server,
        state,
        _zones: zones,
    }
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn registration_to_answer_latency() {
    let n = env("SIGNPOST_BENCH_N", 1000);
    let bench = bench_server();
    let server = &bench.server;
    println!("{n} registrations per run");
    let cpu = cpu_seconds(server.pid());
    let one = report("1 client, request -> answerable", run(server, "seq", n, 1));
    // The server's CPU time is steadier than wall times on a shared machine.
    let per = |since: f64| (cpu_seconds(server.pid()) - since) * 1000.0 / n as f64;
    println!("  server CPU per registration: {:.2} ms", per(cpu));
    let cpu = cpu_seconds(server.pid());
    report("8 clients, request -> answerable", run(server, "par", n, 8));
    println!("  server CPU per registration: {:.2} ms", per(cpu));
    println!("zone now has {} runtime instances", 2 * n);
    // Not an assertion on the figure (that depends on the disk); just a sanity bound.
    assert!(one < Duration::from_secs(1));
    drop(bench.state);
}

/// User and system CPU seconds of process `pid` so far, from
/// /proc/PID/stat (in clock ticks of 1/100 s, USER_HZ on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The service of a client's i-th registration.
type ServiceName = fn(usize, usize) -> String;

/// Registers `n` instances from `clients` connections, each keeping
/// `window` requests in flight; `service(client, i)` names the service of
/// a client's i-th registration, and `run` keeps the names and addresses of
/// one run apart from another's. Returns every request → reply time and
/// the wall time of the whole run.
fn pipelined(
    server: &Server,
    n: usize,
    clients: usize,
    window: usize,
    run: usize,
    service: ServiceName,
) -> (Vec<Duration>, Duration) {
    use std::io::{BufRead, Write};
    let per_client = n / clients;
    assert!(per_client <= 65_536, "at most 65 536 addresses per client");
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let socket = server.socket.clone();
            std::thread::spawn(move || {
                let mut write = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                write
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut read = std::io::BufReader::new(write.try_clone().unwrap());
                let mut sent = std::collections::VecDeque::with_capacity(window);
                let mut samples = Vec::with_capacity(per_client);
                let mut next = 0;
                let mut out = Vec::new();
                let mut reply = String::new();
                while samples.len() < per_client {
                    // Fill the window, in one write.
                    out.clear();
                    while next < per_client && sent.len() < window {
                        let request = json!({"op":"register","zone":"svc.example",
                            "service":service(c, next),"instance":format!("r{run}c{c}-{next}"),
                            "address":format!("10.{}.{}.{}", 100 + 10 * run + c, next >> 8, next & 255),
                            "port":9000});
                        out.extend_from_slice(request.to_string().as_bytes());
                        out.push(b'\n');
                        sent.push_back(Instant::now());
                        next += 1;
                    }
                    if !out.is_empty() {
                        write.write_all(&out).unwrap();
                    }
                    reply.clear();
                    read.read_line(&mut reply).unwrap();
                    assert!(reply.starts_with(r#"{"ok":true"#), "{reply}");
                    samples.push(sent.pop_front().unwrap().elapsed());
                }
                samples
            })
        })
        .collect();
    let samples = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    (samples, start.elapsed())
}

/// Sums up the writer's "batch done" lines: how many batches, how large,
/// and where their time went.
fn batches(log: &[String]) {
    let fields = [
        "requests",
        "apply_ms",
        "save_ms",
        "publish_ms",
        "reply_ms",
        "health_ms",
    ];
    let mut sums = [0.0; 6];
    let mut count = 0;
    for line in log.iter().filter(|l| l.contains("batch done")) {
        count += 1;
        for word in line.split_whitespace() {
            if let Some((key, value)) = word.split_once('=')
                && let Some(i) = fields.iter().position(|f| *f == key)
            {
                sums[i] += value.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    if count == 0 {
        return;
    }
    let mean = |i: usize| sums[i] / count as f64;
    println!(
        "  {count} batches of {:.0} requests on average; per batch: apply {:.2} ms, save {:.2} ms, publish {:.2} ms, reply {:.2} ms, health {:.2} ms",
        mean(0),
        mean(1),
        mean(2),
        mean(3),
        mean(4),
        mean(5)
    );
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn pipelined_registration_throughput() {
    let n = env("SIGNPOST_BENCH_REQUESTS", 40_000);
    let window = env("SIGNPOST_BENCH_PIPELINE", 64);
    let clients = 8;
    let bench = bench_server();
    let runs: [(&str, ServiceName); 3] = [
        ("into bench", |_, _| "bench".into()),
        ("each into a new service", |c, i| format!("s{c}-{i}")),
        ("into a new service per client", |c, _| format!("p{c}")),
    ];
    // `SIGNPOST_BENCH_RUNS` picks runs by number (`2,3`), to profile one.
    let picked = std::env::var("SIGNPOST_BENCH_RUNS").unwrap_or_else(|_| "1,2,3".into());
    for (i, (what, service)) in runs.into_iter().enumerate() {
        if !picked.split(',').any(|p| p.trim() == (i + 1).to_string()) {
            continue;
        }
        let logged = bench.server.log.lock().unwrap().len();
        let (samples, took) = pipelined(&bench.server, n, clients, window, i, service);
        let done = samples.len();
        println!(
            "{clients} clients x {window} in flight, {what}: {done} registrations in {:.2} s, {:.0} acknowledged/s",
            took.as_secs_f64(),
            done as f64 / took.as_secs_f64()
        );
        report(&format!("  {what}, request -> reply"), samples);
        batches(&bench.server.log.lock().unwrap()[logged..]);
    }
    drop(bench.state);
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn registration_during_reload() {
    let services = env("SIGNPOST_BENCH_SERVICES", 100_000);
    let reloads = env("SIGNPOST_BENCH_RELOADS", 3);
    let zones = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::copy(
        example_zones().join("svc.example.toml"),
        zones.path().join("svc.example.toml"),
    )
    .unwrap();
    // Two versions of the large zone: `bench` has one instance, or two.
    let large = zones.path().join("large.example.toml");
    let versions = [1, 2].map(|n| large_zone("large.example", services, n));
    std::fs::write(&large, &versions[0]).unwrap();
    let mut command = serve_command(zones.path(), state.path(), &[]);
    command.stdout(std::process::Stdio::null());
    let server = Server::start_command(command, state.path());
    println!("large.example: {services} services of 3 instances; {reloads} reloads");

    let addr = server.addr;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloading = {
        let done = done.clone();
        let dir = zones.path().to_path_buf();
        std::thread::spawn(move || {
            let q = query("b-1.large.example.", RecordType::A).to_vec().unwrap();
            let mut took = Vec::new();
            for r in 1..=reloads {
                std::thread::sleep(Duration::from_millis(500));
                let version = &versions[r % 2];
                let tmp = dir.join(".large.example.toml.tmp");
                std::fs::write(&tmp, version).unwrap();
                let renamed = Instant::now();
                std::fs::rename(&tmp, &large).unwrap();
                // Version 2 answers b-1; version 1 does not have it.
                let want = r % 2 == 1;
                while udp_raw(addr, &q, Duration::from_secs(2))
                    .is_none_or(|m| (u16::from_be_bytes([m[6], m[7]]) > 0) != want)
                {
                    assert!(renamed.elapsed() < Duration::from_secs(120));
                    std::thread::sleep(Duration::from_millis(2));
                }
                took.push(renamed.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
            done.store(true, std::sync::atomic::Ordering::Release);
            took
        })
    };
    let mut admin = AdminClient::connect(&server.socket);
    // A reply that waits for a whole build is what this measures.
    admin.set_timeout(Duration::from_secs(120));
    let mut samples = Vec::new();
    while !done.load(std::sync::atomic::Ordering::Acquire) {
        let i = samples.len();
        let request = json!({"op":"register","zone":"svc.example","service":"bench",
            "instance":format!("during-{i}"),
            "address":format!("10.200.{}.{}", i >> 8 & 255, i & 255),"port":9000});
        let start = Instant::now();
        admin.ok(request);
        samples.push(start.elapsed());
    }
    for (r, took) in reloading.join().unwrap().iter().enumerate() {
        println!(
            "reload {}: the new version answered {:.0} ms after the rename",
            r + 1,
            took.as_secs_f64() * 1000.0
        );
    }
    report(
        "registrations into another zone meanwhile, request -> reply",
        samples,
    );
}
