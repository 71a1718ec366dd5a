//! The one task that owns the registry: it applies changes in the order
//! they arrive, makes runtime registrations durable, and publishes a
//! snapshot after each batch, so there is a single writer and no lock for
//! queries to wait on.
//!
//! Whatever queued up while a batch was saved goes into the next batch: one
//! store write (and one snapshot) covers many registrations when they come
//! fast (group commit), and each waits for at most two writes. The task also
//! expires TTL instances, waking at the earliest deadline.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use super::health::Target;
use super::registration::{InstanceInfo, InstanceKey};
use super::store::Store;
use super::{Change, Registry, RegistryError, Undo, ZoneStatus};
use crate::answer::snapshot::SnapshotHandle;

/// What becomes of a change a source waits on: the instance as now
/// registered (none for a removal), or why it was refused.
pub type Outcome = Result<Option<InstanceInfo>, RegistryError>;

/// What the writer is asked to do.
pub enum Command {
    /// Apply changes from a source that waits for nothing (zone files,
    /// health checks), in order.
    Apply(Vec<Change>),
    /// Apply changes that another node made, read from the shared store:
    /// they are in the store already, so they are not saved again.
    Remote(Vec<Change>),
    /// Apply one change and say what became of it. The reply is sent once
    /// the change is in the store and in the published snapshot, so "ok"
    /// means durable and answerable.
    Ask {
        /// The change.
        change: Change,
        /// Where the outcome goes.
        reply: oneshot::Sender<Outcome>,
    },
    /// Every instance, file and runtime, of one zone or all; answered after
    /// the batch it arrives in, so it sees that batch.
    List {
        /// Only this zone.
        zone: Option<String>,
        /// Where the instances go.
        reply: oneshot::Sender<Result<Vec<InstanceInfo>, RegistryError>>,
    },
    /// The zones and the registry's counts.
    Status {
        /// Where the status goes.
        reply: oneshot::Sender<Status>,
    },
}

/// What `status` reports of the registry.
#[derive(Clone, Debug)]
pub struct Status {
    /// Since the writer started.
    pub uptime: Duration,
    /// Where runtime registrations are kept.
    pub store: String,
    /// Every zone, sorted by apex.
    pub zones: Vec<ZoneStatus>,
    /// Runtime registrations whose zone no file declares now.
    pub orphaned: usize,
}

/// Sends work to the writer.
pub type WriterHandle = mpsc::UnboundedSender<Command>;

/// Where the writer tells the health prober which targets each zone has.
pub type HealthTargets = Box<dyn Fn(Vec<(Vec<u8>, Vec<Target>)>) + Send>;

/// Where the writer reports each zone file read after start-up: the zone
/// (see `reload_label`) and `ok` or `error`. The metrics count them; the
/// registry knows nothing of metrics.
pub type ReloadCounter = Box<dyn Fn([(&'static str, String); 2]) + Send>;

/// A reply waiting for the end of its batch.
enum Pending {
    /// A change: as is only if the store's write that follows succeeds;
    /// else taken back with its undo.
    Durable(Reply, Outcome, Option<Box<Undo>>),
    /// Nothing to save; sent as is.
    Done(Reply, Outcome),
    /// A heartbeat: sent once the store renewed the instance's TTL.
    Renew(Reply, Outcome, InstanceKey),
    /// A read: answered after the batch, so it sees it.
    List(
        oneshot::Sender<Result<Vec<InstanceInfo>, RegistryError>>,
        Option<String>,
    ),
    Status(oneshot::Sender<Status>),
}

/// Where the outcome of a change goes, and the key of the zone it changed
/// (registrations and removals): while that zone is being built, the
/// change is answerable only once the build is installed, so its "ok"
/// waits for that.
struct Reply(oneshot::Sender<Outcome>, Option<Vec<u8>>);

/// Runs the writer until every [`WriterHandle`] is dropped.
///
/// The registry is never freed: the writer stops when the server does, and
/// freeing a large registry one allocation at a time took longer than
/// anything else in a shutdown (about 3 s at 100 000 services), which a
/// restart adds to its downtime. The process's exit returns the memory.
///
/// `snapshots` is where the registry publishes: the writer keeps the
/// snapshot a batch replaces until the batch is answered.
pub async fn run(
    (registry, snapshots): (Registry, SnapshotHandle),
    mut inbox: mpsc::UnboundedReceiver<Command>,
    mut store: Box<dyn Store>,
    health: HealthTargets,
    reloads: ReloadCounter,
) {
    let mut registry = std::mem::ManuallyDrop::new(registry);
    let started = Instant::now();
    let mut trim = Trim::default();
    // The first load freed the parsed files and the build's scratch space.
    trim.schedule();
    trim.names = registry.served_names();
    // Zone files read from now on are built away from the writer.
    let mut builds = registry.build_in_background();
    // Outcomes of changes to zones being built, waiting for their build.
    let mut held: Vec<(Vec<u8>, oneshot::Sender<Outcome>, Outcome)> = Vec::new();
    loop {
        let next = registry.next_expiry();
        let mut built = None;
        let first = tokio::select! {
            msg = inbox.recv() => match msg {
                Some(msg) => Some(msg),
                None => return,
            },
            Some(b) = builds.recv() => {
                built = Some(b);
                None
            }
            () = sleep_until(next), if next.is_some() => None,
        };
        let mut pending = Vec::new();
        let now = Instant::now();
        let mut times = BatchTimes::default();
        // What installed builds replaced, freed after the replies.
        let mut old_zones = Vec::new();
        for b in built
            .into_iter()
            .chain(std::iter::from_fn(|| builds.try_recv().ok()))
        {
            old_zones.extend(registry.install(b));
        }
        let mut files_changed = !old_zones.is_empty();
        for command in first
            .into_iter()
            .chain(std::iter::from_fn(|| inbox.try_recv().ok()))
        {
            files_changed |= matches!(&command, Command::Apply(c) if c.iter().any(Change::is_file));
            handle(&mut registry, command, now, &mut pending, &reloads);
        }
        registry.expire(Instant::now());
        times.applied = now.elapsed();

        // Durable before anyone hears "ok": one store write (for the state
        // file, one append and one fdatasync) for the whole batch.
        let mut save_error = None;
        let journal = registry.take_journal();
        let acknowledges_change = pending.iter().any(|p| matches!(p, Pending::Durable(..)));
        if !journal.is_empty() || (store.is_behind() && acknowledges_change) {
            let saved = tokio::task::block_in_place(|| {
                store.save(&journal, registry.stored_count(), &|| registry.stored())
            });
            if let Err(problem) = saved {
                error!(%problem, "runtime registrations not saved; refusing the changes of this batch");
                save_error = Some(problem.to_string());
                // Refused means nothing changed: memory goes back to what
                // the store holds, latest change first.
                for p in pending.iter_mut().rev() {
                    if let Pending::Durable(_, _, undo) = p
                        && let Some(undo) = undo.take()
                    {
                        registry.undo(*undo);
                    }
                }
            }
        }
        // Heartbeats renew what the store keeps of TTLs (etcd's leases).
        for p in pending.iter_mut() {
            if let Pending::Renew(_, outcome, key) = p
                && outcome.is_ok()
                && let Err(problem) = store.renew(&key.zone, &key.instance)
            {
                *outcome = Err(RegistryError::NotSaved(problem.to_string()));
            }
        }
        times.saved = now.elapsed();
        // Freeing what the new snapshot no longer shares with the one it
        // replaces (at 100 000 services, the copied parts of the name index:
        // about a sixth of a publish) waits for no reply, nor does freeing
        // the services it replaced (a large one's instances): both are freed
        // after the replies, on a blocking thread.
        let mut replaced = None;
        if registry.needs_publish() {
            let before = snapshots.load_full();
            // A batch of pipelined registrations can take a publish of a
            // second at 100 000 services: the other tasks of this worker
            // (admin connections reading the next requests) move on meanwhile.
            let retired = tokio::task::block_in_place(|| registry.publish());
            replaced = Some((before, retired));
            if files_changed {
                trim.after_files_changed(registry.served_names());
            }
        }
        times.published = now.elapsed();
        let requests = pending.len();
        // Those held for a build that is now installed (or superseded by a
        // zone that is gone) are answerable now.
        for (_, tx, outcome) in held.extract_if(.., |(key, ..)| !registry.is_building(key)) {
            let _ = tx.send(outcome);
        }
        let mut send = |Reply(tx, zone): Reply, outcome: Outcome| match zone {
            Some(key) if outcome.is_ok() && registry.is_building(&key) => {
                held.push((key, tx, outcome));
            }
            _ => {
                let _ = tx.send(outcome);
            }
        };
        for p in pending {
            match p {
                Pending::Durable(reply, outcome, _) => {
                    let outcome = match (&save_error, outcome) {
                        (Some(problem), Ok(_)) => Err(RegistryError::NotSaved(problem.clone())),
                        (_, outcome) => outcome,
                    };
                    send(reply, outcome);
                }
                Pending::Done(reply, outcome) | Pending::Renew(reply, outcome, _) => {
                    send(reply, outcome);
                }
                Pending::List(tx, zone) => {
                    let _ = tx.send(registry.list(zone.as_deref(), Instant::now()));
                }
                Pending::Status(tx) => {
                    let _ = tx.send(Status {
                        uptime: started.elapsed(),
                        store: store.location(),
                        zones: registry.status(),
                        orphaned: registry.orphaned(),
                    });
                }
            }
        }
        times.replied = now.elapsed();
        if replaced.is_some() || !old_zones.is_empty() || files_changed {
            let old_files = registry.take_retired_files();
            tokio::task::spawn_blocking(move || drop((replaced, old_zones, old_files)));
        }
        // The checks follow what is registered now; nobody waits for them.
        health(registry.take_health_updates());
        debug!(
            requests,
            apply_ms = ms(times.applied),
            save_ms = ms(times.saved - times.applied),
            publish_ms = ms(times.published - times.saved),
            reply_ms = ms(times.replied - times.published),
            health_ms = ms(now.elapsed() - times.replied),
            "batch done"
        );
    }
}

/// When each step of a batch ended, from its start: for the debug log,
/// which says where a batch's time goes.
#[derive(Default)]
struct BatchTimes {
    applied: Duration,
    saved: Duration,
    published: Duration,
    replied: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Gives memory the allocator keeps back to the system, shortly after
/// start-up and after the zones shrank (a zone file removed, or reloaded
/// with fewer names). glibc's malloc keeps what a large zone freed in its
/// arenas for the life of the process (measured: 367 MB stayed resident
/// after a 30 000-service zone was replaced by a small one; 9 MB after
/// `malloc_trim`). The trim runs a second later, once queries have let go
/// of the old snapshot, on a blocking thread, and at most once per second
/// whatever the number of reloads. Not after a reload that kept the zones'
/// size: the next version's build reuses what the old one freed, and the
/// trim of a heap that held a 100 000-service zone stalled the writer for
/// 350 ms (`registration_during_reload` in tests/admin_latency.rs).
#[derive(Default)]
struct Trim {
    scheduled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Names served when last looked at.
    names: usize,
}

impl Trim {
    /// Schedules a trim if fewer names are served than before.
    fn after_files_changed(&mut self, names: usize) {
        if names < self.names {
            self.schedule();
        }
        self.names = names;
    }

    fn schedule(&self) {
        use std::sync::atomic::Ordering;
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let scheduled = self.scheduled.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            scheduled.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(return_freed_memory).await;
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

/// The labels a zone file read counts under in `signpost_zone_reloads_total`:
/// the zone a valid file declares, or the zone an invalid file last gave
/// (its file name when it never gave one). `None` for other changes.
fn reload_label(registry: &Registry, change: &Change) -> Option<[(&'static str, String); 2]> {
    let (zone, result) = match change {
        Change::FileLoaded { zone, .. } => (zone.zone().apex.to_ascii(), "ok"),
        Change::FileInvalid { path, .. } => {
            let zone = registry
                .status()
                .into_iter()
                .find(|z| z.source == *path)
                .map_or_else(|| path.display().to_string(), |z| z.zone);
            (zone, "error")
        }
        _ => return None,
    };
    Some([("zone", zone), ("result", result.to_string())])
}

/// Applies one command, or queues it to be answered after the batch.
fn handle(
    registry: &mut Registry,
    command: Command,
    now: Instant,
    pending: &mut Vec<Pending>,
    reloads: &ReloadCounter,
) {
    match command {
        Command::Apply(changes) => {
            for change in changes {
                let reload = reload_label(registry, &change);
                // Sources that wait for nothing have their problems logged
                // where they are found (a rejected zone file).
                let _ = registry.apply(change, now);
                if let Some(labels) = reload {
                    reloads(labels);
                }
            }
        }
        Command::Remote(changes) => {
            for change in changes {
                registry.apply_remote(change, now);
            }
        }
        Command::Ask { change, reply } => {
            let undo = registry.undo_point(&change).map(Box::new);
            let durable = change.needs_durability();
            // Only a registration's or a removal's "ok" waits for a build
            // of its zone: a heartbeat's renews the TTL at once, and a client
            // that waited seconds for it would send its next one late.
            let reply = Reply(reply, change.zone_key().filter(|_| durable));
            let heartbeat = match &change {
                Change::Heartbeat(k) => Some(k.clone()),
                _ => None,
            };
            let outcome = registry.apply(change, now);
            pending.push(match heartbeat {
                Some(k) if outcome.is_ok() => Pending::Renew(reply, outcome, k),
                _ if durable && outcome.is_ok() => Pending::Durable(reply, outcome, undo),
                _ => Pending::Done(reply, outcome),
            });
        }
        Command::List { zone, reply } => pending.push(Pending::List(reply, zone)),
        Command::Status { reply } => pending.push(Pending::Status(reply)),
    }
}
