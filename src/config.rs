//! The command line and the optional config file, turned into one validated
//! runtime [`Config`]. Defaults live here and nowhere else.
//!
//! The file format is a separate serde type ([`ConfigFile`]) so that it can
//! reject unknown keys and evolve without touching the runtime type.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use serde::Deserialize;

use crate::answer::reverse::ReverseZones;
use crate::api::proto::{SOCKET_ENV, default_socket};
use crate::net::forward::ForwardConfig;
use crate::net::query_log::Target as QueryLogTarget;
use crate::net::server::TcpLimits;
use crate::transfer::TransferConfig;
use crate::transfer::journal::DEFAULT_JOURNAL;
use crate::transfer::tsig::Key;

/// Default listen address: Consul's well-known DNS port, which needs no root.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8600";
/// Default zones directory, relative to the working directory.
pub const DEFAULT_ZONES: &str = "zones";
/// Default TCP idle timeout in seconds (RFC 7766 suggests seconds, not minutes).
pub const DEFAULT_TCP_IDLE_TIMEOUT: u64 = 10;
/// Default seconds between full rescans of the zones directory, which catch
/// what file events miss (network filesystems).
pub const DEFAULT_RESCAN_INTERVAL: u64 = 30;
/// Default cap on concurrent TCP connections.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 512;
/// Default state file of runtime registrations, relative to the working
/// directory like the zones directory: it must survive a reboot, so it does
/// not go next to the socket in the runtime directory (a tmpfs).
pub const DEFAULT_STATE: &str = "signpost-state.json";
/// Default age at which an expired registration is removed: three days, a
/// long weekend, so a host that was down or a process that was paused comes
/// back with one heartbeat, while a deployment that registers containers
/// under fresh names does not grow without bound. Consul's
/// `deregister_critical_service_after` is the model; 0 turns reaping off.
pub const DEFAULT_REAP_EXPIRED_AFTER: u64 = 3 * 86_400;
/// Default total time to get an answer from the upstreams, in seconds: below
/// the 5 s a glibc stub resolver waits, so the client sees SERVFAIL rather
/// than a timeout.
pub const DEFAULT_FORWARD_TIMEOUT: f64 = 3.0;
/// Default number of cached forwarded answers.
pub const DEFAULT_FORWARD_CACHE_SIZE: usize = 10_000;
/// Port of an upstream given without one.
pub const DNS_PORT: u16 = 53;

/// signpost: an authoritative DNS server for service discovery.
///
/// Serves A, AAAA, SRV and DNS-SD (PTR, TXT) records for the services
/// described by TOML zone files and registered at runtime over the admin
/// socket, so that `dig`, resolvers and unmodified programs find them by name;
/// other names can be forwarded to upstream resolvers.
#[derive(Debug, Parser)]
// `about` and `long_about` come from the doc comment above, so `-h` and
// `--help` describe the tool in the same words.
#[command(name = "signpost", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve DNS for every zone file in the zones directory (UDP and TCP).
    Serve(ServeArgs),
    /// Validate every zone file and print `file:line:column: message` for each problem.
    ///
    /// Exits 0 when every file is valid, 1 otherwise.
    Check(CheckArgs),
    /// Register a service instance with the running server (or replace it).
    ///
    /// It is answered by DNS as soon as this command returns, and kept across
    /// restarts. With --ttl it leaves answers when no heartbeat comes within
    /// that many seconds, and comes back with the next one.
    Register(crate::api::client::RegisterArgs),
    /// Remove an instance registered with `register`.
    Deregister(crate::api::client::KeyArgs),
    /// Renew the TTL of a registered instance (and serve it again if it expired).
    Heartbeat(crate::api::client::KeyArgs),
    /// List the instances of every zone, or of one, with their state.
    List(crate::api::client::ListArgs),
    /// Show the zones, their sources, serials and counts, and the uptime.
    Status(crate::api::client::StatusArgs),
    /// Start a program with PORT in its environment and keep it registered
    /// while it lives.
    ///
    /// Picks a free port unless --port is given, passes it as PORT (with
    /// SIGNPOST_SERVICE and SIGNPOST_INSTANCE), registers the instance once
    /// the program accepts connections (TCP) or after half a second (UDP),
    /// and sends heartbeats every third of the TTL. SIGTERM, SIGINT and
    /// SIGHUP are passed to the program; when it exits the instance is
    /// deregistered and run exits with its status (128+N after signal N).
    /// If run is killed, the program is killed too and the TTL takes the
    /// instance out of answers.
    Run(crate::api::run::RunArgs),
}

/// Settings shared by every subcommand that reads zones.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Config file (TOML) with the same settings as the flags; flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of zone files, one zone per `*.toml` file [default: zones]
    #[arg(long, value_name = "DIR")]
    pub zones: Option<PathBuf>,
}

/// `signpost serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Address to serve DNS on, UDP and TCP; repeat for several (IPv4 or
    /// IPv6, e.g. `[::1]:8600`). Port 0 picks a free port [default: 127.0.0.1:8600]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads, and UDP sockets per address [default: number of CPUs]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Close TCP connections idle for this many seconds (1 when over 3/4 of the
    /// connections are open) [default: 10]
    #[arg(long, value_name = "SECS")]
    pub tcp_idle_timeout: Option<u64>,
    /// Most concurrent TCP connections; beyond this a new one replaces the idlest [default: 512]
    #[arg(long, value_name = "N")]
    pub max_tcp_connections: Option<usize>,
    /// Rescan the zones directory every SECS seconds even without file
    /// events, for filesystems that send none (NFS) [default: 30]
    #[arg(long, value_name = "SECS")]
    pub rescan_interval: Option<u64>,
    /// Admin socket for runtime registrations (mode 0660)
    /// [default: $XDG_RUNTIME_DIR/signpost.sock, else /tmp/signpost-UID.sock]
    #[arg(long, value_name = "PATH", env = SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    /// State file keeping runtime registrations across restarts
    /// [default: signpost-state.json]
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Remove a runtime registration that has been expired (no heartbeat
    /// within its TTL) for this many seconds; 0 keeps it until it is
    /// deregistered [default: 259200, three days]
    #[arg(long, value_name = "SECS")]
    pub reap_expired_after: Option<u64>,
    /// Upstream resolver for names outside the zones; repeat for several,
    /// tried in order. Port 53 if omitted. Without any, names outside the
    /// zones are refused.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    pub forward: Vec<SocketAddr>,
    /// Client network allowed to use forwarding (CIDR or address); repeat for
    /// several. Replaces the default: loopback and the listen addresses (any
    /// local address for a wildcard listen address)
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub forward_allow: Vec<IpNet>,
    /// Seconds to wait for the upstreams before answering SERVFAIL [default: 3]
    #[arg(long, value_name = "SECS")]
    pub forward_timeout: Option<f64>,
    /// Most forwarded answers kept in the cache; 0 disables it [default: 10000]
    #[arg(long, value_name = "N")]
    pub forward_cache_size: Option<usize>,
    /// Network (CIDR) whose reverse zone (in-addr.arpa or ip6.arpa) to serve,
    /// with PTR records for the instance and host addresses in it; repeat for
    /// several. Replaces the config file's list
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub reverse: Vec<IpNet>,
    /// Serve Prometheus metrics (GET /metrics) and a health check
    /// (GET /health) over HTTP on this address [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Write one JSON line per query to this file, or to standard output
    /// with `-`; lines the writer cannot keep up with are dropped and
    /// counted [default: off]
    #[arg(long, value_name = "PATH|-")]
    pub query_log: Option<PathBuf>,
    /// Log one query in N [default: 1, every query]
    #[arg(long, value_name = "N")]
    pub query_log_sample: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub etcd: Box<crate::cluster::EtcdArgs>,
}

/// Zone transfers and NOTIFY (`signpost serve`).
#[derive(Debug, Default, Args)]
pub struct TransferArgs {
    /// Network (CIDR or address) allowed to transfer zones (AXFR, IXFR);
    /// repeat for several. Transfers are refused by default
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub allow_transfer: Vec<IpNet>,
    /// TSIG key `[ALG:]NAME:BASE64SECRET` (as `dig -y` takes it; ALG
    /// hmac-sha256 by default, or hmac-sha512, hmac-sha384, hmac-sha1);
    /// repeat for several. With a key, transfers must be signed
    #[arg(long, value_name = "[ALG:]NAME:SECRET", value_parser = parse_key)]
    pub tsig_key: Vec<Key>,
    /// File of TSIG keys, one `[ALG:]NAME:BASE64SECRET` a line, so secrets
    /// stay out of the process list
    #[arg(long, value_name = "FILE")]
    pub tsig_key_file: Option<PathBuf>,
    /// Secondary to send NOTIFY to when a zone changes (port 53 if
    /// omitted); repeat for several
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    pub notify: Vec<SocketAddr>,
    /// Changes per zone kept for IXFR; older serials get the whole zone
    /// [default: 1000]
    #[arg(long, value_name = "CHANGES")]
    pub ixfr_journal: Option<usize>,
}

fn parse_key(text: &str) -> Result<Key, String> {
    Key::parse(text)
}

/// `ADDR` or `ADDR:PORT` (`[v6]:PORT` for IPv6 with a port).
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("`{text}` is not an IP address with an optional port"))
}

/// `ADDR/PREFIX`, or a bare address meaning just that address.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a CIDR network (e.g. 10.0.0.0/8) or an address"))
}

/// `signpost check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// The config file's format. Relative paths in it are relative to the file's
/// own directory, so a unit file can point at it from anywhere.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// See `--listen`.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// See `--zones`.
    pub zones: Option<PathBuf>,
    /// See `--threads`.
    pub threads: Option<usize>,
    /// See `--tcp-idle-timeout`.
    pub tcp_idle_timeout: Option<u64>,
    /// See `--max-tcp-connections`.
    pub max_tcp_connections: Option<usize>,
    /// See `--rescan-interval`.
    pub rescan_interval: Option<u64>,
    /// See `--socket`.
    pub socket: Option<PathBuf>,
    /// See `--state`.
    pub state: Option<PathBuf>,
    /// See `--reap-expired-after`.
    pub reap_expired_after: Option<u64>,
    /// See `--forward`.
    #[serde(default)]
    pub forward: Vec<String>,
    /// See `--forward-allow`.
    #[serde(default)]
    pub forward_allow: Vec<String>,
    /// See `--forward-timeout`.
    pub forward_timeout: Option<Seconds>,
    /// See `--forward-cache-size`.
    pub forward_cache_size: Option<usize>,
    /// See `--reverse`.
    #[serde(default)]
    pub reverse: Vec<String>,
    /// See `--allow-transfer`.
    #[serde(default)]
    pub allow_transfer: Vec<String>,
    /// See `--tsig-key`.
    #[serde(default)]
    pub tsig_key: Vec<String>,
    /// See `--tsig-key-file`.
    pub tsig_key_file: Option<PathBuf>,
    /// See `--notify`.
    #[serde(default)]
    pub notify: Vec<String>,
    /// See `--ixfr-journal`.
    pub ixfr_journal: Option<usize>,
    /// See `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// See `--query-log`.
    pub query_log: Option<PathBuf>,
    /// See `--query-log-sample`.
    pub query_log_sample: Option<u64>,
    /// etcd members whose registrations this node shares (`["http://..."]`).
    #[serde(default)]
    pub etcd: Vec<String>,
    /// See `--etcd-prefix`.
    pub etcd_prefix: Option<String>,
    /// See `--etcd-ca`.
    pub etcd_ca: Option<PathBuf>,
    /// See `--etcd-cert`.
    pub etcd_cert: Option<PathBuf>,
    /// See `--etcd-key`.
    pub etcd_key: Option<PathBuf>,
    /// See `--etcd-user`.
    pub etcd_user: Option<String>,
    /// See `--etcd-password`.
    pub etcd_password: Option<String>,
}

/// Seconds in the config file: `3` and `1.5` both read naturally.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    /// Whole seconds.
    Whole(u64),
    /// Fractional seconds.
    Fraction(f64),
}

impl Seconds {
    fn get(self) -> f64 {
        match self {
            Seconds::Whole(n) => n as f64,
            Seconds::Fraction(f) => f,
        }
    }
}

/// A config problem, reported in one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which includes the line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Everything `serve` needs, validated.
pub struct Config {
    /// Addresses to serve DNS on.
    pub listen: Vec<SocketAddr>,
    /// The zones directory.
    pub zones: PathBuf,
    /// Worker threads and UDP sockets per address.
    pub threads: usize,
    /// TCP limits.
    pub tcp: TcpLimits,
    /// Time between full rescans of the zones directory.
    pub rescan_interval: Duration,
    /// The admin socket.
    pub socket: PathBuf,
    /// The state file of runtime registrations.
    pub state: PathBuf,
    /// Forwarding of names outside the zones; `None` when no upstream is set.
    pub forward: Option<ForwardConfig>,
    /// The reverse zones served, from `--reverse` networks.
    pub reverse: ReverseZones,
    /// How long an expired registration is kept; `None`: until deregistered.
    pub reap_expired_after: Option<Duration>,
    /// Zone transfers and NOTIFY.
    pub transfer: TransferConfig,
    /// Where the metrics endpoint listens; `None`: no endpoint.
    pub metrics: Option<SocketAddr>,
    /// Where the query log goes; `None`: no query log.
    pub query_log: Option<QueryLogTarget>,
    /// Log one query in this many.
    pub query_log_sample: u64,
    /// etcd, when registrations are shared with other nodes (the state
    /// file is then not used for them).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

fn read_file(path: Option<&Path>) -> Result<(ConfigFile, PathBuf), ConfigError> {
    let Some(path) = path else {
        return Ok((ConfigFile::default(), PathBuf::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((file, base))
}

/// The zones directory from the flags, else the file, else the default.
fn zones_dir(args: &CommonArgs, file: &ConfigFile, base: &Path) -> PathBuf {
    match (&args.zones, &file.zones) {
        (Some(flag), _) => flag.clone(),
        (None, Some(from_file)) => base.join(from_file),
        (None, None) => PathBuf::from(DEFAULT_ZONES),
    }
}

impl Config {
    /// Merges the flags over the config file over the defaults.
    pub fn for_serve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let (file, base) = read_file(args.common.config.as_deref())?;
        let listen = match (args.listen.is_empty(), file.listen.is_empty()) {
            (false, _) => args.listen.clone(),
            (true, false) => file.listen.clone(),
            (true, true) => vec![DEFAULT_LISTEN.parse().expect("a valid default")],
        };
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if threads == 0 {
            return Err(ConfigError::Invalid("threads must be at least 1".into()));
        }
        let max_connections = args
            .max_tcp_connections
            .or(file.max_tcp_connections)
            .unwrap_or(DEFAULT_MAX_TCP_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max-tcp-connections must be at least 1".into(),
            ));
        }
        let idle = args
            .tcp_idle_timeout
            .or(file.tcp_idle_timeout)
            .unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT);
        let rescan = args
            .rescan_interval
            .or(file.rescan_interval)
            .unwrap_or(DEFAULT_RESCAN_INTERVAL);
        let socket = match (&args.socket, &file.socket) {
            (Some(flag), _) => flag.clone(),
            (None, Some(from_file)) => base.join(from_file),
            (None, None) => default_socket(),
        };
        let state = match (&args.state, &file.state) {
            (Some(flag), _) => flag.clone(),
            (None, Some(from_file)) => base.join(from_file),
            (None, None) => PathBuf::from(DEFAULT_STATE),
        };
        let reverse = if args.reverse.is_empty() {
            file.reverse
                .iter()
                .map(|t| {
                    parse_net(t)
                        .map_err(|e| ConfigError::Invalid(format!("config file reverse: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            args.reverse.clone()
        };
        let reverse = ReverseZones::new(&reverse).map_err(ConfigError::Invalid)?;
        let reap = args
            .reap_expired_after
            .or(file.reap_expired_after)
            .unwrap_or(DEFAULT_REAP_EXPIRED_AFTER);
        let query_log = match (&args.query_log, &file.query_log) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(from_file)) if from_file.as_os_str() != "-" => Some(base.join(from_file)),
            (None, from_file) => from_file.clone(),
        }
        .map(|path| match path.as_os_str() == "-" {
            true => QueryLogTarget::Stdout,
            false => QueryLogTarget::File(path),
        });
        let query_log_sample = args.query_log_sample.or(file.query_log_sample).unwrap_or(1);
        if query_log_sample == 0 {
            return Err(ConfigError::Invalid(
                "query-log-sample must be at least 1".into(),
            ));
        }
        Ok(Config {
            metrics: args.metrics.or(file.metrics),
            query_log,
            query_log_sample,
            reverse,
            reap_expired_after: (reap > 0).then(|| Duration::from_secs(reap)),
            socket,
            state,
            rescan_interval: Duration::from_secs(rescan.max(1)),
            listen,
            zones: zones_dir(&args.common, &file, &base),
            threads,
            tcp: TcpLimits {
                idle_timeout: Duration::from_secs(idle.max(1)),
                max_connections,
            },
            forward: forward_config(args, &file)?,
            transfer: transfer_config(&args.transfer, &file, &base)?,
            cluster: crate::cluster::ClusterConfig::from(
                &args.etcd,
                &crate::cluster::EtcdFile {
                    endpoints: &file.etcd,
                    prefix: file.etcd_prefix.as_ref(),
                    ca: file.etcd_ca.as_ref(),
                    cert: file.etcd_cert.as_ref(),
                    key: file.etcd_key.as_ref(),
                    user: file.etcd_user.as_ref(),
                    password: file.etcd_password.as_ref(),
                },
                &base,
            )
            .map_err(ConfigError::Invalid)?,
        })
    }

    /// The zones directory for `check`.
    pub fn zones_for_check(args: &CheckArgs) -> Result<PathBuf, ConfigError> {
        let (file, base) = read_file(args.common.config.as_deref())?;
        Ok(zones_dir(&args.common, &file, &base))
    }
}

/// The transfer settings: each list from the flags, else the file; keys
/// from both `tsig-key` and the key file.
fn transfer_config(
    args: &TransferArgs,
    file: &ConfigFile,
    base: &Path,
) -> Result<TransferConfig, ConfigError> {
    let in_file = |what: &str, e: String| ConfigError::Invalid(format!("config file {what}: {e}"));
    let allow = if args.allow_transfer.is_empty() {
        file.allow_transfer
            .iter()
            .map(|t| parse_net(t).map_err(|e| in_file("allow-transfer", e)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.allow_transfer.clone()
    };
    let mut keys = if args.tsig_key.is_empty() {
        file.tsig_key
            .iter()
            .map(|t| Key::parse(t).map_err(|e| in_file("tsig-key", e)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.tsig_key.clone()
    };
    let key_file = match (&args.tsig_key_file, &file.tsig_key_file) {
        (Some(flag), _) => Some(flag.clone()),
        (None, Some(from_file)) => Some(base.join(from_file)),
        (None, None) => None,
    };
    if let Some(path) = key_file {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::Invalid(format!("cannot read TSIG key file {}: {e}", path.display()))
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = Key::parse(line)
                .map_err(|e| ConfigError::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
            keys.push(key);
        }
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].iter().any(|o| o.name == k.name) {
            return Err(ConfigError::Invalid(format!(
                "TSIG key `{}` is defined twice",
                k.name
            )));
        }
    }
    let notify = if args.notify.is_empty() {
        file.notify
            .iter()
            .map(|t| parse_upstream(t).map_err(|e| in_file("notify", e)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.notify.clone()
    };
    let journal = args
        .ixfr_journal
        .or(file.ixfr_journal)
        .unwrap_or(DEFAULT_JOURNAL);
    Ok(TransferConfig {
        allow,
        keys,
        notify,
        journal,
    })
}

/// The forwarding settings from the flags, else the file, else the defaults.
fn forward_config(
    args: &ServeArgs,
    file: &ConfigFile,
) -> Result<Option<ForwardConfig>, ConfigError> {
    let in_file = |what: &str, e: String| ConfigError::Invalid(format!("config file {what}: {e}"));
    let upstreams = if args.forward.is_empty() {
        file.forward
            .iter()
            .map(|t| parse_upstream(t).map_err(|e| in_file("forward", e)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.forward.clone()
    };
    let allow = if args.forward_allow.is_empty() {
        file.forward_allow
            .iter()
            .map(|t| parse_net(t).map_err(|e| in_file("forward-allow", e)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.forward_allow.clone()
    };
    let timeout = args
        .forward_timeout
        .or(file.forward_timeout.map(Seconds::get))
        .unwrap_or(DEFAULT_FORWARD_TIMEOUT);
    if !(timeout > 0.0 && timeout <= 60.0) {
        return Err(ConfigError::Invalid(
            "forward-timeout must be more than 0 and at most 60 seconds".into(),
        ));
    }
    if upstreams.is_empty() {
        if !allow.is_empty() {
            return Err(ConfigError::Invalid(
                "forward-allow is set but no upstream is (--forward ADDR)".into(),
            ));
        }
        return Ok(None);
    }
    Ok(Some(ForwardConfig {
        upstreams,
        allow: (!allow.is_empty()).then_some(allow),
        timeout: Duration::from_secs_f64(timeout),
        cache_size: args
            .forward_cache_size
            .or(file.forward_cache_size)
            .unwrap_or(DEFAULT_FORWARD_CACHE_SIZE),
    }))
}
