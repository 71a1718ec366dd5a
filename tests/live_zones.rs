//! Zone files change while the server runs: every kind of change reaches the
//! answers without a restart, and a broken file never takes anything down.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const DEADLINE: Duration = Duration::from_secs(10);

fn zone_text(apex: &str, db: &str) -> String {
    format!(
        r#"zone = "{apex}"
nameservers = ["ns1"]

[hosts]
ns1 = "127.0.0.1"
db = "{db}"
"#
    )
}

/// The A records of `name`, or the response code when there are none.
fn addresses(server: &Server, name: &str) -> Result<Vec<IpAddr>, ResponseCode> {
    let reply = server.udp(&query(name, RecordType::A));
    let addrs: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        Err(reply.metadata.response_code)
    } else {
        Ok(addrs)
    }
}

fn serial(server: &Server, apex: &str) -> u32 {
    let reply = server.udp(&query(apex, RecordType::SOA));
    match &reply.answers[0].data {
        RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    }
}

/// Polls until `check` holds, failing the test with `what` at the deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting until {what}");
}

fn answers_db(server: &Server, name: &str, addr: &str) -> bool {
    addresses(server, name) == Ok(vec![addr.parse().unwrap()])
}

/// Writes a file the way editors and config management do: a temporary file
/// in the same directory, renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn an_edit_in_place_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));

    // Truncate and rewrite the same inode.
    std::fs::write(&file, zone_text("a.test", "10.1.0.2")).unwrap();
    eventually("the edited address is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.2")
    });
}

#[test]
fn an_atomic_rename_is_served_and_bumps_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());
    let before = serial(&server, "a.test.");

    write_atomically(&file, &zone_text("a.test", "10.1.0.3"));
    eventually("the renamed file is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.3")
    });
    let after = serial(&server, "a.test.");
    assert!(after > before, "serial {after} should exceed {before}");

    write_atomically(&file, &zone_text("a.test", "10.1.0.4"));
    eventually("the second edit is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.4")
    });
    assert!(serial(&server, "a.test.") > after);
}

#[test]
fn a_new_file_adds_its_zone_and_a_deleted_file_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());
    assert_eq!(addresses(&server, "db.b.test."), Err(ResponseCode::Refused));

    let b = dir.path().join("b.toml");
    write_atomically(&b, &zone_text("b.test", "10.2.0.1"));
    eventually("the new zone is served", || {
        answers_db(&server, "db.b.test.", "10.2.0.1")
    });

    std::fs::remove_file(&b).unwrap();
    eventually("the deleted zone is no longer served", || {
        addresses(&server, "db.b.test.") == Err(ResponseCode::Refused)
    });
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));
}

#[test]
fn a_configmap_symlink_swap_is_served() {
    // Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>,
    // and updates it by pointing ..data at a new directory with one rename.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/a.toml"), zone_text("a.test", "10.1.0.1")).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/a.toml", d.join("a.toml")).unwrap();
    let server = Server::start(d);
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));

    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/a.toml"), zone_text("a.test", "10.1.0.9")).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    eventually("the swapped ConfigMap is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.9")
    });
}

#[test]
fn an_invalid_edit_keeps_the_last_good_version_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());

    write_atomically(&file, &zone_text("a.test", "10.1.0.300"));
    assert!(
        server.wait_for_log("a.toml:6:6: ", DEADLINE),
        "the error names file:line:column; log:\n{}",
        server.log_text()
    );
    assert!(
        server
            .log_text()
            .contains("still serving its last good version")
    );
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));

    write_atomically(&file, &zone_text("a.test", "10.1.0.5"));
    eventually("the fixed file is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.5")
    });
}

#[test]
fn a_broken_zone_does_not_stop_another_from_updating() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, zone_text("a.test", "10.1.0.1")).unwrap();
    std::fs::write(&b, zone_text("b.test", "10.2.0.1")).unwrap();
    let server = Server::start(dir.path());

    write_atomically(&a, "zone = \"a.test\"\n[hosts\n");
    assert!(server.wait_for_log("a.toml:2:", DEADLINE));
    write_atomically(&b, &zone_text("b.test", "10.2.0.2"));
    eventually("the valid zone updates", || {
        answers_db(&server, "db.b.test.", "10.2.0.2")
    });
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));
}

#[test]
fn a_second_file_for_the_same_zone_is_refused_until_the_first_goes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    std::fs::write(&a, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());

    let dup = dir.path().join("z-dup.toml");
    write_atomically(&dup, &zone_text("a.test", "10.1.0.7"));
    assert!(server.wait_for_log("z-dup.toml:1:8: ", DEADLINE));
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));

    // With the first file gone, the second one's zone is the zone.
    std::fs::remove_file(&a).unwrap();
    eventually("the remaining file's zone is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.7")
    });
}

#[test]
fn the_periodic_rescan_catches_changes_without_events() {
    // A file changed while the server cannot see events is still picked up:
    // rewrite through a hard link made outside the watched directory, which
    // produces no event in it.
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let alias = outside.path().join("alias.toml");
    std::fs::hard_link(&file, &alias).unwrap();
    let server = Server::start_with(dir.path(), &["--rescan-interval", "1"]);

    std::fs::write(&alias, zone_text("a.test", "10.1.0.8")).unwrap();
    eventually("the rescan serves the change", || {
        answers_db(&server, "db.a.test.", "10.1.0.8")
    });
}

#[test]
fn sighup_reloads_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), zone_text("a.test", "10.1.0.1")).unwrap();
    let mut server = Server::start(dir.path());
    let pid = server.pid().to_string();

    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait_for_log("reloading every zone file", DEADLINE));
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));

    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exit = server.wait(DEADLINE).expect("the server exits on SIGTERM");
    assert!(exit.success(), "clean exit, got {exit:?}");
}

#[test]
fn queries_never_fail_while_a_file_is_rewritten_100_times() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.0")).unwrap();
    let server = Server::start(dir.path());
    let addr = server.addr;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let querier = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answered = 0usize;
            let q = query("db.a.test.", RecordType::A).to_vec().unwrap();
            // Bounded: stops when the writer is done, or after 100 000 queries.
            while !done.load(std::sync::atomic::Ordering::Relaxed) && answered < 100_000 {
                let reply = udp_raw(addr, &q, Duration::from_secs(1))
                    .expect("every query is answered within a second");
                let reply = Message::from_vec(&reply).unwrap();
                assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
                assert_eq!(reply.answers.len(), 1, "always exactly one address");
                answered += 1;
            }
            answered
        })
    };
    for i in 1..=100 {
        write_atomically(&file, &zone_text("a.test", &format!("10.1.0.{i}")));
        std::thread::sleep(Duration::from_millis(2));
    }
    eventually("the last rewrite is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.100")
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = querier.join().expect("no query failed");
    assert!(answered > 0);
}

#[test]
fn a_missing_zones_directory_is_a_clear_startup_error() {
    let admin = tempfile::tempdir().unwrap();
    let missing = admin.path().join("no-such-zones");
    let (status, stderr) = serve_failure(&missing, admin.path(), &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read zones directory") && stderr.contains("no-such-zones"),
        "{stderr}"
    );
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_is_returned_after_a_large_zone_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.test.toml");
    let mut text = String::from("zone = \"big.test\"\n");
    for s in 0..10_000 {
        text.push_str(&format!("[[services]]\nname = \"svc-{s}\"\nport = 80\n"));
        for i in 0..3 {
            text.push_str(&format!(
                "[[services.instances]]\nname = \"i-{s}-{i}\"\naddress = \"10.{}.{}.{}\"\n",
                i,
                s / 250,
                s % 250 + 1
            ));
        }
    }
    std::fs::write(&path, text).unwrap();
    let server = Server::start(dir.path());
    let big = rss_kib(server.pid());
    write_atomically(&path, &zone_text("big.test", "10.0.0.1"));
    eventually("the small zone is served", || {
        answers_db(&server, "db.big.test.", "10.0.0.1")
    });
    // Freed memory goes back to the system shortly after the reload,
    // rather than staying with the allocator for the process's life.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss_kib(server.pid()) > big / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss_kib(server.pid());
    assert!(
        after <= big / 2,
        "RSS {big} KiB with the big zone, {after} KiB after"
    );
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

fn sighup(server: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_fifo_among_the_zone_files_is_skipped_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    mkfifo(&dir.path().join("x.toml"));
    // A symlink to a FIFO is not a regular file either.
    let outside = tempfile::tempdir().unwrap();
    mkfifo(&outside.path().join("pipe"));
    std::os::unix::fs::symlink(outside.path().join("pipe"), dir.path().join("y.toml")).unwrap();

    let server = Server::start(dir.path());
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));
    let log = server.log_text();
    for name in ["x.toml", "y.toml"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains(name)
                && l.contains("not a regular file")),
            "a warning names {name}; log:\n{log}"
        );
    }

    std::fs::write(&file, zone_text("a.test", "10.1.0.2")).unwrap();
    eventually("the edit is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.2")
    });
}

#[test]
fn a_fifo_created_while_running_stalls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    std::fs::write(&a, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());

    mkfifo(&dir.path().join("x.toml"));
    assert!(
        server.wait_for_log("not a regular file", DEADLINE),
        "log:\n{}",
        server.log_text()
    );
    std::fs::write(&a, zone_text("a.test", "10.1.0.2")).unwrap();
    eventually("an edit after the FIFO is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.2")
    });
    write_atomically(&dir.path().join("b.toml"), &zone_text("b.test", "10.2.0.1"));
    eventually("a new file after the FIFO is served", || {
        answers_db(&server, "db.b.test.", "10.2.0.1")
    });

    // SIGHUP reads every file again, and still passes the FIFO by.
    let hangups_before = server
        .log_text()
        .matches("reloading every zone file")
        .count();
    sighup(&server);
    eventually("SIGHUP is seen", || {
        server
            .log_text()
            .matches("reloading every zone file")
            .count()
            > hangups_before
    });
    std::fs::write(&a, zone_text("a.test", "10.1.0.3")).unwrap();
    eventually("an edit after SIGHUP is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.3")
    });
    // Warned once, not on every scan.
    assert_eq!(
        server.log_text().matches("not a regular file").count(),
        1,
        "log:\n{}",
        server.log_text()
    );
}

/// The lines of the log at ERROR level.
fn errors(server: &Server) -> Vec<String> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .cloned()
        .collect()
}

#[test]
fn a_rewrite_in_place_is_not_rejected_while_the_file_is_empty() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());

    // What `cp new.toml a.toml` does, slowed down: truncate the file, then
    // write it some time later.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    let until = Instant::now() + Duration::from_millis(150);
    while Instant::now() < until {
        // The last good version keeps serving meanwhile.
        assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));
        std::thread::sleep(Duration::from_millis(10));
    }
    out.write_all(zone_text("a.test", "10.1.0.2").as_bytes())
        .unwrap();
    drop(out);
    eventually("the rewritten file is served", || {
        answers_db(&server, "db.a.test.", "10.1.0.2")
    });
    assert_eq!(errors(&server), Vec::<String>::new());
}

#[test]
fn a_file_that_stays_empty_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, zone_text("a.test", "10.1.0.1")).unwrap();
    let server = Server::start(dir.path());

    std::fs::write(&file, "").unwrap();
    assert!(
        server.wait_for_log("still serving its last good version", DEADLINE),
        "log:\n{}",
        server.log_text()
    );
    assert!(answers_db(&server, "db.a.test.", "10.1.0.1"));
}

/// A zone of `services` services of 3 instances each, and the host
/// `marker` at `marker_address`: the two versions of a large file differ
/// only there.
fn large_zone_text(apex: &str, services: usize, marker_address: &str) -> String {
    let mut text = format!("zone = \"{apex}\"\n[hosts]\nmarker = \"{marker_address}\"\n");
    for s in 0..services {
        text.push_str(&format!("[[services]]\nname = \"svc-{s}\"\nport = 80\n"));
        for i in 0..3 {
            text.push_str(&format!(
                "[[services.instances]]\nname = \"i-{s}-{i}\"\naddress = \"10.{}.{}.{}\"\n",
                i,
                s / 250,
                s % 250 + 1
            ));
        }
    }
    text
}

#[test]
fn registrations_go_on_while_a_large_zone_is_rebuilt_and_one_into_it_is_ok_once_answered() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.test.toml");
    // Thousands of services: its build takes long beside one registration.
    let services = 8_000;
    std::fs::write(&big, large_zone_text("big.test", services, "10.9.0.1")).unwrap();
    std::fs::write(
        dir.path().join("small.test.toml"),
        zone_text("small.test", "10.8.0.1"),
    )
    .unwrap();
    let server = Server::start(dir.path());
    let mut admin = server.admin();
    let register = |admin: &mut AdminClient, zone: &str, instance: &str, address: &str| {
        admin.ok(
            serde_json::json!({"op": "register", "zone": zone, "service": "web",
            "instance": instance, "address": address, "port": 80, "ttl": 60}),
        );
    };
    register(&mut admin, "big.test", "beat", "10.7.0.1");
    let loads = |server: &Server| {
        let log = server.log_text();
        (log.lines())
            .filter(|l| l.contains("zone loaded") && l.contains("big.test"))
            .count()
    };
    let loaded = loads(&server);

    // The new version is read, and its build starts.
    write_atomically(&big, &large_zone_text("big.test", services, "10.9.0.2"));
    eventually("the new version of big.test is read", || {
        loads(&server) > loaded
    });
    let started = Instant::now();
    // A registration into another zone, and a heartbeat into big.test, are
    // answered while the old version of big.test is still served.
    register(&mut admin, "small.test", "web-1", "10.8.0.2");
    assert_eq!(
        addresses(&server, "web-1.small.test."),
        Ok(vec!["10.8.0.2".parse().unwrap()])
    );
    admin.ok(
        serde_json::json!({"op": "heartbeat", "zone": "big.test", "service": "web",
        "instance": "beat"}),
    );
    assert!(
        answers_db(&server, "marker.big.test.", "10.9.0.1"),
        "big.test was still being built ({:?} after it was read)",
        started.elapsed()
    );
    // A registration into big.test: "ok" once it is answered, with the new
    // version of the file.
    register(&mut admin, "big.test", "web-2", "10.7.0.2");
    assert!(answers_db(&server, "web-2.big.test.", "10.7.0.2"));
    assert!(answers_db(&server, "marker.big.test.", "10.9.0.2"));
    println!("big.test's build took about {:?}", started.elapsed());
}
