//! Observability against the real server: the metrics endpoint, the query
//! log, `status`'s query rates and the service manager's notifications.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

/// A server with the metrics endpoint on a free port, and that endpoint.
fn start_with_metrics(extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start_with(&example_zones(), &args);
    let endpoint = metrics_addr(&server);
    (server, endpoint)
}

/// The metrics address the server logged.
fn metrics_addr(server: &Server) -> SocketAddr {
    assert!(
        server.wait_for_log("serving metrics on HTTP", Duration::from_secs(10)),
        "no metrics endpoint; log:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("serving metrics on HTTP"))
        .unwrap();
    line.split("addr=").nth(1).unwrap().trim().parse().unwrap()
}

/// One HTTP/1.1 GET: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Every sample of a scrape, by name with its labels as printed
/// (`signpost_dns_requests_total{proto="udp",type="A"}`).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// A sample's value, 0 when absent (a family with no samples yet).
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// How much each of `series` moved between two scrapes.
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

/// A query for a type with no label of its own.
fn odd_type_query() -> Vec<u8> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x03web\x03svc\x07example\x00");
    q.extend_from_slice(&4242u16.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[test]
fn counters_move_by_exactly_the_queries_sent_by_rcode_type_and_transport() {
    let (server, endpoint) = start_with_metrics(&[]);
    let before = scrape(endpoint);
    for _ in 0..5 {
        let m = server.udp(&query("web.svc.example.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    for _ in 0..3 {
        let m = server.udp(&query("nope.svc.example.", RecordType::AAAA));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    for _ in 0..2 {
        let m = server.tcp(&query("_web._tcp.svc.example.", RecordType::SRV));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    // Outside every zone, no forwarding: REFUSED.
    for _ in 0..4 {
        let m = server.udp(&query("example.org.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }
    assert!(server.udp_raw(&odd_type_query()).is_some());
    let after = scrape(endpoint);

    let requests = |proto: &str, t: &str| {
        moved(
            &before,
            &after,
            &format!(r#"signpost_dns_requests_total{{proto="{proto}",type="{t}"}}"#),
        )
    };
    let responses = |proto: &str, rcode: &str| {
        moved(
            &before,
            &after,
            &format!(r#"signpost_dns_responses_total{{proto="{proto}",rcode="{rcode}"}}"#),
        )
    };
    assert_eq!(requests("udp", "A"), 9.0);
    assert_eq!(requests("udp", "AAAA"), 3.0);
    assert_eq!(requests("udp", "SRV"), 0.0);
    assert_eq!(requests("tcp", "SRV"), 2.0);
    assert_eq!(requests("tcp", "A"), 0.0);
    assert_eq!(requests("udp", "other"), 1.0);
    // web.svc.example has no record of type 4242: NOERROR, no data.
    assert_eq!(responses("udp", "NOERROR"), 6.0);
    assert_eq!(responses("udp", "NXDOMAIN"), 3.0);
    assert_eq!(responses("udp", "REFUSED"), 4.0);
    assert_eq!(responses("tcp", "NOERROR"), 2.0);
    assert_eq!(responses("tcp", "NXDOMAIN"), 0.0);
    assert_eq!(responses("udp", "SERVFAIL"), 0.0);

    // Each query is timed once, when its answer has left: a moment after
    // the client has it.
    let count = |s: &HashMap<String, f64>, proto: &str| {
        value(
            s,
            &format!(r#"signpost_dns_request_duration_seconds_count{{proto="{proto}"}}"#),
        )
    };
    let timed = eventually(Duration::from_secs(5), || {
        let now = scrape(endpoint);
        count(&now, "udp") - count(&before, "udp") == 13.0
            && count(&now, "tcp") - count(&before, "tcp") == 2.0
    });
    assert!(timed, "the duration histogram counts every query once");
    let now = scrape(endpoint);
    let inf = value(
        &now,
        r#"signpost_dns_request_duration_seconds_bucket{proto="udp",le="+Inf"}"#,
    );
    assert_eq!(inf, count(&now, "udp"));
    assert!(
        value(
            &now,
            r#"signpost_dns_request_duration_seconds_sum{proto="udp"}"#
        ) > 0.0
    );
}

#[test]
fn registry_gauges_follow_a_registration() {
    let (server, endpoint) = start_with_metrics(&[]);
    let runtime =
        r#"signpost_registry_instances{zone="svc.example.",source="runtime",state="serving"}"#;
    let file = r#"signpost_registry_instances{zone="svc.example.",source="file",state="serving"}"#;
    let services = r#"signpost_registry_services{zone="svc.example."}"#;
    let serial = r#"signpost_zone_serial{zone="svc.example."}"#;
    let registered = r#"signpost_registrations_total{op="register",result="ok"}"#;
    let before = scrape(endpoint);
    assert_eq!(value(&before, runtime), 0.0);
    assert_eq!(value(&before, file), 7.0);
    assert_eq!(value(&before, services), 4.0);
    assert_eq!(
        value(&before, r#"signpost_zone_stale{zone="svc.example."}"#),
        0.0
    );

    let mut admin = server.admin();
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"queue",
                    "instance":"queue-1","address":["10.0.0.41"],"port":5672}),
    );
    let after = scrape(endpoint);
    assert_eq!(value(&after, runtime), 1.0);
    assert_eq!(value(&after, file), 7.0);
    assert_eq!(value(&after, services), 5.0);
    assert!(value(&after, serial) > value(&before, serial));
    assert_eq!(moved(&before, &after, registered), 1.0);
    assert_eq!(
        moved(
            &before,
            &after,
            "signpost_registration_duration_seconds_count"
        ),
        1.0
    );

    // A refused registration counts as an error, and changes no gauge.
    admin.error(
        json!({"op":"register","zone":"nowhere.example","service":"queue",
                       "instance":"queue-2","address":["10.0.0.42"],"port":5672}),
    );
    admin.ok(
        json!({"op":"deregister","zone":"svc.example","service":"queue",
                    "instance":"queue-1"}),
    );
    let gone = scrape(endpoint);
    assert_eq!(value(&gone, runtime), 0.0);
    assert_eq!(value(&gone, services), 4.0);
    assert_eq!(
        moved(
            &after,
            &gone,
            r#"signpost_registrations_total{op="register",result="error"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(
            &after,
            &gone,
            r#"signpost_registrations_total{op="deregister",result="ok"}"#
        ),
        1.0
    );
}

#[test]
fn metrics_pass_promtool_check() {
    let (server, endpoint) = start_with_metrics(&[]);
    // Traffic and a registration, so that every family has samples.
    server.udp(&query("web.svc.example.", RecordType::A));
    server.tcp(&query("nope.svc.example.", RecordType::A));
    server
        .admin()
        .ok(json!({"op":"register","zone":"svc.example","service":"web",
                             "instance":"web-9","address":["10.0.0.19"],"port":8080}));
    let (status, body) = get(endpoint, "/metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus; scripts/test does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The standard process metrics and the build are there.
    let samples = scrape(endpoint);
    assert!(value(&samples, "process_resident_memory_bytes") > 1e6);
    assert!(value(&samples, "process_open_fds") > 3.0);
    // CPU time counts in clock ticks (10 ms): queries until one has passed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while value(&scrape(endpoint), "process_cpu_seconds_total") == 0.0 {
        assert!(std::time::Instant::now() < deadline, "no CPU time counted");
        for _ in 0..200 {
            server.udp(&query("web.svc.example.", RecordType::A));
        }
    }
    let version = format!(
        r#"signpost_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&samples, &version), 1.0);
}

#[test]
fn health_answers_200_while_serving_and_unknown_paths_404() {
    let (server, endpoint) = start_with_metrics(&[]);
    assert_eq!(get(endpoint, "/health"), (200, "ok\n".to_string()));
    assert_eq!(get(endpoint, "/nothing").0, 404);
    drop(server);
    assert!(
        TcpStream::connect(endpoint).is_err(),
        "nothing answers once the server is gone"
    );
}

#[test]
fn metrics_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_failure(&example_zones(), admin.path(), &["--metrics", &addr]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// The query log's lines, parsed, once there are `n` of them.
fn log_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    let complete = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        lines.len() >= n
    });
    assert!(complete, "{} lines of {n}", lines.len());
    lines
}

#[test]
fn query_log_writes_one_json_line_per_query() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queries.jsonl");
    let server = Server::start_with(&example_zones(), &["--query-log", path.to_str().unwrap()]);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send_to(
        &query("Web.Svc.Example.", RecordType::A).to_vec().unwrap(),
        server.addr,
    )
    .unwrap();
    let mut buf = [0u8; 1500];
    udp.recv_from(&mut buf).unwrap();
    server.tcp(&query("nope.svc.example.", RecordType::SRV));
    let started = std::time::SystemTime::now();

    let lines = log_lines(&path, 2);
    assert_eq!(lines.len(), 2);
    // Client addresses are not for every local user to read.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o007, 0, "query log mode {mode:o}");
    let (first, second) = (&lines[0], &lines[1]);
    assert_eq!(first["client"], udp.local_addr().unwrap().to_string());
    assert_eq!(first["name"], "Web.Svc.Example.");
    assert_eq!(first["type"], "A");
    assert_eq!(first["rcode"], "NOERROR");
    assert_eq!(first["answers"], 3, "web has three IPv4 instances");
    assert_eq!(first["proto"], "udp");
    assert!(first["micros"].as_u64().is_some());
    assert_eq!(second["name"], "nope.svc.example.");
    assert_eq!(second["type"], "SRV");
    assert_eq!(second["rcode"], "NXDOMAIN");
    assert_eq!(second["answers"], 0);
    assert_eq!(second["proto"], "tcp");
    // An RFC 3339 time in UTC, today.
    let time = first["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 27, "{time}");
    let today = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let days_from_civil = |y: i64, m: i64, d: i64| {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
    };
    let field = |range: std::ops::Range<usize>| time[range].parse::<i64>().unwrap();
    let day = days_from_civil(field(0..4), field(5..7), field(8..10));
    assert!((day - today as i64).abs() <= 1, "{time}");
}

#[test]
fn query_log_sample_logs_one_query_in_n() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queries.jsonl");
    let server = Server::start_with(
        &example_zones(),
        &[
            "--query-log",
            path.to_str().unwrap(),
            "--query-log-sample",
            "10",
        ],
    );
    for _ in 0..100 {
        server.udp(&query("web.svc.example.", RecordType::A));
    }
    let lines = log_lines(&path, 10);
    // Sampled per thread (two here), so each thread's first query is
    // logged: 10 lines, or up to one more per thread.
    std::thread::sleep(Duration::from_millis(200));
    let lines = log_lines(&path, lines.len());
    assert!((10..=12).contains(&lines.len()), "{} lines", lines.len());
}

#[test]
fn query_log_drops_lines_it_cannot_write_and_counts_them() {
    // Standard output is a pipe nobody reads yet: the writer soon blocks on
    // it, and the queries must go on being answered.
    let admin = tempfile::tempdir().unwrap();
    let mut command = serve_command(
        &example_zones(),
        admin.path(),
        &["--query-log", "-", "--metrics", "127.0.0.1:0"],
    );
    command.stdout(Stdio::piped());
    let mut server = Server::start_command(command, admin.path());
    let endpoint = metrics_addr(&server);
    let stdout = server.take_stdout().unwrap();

    let sent = 20_000;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let message = query("web.svc.example.", RecordType::A).to_vec().unwrap();
    let mut buf = [0u8; 1500];
    let started = Instant::now();
    // Eight in flight, so the flood is not paced by one round trip.
    for _ in 0..8 {
        socket.send_to(&message, server.addr).unwrap();
    }
    for i in 0..sent {
        socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("answer {i} of {sent}: {e}"));
        if i + 8 < sent {
            socket.send_to(&message, server.addr).unwrap();
        }
    }
    let flood = started.elapsed();

    let dropped = value(&scrape(endpoint), "signpost_query_log_dropped_total");
    assert!(
        dropped > 0.0,
        "{sent} queries in {flood:?} and nothing dropped"
    );
    // Once read, every line not dropped arrives, each a query.
    let reader = std::thread::spawn(move || {
        let mut lines = 0u64;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let entry: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(entry["name"], "web.svc.example.");
            lines += 1;
            if lines + dropped as u64 == sent as u64 {
                break;
            }
        }
        lines
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        reader.is_finished(),
        "written and dropped lines add up to the queries"
    );
    let lines = reader.join().unwrap();
    assert_eq!(lines + dropped as u64, sent as u64);
    // Nothing was dropped after the scrape: the log is being read now.
    let later = value(&scrape(endpoint), "signpost_query_log_dropped_total");
    assert_eq!(later, dropped);
}

#[test]
fn status_shows_queries_per_second_by_rcode() {
    let server = Server::start(&example_zones());
    for _ in 0..30 {
        server.udp(&query("web.svc.example.", RecordType::A));
    }
    for _ in 0..6 {
        server.udp(&query("nope.svc.example.", RecordType::A));
    }
    let output = server.cli(&["status", "--json"]);
    assert!(output.status.success());
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let status = &status["status"];
    assert_eq!(
        status["queries_by_rcode"],
        json!({"NOERROR": 30, "NXDOMAIN": 6})
    );
    assert!(status["queries_window_secs"].as_u64().unwrap() >= 1);

    let output = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("queries/s over the last minute"))
        .unwrap_or_else(|| panic!("{text}"));
    let noerror = line.find("NOERROR").expect(line);
    let nxdomain = line.find("NXDOMAIN").expect(line);
    assert!(noerror < nxdomain, "busiest first: {line}");
}

/// The datagrams sent to a fake NOTIFY_SOCKET, as they arrive.
struct FakeSystemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl FakeSystemd {
    fn new() -> (FakeSystemd, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (FakeSystemd { socket, _dir: dir }, path)
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification within 10 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Reads until a message containing `needle`, returning it.
    fn until(&self, needle: &str) -> String {
        loop {
            let message = self.next();
            if message.contains(needle) {
                return message;
            }
        }
    }
}

#[test]
fn service_manager_hears_ready_once_zones_are_served_and_watchdog_pings() {
    let (systemd, path) = FakeSystemd::new();
    let admin = tempfile::tempdir().unwrap();
    let mut command = serve_command(&example_zones(), admin.path(), &[]);
    command
        .stdout(Stdio::null())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut server = Server::start_command(command, admin.path());

    let first = systemd.next();
    assert_eq!(first, "STATUS=loading zones\n");
    let ready = systemd.until("READY=1");
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=serving DNS on {}\n", server.addr)
    );
    // Ready means answered.
    let m = server.udp(&query("web.svc.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 3);
    // Pings every half interval (0.1 s): three take 0.3 s on an idle
    // machine; the bound leaves room for a loaded one.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(systemd.until("WATCHDOG"), "WATCHDOG=1\n");
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    server.stop();
    assert_eq!(systemd.until("STOPPING"), "STOPPING=1\nSTATUS=stopping\n");
}

/// The metric names in `text`: words starting `signpost_` or `process_`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("signpost_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_and_the_dashboard_name_exactly_the_metrics_served() {
    // With forwarding on, so that its cache gauge is served too.
    let (server, endpoint) = start_with_metrics(&["--forward", "192.0.2.1"]);
    // A reload of every zone file, so that the reload counter has a zone.
    let hup = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(eventually(Duration::from_secs(10), || {
        get(endpoint, "/metrics")
            .1
            .contains("signpost_zone_reloads_total{")
    }));
    let (_, body) = get(endpoint, "/metrics");
    let served: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let histograms: Vec<&String> = served
        .iter()
        .filter(|f| body.contains(&format!("# TYPE {f} histogram")))
        .collect();

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Prometheus metrics")
        .nth(1)
        .unwrap()
        .split("### Query log")
        .next()
        .unwrap();
    // The first column of the table names the metrics.
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| metric_names(l.split('|').nth(1).unwrap()))
        .collect();
    assert_eq!(
        documented, served,
        "the README's table lists every metric served"
    );

    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() > 10);
    for name in used {
        let family = histograms
            .iter()
            .find(|h| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{h}{s}"))
            })
            .map_or(name.clone(), |h| h.to_string());
        assert!(
            served.contains(&family),
            "the dashboard uses {name}, not served"
        );
    }
}

#[test]
fn forwarded_queries_count_by_result() {
    let zone = tempfile::tempdir().unwrap();
    std::fs::write(
        zone.path().join("upstream.test.toml"),
        "zone = \"upstream.test\"\nttl = 300\n[hosts]\nwww = \"192.0.2.80\"\n",
    )
    .unwrap();
    let upstream = Server::start(zone.path());
    let upstream_addr = upstream.addr.to_string();
    let (server, endpoint) = start_with_metrics(&["--forward", &upstream_addr]);
    let result = |s: &HashMap<String, f64>, r: &str| {
        value(
            s,
            &format!(r#"signpost_forward_requests_total{{result="{r}"}}"#),
        )
    };

    let m = server.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let m = server.tcp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let samples = scrape(endpoint);
    assert_eq!(result(&samples, "answered"), 1.0);
    assert_eq!(result(&samples, "cached"), 1.0);
    assert_eq!(value(&samples, "signpost_forward_cache_entries"), 1.0);
    assert_eq!(
        value(&samples, "signpost_forward_duration_seconds_count"),
        1.0
    );
    // Forwarded answers count as responses like any other.
    assert_eq!(
        value(
            &samples,
            r#"signpost_dns_responses_total{proto="udp",rcode="NOERROR"}"#
        ),
        1.0
    );

    // An upstream that is gone: SERVFAIL, counted as failed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (dead, dead_endpoint) = start_with_metrics(&["--forward", &port]);
    let m = dead.udp(&query("www.upstream.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let samples = scrape(dead_endpoint);
    assert_eq!(result(&samples, "failed"), 1.0);
    assert_eq!(
        value(
            &samples,
            r#"signpost_dns_responses_total{proto="udp",rcode="SERVFAIL"}"#
        ),
        1.0
    );
}

#[test]
fn zone_reloads_and_staleness_follow_zone_file_edits() {
    let zones = zones_copy();
    let (_server, endpoint) = {
        let server = Server::start_with(zones.path(), &["--metrics", "127.0.0.1:0"]);
        let endpoint = metrics_addr(&server);
        (server, endpoint)
    };
    let stale = r#"signpost_zone_stale{zone="svc.example."}"#;
    let errors = r#"signpost_zone_reloads_total{zone="svc.example.",result="error"}"#;
    let reloaded = r#"signpost_zone_reloads_total{zone="svc.example.",result="ok"}"#;
    let file = zones.path().join("svc.example.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    assert_eq!(value(&scrape(endpoint), stale), 0.0);
    assert_eq!(
        value(&scrape(endpoint), errors),
        0.0,
        "the first load is no reload"
    );

    std::fs::write(&file, good.replace("port = 8080", "port = \"eighty\"")).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let s = scrape(endpoint);
        value(&s, stale) == 1.0 && value(&s, errors) >= 1.0
    }));
    std::fs::write(&file, &good).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let s = scrape(endpoint);
        value(&s, stale) == 0.0 && value(&s, reloaded) >= 1.0
    }));
}

#[test]
fn health_checks_and_unhealthy_instances_are_counted() {
    let (server, endpoint) = start_with_metrics(&[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let mut admin = server.admin();
    for (instance, port) in [("down-1", port), ("up-1", open_port)] {
        admin.ok(
            json!({"op":"register","zone":"svc.example","service":"checked",
            "instance":instance,"address":["127.0.0.1"],"port":port,
            "check":{"tcp":true,"interval":0.1,"failures":1,"successes":1}}),
        );
    }
    let unhealthy = r#"signpost_health_unhealthy_instances{zone="svc.example."}"#;
    let counted = eventually(Duration::from_secs(10), || {
        let s = scrape(endpoint);
        value(&s, unhealthy) == 1.0
            && value(&s, r#"signpost_health_checks_total{result="fail"}"#) >= 2.0
            && value(&s, r#"signpost_health_checks_total{result="pass"}"#) >= 2.0
    });
    assert!(counted, "{:?}", scrape(endpoint));
    drop(open);
}

#[test]
fn observability_settings_come_from_the_config_file_and_bad_ones_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queries.jsonl");
    let config = dir.path().join("signpost.toml");
    std::fs::write(
        &config,
        "metrics = \"127.0.0.1:0\"\nquery-log = \"queries.jsonl\"\nquery-log-sample = 1\n",
    )
    .unwrap();
    let server = Server::start_with(&example_zones(), &["--config", config.to_str().unwrap()]);
    let endpoint = metrics_addr(&server);
    server.udp(&query("web.svc.example.", RecordType::A));
    let lines = log_lines(&log, 1);
    assert_eq!(lines[0]["name"], "web.svc.example.");
    assert_eq!(
        value(
            &scrape(endpoint),
            r#"signpost_dns_requests_total{proto="udp",type="A"}"#
        ),
        1.0
    );

    let admin = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_failure(
        &example_zones(),
        admin.path(),
        &["--query-log", "/nonexistent/dir/queries.jsonl"],
    );
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("cannot open query log /nonexistent/dir/queries.jsonl"),
        "{stderr}"
    );
    let (status, stderr) = serve_failure(
        &example_zones(),
        admin.path(),
        &["--query-log", "-", "--query-log-sample", "0"],
    );
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("query-log-sample must be at least 1"),
        "{stderr}"
    );
}
