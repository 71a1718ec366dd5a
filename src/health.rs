//! Active health checks: which addresses to probe, the scheduler that probes
//! them, and the record of their health that the registry builds answers from.
//!
//! A check belongs to a service (for all its instances with addresses) or to
//! one instance (overriding the service's). Every address of a checked
//! instance is probed on its own, on the instance's port: a [`Target`].
//! Only healthy addresses are served; an instance whose addresses are all
//! unhealthy leaves the SRV answers, and a service whose instances all did
//! answers NODATA (its names still exist).
//!
//! Health changes flow one way, like every other change: the registry's
//! owner tells the [`Checker`] which targets each zone has after each change
//! ([`Book::take_updates`]); the scheduler probes them and reports only
//! *flips* of a target's state back to the owner ([`Flip`]), which marks the
//! zone for rebuilding. A probe result that changes nothing costs the owner
//! nothing.
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
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{Check, CheckKind, Endpoint, Protocol, Zone};

/// Probes in flight at most, over all targets.
pub const MAX_IN_FLIGHT: usize = 256;

/// Default time between probes (Consul's and Kubernetes' usual 10 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default probe timeout (Consul's HTTP/TCP checks use 10 s; 2 s suits a
/// local network and keeps a dead address from holding a slot long). It is
/// never longer than the interval.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures before a healthy address is taken out.
pub const DEFAULT_FAILURES: u32 = 3;
/// Default consecutive successes before an unhealthy address is served again.
pub const DEFAULT_SUCCESSES: u32 = 2;

/// Longest interval or timeout: a day.
const MAX_SECONDS: f64 = 86_400.0;
/// Shortest interval or timeout: 10 ms, so a typo cannot make a busy loop.
const MIN_SECONDS: f64 = 0.01;
/// Largest failure or success threshold.
const MAX_THRESHOLD: i64 = 100;

/// A check as written, in a zone file or a registration, before validation.
#[derive(Clone, Debug, Default)]
pub struct CheckInput<'a> {
    /// `tcp = true`
    pub tcp: Option<bool>,
    /// `http = "/path"`
    pub http: Option<&'a str>,
    /// Seconds between probes.
    pub interval: Option<f64>,
    /// Seconds a probe may take.
    pub timeout: Option<f64>,
    /// Failures that make it unhealthy.
    pub failures: Option<i64>,
    /// Successes that make it healthy again.
    pub successes: Option<i64>,
}

/// Which part of a check a problem is in, so a zone file error points at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckField {
    /// The check as a whole.
    Whole,
    /// `tcp`
    Tcp,
    /// `http`
    Http,
    /// `interval`
    Interval,
    /// `timeout`
    Timeout,
    /// `failures`
    Failures,
    /// `successes`
    Successes,
}

/// Validates a check, filling in the defaults. Every problem is returned,
/// with the field it is in.
pub fn validate_check(input: &CheckInput) -> Result<Check, Vec<(CheckField, String)>> {
    let mut errors = Vec::new();
    let kind = match (input.tcp, input.http) {
        (Some(_), Some(_)) => {
            errors.push((
                CheckField::Http,
                "a check has either `tcp = true` or `http = \"/path\"`, not both".to_string(),
            ));
            None
        }
        (None, None) => {
            errors.push((
                CheckField::Whole,
                "a check needs `tcp = true` (connect to the port) or `http = \"/path\"` (GET, 2xx is healthy)"
                    .to_string(),
            ));
            None
        }
        (Some(false), None) => {
            errors.push((
                CheckField::Tcp,
                "`tcp = false` checks nothing; remove the check instead".to_string(),
            ));
            None
        }
        (Some(true), None) => Some(CheckKind::Tcp),
        (None, Some(path)) => {
            if !path.starts_with('/') {
                errors.push((
                    CheckField::Http,
                    format!("http path \"{path}\" must start with '/'"),
                ));
                None
            } else if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
                errors.push((
                    CheckField::Http,
                    format!("http path \"{path}\" contains {c:?}; percent-encode it"),
                ));
                None
            } else {
                Some(CheckKind::Http(path.to_string()))
            }
        }
    };
    let seconds = |field: CheckField, what: &str, v: Option<f64>, errors: &mut Vec<_>| {
        let v = v?;
        if v.is_finite() && (MIN_SECONDS..=MAX_SECONDS).contains(&v) {
            Some(Duration::from_secs_f64(v))
        } else {
            errors.push((
                field,
                format!("{what} {v} is out of range ({MIN_SECONDS}..={MAX_SECONDS} seconds)"),
            ));
            None
        }
    };
    let interval = seconds(
        CheckField::Interval,
        "interval",
        input.interval,
        &mut errors,
    );
    let timeout = seconds(CheckField::Timeout, "timeout", input.timeout, &mut errors);
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    if let Some(t) = timeout
        && t > interval
    {
        errors.push((
            CheckField::Timeout,
            format!(
                "timeout {} is longer than the interval {} seconds",
                t.as_secs_f64(),
                interval.as_secs_f64()
            ),
        ));
    }
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval));
    let threshold =
        |field: CheckField, what: &str, v: Option<i64>, default, errors: &mut Vec<_>| match v {
            None => default,
            Some(n) if (1..=MAX_THRESHOLD).contains(&n) => n as u32,
            Some(n) => {
                errors.push((
                    field,
                    format!("{what} {n} is out of range (1..={MAX_THRESHOLD})"),
                ));
                default
            }
        };
    let failures = threshold(
        CheckField::Failures,
        "failures",
        input.failures,
        DEFAULT_FAILURES,
        &mut errors,
    );
    let successes = threshold(
        CheckField::Successes,
        "successes",
        input.successes,
        DEFAULT_SUCCESSES,
        &mut errors,
    );
    match kind {
        Some(kind) if errors.is_empty() => Ok(Check {
            kind,
            interval,
            timeout,
            failures,
            successes,
        }),
        _ => Err(errors),
    }
}

/// One address of one checked instance: what a probe checks. Names are
/// lowercased, so that a change of letter case in a file keeps the state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The zone's key (its lowercased apex in wire form).
    pub zone: Vec<u8>,
    /// Service name, lowercased.
    pub service: String,
    /// Service protocol.
    pub protocol: Protocol,
    /// Instance name, lowercased.
    pub instance: String,
    /// The address probed.
    pub address: IpAddr,
    /// The port probed.
    pub port: u16,
    /// How.
    pub check: Check,
}

/// A target's health changed.
#[derive(Clone, Debug)]
pub struct Flip {
    /// The target.
    pub target: Target,
    /// Its new state.
    pub healthy: bool,
    /// What the last probe saw (the error, or `ok`).
    pub detail: String,
}

/// How an instance's addresses are doing, as `list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceHealth {
    /// No check (or not served for another reason, so not probed).
    Unchecked,
    /// Checked, no result yet for some address and no failure: served.
    Unknown,
    /// Every address is healthy.
    Healthy,
    /// Some addresses are unhealthy: only the others are served.
    Degraded,
    /// Every address is unhealthy: not served.
    Unhealthy,
}

impl InstanceHealth {
    /// The word `list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceHealth::Unchecked => "unchecked",
            InstanceHealth::Unknown => "unknown",
            InstanceHealth::Healthy => "healthy",
            InstanceHealth::Degraded => "degraded",
            InstanceHealth::Unhealthy => "unhealthy",
        }
    }
}

/// The registry's record of health: the targets of each zone as last built,
/// the known state of each, and the target sets the checker has not heard of.
#[derive(Default)]
pub struct Book {
    /// Targets per zone key, as of the zone's last build.
    zones: HashMap<Vec<u8>, HashSet<Target>>,
    /// Known states; a target without one has not been probed yet (served).
    states: HashMap<Target, bool>,
    /// Zones whose target set changed since [`Book::take_updates`].
    updates: BTreeSet<Vec<u8>>,
}

/// The targets of a (merged) zone: each address of each instance with an
/// effective check.
pub fn targets(key: &[u8], zone: &Zone) -> HashSet<Target> {
    let mut out = HashSet::new();
    for s in &zone.services {
        for i in &s.instances {
            let Endpoint::Addresses(addrs) = &i.endpoint else {
                continue;
            };
            let Some(check) = i.check.as_ref().or(s.check.as_ref()) else {
                continue;
            };
            for a in addrs {
                out.insert(Target {
                    zone: key.to_vec(),
                    service: s.name.to_ascii_lowercase(),
                    protocol: s.protocol,
                    instance: i.name.to_ascii_lowercase(),
                    address: *a,
                    port: i.port,
                    check: check.clone(),
                });
            }
        }
    }
    out
}

impl Book {
    /// Records the targets of a zone being built from `merged` and returns
    /// the zone to serve when it differs from `merged`: unhealthy addresses
    /// left out, instances without a healthy address left out, and their
    /// names kept as hosts without addresses, so they answer NODATA rather
    /// than NXDOMAIN.
    pub fn zone_built(&mut self, key: &[u8], merged: &Zone) -> Option<Zone> {
        let now = targets(key, merged);
        let before = self.zones.get(key);
        if before != Some(&now) && !(before.is_none() && now.is_empty()) {
            // States of targets that went away are forgotten only when the
            // checker is told (take_updates): a target that leaves and comes
            // back within one batch keeps the state the checker still has.
            self.updates.insert(key.to_vec());
            if now.is_empty() {
                self.zones.remove(key);
            } else {
                self.zones.insert(key.to_vec(), now);
            }
        }
        self.filter(key, merged)
    }

    /// Forgets a zone that is no longer served.
    pub fn zone_removed(&mut self, key: &[u8]) {
        if self.zones.remove(key).is_some() {
            self.updates.insert(key.to_vec());
        }
    }

    /// Zone keys with targets, for finding zones that went away.
    pub fn zone_keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.zones.keys()
    }

    /// Records a flip. Returns the previous state (`None`: not probed yet)
    /// when it is a change to a current target; `Err(())` when the target is
    /// no longer current or nothing changed.
    #[allow(clippy::result_unit_err)]
    pub fn record(&mut self, flip: &Flip) -> Result<Option<bool>, ()> {
        let current = self
            .zones
            .get(&flip.target.zone)
            .is_some_and(|z| z.contains(&flip.target));
        if !current {
            return Err(());
        }
        match self.states.insert(flip.target.clone(), flip.healthy) {
            Some(prev) if prev == flip.healthy => Err(()),
            prev => Ok(prev),
        }
    }

    /// The zones whose targets changed, with their current targets (empty:
    /// the zone has none now), for the checker.
    pub fn take_updates(&mut self) -> Vec<(Vec<u8>, Vec<Target>)> {
        // The checker drops what is not in these sets; so does the book.
        if !self.updates.is_empty() {
            let zones = &self.zones;
            self.states
                .retain(|t, _| zones.get(&t.zone).is_some_and(|z| z.contains(t)));
        }
        std::mem::take(&mut self.updates)
            .into_iter()
            .map(|key| {
                let targets = self
                    .zones
                    .get(&key)
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                (key, targets)
            })
            .collect()
    }

    /// Instances of a zone left out of answers: every address unhealthy.
    pub fn unhealthy_instances(&self, key: &[u8]) -> usize {
        let Some(targets) = self.zones.get(key) else {
            return 0;
        };
        let mut all_down: HashMap<(&str, Protocol, &str), bool> = HashMap::new();
        for t in targets {
            let down = self.states.get(t) == Some(&false);
            *all_down
                .entry((&t.service, t.protocol, &t.instance))
                .or_insert(true) &= down;
        }
        all_down.values().filter(|d| **d).count()
    }

    /// The state of one target: `None` if it has no result yet.
    fn state(&self, t: &Target) -> Option<bool> {
        self.states.get(t).copied()
    }

    /// How an instance of a service is doing (`check`: its effective check).
    pub fn instance_health(
        &self,
        key: &[u8],
        service: &str,
        protocol: Protocol,
        instance: &crate::model::Instance,
        check: Option<&Check>,
    ) -> (InstanceHealth, Vec<IpAddr>) {
        let (Some(check), Endpoint::Addresses(addrs)) = (check, &instance.endpoint) else {
            return (InstanceHealth::Unchecked, Vec::new());
        };
        let mut target = Target {
            zone: key.to_vec(),
            service: service.to_ascii_lowercase(),
            protocol,
            instance: instance.name.to_ascii_lowercase(),
            address: IpAddr::from([0, 0, 0, 0]),
            port: instance.port,
            check: check.clone(),
        };
        // Not among the zone's targets: not served (expired, shadowed), so not probed.
        let Some(zone) = self.zones.get(key) else {
            return (InstanceHealth::Unchecked, Vec::new());
        };
        if let Some(a) = addrs.first() {
            target.address = *a;
        }
        if !zone.contains(&target) {
            return (InstanceHealth::Unchecked, Vec::new());
        }
        let mut unhealthy = Vec::new();
        let mut unknown = false;
        for a in addrs {
            target.address = *a;
            match self.state(&target) {
                Some(true) => {}
                Some(false) => unhealthy.push(*a),
                None => unknown = true,
            }
        }
        let health = if unhealthy.len() == addrs.len() {
            InstanceHealth::Unhealthy
        } else if !unhealthy.is_empty() {
            InstanceHealth::Degraded
        } else if unknown {
            InstanceHealth::Unknown
        } else {
            InstanceHealth::Healthy
        };
        (health, unhealthy)
    }

    /// `merged` without what is unhealthy; `None` when all is healthy.
    fn filter(&self, key: &[u8], merged: &Zone) -> Option<Zone> {
        let targets = self.zones.get(key)?;
        if !targets.iter().any(|t| self.states.get(t) == Some(&false)) {
            return None;
        }
        let mut zone = merged.clone();
        for s in &mut zone.services {
            let service_check = s.check.clone();
            let (service, protocol) = (s.name.to_ascii_lowercase(), s.protocol);
            s.instances.retain_mut(|i| {
                let Some(check) = i.check.as_ref().or(service_check.as_ref()) else {
                    return true;
                };
                let Endpoint::Addresses(addrs) = &mut i.endpoint else {
                    return true;
                };
                let mut target = Target {
                    zone: key.to_vec(),
                    service: service.clone(),
                    protocol,
                    instance: i.name.to_ascii_lowercase(),
                    address: IpAddr::from([0, 0, 0, 0]),
                    port: i.port,
                    check: check.clone(),
                };
                addrs.retain(|a| {
                    target.address = *a;
                    self.states.get(&target) != Some(&false)
                });
                // An instance with no address left stays, with an empty
                // list: the snapshot keeps its names and answers nothing.
                true
            });
        }
        Some(zone)
    }
}

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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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

    #[test]
    fn a_target_that_leaves_and_returns_within_a_batch_keeps_its_state() {
        let zone = |with_db_1: bool| {
            let db_1 = "[[services.instances]]\nname = \"db-1\"\naddress = \"10.0.0.1\"\n";
            let text = format!(
                "zone = \"h.test\"\n[[services]]\nname = \"db\"\nport = 5432\n\
                 check = {{ tcp = true }}\n{}[[services.instances]]\nname = \"db-2\"\n\
                 address = \"10.0.0.2\"\n",
                if with_db_1 { db_1 } else { "" }
            );
            crate::zone::parse(std::path::Path::new("h.toml"), &text).unwrap()
        };
        let key = crate::wire::lower_wire(&zone(true).apex);
        let mut book = Book::default();
        book.zone_built(&key, &zone(true));
        let db_1 = book.zones[&key]
            .iter()
            .find(|t| t.instance == "db-1")
            .unwrap()
            .clone();
        book.take_updates();
        let flip = Flip {
            target: db_1.clone(),
            healthy: false,
            detail: "refused".into(),
        };
        assert_eq!(book.record(&flip), Ok(None));

        // Gone and back before the checker hears of it: still unhealthy,
        // as the checker (which never saw it leave) believes.
        book.zone_built(&key, &zone(false));
        let filtered = book
            .zone_built(&key, &zone(true))
            .expect("db-1 is filtered");
        let hidden = &filtered.services[0].instances[0];
        assert_eq!(hidden.endpoint, Endpoint::Addresses(vec![]));
        book.take_updates();
        assert_eq!(book.states.get(&db_1), Some(&false));

        // Gone when the checker is told: forgotten by both.
        book.zone_built(&key, &zone(false));
        book.take_updates();
        assert_eq!(book.states.get(&db_1), None);
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

    #[test]
    fn check_validation() {
        let c = validate_check(&CheckInput {
            tcp: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!((c.failures, c.successes), (3, 2));
        let c = validate_check(&CheckInput {
            http: Some("/healthz"),
            interval: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.kind, CheckKind::Http("/healthz".into()));
        assert_eq!(c.timeout, Duration::from_millis(500));
        let fields = |input: CheckInput| -> Vec<CheckField> {
            validate_check(&input)
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(fields(CheckInput::default()), [CheckField::Whole]);
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                http: Some("/"),
                ..Default::default()
            }),
            [CheckField::Http]
        );
        assert_eq!(
            fields(CheckInput {
                http: Some("healthz"),
                ..Default::default()
            }),
            [CheckField::Http]
        );
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                interval: Some(0.0),
                timeout: Some(-1.0),
                failures: Some(0),
                successes: Some(101),
                ..Default::default()
            }),
            [
                CheckField::Interval,
                CheckField::Timeout,
                CheckField::Failures,
                CheckField::Successes
            ]
        );
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                interval: Some(1.0),
                timeout: Some(2.0),
                ..Default::default()
            }),
            [CheckField::Timeout]
        );
    }
}
