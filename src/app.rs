//! Wiring: load the zones, start the registry's owner task and the zones
//! watcher, bind, and serve until told to stop.

use std::io;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::forward::{self, ForwardError, Forwarder};
use crate::registry::{Change, Registry};
use crate::server;
use crate::watch::{self, Scanner};

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
}

/// Sends work to the registry's owner task.
pub type WriterHandle = mpsc::UnboundedSender<WriterMsg>;

/// The one task that owns the registry: it applies changes in the order they
/// arrive and publishes a snapshot after each batch, so there is a single
/// writer and no lock for queries to wait on.
async fn run_writer(mut registry: Registry, mut inbox: mpsc::UnboundedReceiver<WriterMsg>) {
    while let Some(msg) = inbox.recv().await {
        let mut changed = handle(&mut registry, msg);
        // Whatever queued up meanwhile goes into the same snapshot.
        while let Ok(msg) = inbox.try_recv() {
            changed |= handle(&mut registry, msg);
        }
        if changed {
            registry.publish();
        }
    }
}

fn handle(registry: &mut Registry, msg: WriterMsg) -> bool {
    match msg {
        WriterMsg::Changes(changes) => changes
            .into_iter()
            .fold(false, |changed, c| registry.apply(c) | changed),
    }
}

/// Runs the server with `config` until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let (mut registry, snapshots) = Registry::new();

    // The first scan happens before any socket is bound, so the first query
    // already sees every valid zone.
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

    let (writer, inbox) = mpsc::unbounded_channel();
    tokio::spawn(run_writer(registry, inbox));
    let to_writer = writer.clone();
    let reload = watch::spawn(scanner, config.rescan_interval, move |changes| {
        to_writer.send(WriterMsg::Changes(changes)).is_ok()
    })
    .map_err(|source| ServeError::Watch {
        path: config.zones.clone(),
        source,
    })?;
    tokio::spawn(reload_on_sighup(reload));

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
    Ok(())
}

/// SIGHUP: read every zone file again, changed or not.
async fn reload_on_sighup(reload: std::sync::mpsc::Sender<watch::Wake>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading every zone file");
        if reload.send(watch::Wake::Reload).is_err() {
            return;
        }
    }
}
