//! What a change to a large zone costs, and what a lookup costs.
//!
//! Builds a zone of 100 000 services of 3 instances (and one of 1 000), one
//! of them with 5 000 instances, then times `LiveZone::update` for adding
//! and removing one instance of the large service and for adding and
//! removing a whole service, as p50/p99 over many updates. Also prints the
//! full build's time, the process's RSS after it, and the cost of looking
//! up existing and missing names in the snapshot.
//!
//! `cargo bench --bench live_update` (`-- --updates N` for another number
//! of updates, `-- --services 1000` for the small zone only); under `cargo test` it runs on small
//! zones, as a check that it still works.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;
use signpost::answer::live::LiveZone;
use signpost::answer::snapshot::ZoneSnapshot;
use signpost::answer::wire::lower_wire;
use signpost::model::ServiceKey;
use signpost::model::{Endpoint, Instance, Protocol, Service, Soa, Zone};

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i))
}

fn instance(n: String, a: u32) -> Instance {
    Instance {
        name: n,
        endpoint: Endpoint::Addresses(vec![addr(a)]),
        port: 8080,
        weight: 1,
        priority: 0,
        check: None,
        tags: Vec::new(),
        metadata: Vec::new(),
    }
}

fn service(i: u32, instances: u32) -> Service {
    Service {
        name: format!("svc-{i}"),
        protocol: Protocol::Tcp,
        tags: Vec::new(),
        check: None,
        instances: (0..instances)
            .map(|j| Arc::new(instance(format!("inst-{i}-{j}"), i * 8 + j)))
            .collect(),
        max_answers: None,
    }
}

fn zone(services: u32, big: u32) -> Zone {
    let mut services: Vec<Service> = (1..services).map(|i| service(i, 3)).collect();
    let mut large = service(0, 0);
    large.name = "big".into();
    large.instances = (0..big)
        .map(|j| Arc::new(instance(format!("big-{j}"), 0x80_0000 + j)))
        .collect();
    services.push(large);
    Zone {
        apex: name("bench.example."),
        ttl: 30,
        nameservers: vec![name("ns1.bench.example.")],
        soa: Soa {
            mname: name("ns1.bench.example."),
            rname: name("admin.bench.example."),
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 30,
        },
        hosts: Vec::new(),
        services: services.into_iter().map(Arc::new).collect(),
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6
    )
}

/// Lookups of existing and missing names, in a scattered order: the best
/// of a few rounds, since the machine may be shared.
fn lookups(zone: &Zone, snapshot: &ZoneSnapshot, rounds: usize) {
    let mut existing: Vec<Vec<u8>> = zone
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| lower_wire(&name(&format!("{}.bench.example.", i.name))))
        .collect();
    // A fixed shuffle, so consecutive lookups do not share cache lines.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..existing.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        existing.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let missing: Vec<Vec<u8>> = existing
        .iter()
        .map(|k| {
            let mut k = k.clone();
            k[1] = b'x';
            k
        })
        .collect();
    for (what, keys) in [("existing", &existing), ("missing", &missing)] {
        let mut best = f64::MAX;
        let mut found = 0usize;
        for _ in 0..5 {
            let start = Instant::now();
            found = 0;
            for i in 0..rounds {
                found += snapshot.node(&keys[i % keys.len()]).is_some() as usize;
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e9 / rounds as f64);
        }
        println!(
            "  lookup of {what} names: {best:.1} ns each, best of 5 ({found} of {rounds} found)"
        );
    }
}

fn timed(samples: &mut Vec<Duration>, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    samples.push(start.elapsed());
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: &[(u32, u32)] = if benching {
        &[(1_000, 5_000), (100_000, 5_000)]
    } else {
        &[(100, 50)]
    };
    let arg = |name: &str| {
        let args: Vec<String> = std::env::args().collect();
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1)?.parse::<u32>().ok()
    };
    let (rounds, updates) = if benching {
        (1_000_000, 2_000)
    } else {
        (1_000, 10)
    };
    let updates = arg("--updates").unwrap_or(updates);
    let largest = arg("--services").unwrap_or(u32::MAX);
    let sizes: Vec<(u32, u32)> = sizes.iter().copied().filter(|s| s.0 <= largest).collect();
    for (services, big) in sizes {
        println!("{services} services of 3 instances, one of {big}:");
        let zone = zone(services, big);
        let start = Instant::now();
        let mut live = LiveZone::build(&zone, zone.services.clone(), 1, None);
        println!("  build: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
        println!("  RSS after the build: {:.0} MiB", rss_mib());
        lookups(&zone, live.snapshot(), rounds);

        let big_key = ServiceKey {
            name: "big".into(),
            protocol: Protocol::Tcp,
        };
        let base = live.service(&big_key).unwrap().clone();
        let mut serial = 1;
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for u in 0..updates {
            let mut grown = base.clone();
            grown
                .instances
                .push_back(Arc::new(instance(format!("extra-{u}"), 0x90_0000 + u)));
            serial += 1;
            timed(&mut add, || {
                live.update([(big_key.clone(), Some(grown))], serial)
            });
            let shrunk = base.clone();
            serial += 1;
            timed(&mut remove, || {
                live.update([(big_key.clone(), Some(shrunk))], serial)
            });
        }
        println!(
            "  add one instance to the {big}-instance service:    {}",
            percentiles(add)
        );
        println!(
            "  remove it again:                                  {}",
            percentiles(remove)
        );

        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for u in 0..updates {
            let new = service(services + u, 3);
            let key = ServiceKey::of(&new);
            serial += 1;
            timed(&mut add, || live.update([(key.clone(), Some(new))], serial));
            serial += 1;
            timed(&mut remove, || {
                live.update([(key, None::<Service>)], serial)
            });
        }
        println!(
            "  add a service of 3 instances:                     {}",
            percentiles(add)
        );
        println!(
            "  remove it again:                                  {}",
            percentiles(remove)
        );
        println!("  RSS after the updates: {:.0} MiB", rss_mib());
    }
}
