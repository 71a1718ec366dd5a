//! Active health checks, against the real server: unhealthy addresses leave
//! the DNS answers and come back, names stay (NODATA, never NXDOMAIN), and
//! `list`, `status` and the log say what the checks found.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);

/// A loopback TCP server on a fixed port, answering each connection with
/// `respond` (or just closing it), until dropped: then the port refuses
/// connections, as a stopped service's does.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn tcp(port: u16) -> Listener {
        Listener::serve(port, |_| {})
    }

    fn serve(port: u16, respond: impl Fn(&mut std::net::TcpStream) + Send + 'static) -> Listener {
        let socket = TcpListener::bind(("127.0.0.1", port)).expect("bind the test listener");
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match socket.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            respond(&mut stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Listener {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn zone_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h.toml"), text).unwrap();
    dir
}

fn ask(server: &Server, name: &str, rtype: RecordType) -> Message {
    server.udp(&query(name, rtype))
}

fn answers(server: &Server, name: &str, rtype: RecordType) -> Vec<String> {
    ask(server, name, rtype)
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect()
}

fn srv_targets(server: &Server, name: &str) -> Vec<String> {
    let mut t: Vec<String> = answers(server, name, RecordType::SRV)
        .iter()
        .map(|s| s.rsplit(' ').next().unwrap().to_string())
        .collect();
    t.sort();
    t
}

/// NOERROR, no answer, the SOA in the authority section: the name exists.
fn assert_nodata(server: &Server, name: &str, rtype: RecordType) {
    let m = ask(server, name, rtype);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{name} {rtype}"
    );
    assert!(m.answers.is_empty(), "{name} {rtype}: {:?}", m.answers);
    assert!(
        m.authorities
            .iter()
            .any(|r| matches!(r.data, RData::SOA(_))),
        "{name} {rtype}: no SOA in {:?}",
        m.authorities
    );
}

fn list(server: &Server) -> Value {
    server.admin().ok(json!({"op":"list"}))
}

fn health_of(server: &Server, instance: &str) -> String {
    list(server)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == instance)
        .unwrap_or_else(|| panic!("{instance} listed"))["health"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_tcp_check_takes_an_instance_out_of_answers_and_brings_it_back() {
    let up = Listener::tcp(0);
    let flaky = Listener::tcp(0);
    let flaky_port = flaky.addr.port();
    let dir = zone_dir(&format!(
        r#"zone = "h.test"
[[services]]
name = "web"
check = {{ tcp = true, interval = 0.1, timeout = 0.1, failures = 3, successes = 2 }}
[[services.instances]]
name = "web-1"
address = "127.0.0.1"
port = {}
[[services.instances]]
name = "web-2"
address = "127.0.0.1"
port = {flaky_port}
"#,
        up.addr.port()
    ));
    let server = Server::start(dir.path());
    let both = vec!["web-1.h.test.".to_string(), "web-2.h.test.".to_string()];
    assert!(eventually(DEADLINE, || health_of(&server, "web-2") == "healthy"));
    assert_eq!(srv_targets(&server, "_web._tcp.h.test."), both);

    // The port closes: three failed probes, at least two intervals apart,
    // take the instance out.
    drop(flaky);
    let closed = Instant::now();
    assert!(eventually(DEADLINE, || {
        srv_targets(&server, "_web._tcp.h.test.") == ["web-1.h.test."]
    }));
    assert!(
        closed.elapsed() >= Duration::from_millis(200),
        "out after {:?}, before three failures",
        closed.elapsed()
    );
    assert_eq!(srv_targets(&server, "web.h.test."), ["web-1.h.test."]);
    // Its own name still exists, without addresses.
    assert_nodata(&server, "web-2.h.test.", RecordType::A);
    assert_eq!(health_of(&server, "web-2"), "unhealthy");
    // The table does not say "serving" for an instance that is not answered.
    let table = stdout(&server.cli(&["list"]));
    let row = table.lines().find(|l| l.contains("web-2")).unwrap();
    assert!(row.contains("not served (unhealthy)"), "{row}");
    assert!(!row.contains("serving"), "{row}");
    assert!(server.wait_for_log("health check failing", DEADLINE));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("health check failing"))
        .unwrap();
    for field in [
        "zone=h.test.",
        "service=web",
        "instance=web-2",
        "address=127.0.0.1",
    ] {
        assert!(line.contains(field), "{line}");
    }
    assert!(line.contains("WARN"), "{line}");

    // The port opens again: served after two good probes.
    let _back = Listener::tcp(flaky_port);
    assert!(eventually(DEADLINE, || {
        srv_targets(&server, "_web._tcp.h.test.") == both
    }));
    assert_eq!(
        answers(&server, "web-2.h.test.", RecordType::A),
        ["127.0.0.1"]
    );
    assert!(server.wait_for_log("health check passing again", DEADLINE));
}

#[test]
fn an_http_check_follows_the_status_code() {
    let status = Arc::new(AtomicU16::new(200));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let http = {
        let (status, paths) = (status.clone(), paths.clone());
        Listener::serve(0, move |stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            paths
                .lock()
                .unwrap()
                .push(text.lines().next().unwrap_or("").to_string());
            let code = status.load(Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        })
    };
    let dir = zone_dir(&format!(
        r#"zone = "h.test"
[[services]]
name = "api"
port = {}
[[services.instances]]
name = "api-1"
address = "127.0.0.1"
check = {{ http = "/healthz?deep=1", interval = 0.1, failures = 2, successes = 2 }}
[[services.instances]]
name = "api-2"
address = "127.0.0.2"
"#,
        http.addr.port()
    ));
    let server = Server::start(dir.path());
    let all = ["127.0.0.1", "127.0.0.2"];
    assert!(eventually(DEADLINE, || health_of(&server, "api-1") == "healthy"));
    assert_eq!(health_of(&server, "api-2"), "unchecked");
    let mut a = answers(&server, "api.h.test.", RecordType::A);
    a.sort();
    assert_eq!(a, all);
    assert_eq!(
        paths.lock().unwrap()[0],
        "GET /healthz?deep=1 HTTP/1.1",
        "the request line"
    );

    status.store(500, Ordering::SeqCst);
    assert!(eventually(DEADLINE, || {
        answers(&server, "api.h.test.", RecordType::A) == ["127.0.0.2"]
    }));
    assert!(server.wait_for_log("HTTP status 500", DEADLINE));

    status.store(204, Ordering::SeqCst);
    assert!(eventually(DEADLINE, || {
        answers(&server, "api.h.test.", RecordType::A).len() == 2
    }));
    assert_eq!(health_of(&server, "api-1"), "healthy");
}

#[test]
fn a_service_whose_instances_are_all_unhealthy_answers_nodata_not_nxdomain() {
    let text = |check: &str| {
        format!(
            r#"zone = "h.test"
[[services]]
name = "db"
port = {}
{check}
[[services.instances]]
name = "db-1"
address = ["127.0.0.1", "::1"]
tags = ["primary"]
[[services.instances]]
name = "db-2"
address = "127.0.0.1"
port = {}
"#,
            closed_port(),
            closed_port()
        )
    };
    let dir = zone_dir(&text(
        "check = { tcp = true, interval = 0.1, failures = 1, successes = 1 }",
    ));
    let server = Server::start(dir.path());
    assert!(eventually(DEADLINE, || {
        answers(&server, "_db._tcp.h.test.", RecordType::SRV).is_empty()
    }));
    assert!(eventually(DEADLINE, || {
        server.admin().ok(json!({"op":"status"}))["status"]["zones"][0]["unhealthy_instances"] == 2
    }));
    for (name, rtype) in [
        ("_db._tcp.h.test.", RecordType::SRV),
        ("db.h.test.", RecordType::SRV),
        ("db.h.test.", RecordType::A),
        ("db.h.test.", RecordType::AAAA),
        ("db-1.h.test.", RecordType::A),
        ("db-2.h.test.", RecordType::AAAA),
        // Tag and DNS-SD names of the hidden instances stay too.
        ("primary.db.h.test.", RecordType::A),
        ("_db._primary.h.test.", RecordType::SRV),
        ("db-1._db._tcp.h.test.", RecordType::SRV),
        ("db-1._db._tcp.h.test.", RecordType::TXT),
        ("_primary._sub._db._tcp.h.test.", RecordType::PTR),
        ("_db._tcp.h.test.", RecordType::PTR),
    ] {
        assert_nodata(&server, name, rtype);
    }
    // Over TCP too, and a name that never existed is still NXDOMAIN.
    let m = server.tcp(&query("db.h.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(
        ask(&server, "nothing.h.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );

    // `list` and `status` show it, as tables too.
    let table = stdout(&server.cli(&["list"]));
    let header = table.lines().next().unwrap();
    assert!(header.ends_with("HEALTH"), "{header}");
    let row = table.lines().find(|l| l.contains("db-1")).unwrap();
    assert!(row.ends_with("unhealthy"), "{row}");
    let status = stdout(&server.cli(&["status"]));
    let header = status.lines().find(|l| l.starts_with("ZONE")).unwrap();
    assert!(header.ends_with("UNHEALTHY"), "{header}");
    let row = status.lines().find(|l| l.starts_with("h.test.")).unwrap();
    assert!(row.ends_with(" 2"), "{row}");

    // The checks follow the file: without a check, everything is served.
    let file = dir.path().join("h.toml");
    let tmp = dir.path().join(".h.toml.tmp");
    std::fs::write(&tmp, text("")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(eventually(DEADLINE, || {
        answers(&server, "_db._tcp.h.test.", RecordType::SRV).len() == 2
    }));
    assert_eq!(health_of(&server, "db-1"), "unchecked");
}

#[test]
fn a_runtime_registration_may_carry_a_check() {
    let dir = zone_dir("zone = \"h.test\"\n");
    let server = Server::start(dir.path());
    let port = closed_port();
    let mut admin = server.admin();
    let reply = admin.ok(json!({"op":"register","zone":"h.test","service":"cache",
        "instance":"cache-1","address":["127.0.0.1"],"port":port,
        "check":{"tcp":true,"interval":0.1,"failures":1,"successes":1}}));
    assert_eq!(reply["instance"]["health"], "unknown");
    // Served until the first probe says otherwise.
    assert!(eventually(DEADLINE, || {
        answers(&server, "_cache._tcp.h.test.", RecordType::SRV).is_empty()
    }));
    assert_nodata(&server, "_cache._tcp.h.test.", RecordType::SRV);
    assert_eq!(health_of(&server, "cache-1"), "unhealthy");

    let _listener = Listener::tcp(port);
    assert!(eventually(DEADLINE, || {
        answers(&server, "cache-1.h.test.", RecordType::A) == ["127.0.0.1"]
    }));
    assert_eq!(health_of(&server, "cache-1"), "healthy");

    // The CLI's flags, and the same validation as the zone file's.
    let out = server.cli(&[
        "register",
        "--zone",
        "h.test",
        "--service",
        "cache",
        "--instance",
        "cache-2",
        "--address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--check-http",
        "/ping",
        "--check-interval",
        "0.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let e = admin.error(json!({"op":"register","zone":"h.test","service":"cache",
        "instance":"cache-3","target":"x.example.","port":1,"check":{"tcp":true}}));
    assert!(e.contains("nothing to probe"), "{e}");
    let e = admin.error(json!({"op":"register","zone":"h.test","service":"cache",
        "instance":"cache-3","address":"127.0.0.1","port":1,"check":{"http":"ping"}}));
    assert!(e.contains("must start with '/'"), "{e}");
    let e = admin.error(json!({"op":"register","zone":"h.test","service":"cache",
        "instance":"cache-3","address":"127.0.0.1","port":1,"check":{"tcp":true,"every":1}}));
    assert!(e.contains("unknown field `every`"), "{e}");
    // The listener answers TCP but not HTTP: cache-2 fails its check.
    assert!(eventually(DEADLINE, || health_of(&server, "cache-2") == "unhealthy"));
    assert_eq!(
        answers(&server, "_cache._tcp.h.test.", RecordType::SRV).len(),
        1
    );
}

#[test]
fn check_reports_bad_checks_with_their_place() {
    let dir = zone_dir(
        "zone = \"h.test\"\n[[services]]\nname = \"w\"\nport = 1\ncheck = { http = \"/\", timeout = 0 }\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["check", "--zones"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("h.toml:5:33: check of service \"w\": timeout 0 is out of range"),
        "{text}"
    );
}

#[test]
fn a_registered_check_survives_a_restart() {
    let dir = zone_dir("zone = \"h.test\"\n");
    let admin_dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let mut server = Server::start_admin(dir.path(), admin_dir.path(), &[]);
    server
        .admin()
        .ok(json!({"op":"register","zone":"h.test","service":"cache",
        "instance":"cache-1","address":"127.0.0.1","port":port,
        "check":{"tcp":true,"interval":0.1,"failures":1}}));
    assert!(eventually(DEADLINE, || health_of(&server, "cache-1") == "unhealthy"));
    server.stop();

    let server = Server::start_admin(dir.path(), admin_dir.path(), &[]);
    assert!(eventually(DEADLINE, || health_of(&server, "cache-1") == "unhealthy"));
    assert_nodata(&server, "_cache._tcp.h.test.", RecordType::SRV);
}

#[test]
fn a_first_passing_probe_changes_no_answer_and_no_serial() {
    let up = Listener::tcp(0);
    let dir = zone_dir(&format!(
        r#"zone = "h.test"
[[services]]
name = "web"
check = {{ tcp = true, interval = 0.1, timeout = 0.1 }}
[[services.instances]]
name = "web-1"
address = "127.0.0.1"
port = {}
"#,
        up.addr.port()
    ));
    let server = Server::start(dir.path());
    let serial = |server: &Server| match &ask(server, "h.test.", RecordType::SOA).answers[0].data {
        RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    };
    let before = serial(&server);
    assert!(eventually(DEADLINE, || health_of(&server, "web-1") == "healthy"));
    // Served before the probe and after it: nothing to rebuild.
    assert_eq!(serial(&server), before);
}
