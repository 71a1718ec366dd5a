//! The admin socket's server side: binding the Unix socket safely, reading
//! request lines, and handing each request to the registry's writer. This
//! is the edge where the admin protocol becomes the registry's [`Change`]s
//! and reads, and their outcomes become reply lines.
//!
//! Every request line gets exactly one reply line, in order; a bad request
//! gets `{"ok":false,"error":...}` and the connection stays open. Only a line
//! longer than [`MAX_REQUEST`] closes the connection (after the replies to
//! the requests before it, and its own error reply), since the rest of that
//! line cannot be told apart from the next request. Clients may pipeline:
//! up to [`PIPELINE_WINDOW`] requests of a connection are in flight at once,
//! so the registry's batches fill up and one fdatasync covers many.
//!
//! Connections that send nothing must not lock the socket out: one idle for
//! [`IDLE_TIMEOUT`] is closed, and when all [`MAX_CONNECTIONS`] slots are
//! taken a newcomer takes the slot of the connection idle the longest.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::proto::{
    self, MAX_REQUEST, Reply, Request, SecondaryInfo, StatusInfo, TransferInfo, ZoneInfo,
    parse_request,
};
use crate::registry::registration::InstanceInfo;
use crate::registry::writer::{Command, Outcome, Status, WriterHandle};
use crate::registry::{Change, RegistryError};
use crate::transfer::Transfers;

/// Most admin connections served at once. Clients send a request and wait,
/// so a few are plenty; beyond this a newcomer replaces the connection idle
/// the longest, and gets an error reply only if every connection is waiting
/// for the registry.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection with no request for this long, and none in flight, is
/// closed. Clients (the CLI, an agent that registers and heartbeats) send a
/// request and read the reply at once, so a connection silent this long is
/// one that was left open: it would hold a slot for good. Generous, since
/// an agent may keep one connection for heartbeats every few seconds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most requests of one connection in flight at once: sent to the registry
/// or answered, and not yet written back. The registry saves and publishes
/// one batch while the next queues, so a client keeps its share of the
/// batches full with what it sends in about two batch times: at 10 000
/// registrations a second and batches of about 10 ms, some 200 for a client
/// alone, 25 each for 8. 256 lets one connection reach that rate by itself,
/// while bounding what a client can queue (64 connections: 16 384 requests,
/// a few megabytes). No line is read while the window is full.
pub const PIPELINE_WINDOW: usize = 256;

/// The open connections, for eviction: touched on connect, on disconnect,
/// on each request line read and as requests start and finish.
#[derive(Default)]
struct Slots {
    next: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Requests sent to the registry and not yet answered; a connection
    /// with any is never evicted.
    in_flight: usize,
    /// Since when the connection has had nothing to do: its last request
    /// line read or answered, whichever came later.
    idle_since: Instant,
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
                .filter(|(_, slot)| slot.in_flight == 0)
                .map(|(id, slot)| (slot.idle_since, *id))
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
                in_flight: 0,
                idle_since: Instant::now(),
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
    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.open.get_mut(&self.id).map(f)
    }

    /// A request line was read: the connection is not idle.
    fn touch(&self) {
        self.with_slot(|slot| slot.idle_since = Instant::now());
    }

    /// A request went to the registry: busy until it is answered.
    fn start(&self) {
        self.with_slot(|slot| slot.in_flight += 1);
    }

    /// A request's reply came back. A client that does not read its replies
    /// is idle from here on, and closed once a reply has waited
    /// IDLE_TIMEOUT to be taken.
    fn finish(&self) {
        self.with_slot(|slot| {
            slot.in_flight -= 1;
            slot.idle_since = Instant::now();
        });
    }

    /// How long the connection has had nothing to do; None while a request
    /// is in flight.
    fn idle_for(&self) -> Option<Duration> {
        self.with_slot(|slot| (slot.in_flight == 0).then(|| slot.idle_since.elapsed()))
            .flatten()
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

/// Serves one connection: a reply line for every request line, in order.
///
/// Requests are pipelined: the reading half sends each request to the
/// registry as soon as it is read and queues what will be its reply; the
/// writing half writes the replies in that order as they come. The queue
/// holds [`PIPELINE_WINDOW`] replies (one more is being written), and no
/// line is read while it is full.
async fn connection(
    stream: UnixStream,
    registry: (&WriterHandle, Option<&Transfers>),
    slot: &SlotGuard,
) -> io::Result<()> {
    let lists = Semaphore::new(1);
    let (read, write) = stream.into_split();
    let (queue, replies) = mpsc::channel(PIPELINE_WINDOW - 1);
    tokio::try_join!(
        read_requests(read, registry, slot, &lists, queue),
        write_replies(write, replies),
    )?;
    Ok(())
}

/// A reply to be written in its turn: answered already, or waiting for
/// the registry.
type Coming<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// Reads request lines and queues their replies, until the client stops
/// sending, stays idle, or sends a line too long (whose error reply is the
/// last one). Then the writing half writes what is queued and closes.
async fn read_requests<'a>(
    read: OwnedReadHalf,
    (writer, transfers): (&WriterHandle, Option<&'a Transfers>),
    slot: &'a SlotGuard,
    lists: &'a Semaphore,
    queue: mpsc::Sender<Coming<'a>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok(place) = queue.reserve().await else {
            return Ok(());
        };
        buf.clear();
        // At most one byte past the limit is read, so an endless line costs
        // no more memory than a long one.
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let Some(n) = unless_idle(limited.read_until(b'\n', &mut buf), slot).await else {
            debug!("admin connection idle; closing it");
            return Ok(());
        };
        if n? == 0 {
            return Ok(());
        }
        slot.touch();
        if buf.len() > MAX_REQUEST {
            place.send(Box::pin(std::future::ready(Reply::error(format!(
                "request too large: a request line is at most {MAX_REQUEST} bytes; closing the connection"
            )))));
            return Ok(());
        }
        let request = buf.trim_ascii();
        // Blank lines (an extra Enter in `nc`) are not requests.
        if request.is_empty() {
            continue;
        }
        let request = match parse_request(request) {
            Ok(request) => request,
            Err(message) => {
                place.send(Box::pin(std::future::ready(Reply::error(message))));
                continue;
            }
        };
        // A list of a large zone is large (tens of megabytes at 100 000
        // services): one at a time per connection, as before pipelining.
        let turn = match request {
            Request::List { .. } => Some(lists.acquire().await.expect("never closed")),
            _ => None,
        };
        slot.start();
        let reply = ask(writer, transfers, request);
        place.send(Box::pin(async move {
            let reply = reply.await;
            drop(turn);
            slot.finish();
            reply
        }));
    }
}

/// `read`, unless the connection has nothing to do (no request read and
/// none in flight) for IDLE_TIMEOUT first: None then.
async fn unless_idle<T>(read: impl Future<Output = T>, slot: &SlotGuard) -> Option<T> {
    let mut read = std::pin::pin!(read);
    loop {
        let wait = match slot.idle_for() {
            // Busy: idle at the earliest IDLE_TIMEOUT from now.
            None => IDLE_TIMEOUT,
            Some(idle) if idle >= IDLE_TIMEOUT => return None,
            Some(idle) => IDLE_TIMEOUT - idle,
        };
        tokio::select! {
            value = &mut read => return Some(value),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Writes the replies in request order as they come, those already there
/// in one write, then shuts the connection down once the reading half has
/// stopped and every reply is written.
async fn write_replies(
    mut write: OwnedWriteHalf,
    mut replies: mpsc::Receiver<Coming<'_>>,
) -> io::Result<()> {
    let mut out = Vec::new();
    loop {
        let mut coming = match replies.try_recv() {
            Ok(coming) => coming,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                flush(&mut write, &mut out).await?;
                match replies.recv().await {
                    Some(coming) => coming,
                    None => break,
                }
            }
        };
        // What is written so far goes out before waiting for the registry.
        let reply = match std::future::poll_fn(|cx| Poll::Ready(coming.as_mut().poll(cx))).await {
            Poll::Ready(reply) => reply,
            Poll::Pending => {
                flush(&mut write, &mut out).await?;
                coming.await
            }
        };
        out.extend_from_slice(&line(&reply));
    }
    flush(&mut write, &mut out).await?;
    write.shutdown().await
}

/// Writes out the replies in `out`. A client that does not read its replies
/// is closed once they have waited IDLE_TIMEOUT to be taken.
async fn flush(write: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(IDLE_TIMEOUT, write.write_all(out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading replies"))??;
    out.clear();
    Ok(())
}

/// A request sent to the registry's writer: where its reply will come
/// from, None if the writer has stopped.
enum Sent {
    Change(&'static str, Option<oneshot::Receiver<Outcome>>),
    List(Option<oneshot::Receiver<Result<Vec<InstanceInfo>, RegistryError>>>),
    Status(Option<oneshot::Receiver<Status>>),
}

/// Sends a request to the registry's writer at once, so requests reach it
/// in the order they were read, and returns what waits for its reply,
/// which comes only once a change is saved and published.
fn ask<'a>(
    writer: &WriterHandle,
    transfers: Option<&'a Transfers>,
    request: Request,
) -> impl Future<Output = Reply> + Send + use<'a> {
    let asked = Instant::now();
    let change =
        |op, change| Sent::Change(op, send(writer, |reply| Command::Ask { change, reply }));
    let sent = match request {
        Request::Register(r) => change("register", Change::Register(r)),
        Request::Deregister(k) => change("deregister", Change::Deregister(k)),
        Request::Heartbeat(k) => change("heartbeat", Change::Heartbeat(k)),
        Request::List { zone } => Sent::List(send(writer, |reply| Command::List { zone, reply })),
        Request::Status {} => Sent::Status(send(writer, |reply| Command::Status { reply })),
    };
    async move {
        match sent {
            Sent::Change(op, outcome) => {
                let reply = match received(outcome).await {
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
            Sent::List(list) => match received(list).await {
                Some(Ok(instances)) => Reply {
                    instances: Some(instances),
                    ..Reply::ok()
                },
                Some(Err(e)) => Reply::error(e.to_string()),
                None => shutting_down(),
            },
            Sent::Status(status) => match received(status).await {
                Some(status) => Reply {
                    status: Some(status_info(status, transfers)),
                    ..Reply::ok()
                },
                None => shutting_down(),
            },
        }
    }
}

/// Sends a command made with a reply channel; None when the writer has
/// stopped.
fn send<T>(
    writer: &WriterHandle,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    writer.send(command(tx)).ok()?;
    Some(rx)
}

/// The reply to a command [`send`] sent; None when the writer has stopped.
async fn received<T>(reply: Option<oneshot::Receiver<T>>) -> Option<T> {
    reply?.await.ok()
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
