//! Active health checks: the scheduler that probes the addresses the
//! registry names ([`Checker::update`]) and reports only flips of their
//! state back to it (see `registry::health`).
//!
//! Cost: the scheduler is one task holding, per target, an entry of about
//! 250 bytes (the target's names and check, its state, one heap slot) and
//! the registry another copy of the target in its per-zone set, so 10 000
//! checked addresses take a few megabytes. Probes run as tasks, at most
//! [`MAX_IN_FLIGHT`] at once whatever the number of targets; due probes
//! beyond that wait their turn. At the default interval (10 s), 10 000
//! targets need 1 000 probes a second; a TCP probe measured about 60 µs of
//! CPU, listener side included (`cost_of_ten_thousand_checked_addresses`),
//! so about 6% of one core. A probe that times out holds its slot for the
//! whole timeout, so with every target timing out (2 s) at most 128 probes
//! complete per second, and each target is then probed about every 80 s
//! instead of 10 s: checks slow down rather than the server.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::CheckKind;
use crate::registry::health::{Flip, Target};

/// Probes in flight at most, over all targets.
pub const MAX_IN_FLIGHT: usize = 256;

/// Sends target sets to the scheduler task.
#[derive(Clone)]
pub struct Checker {
    tx: mpsc::UnboundedSender<Vec<(Vec<u8>, Vec<Target>)>>,
}

impl Checker {
    /// Replaces the targets of these zones (an empty list removes a zone's).
    pub fn update(&self, updates: Vec<(Vec<u8>, Vec<Target>)>) {
        if !updates.is_empty() {
            let _ = self.tx.send(updates);
        }
    }
}

/// A probe: `Ok` is healthy, `Err` says what failed.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs one probe of a target.
pub type Prober = Arc<dyn Fn(&Target) -> ProbeFuture + Send + Sync>;

/// The real probes: a TCP connect, or an HTTP/1.1 GET.
pub fn network_prober() -> Prober {
    Arc::new(|t: &Target| {
        let addr = SocketAddr::new(t.address, t.port);
        let kind = t.check.kind.clone();
        Box::pin(async move {
            match kind {
                CheckKind::Tcp => TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                CheckKind::Http(path) => http_get(addr, &path).await,
            }
        })
    })
}

/// `GET path` over HTTP/1.1; healthy when the status is 2xx. Only the status
/// line is read: a check needs no HTTP client library.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: signpost-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && code.len() == 3 => {
            if code.starts_with('2') {
                Ok(())
            } else {
                Err(format!("HTTP status {code}"))
            }
        }
        _ if line.is_empty() => Err("connection closed without an HTTP response".into()),
        _ => Err(format!("not an HTTP response: {:?}", truncate(line, 60))),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Starts the scheduler: it probes the targets it is given with at most
/// `limit` probes in flight, and calls `on_flips` with every batch of
/// state changes (stopping when that returns false, or at `shutdown`).
pub fn spawn(
    limit: usize,
    prober: Prober,
    on_flips: impl Fn(Vec<Flip>) -> bool + Send + 'static,
    shutdown: CancellationToken,
) -> Checker {
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler {
        limit: limit.max(1),
        prober,
        entries: HashMap::new(),
        by_target: HashMap::new(),
        zones: HashMap::new(),
        due: BinaryHeap::new(),
        running: JoinSet::new(),
        next_id: 0,
    };
    tokio::spawn(scheduler.run(rx, on_flips, shutdown));
    Checker { tx }
}

/// Where a target stands, with the streak of results against its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not probed yet: served. The first result decides, without hysteresis.
    Unknown,
    Healthy,
    Unhealthy,
}

struct Entry {
    target: Arc<Target>,
    state: State,
    /// Consecutive results contradicting `state`.
    streak: u32,
}

/// One task for every target: a heap of due times rather than a sleeping
/// task per target, and a [`JoinSet`] of at most `limit` running probes.
struct Scheduler {
    limit: usize,
    prober: Prober,
    entries: HashMap<u64, Entry>,
    by_target: HashMap<Arc<Target>, u64>,
    zones: HashMap<Vec<u8>, Vec<u64>>,
    /// When each entry's next probe is due. Each live entry that is not
    /// being probed has exactly one slot; slots of removed entries are
    /// skipped when they come up.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    running: JoinSet<(u64, Result<(), String>)>,
    next_id: u64,
}

impl Scheduler {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Vec<(Vec<u8>, Vec<Target>)>>,
        on_flips: impl Fn(Vec<Flip>) -> bool,
        shutdown: CancellationToken,
    ) {
        loop {
            self.start_due(Instant::now());
            // At the limit, nothing starts until a probe finishes.
            let next = (self.running.len() < self.limit)
                .then(|| self.due.peek().map(|Reverse((at, _))| *at))
                .flatten();
            tokio::select! {
                () = shutdown.cancelled() => return,
                updates = inbox.recv() => {
                    let Some(updates) = updates else { return };
                    self.apply(updates, Instant::now());
                    while let Ok(more) = inbox.try_recv() {
                        self.apply(more, Instant::now());
                    }
                }
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    let mut flips = Vec::new();
                    let mut done = Some(done);
                    while let Some(result) = done {
                        if let Ok((id, outcome)) = result
                            && let Some(flip) = self.finished(id, outcome, Instant::now())
                        {
                            flips.push(flip);
                        }
                        done = self.running.try_join_next();
                    }
                    if !flips.is_empty() && !on_flips(flips) {
                        return;
                    }
                }
                () = sleep_until(next), if next.is_some() => {}
            }
        }
    }

    /// Replaces zones' target sets; unchanged targets keep their state and schedule.
    fn apply(&mut self, updates: Vec<(Vec<u8>, Vec<Target>)>, now: Instant) {
        for (zone, targets) in updates {
            let wanted: HashSet<&Target> = targets.iter().collect();
            let mut kept = Vec::with_capacity(targets.len());
            for id in self.zones.remove(&zone).unwrap_or_default() {
                let Some(e) = self.entries.get(&id) else {
                    continue;
                };
                if wanted.contains(&*e.target) {
                    kept.push(id);
                } else {
                    self.by_target.remove(&e.target);
                    self.entries.remove(&id);
                }
            }
            for t in targets {
                if self.by_target.contains_key(&t) {
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                let target = Arc::new(t);
                self.by_target.insert(target.clone(), id);
                self.entries.insert(
                    id,
                    Entry {
                        target,
                        state: State::Unknown,
                        streak: 0,
                    },
                );
                // The first probe right away: the limit spreads a burst.
                self.due.push(Reverse((now, id)));
                kept.push(id);
            }
            if !kept.is_empty() {
                self.zones.insert(zone, kept);
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        while self.running.len() < self.limit {
            let Some(&Reverse((at, id))) = self.due.peek() else {
                return;
            };
            if at > now {
                return;
            }
            self.due.pop();
            let Some(e) = self.entries.get(&id) else {
                continue;
            };
            let timeout = e.target.check.timeout;
            let probe = (self.prober)(&e.target);
            self.running.spawn(async move {
                let outcome = match tokio::time::timeout(timeout, probe).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
                };
                (id, outcome)
            });
        }
    }

    /// Records a probe's outcome and schedules the next; returns the flip, if any.
    fn finished(&mut self, id: u64, outcome: Result<(), String>, now: Instant) -> Option<Flip> {
        let e = self.entries.get_mut(&id)?;
        self.due.push(Reverse((now + e.target.check.interval, id)));
        let ok = outcome.is_ok();
        crate::metrics::global()
            .health_checks
            .get_or_create(&[("result", if ok { "pass" } else { "fail" })])
            .inc();
        let flip_to = match (e.state, ok) {
            (State::Unknown, _) => true,
            (State::Healthy, true) | (State::Unhealthy, false) => {
                e.streak = 0;
                false
            }
            (State::Healthy, false) => {
                e.streak += 1;
                e.streak >= e.target.check.failures
            }
            (State::Unhealthy, true) => {
                e.streak += 1;
                e.streak >= e.target.check.successes
            }
        };
        if !flip_to {
            return None;
        }
        e.streak = 0;
        e.state = if ok { State::Healthy } else { State::Unhealthy };
        Some(Flip {
            target: (*e.target).clone(),
            healthy: ok,
            detail: outcome.err().unwrap_or_else(|| "ok".into()),
        })
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::model::{Check, Protocol};

    fn target(i: u32, check: &Check) -> Target {
        Target {
            zone: b"\x03svc\x07example\x00".to_vec(),
            service: "web".into(),
            protocol: Protocol::Tcp,
            instance: format!("web-{i}"),
            address: IpAddr::from(i.to_be_bytes()),
            port: 80,
            check: check.clone(),
        }
    }

    fn check(interval_ms: u64) -> Check {
        Check {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms),
            failures: 2,
            successes: 2,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_targets_never_exceed_the_limit_in_flight() {
        const LIMIT: usize = 8;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let probed = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let prober: Prober = {
            let (in_flight, max, probed) = (in_flight.clone(), max.clone(), probed.clone());
            Arc::new(move |t: &Target| {
                let (in_flight, max, probed) = (in_flight.clone(), max.clone(), probed.clone());
                let instance = t.instance.clone();
                Box::pin(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    probed.lock().unwrap().insert(instance);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
            })
        };
        let (tx, mut flips) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let checker = spawn(
            LIMIT,
            prober,
            move |f| tx.send(f.len()).is_ok(),
            shutdown.clone(),
        );
        let c = check(60_000);
        checker.update(vec![(
            b"zone".to_vec(),
            (0..1000).map(|i| target(i, &c)).collect(),
        )]);
        let mut reported = 0;
        while reported < 1000 {
            reported += tokio::time::timeout(Duration::from_secs(20), flips.recv())
                .await
                .expect("every target is probed")
                .unwrap();
        }
        shutdown.cancel();
        assert_eq!(probed.lock().unwrap().len(), 1000);
        let max = max.load(Ordering::SeqCst);
        assert!(max <= LIMIT, "{max} probes in flight, limit {LIMIT}");
        assert!(max > 1, "probes ran one at a time");
    }

    #[tokio::test]
    async fn thresholds_give_hysteresis_and_only_flips_are_reported() {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let prober: Prober = {
            let healthy = healthy.clone();
            Arc::new(move |_: &Target| {
                let ok = healthy.load(Ordering::SeqCst);
                Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
            })
        };
        let (tx, mut flips) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let checker = spawn(4, prober, move |f| tx.send(f).is_ok(), shutdown.clone());
        let c = check(20);
        checker.update(vec![(b"zone".to_vec(), vec![target(1, &c)])]);
        let next = |flips: &mut mpsc::UnboundedReceiver<Vec<Flip>>| {
            let f = flips.try_recv();
            f.ok()
        };
        let wait = async |flips: &mut mpsc::UnboundedReceiver<Vec<Flip>>| {
            tokio::time::timeout(Duration::from_secs(5), flips.recv())
                .await
                .unwrap()
                .unwrap()
        };
        // The first result decides at once.
        let first = wait(&mut flips).await;
        assert!(first[0].healthy);
        healthy.store(false, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let down = wait(&mut flips).await;
        assert!(!down[0].healthy);
        assert_eq!(down[0].detail, "down");
        // Two failures, one interval apart at least.
        assert!(started.elapsed() >= Duration::from_millis(20));
        healthy.store(true, Ordering::SeqCst);
        let up = wait(&mut flips).await;
        assert!(up[0].healthy);
        // Steady results report nothing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(next(&mut flips).is_none());
        // A removed target is no longer probed or reported.
        checker.update(vec![(b"zone".to_vec(), vec![])]);
        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(next(&mut flips).is_none());
        shutdown.cancel();
    }

    /// The cost figures of the README: 10 000 TCP-checked addresses on a
    /// loopback listener, probed every second for 5 s (ten times the load of
    /// the default 10 s interval).
    /// `cargo test --release --lib health::tests::cost -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn cost_of_ten_thousand_checked_addresses() {
        fn cpu_seconds() -> f64 {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split(' ').collect();
            // utime and stime, in clock ticks (100 a second on Linux).
            let ticks: u64 =
                fields[12].parse::<u64>().unwrap() + fields[13].parse::<u64>().unwrap();
            ticks as f64 / 100.0
        }
        // Forty loopback addresses, as real targets have many: one would run
        // out of ephemeral ports with 10 000 connections a second to it.
        let mut listeners = Vec::new();
        for k in 1..=40u8 {
            let listener = tokio::net::TcpListener::bind((IpAddr::from([127, 0, 0, k]), 0))
                .await
                .unwrap();
            listeners.push(listener.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
        }
        let c = Check {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 3,
            successes: 2,
        };
        let targets: Vec<Target> = (0..10_000)
            .map(|i| Target {
                address: listeners[i as usize % 40].ip(),
                port: listeners[i as usize % 40].port(),
                ..target(i, &c)
            })
            .collect();
        let probes = Arc::new(AtomicUsize::new(0));
        let inner = network_prober();
        let prober: Prober = {
            let probes = probes.clone();
            Arc::new(move |t: &Target| {
                probes.fetch_add(1, Ordering::Relaxed);
                inner(t)
            })
        };
        let shutdown = CancellationToken::new();
        let (tx, mut flips) = mpsc::unbounded_channel();
        let checker = spawn(
            MAX_IN_FLIGHT,
            prober,
            move |f| tx.send(f).is_ok(),
            shutdown.clone(),
        );
        checker.update(vec![(b"zone".to_vec(), targets)]);
        // Past the first round, then measure a steady 5 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while flips.try_recv().is_ok() {}
        let (p0, c0, t0) = (
            probes.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (p1, c1, t1) = (
            probes.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        shutdown.cancel();
        let secs = (t1 - t0).as_secs_f64();
        let rate = (p1 - p0) as f64 / secs;
        let cpu = (c1 - c0) / secs;
        println!(
            "{rate:.0} probes/s, {:.0}% of one core (listener included), {:.1} µs of CPU per probe",
            cpu * 100.0,
            (c1 - c0) / (p1 - p0) as f64 * 1e6
        );
        let mut failing = 0;
        while let Ok(f) = flips.try_recv() {
            failing += f.iter().filter(|f| !f.healthy).count();
        }
        assert_eq!(failing, 0, "steady: no failures");
    }
}
