//! The etcd store and the watch that follows it.
//!
//! Writes: the writer's batch becomes one transaction (or one per 128
//! operations, etcd's default limit), committed before anyone is told "ok".
//! A registration with a TTL is put with a lease of that TTL; a heartbeat
//! renews the lease (one KeepAlive), and when it lapses etcd deletes the key
//! and every node's watch removes the instance. A node does not expire
//! instances by its own clock in a cluster: the lease is the one clock.
//!
//! Reads: the prefix is read once at start-up, then watched from the
//! revision after that read. Events go to the writer in revision order. A
//! broken watch resumes after the last revision applied; when etcd has
//! compacted that revision away, the prefix is read again and the
//! difference applied, so nothing is missed or applied twice. Events for
//! this node's own writes are skipped: they are in its registry already,
//! and applying an old one late would undo a newer local change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::format;
use super::{ClusterConfig, ClusterError, Joined};
use crate::registry::Change;
use crate::registry::registration::{InstanceKey, Registration};
use crate::registry::store::{Record, Store, StoreError, Stored};
use crate::registry::writer::{Command, WriterHandle};

/// How long a write may take before the client hears that it failed:
/// long enough for an election among the etcd members, short enough that a
/// registration with etcd down fails rather than hangs.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt at a request may take before it is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause before a request that failed is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long reading the prefix at start-up may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watch asks etcd for progress, and how long an answer may
/// take before the watch is taken for broken (a member that vanished
/// without closing its connections says nothing).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd refuses transactions with more operations than this by default.
const MAX_TXN_OPS: usize = 128;

/// What the store and the watch share. A std mutex: held for a few map
/// operations, never across an await.
#[derive(Default)]
struct Shared {
    /// The revision of this node's last write of each key, until its
    /// event comes back through the watch.
    written: HashMap<String, i64>,
    /// The lease of each key that has one.
    leases: HashMap<String, i64>,
    /// Since when etcd cannot be followed, and why.
    stale: Option<(SystemTime, String)>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects to etcd and reads every registration under the prefix.
pub async fn open(config: &ClusterConfig) -> Result<Joined, ClusterError> {
    let endpoints = config.endpoints.join(",");
    let etcd_error = |problem: String| ClusterError::Etcd {
        endpoints: endpoints.clone(),
        problem,
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3));
    if let Some((user, password)) = &config.user {
        options = options.with_user(user, password);
    }
    if config.ca.is_some() || config.identity.is_some() {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| ClusterError::Tls {
                path: path.clone(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &config.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    // With a user, connecting authenticates: a member that is down costs a retry.
    let client = attempts(READ_TIMEOUT, || {
        Client::connect(config.endpoints.clone(), Some(options.clone()))
    })
    .await
    .map_err(etcd_error)?;
    let response = attempts(READ_TIMEOUT, || {
        let mut c = client.clone();
        let prefix = config.prefix.clone();
        async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await
    .map_err(etcd_error)?;
    let revision = response.header().map_or(0, |h| h.revision());
    let shared = SharedRef::default();
    let mut known = HashMap::new();
    let mut stored = Vec::new();
    {
        let mut s = lock(&shared);
        for kv in response.kvs() {
            let Some((key, registration)) = read_kv(kv) else {
                continue;
            };
            if kv.lease() != 0 {
                s.leases.insert(key.clone(), kv.lease());
            }
            known.insert(key, instance_key(&registration));
            stored.push(Stored {
                registration,
                expired: false,
            });
        }
    }
    info!(%endpoints, prefix = %config.prefix, registrations = stored.len(), revision, "registrations read from etcd");
    let location = format!("etcd {endpoints} under {}", config.prefix);
    let store = EtcdStore {
        client: client.clone(),
        prefix: config.prefix.clone(),
        shared: shared.clone(),
        location,
    };
    let follower = Follower {
        client,
        prefix: config.prefix.clone(),
        revision,
        known,
        shared,
    };
    Ok((stored, Box::new(store), follower))
}

/// The key and registration of one key-value, or `None` (logged) when the
/// value cannot be read.
fn read_kv(kv: &KeyValue) -> Option<(String, Registration)> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match format::decode(kv.value()) {
        Ok(r) => Some((key, r)),
        Err(problem) => {
            warn!(%key, %problem, "etcd value is not a registration; skipped");
            None
        }
    }
}

fn instance_key(r: &Registration) -> InstanceKey {
    InstanceKey {
        zone: r.zone.clone(),
        service: r.service.clone(),
        protocol: Some(r.protocol),
        instance: r.instance.clone(),
    }
}

/// Keeps the registrations in etcd.
struct EtcdStore {
    client: Client,
    prefix: String,
    shared: SharedRef,
    location: String,
}

impl EtcdStore {
    /// Commits `records`, and notes the revision of each key written.
    async fn write(&mut self, records: &[Record]) -> Result<(), String> {
        // One operation per key (etcd refuses a transaction that names a key
        // twice): the last record of each key wins, in the order they came.
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            last.insert(self.record_key(r)?, i);
        }
        let mut ops = Vec::new();
        let mut leases = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let key = self.record_key(r)?;
            if last[&key] != i {
                continue;
            }
            match r {
                Record::Set(s) => {
                    let value = format::encode(&s.registration);
                    let mut options = PutOptions::new();
                    let mut lease = None;
                    if let Some(ttl) = s.registration.ttl {
                        let client = self.client.clone();
                        let granted = attempts(left(deadline), || {
                            let mut c = client.clone();
                            async move { c.lease_grant(i64::from(ttl), None).await }
                        })
                        .await?;
                        options = options.with_lease(granted.id());
                        lease = Some(granted.id());
                    }
                    leases.push((key.clone(), lease));
                    ops.push(TxnOp::put(key, value, Some(options)));
                }
                Record::Remove(_) => {
                    leases.push((key.clone(), None));
                    ops.push(TxnOp::delete(key, None));
                }
            }
        }
        // Recorded only once every chunk is committed: after a failure the
        // writer takes the whole batch back, and the watch brings back what
        // was committed of it.
        let mut revisions = Vec::new();
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let client = self.client.clone();
            let response = attempts(left(deadline), || {
                let mut c = client.clone();
                let txn = Txn::new().and_then(chunk.to_vec());
                async move { c.txn(txn).await }
            })
            .await?;
            revisions.push(response.header().map_or(0, |h| h.revision()));
        }
        let mut old = Vec::new();
        {
            let mut s = lock(&self.shared);
            for (i, (key, lease)) in leases.into_iter().enumerate() {
                s.written.insert(key.clone(), revisions[i / MAX_TXN_OPS]);
                let before = match lease {
                    Some(l) => s.leases.insert(key, l),
                    None => s.leases.remove(&key),
                };
                // The watch may have seen the new lease first.
                old.extend(before.filter(|b| Some(*b) != lease));
            }
        }
        // A replaced or removed registration's lease holds no key now.
        for lease in old {
            let mut client = self.client.clone();
            tokio::spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
        Ok(())
    }

    fn record_key(&self, r: &Record) -> Result<String, String> {
        match r {
            Record::Set(s) => {
                format::key(&self.prefix, &s.registration.zone, &s.registration.instance)
            }
            Record::Remove(k) => Ok(format!("{}{}/{}", self.prefix, k.zone, k.instance)),
        }
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<(), String> {
        let client = self.client.clone();
        let (mut keeper, mut stream) = attempts(WRITE_TIMEOUT, || {
            let mut c = client.clone();
            async move { c.lease_keep_alive(lease).await }
        })
        .await?;
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match stream.message().await.map_err(|e| e.to_string())? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err("its lease in etcd has lapsed; register it again".into()),
        }
    }
}

/// Runs one request, and again when it fails or takes longer than a
/// second, until `within` has passed: a member that is down or hangs (or a
/// connection to it that died silently) costs a retry, which the client
/// balances to another member. Every request retried is idempotent: a put
/// or delete of the same value, a read, or a lease grant (an extra lease
/// holds no key and lapses).
async fn attempts<T, F, Fut>(within: Duration, mut request: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let problem = match tokio::time::timeout(ATTEMPT_TIMEOUT.min(left), request()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(problem);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The time from now to `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Runs `work` on the runtime from the writer's blocking section, within
/// the write timeout.
fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, StoreError> {
    let handle = tokio::runtime::Handle::current();
    let run = async {
        // A safety net: the requests give up within WRITE_TIMEOUT themselves.
        match tokio::time::timeout(WRITE_TIMEOUT + ATTEMPT_TIMEOUT, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(problem)) => Err(StoreError::Etcd(problem)),
            Err(_) => Err(StoreError::Etcd(format!(
                "etcd did not commit within {} s (is it reachable?)",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    };
    tokio::task::block_in_place(|| handle.block_on(run))
}

impl Store for EtcdStore {
    fn save(
        &mut self,
        records: &[Record],
        _live_count: usize,
        _live: &dyn Fn() -> Vec<Stored>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        block_on(self.write(records))
    }

    /// A failed write changed nothing in etcd, and the writer took it back
    /// from memory: etcd is never behind.
    fn is_behind(&self) -> bool {
        false
    }

    fn location(&self) -> String {
        match &lock(&self.shared).stale {
            None => self.location.clone(),
            Some((since, why)) => format!(
                "{}: STALE since {} ({} s ago): {why}",
                self.location,
                crate::utc::rfc3339(*since, false),
                since.elapsed().map_or(0, |d| d.as_secs())
            ),
        }
    }

    fn renew(&mut self, zone: &str, instance: &str) -> Result<(), StoreError> {
        let key = format::key(&self.prefix, zone, instance).map_err(StoreError::Etcd)?;
        let Some(lease) = lock(&self.shared).leases.get(&key).copied() else {
            return Ok(());
        };
        block_on(self.keep_alive(lease))
    }
}

/// Follows the prefix with a watch.
pub struct Follower {
    client: Client,
    prefix: String,
    /// The last revision applied.
    revision: i64,
    /// Each key's instance, to name it when its key is deleted.
    known: HashMap<String, InstanceKey>,
    shared: SharedRef,
}

/// Why a watch ended.
enum Ended {
    /// The server is stopping.
    Shutdown,
    /// etcd compacted past the revision: read everything again.
    Compacted,
    /// The connection or the watch failed.
    Broken(String),
}

impl Follower {
    /// Follows etcd from the start-up read on: remote changes go to `writer`.
    pub fn follow(self, writer: WriterHandle, shutdown: CancellationToken) {
        tokio::spawn(self.run(writer, shutdown));
    }

    async fn run(mut self, writer: WriterHandle, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let problem = match self.watch(&writer, &shutdown).await {
                Ended::Shutdown => return,
                Ended::Compacted => match self.reread(&writer).await {
                    Ok(()) => continue,
                    Err(problem) => problem,
                },
                Ended::Broken(problem) => problem,
            };
            self.set_stale(&problem);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if lock(&self.shared).stale.is_none() {
                backoff = Duration::from_millis(50);
            }
        }
    }

    fn set_stale(&self, problem: &str) {
        let mut s = lock(&self.shared);
        if s.stale.is_none() {
            warn!(%problem, "cannot follow etcd; answering from the last registrations seen until it is back");
            s.stale = Some((SystemTime::now(), problem.to_string()));
        }
    }

    fn set_fresh(&self) {
        if lock(&self.shared).stale.take().is_some() {
            info!(revision = self.revision, "following etcd again");
        }
    }

    /// Watches from the revision after the last one applied until the
    /// watch ends.
    async fn watch(&mut self, writer: &WriterHandle, shutdown: &CancellationToken) -> Ended {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let start = self.client.watch(self.prefix.as_str(), Some(options));
        let mut stream = match tokio::time::timeout(PROGRESS_TIMEOUT, start).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ended::Broken(e.to_string()),
            Err(_) => return Ended::Broken("etcd did not answer".into()),
        };
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        let mut asked: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                _ = ticks.tick() => {
                    if let Some(at) = asked {
                        if at.elapsed() > PROGRESS_TIMEOUT {
                            return Ended::Broken("etcd stopped answering the watch".into());
                        }
                    } else {
                        if let Err(e) = stream.request_progress().await {
                            return Ended::Broken(e.to_string());
                        }
                        asked = Some(Instant::now());
                    }
                }
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ended::Broken("etcd closed the watch".into()),
                        Err(e) => return Ended::Broken(e.to_string()),
                    };
                    asked = None;
                    if response.compact_revision() > 0 {
                        warn!(revision = self.revision, compacted = response.compact_revision(), "etcd compacted past the last revision applied; reading every registration again");
                        return Ended::Compacted;
                    }
                    if response.canceled() {
                        return Ended::Broken(format!("etcd cancelled the watch: {}", response.cancel_reason()));
                    }
                    if response.created() {
                        self.set_fresh();
                    }
                    let changes = self.changes(response.events());
                    if !changes.is_empty() && writer.send(Command::Remote(changes)).is_err() {
                        return Ended::Shutdown;
                    }
                }
            }
        }
    }

    /// The registry changes of a batch of watch events, in order.
    fn changes(&mut self, events: &[etcd_client::Event]) -> Vec<Change> {
        let mut changes = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let revision = kv.mod_revision();
            self.revision = self.revision.max(revision);
            let mine = {
                let mut s = lock(&self.shared);
                match event.event_type() {
                    EventType::Put if kv.lease() != 0 => {
                        s.leases.insert(key.clone(), kv.lease());
                    }
                    _ => {
                        s.leases.remove(&key);
                    }
                }
                match s.written.get(&key).copied() {
                    Some(w) if w >= revision => {
                        if w == revision {
                            s.written.remove(&key);
                        }
                        true
                    }
                    _ => false,
                }
            };
            match event.event_type() {
                EventType::Put => {
                    let Some((key, registration)) = read_kv(kv) else {
                        continue;
                    };
                    self.known.insert(key, instance_key(&registration));
                    if !mine {
                        changes.push(Change::Register(registration));
                    }
                }
                EventType::Delete => {
                    if let Some(k) = self.known.remove(&key)
                        && !mine
                    {
                        changes.push(Change::Deregister(k));
                    }
                }
            }
        }
        changes
    }

    /// Reads the whole prefix again and applies the difference with what
    /// was known: every key now there, and the removal of every key gone.
    async fn reread(&mut self, writer: &WriterHandle) -> Result<(), String> {
        let read = self
            .client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()));
        let response = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("etcd did not answer".into()),
        };
        let mut now = HashMap::new();
        let mut changes = Vec::new();
        {
            let mut s = lock(&self.shared);
            s.leases.clear();
            for kv in response.kvs() {
                let Some((key, registration)) = read_kv(kv) else {
                    continue;
                };
                if kv.lease() != 0 {
                    s.leases.insert(key.clone(), kv.lease());
                }
                let mine = s.written.get(&key).is_some_and(|w| *w >= kv.mod_revision());
                now.insert(key, instance_key(&registration));
                if !mine {
                    changes.push(Change::Register(registration));
                }
            }
            for (key, k) in &self.known {
                if !now.contains_key(key) && !s.written.contains_key(key) {
                    changes.push(Change::Deregister(k.clone()));
                }
            }
            s.written.clear();
        }
        self.known = now;
        self.revision = response.header().map_or(self.revision, |h| h.revision());
        if !changes.is_empty() {
            writer
                .send(Command::Remote(changes))
                .map_err(|_| "the server is stopping".to_string())?;
        }
        Ok(())
    }
}
