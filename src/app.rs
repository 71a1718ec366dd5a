//! Wiring: load the zones, publish the first snapshot, bind, serve until told
//! to stop.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::forward::{self, ForwardError, Forwarder};
use crate::registry::Registry;
use crate::server;
use crate::zone;

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
    /// Forwarding would loop back to this server.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// A socket failed while serving.
    #[error("serving failed: {0}")]
    Io(#[from] io::Error),
}

/// Loads every zone file into `registry`, logging each problem. Files with
/// errors are skipped; the others are served.
pub fn load_zones(registry: &mut Registry, dir: &Path) -> Result<(), ServeError> {
    let loaded = zone::load_dir(dir).map_err(|source| ServeError::ZonesDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for problem in &loaded.errors {
        error!(%problem, "zone file rejected");
    }
    for (path, zone) in loaded.zones {
        let name = zone.apex.to_ascii();
        match registry.set_file_zone(&path, zone) {
            Ok(()) => info!(zone = %name, file = %path.display(), "zone loaded"),
            Err(problem) => error!(%problem, file = %path.display(), "zone file rejected"),
        }
    }
    if registry.status().is_empty() {
        warn!(dir = %dir.display(), "no zones loaded; every query will be refused");
    }
    Ok(())
}

/// Runs the server with `config` until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let (mut registry, snapshots) = Registry::new();
    load_zones(&mut registry, &config.zones)?;
    registry.publish();

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
