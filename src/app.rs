//! Wiring: load the zones, start the registry's owner task and the zones
//! watcher, bind, and serve until told to stop.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::proto::{self, Reply, Request, StatusInfo, ZoneInfo};
use crate::admin::server::{AdminSocket, SocketError};
use crate::config::Config;
use crate::forward::{self, ForwardError, Forwarder};
use crate::registry::{Change, Registry};
use crate::watch::{self, Scanner};
use crate::{health, server, state};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The zones directory is missing or unreadable.
    #[error("cannot read zones directory {}: {source}", path.display())]
    ZonesDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The zones directory cannot be watched.
    #[error("cannot watch zones directory {}: {source}", path.display())]
    Watch {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The state file is unreadable or corrupt.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The state file holds a registration that is not valid.
    #[error("state file {}: {message}", path.display())]
    StateContent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The admin socket could not be created.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Forwarding would loop back to this server.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// A socket failed while serving.
    #[error("serving failed: {0}")]
    Io(#[from] io::Error),
}

/// What the registry's owner task is asked to do.
pub enum WriterMsg {
    /// Apply changes from a source, in order.
    Changes(Vec<Change>),
    /// An admin request. The reply is sent once the change is in the state
    /// file and in the published snapshot, so "ok" means durable and answerable.
    Admin {
        /// The request.
        request: Request,
        /// Where the reply goes.
        reply: oneshot::Sender<Reply>,
    },
    /// Health checks changed state: the zones they are in are built again.
    Health(Vec<health::Flip>),
}

/// Sends work to the registry's owner task.
pub type WriterHandle = mpsc::UnboundedSender<WriterMsg>;

/// What the owner task needs besides the registry.
struct Writer {
    state: state::StateLog,
    state_path: PathBuf,
    started: Instant,
    /// Told the checked addresses of every zone that changed.
    health: health::Checker,
}

/// An admin reply waiting for the end of its batch.
enum Pending {
    /// A change: ok only if the state file write that follows succeeds.
    Change(oneshot::Sender<Reply>, Reply),
    /// Nothing to save; sent as is.
    Done(oneshot::Sender<Reply>, Reply),
    /// A read (list, status): answered after the batch, so it sees it.
    Read(oneshot::Sender<Reply>, Request),
}

/// The one task that owns the registry: it applies changes in the order they
/// arrive and publishes a snapshot after each batch, so there is a single
/// writer and no lock for queries to wait on.
///
/// Whatever queued up while a batch was saved goes into the next batch: one
/// state file write (and one snapshot) covers many registrations when they
/// come fast (group commit), and each waits for at most two writes.
/// The task also expires TTL instances, waking at the earliest deadline.
async fn run_writer(
    mut registry: Registry,
    mut inbox: mpsc::UnboundedReceiver<WriterMsg>,
    mut writer: Writer,
) {
    loop {
        let next = registry.next_expiry();
        let first = tokio::select! {
            msg = inbox.recv() => match msg {
                Some(msg) => Some(msg),
                None => return,
            },
            () = sleep_until(next), if next.is_some() => None,
        };
        let mut pending = Vec::new();
        let mut changed = false;
        if let Some(msg) = first {
            changed |= handle(&mut registry, msg, &mut pending);
        }
        while let Ok(msg) = inbox.try_recv() {
            changed |= handle(&mut registry, msg, &mut pending);
        }
        registry.expire(Instant::now());

        // Durable before anyone hears "ok": one append and one fdatasync
        // for the whole batch (group commit).
        let mut save_error = None;
        let journal = registry.take_journal();
        let acknowledges_change = pending.iter().any(|p| matches!(p, Pending::Change(..)));
        if !journal.is_empty() || (writer.state.is_broken() && acknowledges_change) {
            let saved = tokio::task::block_in_place(|| {
                writer
                    .state
                    .append(&journal, registry.stored_count(), || registry.stored())
            });
            if let Err(problem) = saved {
                error!(%problem, "runtime registrations not saved; refusing the changes of this batch");
                save_error = Some(problem.to_string());
            }
        }
        if changed || registry.needs_publish() {
            registry.publish();
        }
        // The checks follow what is registered now.
        writer.health.update(registry.take_health_updates());
        for p in pending {
            match p {
                Pending::Change(tx, reply) => {
                    let reply = match &save_error {
                        None => reply,
                        Some(problem) => Reply::error(format!(
                            "not saved: {problem}; the change is in effect until the server restarts"
                        )),
                    };
                    let _ = tx.send(reply);
                }
                Pending::Done(tx, reply) => {
                    let _ = tx.send(reply);
                }
                Pending::Read(tx, request) => {
                    let _ = tx.send(read(&registry, &writer, request));
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

/// Applies one message; returns whether file zones changed.
fn handle(registry: &mut Registry, msg: WriterMsg, pending: &mut Vec<Pending>) -> bool {
    match msg {
        WriterMsg::Changes(changes) => changes
            .into_iter()
            .fold(false, |changed, c| registry.apply(c) | changed),
        WriterMsg::Health(flips) => {
            registry.set_health(flips);
            false
        }
        WriterMsg::Admin { request, reply } => {
            let now = Instant::now();
            let p = match request {
                Request::Register(r) => {
                    let zone = r.zone.clone();
                    let instance = r.instance.clone();
                    match registry.register(r, now) {
                        Ok(info) => {
                            info!(%zone, %instance, "instance registered");
                            Pending::Change(
                                reply,
                                Reply {
                                    instance: Some(info),
                                    ..Reply::ok()
                                },
                            )
                        }
                        Err(e) => Pending::Done(reply, Reply::error(e)),
                    }
                }
                Request::Deregister(k) => match registry.deregister(&k) {
                    Ok(()) => {
                        info!(zone = %k.zone, instance = %k.instance, "instance deregistered");
                        Pending::Change(reply, Reply::ok())
                    }
                    Err(e) => Pending::Done(reply, Reply::error(e)),
                },
                // A heartbeat that revives an instance is saved too, but its
                // reply does not depend on that: health is not a registration.
                Request::Heartbeat(k) => match registry.heartbeat(&k, now) {
                    Ok(info) => Pending::Done(
                        reply,
                        Reply {
                            instance: Some(info),
                            ..Reply::ok()
                        },
                    ),
                    Err(e) => Pending::Done(reply, Reply::error(e)),
                },
                read @ (Request::List { .. } | Request::Status {}) => Pending::Read(reply, read),
            };
            pending.push(p);
            false
        }
    }
}

/// Answers list and status.
fn read(registry: &Registry, writer: &Writer, request: Request) -> Reply {
    match request {
        Request::List { zone } => match registry.list(zone.as_deref(), Instant::now()) {
            Ok(instances) => Reply {
                instances: Some(instances),
                ..Reply::ok()
            },
            Err(e) => Reply::error(e),
        },
        Request::Status {} => {
            let zones = registry
                .status()
                .into_iter()
                .map(|z| ZoneInfo {
                    zone: z.zone,
                    file: z.source.display().to_string(),
                    serial: z.serial,
                    state: if z.stale.is_some() { "stale" } else { "ok" }.into(),
                    error: z.stale,
                    services: z.services_served,
                    file_instances: z.instances,
                    runtime_instances: z.runtime_serving,
                    runtime_not_serving: z.runtime_not_serving,
                    unhealthy_instances: z.unhealthy,
                })
                .collect();
            Reply {
                status: Some(StatusInfo {
                    protocol: proto::VERSION,
                    version: env!("CARGO_PKG_VERSION").into(),
                    uptime_secs: writer.started.elapsed().as_secs(),
                    state_file: writer.state_path.display().to_string(),
                    zones,
                    orphaned: registry.orphaned(),
                }),
                ..Reply::ok()
            }
        }
        _ => Reply::error("internal error: not a read request"),
    }
}

/// Runs the server with `config` until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let started = Instant::now();
    let (mut registry, snapshots) = Registry::new();
    registry
        .set_reverse(&config.reverse)
        .map_err(|e| ServeError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;

    // Runtime registrations first, so each zone is built once with them.
    let (state_log, stored) = state::StateLog::open(&config.state)?;
    let restored = stored.len();
    registry
        .restore(stored, started)
        .map_err(|message| ServeError::StateContent {
            path: config.state.clone(),
            message,
        })?;
    info!(file = %config.state.display(), registrations = restored, "state file read");

    // The first scan happens before any socket is bound, so the first query
    // already sees every valid zone.
    // A missing directory is reported as such, before the watcher would
    // report it in its own words.
    std::fs::read_dir(&config.zones).map_err(|source| ServeError::ZonesDir {
        path: config.zones.clone(),
        source,
    })?;
    let watching = watch::watch(&config.zones).map_err(|source| ServeError::Watch {
        path: config.zones.clone(),
        source,
    })?;
    let mut scanner = Scanner::new(&config.zones);
    let initial = scanner.scan(false).map_err(|source| ServeError::ZonesDir {
        path: config.zones.clone(),
        source,
    })?;
    for change in initial {
        registry.apply(change);
    }
    registry.publish();
    if registry.status().is_empty() {
        warn!(dir = %config.zones.display(), "no zones loaded; every query will be refused");
    }

    if registry.orphaned() > 0 {
        warn!(
            count = registry.orphaned(),
            "runtime registrations for zones no zone file declares; kept, not served"
        );
    }

    // Before any DNS socket: a second server started by mistake stops here.
    let admin = AdminSocket::bind(&config.socket)?;

    let (writer, inbox) = mpsc::unbounded_channel();
    // The checker reports state flips to the registry's owner, which tells
    // it the targets of each zone it builds, starting with the first ones.
    let flips_to = writer.clone();
    let checker = health::spawn(
        health::MAX_IN_FLIGHT,
        health::network_prober(),
        move |flips| flips_to.send(WriterMsg::Health(flips)).is_ok(),
        shutdown.clone(),
    );
    checker.update(registry.take_health_updates());
    tokio::spawn(run_writer(
        registry,
        inbox,
        Writer {
            state: state_log,
            state_path: config.state.clone(),
            started,
            health: checker,
        },
    ));
    let admin_task = tokio::spawn(crate::admin::server::run(
        admin,
        writer.clone(),
        shutdown.clone(),
    ));
    let to_writer = writer.clone();
    let reload = watch::spawn(watching, scanner, config.rescan_interval, move |changes| {
        to_writer.send(WriterMsg::Changes(changes)).is_ok()
    })?;
    // Installed before the sockets are bound (and the log says so), so a
    // SIGHUP sent as soon as the server listens never meets the default
    // action, which would end the process.
    let hangups = signal(SignalKind::hangup())?;
    tokio::spawn(reload_on_sighup(hangups, reload));

    let mut bound = Vec::new();
    for addr in &config.listen {
        let b = server::bind(*addr, config.threads).map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        bound.push(b);
    }
    let forwarder = match &config.forward {
        None => None,
        Some(forward) => {
            // Checked against the addresses actually bound, so port 0 is resolved.
            let listen: Vec<_> = bound.iter().map(|b| b.addr).collect();
            forward::check_loop(&forward.upstreams, &listen)?;
            info!(upstreams = ?forward.upstreams, "forwarding names outside the zones");
            Some(Arc::new(Forwarder::new(forward, &listen)))
        }
    };
    server::run(bound, snapshots, config.tcp, forwarder, shutdown).await?;
    // The admin server removes its socket once it sees the shutdown.
    if let Ok(Err(error)) = admin_task.await {
        warn!(%error, "admin socket failed");
    }
    Ok(())
}

/// SIGHUP: read every zone file again, changed or not.
async fn reload_on_sighup(mut hangups: Signal, reload: std::sync::mpsc::Sender<watch::Wake>) {
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading every zone file");
        if reload.send(watch::Wake::Reload).is_err() {
            return;
        }
    }
}
