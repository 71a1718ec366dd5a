//! `signpost run`: a program that reads PORT is discoverable while it lives.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::{RData, RecordType};

/// A small HTTP program that listens where PORT says.
const HTTP: &str = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";

/// A running `signpost run`, with what it has said on stderr.
struct Launcher {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Launcher {
    /// `signpost run ARGS -- sh -c PROGRAM`, into zone svc.example unless
    /// ARGS name another.
    fn start(socket: &Path, args: &[&str], program: &str) -> Launcher {
        let zone: &[&str] = if args.contains(&"--zone") {
            &[]
        } else {
            &["--zone", "svc.example"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_signpost"))
            .arg("run")
            .arg("--socket")
            .arg(socket)
            .args(["--address", "127.0.0.1"])
            .args(zone)
            .args(args)
            .args(["--", "sh", "-c", program])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start signpost run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Launcher { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for_log(&self, needle: &str) -> bool {
        eventually(Duration::from_secs(20), || self.log().contains(needle))
    }

    /// The program's pid and port, from the launcher's first line.
    fn program(&self) -> (i32, u16) {
        assert!(self.wait_for_log("started"), "{}", self.log());
        let log = self.log();
        let line = log.lines().find(|l| l.contains("started")).unwrap();
        let pid = line
            .split("(pid ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let port = line.rsplit("on port ").next().unwrap();
        (pid.parse().unwrap(), port.trim().parse().unwrap())
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "run did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (target, port) of every SRV record of `_<service>._tcp.svc.example.`.
fn srv(server: &Server, service: &str) -> Vec<(String, u16)> {
    let reply = server.udp(&query(
        &format!("_{service}._tcp.svc.example."),
        RecordType::SRV,
    ));
    let mut out: Vec<(String, u16)> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks for existence; a zombie has exited already.
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !status.is_empty() && !status.split(") ").nth(1).unwrap_or("").starts_with('Z')
}

fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200")
}

#[test]
fn launched_programs_are_answered_while_they_live() {
    let server = Server::start(&example_zones());
    let mut first = Launcher::start(&server.socket, &["--service", "hello", "--ttl", "2"], HTTP);
    let mut second = Launcher::start(&server.socket, &["--service", "hello", "--ttl", "2"], HTTP);
    let (pid_1, port_1) = first.program();
    let (pid_2, port_2) = second.program();
    assert_ne!(port_1, port_2, "each gets a free port of its own");
    assert!(eventually(Duration::from_secs(20), || srv(
        &server, "hello"
    )
    .len()
        == 2));
    let ports: Vec<u16> = srv(&server, "hello").iter().map(|(_, p)| *p).collect();
    assert!(
        ports.contains(&port_1) && ports.contains(&port_2),
        "{ports:?}"
    );
    // The names are the host's and the port, and each program answers on its port.
    assert!(
        srv(&server, "hello")
            .iter()
            .all(|(t, p)| t.ends_with(&format!("-{p}.svc.example."))),
        "{:?}",
        srv(&server, "hello")
    );
    assert!(http_ok(port_1) && http_ok(port_2));

    // SIGTERM: passed to the program, which exits; the instance is
    // deregistered within a second, and run exits as the program did.
    first.signal("-TERM");
    let status = first.wait();
    assert_eq!(status.code(), Some(128 + 15), "{}", first.log());
    assert!(!alive(pid_1), "the program is gone");
    assert!(eventually(Duration::from_secs(1), || srv(&server, "hello")
        .len()
        == 1));
    // The reader of run's stderr may not have reached its last line yet.
    assert!(first.wait_for_log("deregistered"), "{}", first.log());

    // kill -9 of run: the program goes with it, and the TTL takes the
    // instance out of answers.
    second.signal("-KILL");
    second.wait();
    assert!(
        eventually(Duration::from_secs(2), || !alive(pid_2)),
        "the program does not outlive run"
    );
    assert!(eventually(Duration::from_secs(5), || srv(&server, "hello").is_empty()));
}

#[test]
fn the_program_exit_status_passes_through() {
    let server = Server::start(&example_zones());
    let mut launcher = Launcher::start(&server.socket, &["--service", "once"], "exit 7");
    assert_eq!(launcher.wait().code(), Some(7));
    let mut launcher = Launcher::start(&server.socket, &["--service", "once"], "kill -9 $$");
    assert_eq!(launcher.wait().code(), Some(128 + 9));
}

#[test]
fn a_program_that_never_listens_is_reported_and_keeps_running() {
    let server = Server::start(&example_zones());
    // Listens on another port than PORT: never ready, never registered.
    let launcher = Launcher::start(
        &server.socket,
        &["--service", "deaf", "--listen-timeout", "1"],
        "exec sleep 60",
    );
    let (pid, _) = launcher.program();
    assert!(
        launcher.wait_for_log("did not accept connections"),
        "{}",
        launcher.log()
    );
    assert!(alive(pid));
    assert!(srv(&server, "deaf").is_empty());
    assert!(
        !launcher.log().contains("registered deaf"),
        "{}",
        launcher.log()
    );
}

#[test]
fn a_refusal_is_explained_and_the_program_still_runs() {
    let server = Server::start(&example_zones());
    let launcher = Launcher::start(
        &server.socket,
        &["--service", "hello", "--zone", "nowhere.example"],
        HTTP,
    );
    let (pid, _) = launcher.program();
    assert!(launcher.wait_for_log("unknown zone"), "{}", launcher.log());
    assert!(alive(pid));

    // No server at all: said, retried, and the program runs meanwhile.
    let nowhere = tempfile::tempdir().unwrap();
    let launcher = Launcher::start(
        &nowhere.path().join("none.sock"),
        &["--service", "hello"],
        HTTP,
    );
    let (pid, _) = launcher.program();
    assert!(
        launcher.wait_for_log("cannot connect"),
        "{}",
        launcher.log()
    );
    assert!(
        launcher.log().contains("keeps running"),
        "{}",
        launcher.log()
    );
    assert!(alive(pid));
}

#[test]
fn a_server_restart_is_survived() {
    let zones = example_zones();
    let state = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(&zones, state.path(), &[]);
    let launcher = Launcher::start(&server.socket, &["--service", "hello", "--ttl", "1"], HTTP);
    let (_, port) = launcher.program();
    assert!(eventually(Duration::from_secs(20), || srv(
        &server, "hello"
    )
    .len()
        == 1));
    assert!(server.stop().success());

    // A new server on the same socket that has never heard of the instance
    // (its state file is gone): run registers it again.
    std::fs::remove_file(&server.state).unwrap();
    let server = Server::start_admin(&zones, state.path(), &[]);
    assert!(
        eventually(Duration::from_secs(10), || srv(&server, "hello")
            .iter()
            .any(|(_, p)| *p == port)),
        "{}",
        launcher.log()
    );
    assert!(launcher.wait_for_log("registering"), "{}", launcher.log());
}

fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_check_flag_registers_a_health_check_the_server_probes() {
    let server = Server::start(&example_zones());
    let launcher = Launcher::start(
        &server.socket,
        &[
            "--service",
            "hello",
            "--check-http",
            "/",
            "--check-interval",
            "0.2",
        ],
        HTTP,
    );
    launcher.program();
    let healthy = || {
        let list = server.admin().ok(serde_json::json!({"op":"list"}));
        list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["service"] == "hello" && i["health"] == "healthy")
    };
    assert!(
        eventually(Duration::from_secs(20), healthy),
        "{}",
        launcher.log()
    );
}
