//! `signpost run`: start a program that reads the port it should listen on
//! from `PORT` (the Twelve-Factor convention), and keep it registered while
//! it lives.
//!
//! The launcher picks a free port unless told one, starts the program with
//! `PORT`, `SIGNPOST_SERVICE` and `SIGNPOST_INSTANCE` in its environment,
//! registers the instance once the program accepts connections (TCP) or
//! after a short grace (UDP), and sends heartbeats well within the TTL. When
//! the program exits, for any reason, the instance is deregistered first and
//! `run` exits with the program's status. Signals that ask to stop (TERM,
//! INT, HUP) are passed to the program. If `run` itself is killed, the
//! kernel kills the program (`PR_SET_PDEATHSIG`) and the TTL takes the
//! instance out of answers.
//!
//! Plain threads rather than an async runtime: one waits for the program,
//! one keeps the registration alive; each does one blocking thing at a time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use super::client::{CheckArgs, ClientArgs, DescribeArgs, exchange};
use super::proto::{InstanceKey, Protocol, Registration, Reply, Request, default_socket};

/// Default TTL: 10 s. Heartbeats go every third of it, so two may be lost
/// before the instance lapses, and a launcher that is killed (its program
/// with it) leaves answers within 10 s; a heartbeat only touches the
/// server's memory, so one every few seconds costs nothing.
pub const DEFAULT_TTL: u32 = 10;

/// How long the program may take to accept connections by default.
pub const DEFAULT_LISTEN_TIMEOUT: u64 = 30;

/// How long a UDP program is given to start before it is registered: there
/// is no handshake to tell when it listens.
const UDP_GRACE: Duration = Duration::from_millis(500);

/// `signpost run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The zone, which a zone file must declare (e.g. svc.example).
    #[arg(long)]
    pub zone: String,
    /// Service name (e.g. web).
    #[arg(long)]
    pub service: String,
    /// Instance name, also its host name in the zone [default: this host's
    /// name and the port, e.g. myhost-43117]
    #[arg(long)]
    pub instance: Option<String>,
    /// The instance's address, IPv4 or IPv6; repeat for several [default:
    /// the first IPv4 address of an interface that is up and not loopback,
    /// else 127.0.0.1]
    #[arg(long, value_name = "ADDR")]
    pub address: Vec<IpAddr>,
    /// The port the program listens on, passed as PORT [default: a free port]
    #[arg(long)]
    pub port: Option<u16>,
    /// Service protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: Protocol,
    /// Seconds without a heartbeat before the instance leaves answers.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TTL)]
    pub ttl: u32,
    /// Seconds the program may take to accept TCP connections on the port;
    /// one that does not is reported, left running, and not registered.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LISTEN_TIMEOUT)]
    pub listen_timeout: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub describe: DescribeArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub check: CheckArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The program's pid, for the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_signal(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// `signpost run`: exits with the program's status, 128+N when a signal
/// ended it, 2 when it could not be started.
pub fn run(args: RunArgs) -> ExitCode {
    let port = match args.port {
        Some(p) => p,
        None => match free_port(args.protocol) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("signpost run: cannot find a free port: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| default_instance(port));
    let addresses = if args.address.is_empty() {
        vec![default_address()]
    } else {
        args.address.clone()
    };
    let registration = Registration {
        zone: args.zone.clone(),
        service: args.service.clone(),
        protocol: args.protocol,
        instance: instance.clone(),
        address: addresses.iter().map(ToString::to_string).collect(),
        target: None,
        port,
        weight: args.describe.weight,
        priority: args.describe.priority,
        tags: args.describe.tags.clone(),
        ttl: Some(args.ttl),
        check: args.check.spec(),
        metadata: args.describe.metadata.iter().cloned().collect(),
    };

    // Handlers first, so a signal that arrives while the program starts is
    // passed on rather than ending the launcher alone.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill.
        unsafe {
            libc::signal(signal, pass_signal as *const () as libc::sighandler_t);
        }
    }
    let launcher = std::process::id() as i32;
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("PORT", port.to_string())
        .env("SIGNPOST_SERVICE", &args.service)
        .env("SIGNPOST_INSTANCE", &instance);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The program dies with the launcher, even a killed one.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died before the line above.
            if libc::getppid() != launcher {
                libc::_exit(1);
            }
            // The program takes the default action of the signals the
            // launcher passes on.
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signpost run: cannot start {}: {e}", args.command[0]);
            return ExitCode::from(2);
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    eprintln!(
        "signpost run: started {} (pid {}) as {instance} on port {port}",
        args.command[0],
        child.id()
    );

    let socket = args.client.socket.clone().unwrap_or_else(default_socket);
    let done = Arc::new(AtomicBool::new(false));
    let keeper = {
        let done = done.clone();
        let registration = registration.clone();
        let probe: Vec<SocketAddr> = addresses
            .iter()
            .chain(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .map(|a| SocketAddr::new(*a, port))
            .collect();
        let timeout = Duration::from_secs(args.listen_timeout);
        std::thread::spawn(move || {
            keep_registered(&socket, &registration, (&probe, timeout), &done)
        })
    };

    let status = child.wait();
    done.store(true, Ordering::Relaxed);
    // The keeper deregisters the instance if it registered it; the
    // launcher exits only after that, so no client is sent to a program
    // that is gone.
    let _ = keeper.join();
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code as u8),
            (None, Some(signal)) => ExitCode::from(128 + signal as u8),
            (None, None) => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("signpost run: waiting for the program failed: {e}");
            ExitCode::from(2)
        }
    }
}

/// Registers the instance once the program is ready, keeps it alive until
/// `done`, then deregisters it.
/// `ready` is where to check that the program listens, and for how long.
fn keep_registered(
    socket: &Path,
    registration: &Registration,
    ready: (&[SocketAddr], Duration),
    done: &AtomicBool,
) {
    let name = format!("{} in {}", registration.instance, registration.zone);
    if !wait_until_ready(registration.protocol, ready, done) {
        if !done.load(Ordering::Relaxed) {
            eprintln!(
                "signpost run: the program did not accept connections on port {} within {}s; it keeps running, but {name} is not registered",
                registration.port,
                ready.1.as_secs()
            );
        }
        return;
    }
    let key = InstanceKey {
        zone: registration.zone.clone(),
        service: registration.service.clone(),
        protocol: Some(registration.protocol),
        instance: registration.instance.clone(),
    };
    let beat = Duration::from_secs_f64(f64::from(registration.ttl.unwrap_or(DEFAULT_TTL)) / 3.0);
    let mut registered = false;
    // Said once per state, not on every attempt.
    let mut last_problem = String::new();
    let mut next = Instant::now();
    while !done.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next = Instant::now() + beat;
            let request = if registered {
                Request::Heartbeat(key.clone())
            } else {
                Request::Register(registration.clone())
            };
            match exchange(socket, &request) {
                Ok((Reply { ok: true, .. }, _)) => {
                    if !registered {
                        eprintln!("signpost run: registered {name}");
                    }
                    registered = true;
                    last_problem.clear();
                }
                // The server lost it (a restart with another state file,
                // or it was deregistered by hand): register again at once.
                Ok((reply, _)) if registered => {
                    let problem = reply.error.unwrap_or_default();
                    eprintln!(
                        "signpost run: heartbeat refused ({problem}); registering {name} again"
                    );
                    registered = false;
                    next = Instant::now();
                }
                Ok((reply, _)) => {
                    let problem = reply.error.unwrap_or_default();
                    if problem != last_problem {
                        eprintln!(
                            "signpost run: the server refused {name}: {problem}; trying again every {}s",
                            beat.as_secs_f64().round()
                        );
                        last_problem = problem;
                    }
                }
                Err(problem) => {
                    if problem != last_problem {
                        eprintln!(
                            "signpost run: {problem}; the program keeps running, trying again every {}s",
                            beat.as_secs_f64().round()
                        );
                        last_problem = problem;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50).min(beat));
    }
    if registered {
        match exchange(socket, &Request::Deregister(key)) {
            Ok((Reply { ok: true, .. }, _)) => eprintln!("signpost run: deregistered {name}"),
            Ok((reply, _)) => eprintln!(
                "signpost run: deregistering {name} failed: {}; its TTL will take it out",
                reply.error.unwrap_or_default()
            ),
            Err(problem) => {
                eprintln!(
                    "signpost run: deregistering {name} failed: {problem}; its TTL will take it out"
                )
            }
        }
    }
}

/// Whether the program became ready before `done` or the timeout: it
/// accepts a TCP connection on one of `probe`, or, for UDP, it has had
/// its grace.
fn wait_until_ready(
    protocol: Protocol,
    (probe, timeout): (&[SocketAddr], Duration),
    done: &AtomicBool,
) -> bool {
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) && start.elapsed() < timeout {
        let ready = match protocol {
            Protocol::Udp => start.elapsed() >= UDP_GRACE,
            Protocol::Tcp => probe
                .iter()
                .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()),
        };
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A port free for `protocol` now, from the kernel. Another process could
/// take it before the program binds it; the readiness check then fails and
/// says so.
fn free_port(protocol: Protocol) -> std::io::Result<u16> {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    Ok(match protocol {
        Protocol::Tcp => TcpListener::bind(any)?.local_addr()?.port(),
        Protocol::Udp => UdpSocket::bind(any)?.local_addr()?.port(),
    })
}

/// `<host>-<port>`, made a DNS label: unique across the hosts and ports
/// that run instances of a service.
fn default_instance(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    label_for(&host, port)
}

/// `<host>-<port>` as a label: the first part of the host name, lowercased,
/// with anything but letters, digits and '-' made '-', at most 63 bytes.
fn label_for(host: &str, port: u16) -> String {
    let first = host
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let cleaned: String = first
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let suffix = format!("-{port}");
    let mut base = cleaned.trim_matches('-').to_string();
    if base.is_empty() {
        base = "instance".into();
    }
    base.truncate(63 - suffix.len());
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// The address other hosts can reach this one at: the first IPv4 address
/// of an interface that is up and not a loopback, in the kernel's order;
/// 127.0.0.1 when there is none. IPv6 addresses are left to `--address`, as
/// link-local and temporary addresses make a guess unreliable.
fn default_address() -> IpAddr {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() && found.is_none() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
        let loopback = entry.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if !up || loopback || entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says its type.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
    }
    // SAFETY: list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    IpAddr::V4(found.unwrap_or(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_labels_made_of_host_and_port() {
        assert_eq!(label_for("web01.example.com", 8080), "web01-8080");
        assert_eq!(label_for("My_Host", 1), "my-host-1");
        assert_eq!(label_for("", 53), "instance-53");
        assert_eq!(label_for("--x--", 53), "x-53");
        let long = label_for(&"a".repeat(100), 65535);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-65535"));
    }
}
