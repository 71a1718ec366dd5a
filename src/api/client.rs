//! The client commands: `register`, `deregister`, `heartbeat`, `list` and
//! `status`. Each sends one request over the admin socket and prints the
//! reply: a readable table by default, the server's JSON with `--json`.
//!
//! Exit codes: 0 done, 1 the server refused the request (its message on
//! stderr), 2 the server could not be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::proto::{
    CheckSpec, InstanceInfo, InstanceKey, Protocol, Registration, Reply, Request, SOCKET_ENV,
    StatusInfo, default_socket,
};

/// How long to wait for a reply. A registration waits for one state file
/// write, normally milliseconds; this is for a server that is wedged.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is, and how to print.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's admin socket
    /// [default: $XDG_RUNTIME_DIR/signpost.sock, else /tmp/signpost-UID.sock]
    #[arg(long, value_name = "PATH", env = SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    /// Print the server's JSON reply instead of a table (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `signpost register`
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The zone, which a zone file must declare (e.g. svc.example).
    #[arg(long)]
    pub zone: String,
    /// Service name (e.g. web).
    #[arg(long)]
    pub service: String,
    /// Instance name, also its host name in the zone (e.g. web-9).
    #[arg(long)]
    pub instance: String,
    /// The instance's address, IPv4 or IPv6; repeat for several.
    #[arg(long, value_name = "ADDR", required_unless_present = "target")]
    pub address: Vec<String>,
    /// A name elsewhere for the SRV record to point at, instead of --address.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["address", "check_tcp", "check_http"])]
    pub target: Option<String>,
    /// Port.
    #[arg(long)]
    pub port: u16,
    /// Service protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: Protocol,
    /// Leave answers when no heartbeat comes within SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub describe: DescribeArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub check: CheckArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// How an instance is described and weighted, for `register` and `run`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// A tag; repeat for several.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// SRV weight [default: 1]
    #[arg(long)]
    pub weight: Option<u16>,
    /// SRV priority [default: 0]
    #[arg(long)]
    pub priority: Option<u16>,
    /// DNS-SD metadata, a `key=value` string of the instance's TXT record;
    /// repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub metadata: Vec<(String, String)>,
}

/// The health check flags of `register` and `run`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Health check: connect to the port over TCP.
    #[arg(long, conflicts_with = "check_http")]
    pub check_tcp: bool,
    /// Health check: GET this path over HTTP; 2xx is healthy.
    #[arg(long, value_name = "PATH")]
    pub check_http: Option<String>,
    /// Seconds between health probes [default: 10]
    #[arg(long, value_name = "SECS")]
    pub check_interval: Option<f64>,
    /// Seconds a health probe may take [default: 2, at most the interval]
    #[arg(long, value_name = "SECS")]
    pub check_timeout: Option<f64>,
    /// Consecutive failed probes that take it out of answers [default: 3]
    #[arg(long, value_name = "N")]
    pub check_failures: Option<u32>,
    /// Consecutive passed probes that bring it back [default: 2]
    #[arg(long, value_name = "N")]
    pub check_successes: Option<u32>,
}

impl CheckArgs {
    /// The check to send, if any flag asks for one. Tuning flags without
    /// --check-tcp or --check-http still send a check, so the server says
    /// what is missing instead of ignoring them.
    pub fn spec(&self) -> Option<Box<CheckSpec>> {
        let tuned = self.check_interval.is_some()
            || self.check_timeout.is_some()
            || self.check_failures.is_some()
            || self.check_successes.is_some();
        (self.check_tcp || self.check_http.is_some() || tuned).then(|| {
            Box::new(CheckSpec {
                tcp: self.check_tcp.then_some(true),
                http: self.check_http.clone(),
                interval: self.check_interval,
                timeout: self.check_timeout,
                failures: self.check_failures,
                successes: self.check_successes,
            })
        })
    }
}

/// `signpost deregister` and `signpost heartbeat`
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The zone.
    #[arg(long)]
    pub zone: String,
    /// Service name.
    #[arg(long)]
    pub service: String,
    /// Instance name.
    #[arg(long)]
    pub instance: String,
    /// Service protocol [default: whichever it was registered with]
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// `signpost list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this zone.
    #[arg(long)]
    pub zone: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// `signpost status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// `--protocol tcp|udp`: the model's protocol is the flag's value.
impl clap::ValueEnum for Protocol {
    fn value_variants<'a>() -> &'a [Self] {
        &[Protocol::Tcp, Protocol::Udp]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// `KEY=VALUE`, split at the first '='.
fn parse_meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// `signpost register`
pub fn register(args: RegisterArgs) -> ExitCode {
    let check = args.check.spec();
    let request = Request::Register(Registration {
        zone: args.zone,
        service: args.service,
        protocol: args.protocol,
        instance: args.instance,
        address: args.address,
        target: args.target,
        port: args.port,
        weight: args.describe.weight,
        priority: args.describe.priority,
        tags: args.describe.tags,
        ttl: args.ttl,
        check,
        metadata: args.describe.metadata.into_iter().collect(),
    });
    run(&args.client, &request, |reply| {
        if let Some(i) = &reply.instance {
            println!(
                "registered {} in {} (_{}._{}), {}",
                i.instance,
                i.zone,
                i.service,
                i.protocol.as_str(),
                ttl_note(i)
            );
        }
    })
}

/// `signpost deregister`
pub fn deregister(args: KeyArgs) -> ExitCode {
    let key = key(&args);
    let (zone, instance) = (key.zone.clone(), key.instance.clone());
    run(&args.client, &Request::Deregister(key), |_| {
        println!("deregistered {instance} from {zone}");
    })
}

/// `signpost heartbeat`
pub fn heartbeat(args: KeyArgs) -> ExitCode {
    run(&args.client, &Request::Heartbeat(key(&args)), |reply| {
        if let Some(i) = &reply.instance {
            println!("renewed {} in {}, {}", i.instance, i.zone, ttl_note(i));
        }
    })
}

/// `signpost list`
pub fn list(args: ListArgs) -> ExitCode {
    let request = Request::List {
        zone: args.zone.clone(),
    };
    run(&args.client, &request, |reply| {
        print!("{}", list_table(reply.instances.as_deref().unwrap_or(&[])));
    })
}

/// `signpost status`
pub fn status(args: StatusArgs) -> ExitCode {
    run(&args.client, &Request::Status {}, |reply| {
        if let Some(s) = &reply.status {
            print!("{}", status_table(s));
        }
    })
}

fn key(args: &KeyArgs) -> InstanceKey {
    InstanceKey {
        zone: args.zone.clone(),
        service: args.service.clone(),
        protocol: args.protocol,
        instance: args.instance.clone(),
    }
}

fn ttl_note(i: &InstanceInfo) -> String {
    match (i.ttl, i.expires_in_ms) {
        (Some(ttl), Some(_)) => format!("{}, ttl {ttl}s", i.state),
        _ => i.state.clone(),
    }
}

/// Sends `request`, prints the reply with `human` (or as JSON), and maps
/// the outcome to an exit code.
fn run(client: &ClientArgs, request: &Request, human: impl FnOnce(&Reply)) -> ExitCode {
    let path = client.socket.clone().unwrap_or_else(default_socket);
    match exchange(&path, request) {
        Err(message) => {
            eprintln!("signpost: {message}");
            ExitCode::from(2)
        }
        Ok((reply, raw)) => {
            if client.json {
                println!("{}", raw.trim_end());
            }
            if !reply.ok {
                eprintln!(
                    "signpost: {}",
                    reply
                        .error
                        .as_deref()
                        .unwrap_or("the server refused the request")
                );
                return ExitCode::FAILURE;
            }
            if !client.json {
                human(&reply);
            }
            ExitCode::SUCCESS
        }
    }
}

/// One request and its reply, parsed and raw.
pub fn exchange(path: &Path, request: &Request) -> Result<(Reply, String), String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::ConnectionRefused => "connection refused (a stale socket)".into(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (is your user in the socket's group?)".into()
            }
            _ => e.to_string(),
        };
        format!(
            "cannot connect to {}: {why} (is 'signpost serve' running? set --socket or {SOCKET_ENV})",
            path.display()
        )
    })?;
    let io_error = |e: std::io::Error| format!("admin socket {}: {e}", path.display());
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(io_error)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_error)?;
    let mut raw = String::new();
    BufReader::new(stream)
        .read_line(&mut raw)
        .map_err(io_error)?;
    if raw.is_empty() {
        return Err(format!(
            "admin socket {}: the server closed the connection without a reply",
            path.display()
        ));
    }
    let reply = serde_json::from_str(&raw)
        .map_err(|e| format!("admin socket {}: unreadable reply: {e}", path.display()))?;
    Ok((reply, raw))
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_table(instances: &[InstanceInfo]) -> String {
    let rows = instances
        .iter()
        .map(|i| {
            let endpoint = match &i.target {
                Some(t) => format!("-> {t}"),
                None => i.address.join(","),
            };
            let state = match &i.reason {
                Some(r) if i.state != "expired" => format!("{} ({r})", i.state),
                // Registered and in force, but every address fails its
                // check: the table must not say it is answered.
                None if i.state == "serving" && i.health == "unhealthy" => {
                    "not served (unhealthy)".into()
                }
                _ => i.state.clone(),
            };
            vec![
                i.zone.clone(),
                i.service.clone(),
                i.protocol.as_str().into(),
                i.instance.clone(),
                endpoint,
                i.port.to_string(),
                i.priority.to_string(),
                i.weight.to_string(),
                i.ttl.map_or("-".into(), |t| format!("{t}s")),
                i.source.clone(),
                state,
                health_cell(i),
            ]
        })
        .collect();
    table(
        &[
            "ZONE", "SERVICE", "PROTO", "INSTANCE", "ADDRESS", "PORT", "PRIO", "WEIGHT", "TTL",
            "SOURCE", "STATE", "HEALTH",
        ],
        rows,
    )
}

/// `healthy`, or `degraded (fd00::11 failing)`; `-` from a server without checks.
fn health_cell(i: &InstanceInfo) -> String {
    match i.health.as_str() {
        "" => "-".into(),
        "degraded" => format!("degraded ({} failing)", i.unhealthy_address.join(",")),
        h => h.into(),
    }
}

fn status_table(s: &StatusInfo) -> String {
    let mut out = format!(
        "signpost {}, up {}, admin protocol {}, state file {}\n",
        s.version,
        uptime(s.uptime_secs),
        s.protocol,
        s.state_file
    );
    if s.orphaned > 0 {
        out.push_str(&format!(
            "{} runtime registrations for zones no zone file declares (kept, not served)\n",
            s.orphaned
        ));
    }
    out.push_str(&queries_line(s));
    let rows = s
        .zones
        .iter()
        .map(|z| {
            vec![
                z.zone.clone(),
                z.file.clone(),
                z.serial.to_string(),
                z.state.clone(),
                z.services.to_string(),
                z.file_instances.to_string(),
                z.runtime_instances.to_string(),
                z.runtime_not_serving.to_string(),
                z.unhealthy_instances.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "ZONE",
            "FILE",
            "SERIAL",
            "STATE",
            "SERVICES",
            "FILE-INST",
            "RUNTIME-INST",
            "NOT-SERVING",
            "UNHEALTHY",
        ],
        rows,
    ));
    // Errors are long: below the table, so its columns stay aligned.
    for z in &s.zones {
        if let Some(e) = &z.error {
            out.push_str(&format!("{}: {}: {e}\n", z.zone, z.state));
        }
    }
    transfer_lines(s, &mut out);
    out
}

/// Per zone, the IXFR journal and each secondary's last acknowledged NOTIFY.
fn transfer_lines(s: &StatusInfo, out: &mut String) {
    for z in &s.zones {
        let Some(t) = &z.transfer else { continue };
        match t.journal {
            Some((from, to)) => out.push_str(&format!(
                "{}: IXFR journal {from}..{to} ({} changes)\n",
                z.zone, t.journal_changes
            )),
            None => out.push_str(&format!("{}: IXFR journal empty\n", z.zone)),
        }
        for sec in &t.secondaries {
            let acked = match (sec.acknowledged_serial, sec.acknowledged_secs_ago) {
                (Some(serial), Some(ago)) => {
                    format!("acknowledged NOTIFY of serial {serial} {ago}s ago")
                }
                _ => "no NOTIFY acknowledged yet".into(),
            };
            let pending = match sec.pending_serial {
                Some(serial) => format!(
                    ", serial {serial} not acknowledged after {} attempts",
                    sec.attempts
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "{}: secondary {}: {acked}{pending}\n",
                z.zone, sec.address
            ));
        }
    }
}

/// Responses per second over the last minute, busiest code first.
fn queries_line(s: &StatusInfo) -> String {
    let seconds = s.queries_window_secs.max(1) as f64;
    let total = s.queries_by_rcode.values().sum::<u64>() as f64 / seconds;
    let mut by: Vec<(&String, &u64)> = s.queries_by_rcode.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = by
        .iter()
        .map(|(rcode, n)| format!("{rcode} {:.1}", **n as f64 / seconds))
        .collect();
    match parts.is_empty() {
        true => "queries/s over the last minute: 0\n".into(),
        false => format!(
            "queries/s over the last minute: {total:.1} ({})\n",
            parts.join(", ")
        ),
    }
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
