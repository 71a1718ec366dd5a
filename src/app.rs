//! Wiring: lock the state file and bind (so a start that cannot succeed
//! stops before it loads or writes anything), load the state and the zones,
//! start the registry's owner task and the zones watcher, and serve until
//! told to stop.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::net::forward::{self, ForwardError, Forwarder};
use crate::net::{metrics_http, notify as notify_sender, query_log, server};
use crate::registry::serials::Serials;
use crate::registry::state_file::{StateError, StateLock, StateLog};
use crate::registry::writer::{self, Command};
use crate::registry::{Registry, RegistryError};
use crate::sources::admin::{self, AdminSocket, SocketError};
use crate::sources::health_probe;
use crate::sources::watch::{self, Scanner};
use crate::transfer::Transfers;
use crate::{metrics, service_manager};

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
    #[error("cannot listen on {addr} {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Over which transport, and why.
        source: server::BindError,
    },
    /// The metrics endpoint's address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The query log cannot be opened.
    #[error("cannot open query log {}: {source}", path.display())]
    QueryLog {
        /// The file.
        path: PathBuf,
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
    State(#[from] StateError),
    /// The state file holds a registration that is not valid.
    #[error("state file {}: {source}", path.display())]
    StateContent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: RegistryError,
    },
    /// etcd could not be reached or read (`--etcd`).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The serial file is unreadable or damaged.
    #[error(transparent)]
    Serials(#[from] crate::registry::serials::SerialsError),
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

/// Runs the server with `config` until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let started = Instant::now();
    let (mut registry, snapshots) = Registry::new();
    registry.set_reverse(config.reverse);
    registry.set_reap_after(config.reap_expired_after);

    // Everything that can refuse a start is checked before anything is
    // loaded or written, cheapest first: a second server started by mistake
    // stops here, without scanning the zones, and leaves every file as it
    // found it. The lock comes first: another server on the same state file
    // is refused even with its own socket and port.
    let lock = StateLock::acquire(&config.state)?;
    registry.set_serials(Serials::open(&Serials::path_for(&config.state))?);
    // A missing directory is reported as such, before the watcher would
    // report it in its own words.
    std::fs::read_dir(&config.zones).map_err(|source| ServeError::ZonesDir {
        path: config.zones.clone(),
        source,
    })?;
    // Removes its socket when dropped, so a start refused from here on
    // leaves none behind.
    let admin = AdminSocket::bind(&config.socket)?;
    // Bound, not yet served: queries wait in the sockets' queues until the
    // zones below are loaded, so the first query sees every valid zone.
    let mut bound = Vec::new();
    for addr in &config.listen {
        let b = server::bind(*addr, config.threads).map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        bound.push(b);
    }
    let metrics_listener = match config.metrics {
        None => None,
        Some(addr) => {
            Some(metrics_http::bind(addr).map_err(|source| ServeError::Metrics { addr, source })?)
        }
    };
    if let Some(target) = &config.query_log {
        query_log::start(target, config.query_log_sample).map_err(|source| {
            ServeError::QueryLog {
                path: match target {
                    query_log::Target::File(path) => path.clone(),
                    query_log::Target::Stdout => PathBuf::from("-"),
                },
                source,
            }
        })?;
    }
    service_manager::status("loading zones");
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

    // Transfers: the journal and NOTIFY follow every publish from the first.
    // Without any transfer setting there is no journal to keep, but a
    // signed query still gets its TSIG error (BADKEY) rather than an
    // unsigned answer, so the listeners always have the shared state.
    let transfers = Transfers::new(config.transfer.clone());
    if config.transfer.is_enabled() {
        let (notices, notify_rx) = mpsc::unbounded_channel();
        let to_notify = (!config.transfer.notify.is_empty()).then_some(notices);
        registry.set_publish_hook(transfers.publish_hook(to_notify));
        tokio::spawn(notify_sender::run(
            transfers.clone(),
            notify_rx,
            shutdown.clone(),
        ));
        info!(
            allow = ?config.transfer.allow,
            keys = config.transfer.keys.len(),
            notify = ?config.transfer.notify,
            "zone transfers enabled"
        );
    }
    let transfers = Some(transfers);

    // Runtime registrations first, so each zone is built once with them:
    // from the state file, or in a cluster from etcd (the lock still keeps
    // this node's serial file to itself).
    let (mut state_log, follower, _lock) = match &config.cluster {
        None => {
            let (state_log, stored) = StateLog::open(&config.state, lock)?;
            let restored = stored.len();
            registry
                .restore(stored, started)
                .map_err(|source| ServeError::StateContent {
                    path: config.state.clone(),
                    source,
                })?;
            info!(file = %config.state.display(), registrations = restored, "state file read");
            (Ok(state_log), None, None)
        }
        Some(cluster) => {
            let (stored, store, follower) = crate::cluster::open(cluster).await?;
            registry.set_store_keeps_ttls();
            for s in stored {
                // One bad key, written by another tool, does not stop a node.
                let (zone, instance) =
                    (s.registration.zone.clone(), s.registration.instance.clone());
                if let Err(problem) = registry.restore(vec![s], started) {
                    warn!(%problem, %zone, %instance, "registration in etcd not applied");
                }
            }
            (Err(store), Some(follower), Some(lock))
        }
    };

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
        // A rejected file is logged, and shown by `status`, where it is found.
        let _ = registry.apply(change, started);
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

    let (writer, inbox) = mpsc::unbounded_channel();
    let to_writer = writer.clone();
    let reload = watch::spawn(watching, scanner, config.rescan_interval, move |changes| {
        to_writer.send(Command::Apply(changes)).is_ok()
    })?;
    // Installed before the sockets are served (and the log says so), so a
    // SIGHUP sent as soon as the server listens never meets the default
    // action, which would end the process.
    let hangups = signal(SignalKind::hangup())?;

    // The first write to the state file, once nothing else can refuse the start.
    if let Ok(state_log) = state_log.as_mut() {
        state_log.prepare(|| registry.stored())?;
    }

    tokio::spawn(reload_on_sighup(hangups, reload));
    // The checker reports state flips to the registry's writer, which tells
    // it the targets of each zone it builds, starting with the first ones.
    let flips_to = writer.clone();
    let checker = health_probe::spawn(
        health_probe::MAX_IN_FLIGHT,
        health_probe::network_prober(),
        move |flips| {
            flips_to
                .send(Command::Apply(vec![crate::registry::Change::Health(flips)]))
                .is_ok()
        },
        shutdown.clone(),
    );
    checker.update(registry.take_health_updates());
    let store = state_log.map_or_else(|store| store, |log| Box::new(log) as Box<_>);
    tokio::spawn(writer::run(
        (registry, snapshots.clone()),
        inbox,
        store,
        Box::new(move |targets| checker.update(targets)),
        Box::new(|labels| {
            metrics::global().zone_reloads.get_or_create(&labels).inc();
        }),
    ));
    if let Some(follower) = follower {
        follower.follow(writer.clone(), shutdown.clone());
    }
    let admin_task = tokio::spawn(admin::run(
        admin,
        writer.clone(),
        transfers.clone(),
        shutdown.clone(),
    ));
    metrics::rates::spawn(shutdown.clone());
    if let Some(listener) = metrics_listener {
        let sources = metrics_http::Sources {
            writer: writer.clone(),
            forwarder: forwarder.clone(),
        };
        tokio::spawn(metrics_http::run(listener, sources, shutdown.clone()));
    }
    if let Some(interval) = service_manager::watchdog_interval() {
        tokio::spawn(service_manager::watchdog(interval, shutdown.clone()));
    }
    // Zones loaded and every socket bound: queries are answered from here on.
    let listen: Vec<String> = bound.iter().map(|b| b.addr.to_string()).collect();
    service_manager::ready(&format!("serving DNS on {}", listen.join(", ")));

    server::run(bound, snapshots, config.tcp, forwarder, transfers, shutdown).await?;
    service_manager::stopping();
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
