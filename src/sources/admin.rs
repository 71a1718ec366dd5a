//! The admin socket's server side: binding the Unix socket safely, reading
//! request lines, and handing each request to the registry's writer. This
//! is the edge where the admin protocol becomes the registry's [`Change`]s
//! and reads, and their outcomes become reply lines.
//!
//! Every request line gets exactly one reply line, in order; a bad request
//! gets `{"ok":false,"error":...}` and the connection stays open. Only a line
//! longer than [`MAX_REQUEST`] closes the connection (after its error reply),
//! since the rest of that line cannot be told apart from the next request.
//!
//! Connections that send nothing must not lock the socket out: one idle for
//! [`IDLE_TIMEOUT`] is closed, and when all [`MAX_CONNECTIONS`] slots are
//! taken a newcomer takes the slot of the connection idle the longest.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::proto::{
    self, MAX_REQUEST, Reply, Request, SecondaryInfo, StatusInfo, TransferInfo, ZoneInfo,
    parse_request,
};
use crate::registry::Change;
use crate::registry::writer::{Command, Outcome, Status, WriterHandle};
use crate::transfer::Transfers;

/// Most admin connections served at once. Clients send a request and wait,
/// so a few are plenty; beyond this a newcomer replaces the connection idle
/// the longest, and gets an error reply only if every connection is waiting
/// for the registry.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection with no request for this long is closed. Clients (the CLI,
/// an agent that registers and heartbeats) send a request and read the
/// reply at once, so a connection silent this long is one that was left
/// open: it would hold a slot for good. Generous, since an agent may keep
/// one connection for heartbeats every few seconds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The open connections, for eviction: touched on connect, on disconnect
/// and around each request, never while a request is served.
#[derive(Default)]
struct Slots {
    next: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Since when the connection has had nothing to do; None while its
    /// request waits for the registry (such a connection is never evicted).
    idle_since: Option<Instant>,
    /// Closes the connection.
    evict: CancellationToken,
}

impl Slots {
    /// Admits a connection, evicting the one idle the longest if every slot
    /// is taken. None when all are busy with requests.
    fn admit(slots: &Arc<Mutex<Slots>>) -> Option<SlotGuard> {
        let mut this = slots.lock().unwrap_or_else(|e| e.into_inner());
        if this.open.len() >= MAX_CONNECTIONS {
            let idlest = this
                .open
                .iter()
                .filter_map(|(id, slot)| slot.idle_since.map(|since| (since, *id)))
                .min()?;
            let evicted = this.open.remove(&idlest.1).expect("listed above");
            evicted.evict.cancel();
            debug!(
                idle_ms = idlest.0.elapsed().as_millis() as u64,
                "admin connection limit reached; closed the connection idle the longest"
            );
        }
        let id = this.next;
        this.next += 1;
        let evict = CancellationToken::new();
        this.open.insert(
            id,
            Slot {
                idle_since: Some(Instant::now()),
                evict: evict.clone(),
            },
        );
        Some(SlotGuard {
            slots: slots.clone(),
            id,
            evict,
        })
    }
}

/// A connection's slot, given back when dropped.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    id: u64,
    evict: CancellationToken,
}

impl SlotGuard {
    /// Marks the connection busy (a request in progress) or idle.
    fn set_busy(&self, busy: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.open.get_mut(&self.id) {
            slot.idle_since = if busy { None } else { Some(Instant::now()) };
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.open.remove(&self.id);
    }
}

/// Why the admin socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is at the path: never remove it.
    #[error(
        "refusing to use admin socket path {}: it exists and is not a socket (remove it, or choose another path with --socket)",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A server is already listening there.
    #[error(
        "admin socket {} is in use by a running server (stop it, or choose another path with --socket)",
        path.display()
    )]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Any other failure.
    #[error("cannot create admin socket {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The bound admin socket. [`AdminSocket::remove`] deletes the path, if it
/// is still this socket, on a clean shutdown; so does dropping it, so a
/// start refused after the socket was bound leaves none behind.
pub struct AdminSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    identity: (u64, u64),
}

impl AdminSocket {
    /// Creates the socket at `path` with mode 0660 (owner and group).
    ///
    /// A stale socket (one nothing accepts connections on, left by a server
    /// that was killed) is replaced; anything else at the path is an error.
    /// The socket is bound inside a fresh private directory next to `path`,
    /// given its mode there, and renamed into place, so it is never reachable
    /// with looser permissions and the process umask is left alone.
    pub fn bind(path: &Path) -> Result<AdminSocket, SocketError> {
        let io_err = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(SocketError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "removing stale admin socket");
                    std::fs::remove_file(path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }

        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let private = dir.join(format!(".signpost-{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io_err)?;
        let result = (|| {
            let inner = private.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&inner)?;
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o660))?;
            std::fs::rename(&inner, path)?;
            let m = std::fs::symlink_metadata(path)?;
            Ok((listener, (m.dev(), m.ino())))
        })();
        let _ = std::fs::remove_dir_all(&private);
        let (listener, identity) = result.map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok(AdminSocket {
            path: path.to_path_buf(),
            listener,
            identity,
        })
    }

    /// Removes the socket file if it is still the one this server created.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Accepts admin connections until `shutdown`, then removes the socket.
pub async fn run(
    socket: AdminSocket,
    writer: WriterHandle,
    transfers: Option<Arc<Transfers>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = UnixListener::from_std(socket.listener.try_clone()?)?;
    info!(path = %socket.path.display(), "admin socket ready");
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(error) => {
                warn!(%error, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = Slots::admit(&slots) else {
            let reply = line(&Reply::error(format!(
                "too many admin connections (limit {MAX_CONNECTIONS}), all busy; try again"
            )));
            connections.spawn(async move {
                let _ = stream.write_all(&reply).await;
            });
            continue;
        };
        let writer = writer.clone();
        let transfers = transfers.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                result = connection(stream, (&writer, transfers.as_deref()), &slot) => {
                    if let Err(error) = result {
                        debug!(%error, "admin connection closed");
                    }
                }
                () = slot.evict.cancelled() => {}
                () = shutdown.cancelled() => {}
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    socket.remove();
    Ok(())
}

/// Serves one connection: a reply line for every request line.
async fn connection(
    stream: UnixStream,
    (writer, transfers): (&WriterHandle, Option<&Transfers>),
    slot: &SlotGuard,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        // At most one byte past the limit is read, so an endless line costs
        // no more memory than a long one.
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => {
                debug!("admin connection idle; closing it");
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_REQUEST {
            let reply = Reply::error(format!(
                "request too large: a request line is at most {MAX_REQUEST} bytes; closing the connection"
            ));
            write.write_all(&line(&reply)).await?;
            write.shutdown().await?;
            return Ok(());
        }
        let request = buf.trim_ascii();
        // Blank lines (an extra Enter in `nc`) are not requests.
        if request.is_empty() {
            continue;
        }
        slot.set_busy(true);
        let reply = match parse_request(request) {
            Ok(request) => ask(writer, transfers, request).await,
            Err(message) => Reply::error(message),
        };
        // A client that does not read its reply is idle from here on, and
        // closed once the reply has waited IDLE_TIMEOUT to be taken.
        slot.set_busy(false);
        tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&line(&reply)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading replies"))??;
    }
}

/// Sends a request to the registry's writer and waits for its reply, which
/// comes only once a change is saved and published.
async fn ask(writer: &WriterHandle, transfers: Option<&Transfers>, request: Request) -> Reply {
    let asked = Instant::now();
    let (op, change) = match request {
        Request::Register(r) => ("register", Change::Register(r)),
        Request::Deregister(k) => ("deregister", Change::Deregister(k)),
        Request::Heartbeat(k) => ("heartbeat", Change::Heartbeat(k)),
        Request::List { zone } => {
            return match call(writer, |reply| Command::List { zone, reply }).await {
                Some(Ok(instances)) => Reply {
                    instances: Some(instances),
                    ..Reply::ok()
                },
                Some(Err(e)) => Reply::error(e.to_string()),
                None => shutting_down(),
            };
        }
        Request::Status {} => {
            return match call(writer, |reply| Command::Status { reply }).await {
                Some(status) => Reply {
                    status: Some(status_info(status, transfers)),
                    ..Reply::ok()
                },
                None => shutting_down(),
            };
        }
    };
    let reply = match call(writer, |reply| Command::Ask { change, reply }).await {
        Some(outcome) => outcome_reply(outcome),
        None => shutting_down(),
    };
    let metrics = crate::metrics::global();
    let result = if reply.ok { "ok" } else { "error" };
    metrics
        .registrations
        .get_or_create(&[("op", op), ("result", result)])
        .inc();
    metrics
        .registration_duration
        .observe(asked.elapsed().as_secs_f64());
    reply
}

/// Sends a command made with a reply channel, and waits for the reply;
/// `None` when the writer has stopped.
async fn call<T>(
    writer: &WriterHandle,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    writer.send(command(tx)).ok()?;
    rx.await.ok()
}

fn shutting_down() -> Reply {
    Reply::error("the server is shutting down")
}

fn outcome_reply(outcome: Outcome) -> Reply {
    match outcome {
        Ok(instance) => Reply {
            instance,
            ..Reply::ok()
        },
        Err(e) => Reply::error(e.to_string()),
    }
}

fn status_info(status: Status, transfers: Option<&Transfers>) -> StatusInfo {
    let recent = crate::metrics::rates::last_minute();
    StatusInfo {
        protocol: proto::VERSION,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: status.uptime.as_secs(),
        state_file: status.store,
        zones: status
            .zones
            .into_iter()
            .map(|z| ZoneInfo {
                transfer: transfers
                    .filter(|t| t.config.is_enabled())
                    .map(|t| transfer_info(t, &z.zone)),
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
            .collect(),
        orphaned: status.orphaned,
        queries_by_rcode: recent
            .by_rcode
            .into_iter()
            .map(|(rcode, n)| (rcode.to_string(), n))
            .collect(),
        queries_window_secs: recent.seconds,
    }
}

/// A zone's IXFR journal and the secondaries notified of it.
fn transfer_info(transfers: &Transfers, zone: &str) -> TransferInfo {
    let status = hickory_proto::rr::Name::from_ascii(zone)
        .map(|apex| transfers.status(&crate::answer::wire::lower_wire(&apex)))
        .unwrap_or_default();
    let now = std::time::SystemTime::now();
    TransferInfo {
        journal: status.journal,
        journal_changes: status.journal_len,
        secondaries: status
            .secondaries
            .into_iter()
            .map(|(address, s)| SecondaryInfo {
                address: address.to_string(),
                acknowledged_serial: s.acknowledged.map(|(serial, _)| serial),
                acknowledged_secs_ago: s
                    .acknowledged
                    .map(|(_, at)| now.duration_since(at).map_or(0, |d| d.as_secs())),
                pending_serial: s.pending.map(|(serial, _)| serial),
                attempts: s.pending.map_or(0, |(_, attempts)| attempts),
            })
            .collect(),
    }
}

/// A reply as one line of JSON.
fn line(reply: &Reply) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).expect("replies serialize");
    out.push(b'\n');
    out
}
