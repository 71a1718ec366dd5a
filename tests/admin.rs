//! The admin socket and the client commands, against the real server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

/// The answers' data as text (`0 1 8080 web-9.svc.example.`, `10.0.0.19`).
fn answers(server: &Server, name: &str, rtype: RecordType) -> Vec<String> {
    let m = server.udp(&query(name, rtype));
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

fn rcode(server: &Server, name: &str, rtype: RecordType) -> ResponseCode {
    server.udp(&query(name, rtype)).metadata.response_code
}

fn srv_targets(server: &Server) -> Vec<String> {
    answers(server, "_web._tcp.svc.example.", RecordType::SRV)
        .iter()
        .map(|s| s.rsplit(' ').next().unwrap().to_string())
        .collect()
}

fn register(instance: &str, address: &str) -> Value {
    json!({"op":"register","zone":"svc.example","service":"web","instance":instance,
           "address":[address],"port":8080})
}

fn instance<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == name)
}

#[test]
fn a_registration_is_answered_as_soon_as_it_is_acknowledged() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let reply = admin.ok(json!({"op":"register","zone":"svc.example","service":"web",
        "instance":"web-9","address":["10.0.0.19","fd00::19"],"port":8081,"weight":5,
        "priority":2,"tags":["canary"]}));
    assert_eq!(reply["instance"]["state"], "serving");
    // No waiting: the reply means the snapshot is already published.
    let srv = answers(&server, "_web._tcp.svc.example.", RecordType::SRV);
    assert!(
        srv.contains(&"2 5 8081 web-9.svc.example.".to_string()),
        "{srv:?}"
    );
    assert_eq!(
        answers(&server, "web-9.svc.example.", RecordType::A),
        ["10.0.0.19"]
    );
    assert_eq!(
        answers(&server, "web-9.svc.example.", RecordType::AAAA),
        ["fd00::19"]
    );
    // The file's instances are still there.
    assert_eq!(srv.len(), 4);
    assert!(answers(&server, "web.svc.example.", RecordType::A).contains(&"10.0.0.19".into()));
}

#[test]
fn a_registration_may_create_a_service_with_a_target() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    // A single address as a string, like the zone file's `address`.
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"queue","protocol":"udp",
        "instance":"queue-1","address":"10.0.0.61","port":5672}),
    );
    admin.ok(
        json!({"op":"register","zone":"svc.example.","service":"queue","protocol":"udp",
        "instance":"queue-2","target":"mq.example.net.","port":5672,"ttl":60}),
    );
    let srv = answers(&server, "_queue._udp.svc.example.", RecordType::SRV);
    assert_eq!(srv.len(), 2, "{srv:?}");
    assert!(srv.contains(&"0 1 5672 mq.example.net.".to_string()));
    assert!(srv.contains(&"0 1 5672 queue-1.svc.example.".to_string()));
    // Replacing a registration with the same name updates it.
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"queue","protocol":"udp",
        "instance":"queue-1","address":"10.0.0.62","port":5673}),
    );
    assert_eq!(
        answers(&server, "queue-1.svc.example.", RecordType::A),
        ["10.0.0.62"]
    );
}

#[test]
fn deregister_removes_the_instance_from_answers() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    admin.ok(register("web-9", "10.0.0.19"));
    assert!(srv_targets(&server).contains(&"web-9.svc.example.".into()));
    admin.ok(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-9"}));
    assert!(!srv_targets(&server).contains(&"web-9.svc.example.".into()));
    assert_eq!(
        rcode(&server, "web-9.svc.example.", RecordType::A),
        ResponseCode::NXDomain
    );
    let e = admin
        .error(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-9"}));
    assert!(e.contains("not registered"), "{e}");
    let e = admin
        .error(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-1"}));
    assert!(e.contains("defined by zone file"), "{e}");
}

#[test]
fn list_shows_file_and_runtime_instances() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"web","instance":"web-9",
        "address":"10.0.0.19","port":8080,"ttl":30}),
    );
    let all = admin.ok(json!({"op":"list"}));
    let runtime = instance(&all, "web-9").expect("web-9 listed");
    assert_eq!(runtime["source"], "runtime");
    assert_eq!(runtime["state"], "serving");
    assert_eq!(runtime["ttl"], 30);
    assert!(runtime["expires_in_ms"].as_u64().unwrap() <= 30_000);
    assert_eq!(instance(&all, "web-1").unwrap()["source"], "file");
    assert_eq!(all["instances"].as_array().unwrap().len(), 8);
    let one = admin.ok(json!({"op":"list","zone":"SVC.example."}));
    let names = |v: &Value| -> Vec<String> {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&one), names(&all));
    let e = admin.error(json!({"op":"list","zone":"other.example"}));
    assert!(e.contains("unknown zone \"other.example\""), "{e}");
}

#[test]
fn status_reports_zones_serials_counts_and_uptime() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let before = admin.ok(json!({"op":"status"}));
    let zone = &before["status"]["zones"][0];
    assert_eq!(zone["zone"], "svc.example.");
    assert_eq!(zone["state"], "ok");
    assert_eq!(zone["file_instances"], 7);
    assert_eq!(zone["runtime_instances"], 0);
    assert!(zone["file"].as_str().unwrap().ends_with("svc.example.toml"));
    assert!(before["status"]["uptime_secs"].is_u64());
    assert_eq!(before["status"]["protocol"], 1);

    admin.ok(register("web-9", "10.0.0.19"));
    let after = admin.ok(json!({"v":1,"op":"status"}));
    let zone2 = &after["status"]["zones"][0];
    assert_eq!(zone2["runtime_instances"], 1);
    assert!(zone2["serial"].as_u64() > zone["serial"].as_u64());
}

#[test]
fn every_bad_request_gets_a_clear_error_and_the_connection_stays_up() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let cases: &[(&str, &str)] = &[
        ("{\"op\":\"register\",", "malformed JSON"),
        ("not json at all", "malformed JSON"),
        ("[1,2]", "must be a JSON object"),
        (r#"{"op":"launch"}"#, "unknown op `launch`"),
        (r#"{"zone":"svc.example"}"#, "missing field `op`"),
        (
            r#"{"op":"status","verbose":true}"#,
            "unknown field `verbose`",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","address":"10.0.0.1","port":80,"colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","address":"10.0.0.1"}"#,
            "missing field `port`",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","port":80}"#,
            "missing `address`",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","address":"10.0.0.300","port":80}"#,
            "invalid IP address \"10.0.0.300\"",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","address":"10.0.0.1","port":70000}"#,
            "70000",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w","address":"10.0.0.1","port":80,"protocol":"sctp"}"#,
            "unknown variant `sctp`",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"w_1","address":"10.0.0.1","port":80}"#,
            "instance name \"w_1\"",
        ),
        (
            r#"{"op":"register","zone":"nowhere.example","service":"web","instance":"w","address":"10.0.0.1","port":80}"#,
            "unknown zone \"nowhere.example\"",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"web-1","address":"10.0.0.1","port":80}"#,
            "instance \"web-1\" is defined by zone file",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"web","instance":"db","address":"10.0.0.1","port":80}"#,
            "db.svc.example. is a host in zone file",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"db","instance":"db-1","address":"10.0.0.1","port":80}"#,
            "has host db.svc.example.",
        ),
        (
            r#"{"op":"register","zone":"svc.example","service":"stream","instance":"stream","address":"10.0.0.1","port":80}"#,
            "also its service's name",
        ),
        (r#"{"v":7,"op":"status"}"#, "unsupported protocol version 7"),
        (
            r#"{"op":"heartbeat","zone":"svc.example","service":"web","instance":"ghost"}"#,
            "not registered",
        ),
    ];
    for (line, expected) in cases {
        let reply = admin.raw(line);
        assert_eq!(reply["ok"], false, "{line} -> {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{line}\n  expected an error containing {expected:?}\n  got {error:?}"
        );
    }
    // The same connection still works, and nothing was registered.
    let list = admin.ok(json!({"op":"list"}));
    assert!(instance(&list, "w").is_none());
    assert_eq!(srv_targets(&server).len(), 3);
}

#[test]
fn an_oversized_request_is_refused_and_the_server_stays_up() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let huge = format!(r#"{{"op":"list","zone":"{}"}}"#, "a".repeat(200_000));
    // The server may close before reading everything: the write can fail.
    let reply = admin.send_raw(&huge).or_else(|| admin.read_reply());
    let reply = reply.expect("an error reply before the connection closes");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("too large"),
        "{reply}"
    );
    assert!(admin.read_reply().is_none(), "the connection is closed");
    // A new connection works.
    server.admin().ok(json!({"op":"status"}));
    assert_eq!(srv_targets(&server).len(), 3);
}

/// The SOA serial of svc.example, which each published batch moves on.
fn serial(admin: &mut AdminClient) -> u64 {
    let status = admin.ok(json!({"op":"status"}));
    let zones = status["status"]["zones"].as_array().unwrap();
    let zone = zones.iter().find(|z| z["zone"] == "svc.example.").unwrap();
    zone["serial"].as_u64().unwrap()
}

/// A zone `apex` with these services, each of `instances` instances named
/// `<service>-<i>` at `10.5.<service's place>.<i>`, port 80.
fn large_services_zone(apex: &str, services: &[&str], instances: usize) -> String {
    let mut zone = format!("zone = \"{apex}\"\n");
    for (s, service) in services.iter().enumerate() {
        zone.push_str(&format!("[[services]]\nname = \"{service}\"\nport = 80\n"));
        for i in 0..instances {
            zone.push_str(&format!(
                "[[services.instances]]\nname = \"{service}-{i}\"\naddress = \"10.5.{s}.{i}\"\n"
            ));
        }
    }
    zone
}

/// The SRV answer of `qname` over TCP, as sorted `<port> <target>` lines,
/// targets lowercased.
fn srv_answer(server: &Server, qname: &str) -> Vec<String> {
    let reply = server.tcp(&query(qname, RecordType::SRV));
    let mut got: Vec<String> = (reply.answers.iter())
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::SRV(srv) => Some(format!(
                "{} {}",
                srv.port,
                srv.target.to_lowercase().to_ascii()
            )),
            _ => None,
        })
        .collect();
    got.sort();
    got
}

/// Pipelined registrations into two services of 200 instances each, the
/// two taking turns, so that the writer's batches change both: every SRV
/// answer then holds the file's instances and every registration, once.
#[test]
fn a_batch_into_two_large_services_answers_every_instance_of_each() {
    let zone = large_services_zone("multi.example", &["a", "b"], 200);
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(zones.path().join("multi.example.toml"), zone).unwrap();
    let server = Server::start(zones.path());
    let mut admin = server.admin();
    let lines: Vec<String> = (0..60)
        .map(|i| {
            let (service, s) = [("a", 0), ("b", 1)][i % 2];
            json!({"op":"register","zone":"multi.example","service":service,
                "instance":format!("{service}-r{i}"),"address":format!("10.6.{s}.{i}"),"port":81})
            .to_string()
        })
        .collect();
    admin.write_lines(&lines).unwrap();
    for line in &lines {
        let reply = admin.read_reply().expect("a reply");
        assert_eq!(reply["ok"], true, "{line} -> {reply}");
    }
    for (s, service) in ["a", "b"].iter().enumerate() {
        let got = srv_answer(&server, &format!("_{service}._tcp.multi.example."));
        let mut want: Vec<String> = (0..200)
            .map(|i| format!("80 {service}-{i}.multi.example."))
            .chain(
                (0..60)
                    .filter(|i| i % 2 == s)
                    .map(|i| format!("81 {service}-r{i}.multi.example.")),
            )
            .collect();
        want.sort();
        assert_eq!(got, want, "{service}");
        // A registration's own name answers its address.
        let host = format!("{service}-r{}.multi.example.", 58 + s);
        let reply = server.udp(&query(&host, RecordType::A));
        assert_eq!(reply.answers.len(), 1, "{host}: {reply}");
    }
}

/// Registrations one at a time into a service of 200 file instances, in
/// no order and in either letter case, removed and changed again: each
/// edits the service's last merge (the file's instances first, then the
/// registrations in the order of their lowercased names), and the SRV
/// answer after each holds every instance once.
#[test]
fn registrations_into_a_large_service_in_any_order_answer_each_instance_once() {
    let zone = large_services_zone("edit.example", &["big"], 200);
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(zones.path().join("edit.example.toml"), zone).unwrap();
    let server = Server::start(zones.path());
    let mut admin = server.admin();
    // Name, port: what the service's registrations are now.
    let mut registered: Vec<(String, u16)> = Vec::new();
    let check = |registered: &[(String, u16)], step: &str| {
        let got = srv_answer(&server, "_big._tcp.edit.example.");
        let mut want: Vec<String> = (0..200)
            .map(|i| format!("80 big-{i}.edit.example."))
            .chain(
                (registered.iter())
                    .map(|(name, port)| format!("{port} {}.edit.example.", name.to_lowercase())),
            )
            .collect();
        want.sort();
        assert_eq!(got, want, "after {step}");
    };
    let register = |admin: &mut AdminClient, name: &str, port: u16, k: usize| {
        admin.ok(
            json!({"op":"register","zone":"edit.example","service":"big",
            "instance":name,"address":format!("10.8.0.{k}"),"port":port}),
        );
    };
    for k in [7, 2, 9, 0, 5, 3, 8, 1, 6, 4] {
        let name = match k % 2 {
            0 => format!("r-{k}"),
            _ => format!("R-{k}"),
        };
        register(&mut admin, &name, 81, k);
        registered.push((name.clone(), 81));
        check(&registered, &format!("registering {name}"));
    }
    for k in [3, 7, 0] {
        let name = registered
            .iter()
            .find(|(n, _)| n.ends_with(&format!("-{k}")))
            .unwrap()
            .0
            .clone();
        admin.ok(json!({"op":"deregister","zone":"edit.example","service":"big","instance":name}));
        registered.retain(|(n, _)| *n != name);
        check(&registered, &format!("deregistering {name}"));
    }
    // A registration changed in place, and one taken back in another case.
    register(&mut admin, "R-5", 82, 5);
    registered.iter_mut().find(|(n, _)| n == "R-5").unwrap().1 = 82;
    check(&registered, "changing R-5");
    register(&mut admin, "R-3", 83, 3);
    registered.push(("R-3".into(), 83));
    check(&registered, "registering R-3 again");
}

/// A service of registrations alone is spelled as its first registration
/// (in the order of instance names) spells it: a registration that comes
/// first, or leaves, changes the spelling of a service of 70, whose merge
/// is edited rather than made again.
#[test]
fn a_large_service_of_registrations_is_spelled_as_its_first_registration() {
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(
        zones.path().join("spell.example.toml"),
        "zone = \"spell.example\"\n",
    )
    .unwrap();
    let server = Server::start(zones.path());
    let mut admin = server.admin();
    let register = |service: &str, instance: &str, k: usize| {
        json!({"op":"register","zone":"spell.example","service":service,
            "instance":instance,"address":format!("10.9.0.{k}"),"port":80})
    };
    let lines: Vec<String> = (0..70)
        .map(|k| register("api", &format!("a-{k:02}"), k).to_string())
        .collect();
    admin.write_lines(&lines).unwrap();
    for line in &lines {
        let reply = admin.read_reply().expect("a reply");
        assert_eq!(reply["ok"], true, "{line} -> {reply}");
    }
    let browsed = || {
        let reply = server.udp(&query(
            "_services._dns-sd._udp.spell.example.",
            RecordType::PTR,
        ));
        (reply.answers.iter())
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::PTR(ptr) => Some(ptr.0.to_ascii()),
                _ => None,
            })
            .collect::<Vec<String>>()
    };
    assert_eq!(browsed(), ["_api._tcp.spell.example."]);
    // Named to come first.
    admin.ok(register("API", "0-first", 100));
    assert_eq!(browsed(), ["_API._tcp.spell.example."]);
    admin
        .ok(json!({"op":"deregister","zone":"spell.example","service":"API","instance":"0-first"}));
    assert_eq!(browsed(), ["_api._tcp.spell.example."]);
}

#[test]
fn pipelined_requests_get_their_replies_in_order() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let before = serial(&mut admin);
    let name = |i: usize| format!("p-{i}");
    let mut lines: Vec<String> = (0..100)
        .map(|i| register(&name(i), &format!("10.1.{}.{}", i / 250, i % 250 + 1)).to_string())
        .collect();
    // A heartbeat succeeds only if the registry saw its registration first.
    lines.insert(
        1,
        json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"p-0"}).to_string(),
    );
    lines.insert(50, "not json at all".into());
    lines.push(String::new());
    lines.push(json!({"op":"list","zone":"svc.example"}).to_string());
    admin.write_lines(&lines).unwrap();

    let mut registered = 0;
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let reply = admin.read_reply().expect("a reply for every request line");
        if i == 50 {
            assert_eq!(reply["ok"], false, "{line} -> {reply}");
            assert!(
                reply["error"].as_str().unwrap().contains("malformed JSON"),
                "{reply}"
            );
            continue;
        }
        assert_eq!(reply["ok"], true, "{line} -> {reply}");
        if i == 1 {
            assert_eq!(reply["instance"]["instance"], "p-0", "{line} -> {reply}");
        } else if i == lines.len() - 1 {
            // The list, written after every registration, sees them all.
            for n in 0..100 {
                assert!(
                    instance(&reply, &name(n)).is_some(),
                    "{} not listed",
                    name(n)
                );
            }
        } else {
            assert_eq!(
                reply["instance"]["instance"],
                name(registered),
                "{line} -> {reply}"
            );
            registered += 1;
        }
    }
    assert_eq!(registered, 100);
    // The connection stays usable, and requests written together shared
    // the registry's batches: one at a time, each of the 100 would have
    // been published on its own, moving the serial on by at least 100.
    let after = serial(&mut admin);
    assert!(after - before < 100, "serial {before} -> {after}");
}

#[test]
fn an_oversized_request_is_refused_after_the_replies_before_it() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let mut lines: Vec<String> = (0..10)
        .map(|i| register(&format!("p-{i}"), &format!("10.1.0.{}", i + 1)).to_string())
        .collect();
    lines.push(format!(
        r#"{{"op":"list","zone":"{}"}}"#,
        "a".repeat(200_000)
    ));
    lines.push(register("late", "10.1.1.1").to_string());
    // The server closes before reading everything: the write may fail.
    let _ = admin.write_lines(&lines);
    for i in 0..10 {
        let reply = admin
            .read_reply()
            .expect("the replies before the long line");
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["instance"]["instance"], format!("p-{i}"), "{reply}");
    }
    let reply = admin
        .read_reply()
        .expect("an error reply before the connection closes");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("too large"),
        "{reply}"
    );
    assert!(admin.read_reply().is_none(), "the connection is closed");
    // Nothing after the long line was read as a request.
    let list = server.admin().ok(json!({"op":"list"}));
    assert!(instance(&list, "p-9").is_some());
    assert!(instance(&list, "late").is_none());
}

#[test]
fn a_ttl_instance_expires_without_heartbeats_and_returns_with_one() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    let registered = Instant::now();
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"web","instance":"web-9",
        "address":"10.0.0.19","port":8080,"ttl":1}),
    );
    assert!(srv_targets(&server).contains(&"web-9.svc.example.".into()));
    let web9 = || srv_targets(&server).contains(&"web-9.svc.example.".into());
    assert!(
        eventually(Duration::from_secs(5), || !web9()),
        "web-9 expires"
    );
    let took = registered.elapsed();
    assert!(took >= Duration::from_millis(950), "expired after {took:?}");
    assert!(took < Duration::from_millis(1900), "expired after {took:?}");
    assert_eq!(
        rcode(&server, "web-9.svc.example.", RecordType::A),
        ResponseCode::NXDomain
    );
    let list = admin.ok(json!({"op":"list"}));
    assert_eq!(instance(&list, "web-9").unwrap()["state"], "expired");

    // A heartbeat brings it back at once.
    let reply =
        admin.ok(json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9"}));
    assert_eq!(reply["instance"]["state"], "serving");
    assert!(web9());

    // Heartbeats within the TTL keep it.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        admin.ok(json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9","protocol":"tcp"}));
        assert!(web9(), "served while heartbeats come");
        std::thread::sleep(Duration::from_millis(300));
    }
    // And a new registration also brings an expired one back.
    assert!(eventually(Duration::from_secs(5), || !web9()));
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"web","instance":"web-9",
        "address":"10.0.0.19","port":8080,"ttl":1}),
    );
    assert!(web9());
}

#[test]
fn an_expired_registration_is_removed_after_the_reaping_age_and_stays_removed() {
    let admin_dir = tempfile::tempdir().unwrap();
    let reap = ["--reap-expired-after", "1"];
    let mut server = Server::start_admin(&example_zones(), admin_dir.path(), &reap);
    let mut admin = server.admin();
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"web","instance":"web-9",
        "address":"10.0.0.19","port":8080,"ttl":1}),
    );
    admin.ok(register("web-10", "10.0.0.20"));
    // Expired after 1 s, removed 1 s later, and the log says so.
    assert!(server.wait_for_log("registration removed", Duration::from_secs(10)));
    let list = admin.ok(json!({"op":"list"}));
    assert!(instance(&list, "web-9").is_none(), "{list}");
    assert!(instance(&list, "web-10").is_some(), "no TTL: never reaped");
    let e = admin
        .error(json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9"}));
    assert!(e.contains("not registered"), "{e}");
    drop(admin);
    assert!(server.stop().success());
    // The removal was saved: not back after a restart.
    let server = Server::start_admin(&example_zones(), admin_dir.path(), &reap);
    let list = server.admin().ok(json!({"op":"list"}));
    assert!(instance(&list, "web-9").is_none(), "{list}");
    assert!(instance(&list, "web-10").is_some(), "{list}");
}

#[test]
fn registrations_survive_a_restart() {
    let admin_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    let mut admin = server.admin();
    admin.ok(register("web-9", "10.0.0.19"));
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"web","instance":"web-10",
        "address":"10.0.0.20","port":8080,"ttl":30}),
    );
    admin.ok(register("web-11", "10.0.0.21"));
    admin.ok(json!({"op":"deregister","zone":"svc.example","service":"web","instance":"web-11"}));
    drop(admin);
    assert!(server.stop().success());
    assert!(
        !server.socket.exists(),
        "the socket is removed on a clean shutdown"
    );

    let server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    let targets = srv_targets(&server);
    assert!(
        targets.contains(&"web-9.svc.example.".into()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"web-10.svc.example.".into()),
        "{targets:?}"
    );
    assert!(
        !targets.contains(&"web-11.svc.example.".into()),
        "{targets:?}"
    );
    // A TTL instance gets a fresh TTL after the restart.
    let list = server.admin().ok(json!({"op":"list"}));
    assert_eq!(instance(&list, "web-10").unwrap()["state"], "serving");
}

#[test]
fn an_expired_instance_stays_expired_across_a_restart() {
    let admin_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    server
        .admin()
        .ok(json!({"op":"register","zone":"svc.example","service":"web",
        "instance":"web-9","address":"10.0.0.19","port":8080,"ttl":1}));
    let mut admin = server.admin();
    assert!(eventually(Duration::from_secs(5), || {
        instance(&admin.ok(json!({"op":"list"})), "web-9").unwrap()["state"] == "expired"
    }));
    server.kill_9();
    let server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    assert!(!srv_targets(&server).contains(&"web-9.svc.example.".into()));
    server
        .admin()
        .ok(json!({"op":"heartbeat","zone":"svc.example","service":"web","instance":"web-9"}));
    assert!(srv_targets(&server).contains(&"web-9.svc.example.".into()));
}

#[test]
fn every_acknowledged_registration_survives_kill_9() {
    let admin_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    // Several clients stream registrations until the server dies.
    let streams: Vec<_> = (0..3)
        .map(|client| {
            let socket = server.socket.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut admin = AdminClient::connect(&socket);
                for n in 0.. {
                    let name = format!("k{client}-{n}");
                    let line = json!({"op":"register","zone":"svc.example","service":"stream",
                        "instance":name,"address":format!("10.1.{client}.{}", n % 250 + 1),"port":9000})
                    .to_string();
                    match admin.send_raw(&line) {
                        Some(reply) if reply["ok"] == true => acked.lock().unwrap().push(name),
                        Some(reply) => panic!("refused: {reply}"),
                        None => return,
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || acked
        .lock()
        .unwrap()
        .len()
        >= 150));
    server.kill_9();
    for s in streams {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // The killed server left its socket behind: a stale socket is replaced.
    assert!(server.socket.exists());
    let server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    let list = server.admin().ok(json!({"op":"list"}));
    let missing: Vec<&String> = acked
        .iter()
        .filter(|name| instance(&list, name).is_none())
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    // Over TCP: that many SRV records do not fit a UDP answer.
    let srv = server
        .tcp(&query("_stream._tcp.svc.example.", RecordType::SRV))
        .answers;
    assert!(
        srv.len() >= acked.len(),
        "{} answers, {} acked",
        srv.len(),
        acked.len()
    );
}

#[test]
fn a_corrupt_state_file_stops_the_server_with_an_error_naming_it() {
    let admin_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    server.admin().ok(register("web-9", "10.0.0.19"));
    server.kill_9();
    let (_, state) = admin_paths(admin_dir.path());
    let full = std::fs::read(&state).unwrap();
    std::fs::write(&state, &full[..full.len() - 20]).unwrap();

    let (status, stderr) = serve_failure(&example_zones(), admin_dir.path(), &[]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("state file {} is corrupt", state.display())),
        "{stderr}"
    );
    // Nothing was written over it.
    assert_eq!(std::fs::read(&state).unwrap(), &full[..full.len() - 20]);

    std::fs::write(&state, "").unwrap();
    let (_, stderr) = serve_failure(&example_zones(), admin_dir.path(), &[]);
    assert!(stderr.contains("is corrupt: the file is empty"), "{stderr}");
}

#[test]
fn the_socket_is_owner_and_group_only() {
    let server = Server::start(&example_zones());
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "mode {:o}", mode & 0o777);
}

#[test]
fn the_server_refuses_a_socket_path_that_is_not_a_stale_socket() {
    let admin_dir = tempfile::tempdir().unwrap();
    let (socket, _) = admin_paths(admin_dir.path());

    std::fs::write(&socket, "precious").unwrap();
    let (status, stderr) = serve_failure(&example_zones(), admin_dir.path(), &[]);
    assert!(!status.success());
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
    std::fs::remove_file(&socket).unwrap();

    // A socket with a live server behind it. The second server has a state
    // file of its own (the lock on a shared one would stop it first), and
    // reaches the same socket through a hard link.
    let first = Server::start_admin(&example_zones(), admin_dir.path(), &[]);
    let second_dir = tempfile::tempdir().unwrap();
    let (second_socket, _) = admin_paths(second_dir.path());
    std::fs::hard_link(&first.socket, &second_socket).unwrap();
    let (status, stderr) = serve_failure(&example_zones(), second_dir.path(), &[]);
    assert!(!status.success());
    assert!(stderr.contains("in use by a running server"), "{stderr}");
}

#[test]
fn a_zone_file_that_takes_a_registered_name_wins() {
    let zones = zones_copy();
    let server = Server::start(zones.path());
    let mut admin = server.admin();
    admin.ok(register("web-9", "10.0.0.19"));
    let file = zones.path().join("svc.example.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        original.replace("[hosts]\n", "[hosts]\nweb-9 = \"10.9.9.9\"\n"),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        answers(&server, "web-9.svc.example.", RecordType::A) == ["10.9.9.9"]
    }));
    let list = admin.ok(json!({"op":"list"}));
    let web9 = instance(&list, "web-9").unwrap();
    assert_eq!(web9["state"], "shadowed");
    assert!(
        web9["reason"]
            .as_str()
            .unwrap()
            .contains("is a host in zone file")
    );
    assert!(!srv_targets(&server).contains(&"web-9.svc.example.".into()));

    // Reverting the file serves the registration again.
    std::fs::write(&file, original).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        srv_targets(&server).contains(&"web-9.svc.example.".into())
    }));
    assert_eq!(
        answers(&server, "web-9.svc.example.", RecordType::A),
        ["10.0.0.19"]
    );
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_cli_registers_lists_and_deregisters() {
    let server = Server::start(&example_zones());
    let out = server.cli(&[
        "register",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-9",
        "--address",
        "10.0.0.19",
        "--address",
        "fd00::19",
        "--port",
        "8080",
        "--ttl",
        "30",
        "--tag",
        "canary",
        "--weight",
        "3",
        "--priority",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("registered web-9"),
        "{}",
        stdout(&out)
    );
    let srv = dig(&server, &["+short", "_web._tcp.svc.example", "SRV"]);
    assert!(srv.contains("1 3 8080 web-9.svc.example."), "{srv}");

    let out = server.cli(&[
        "register",
        "--zone",
        "svc.example",
        "--service",
        "mail",
        "--instance",
        "mx-2",
        "--target",
        "mx2.example.net.",
        "--port",
        "25",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let table = stdout(&server.cli(&["list"]));
    let header = table.lines().next().unwrap();
    for column in [
        "ZONE", "SERVICE", "PROTO", "INSTANCE", "ADDRESS", "PORT", "TTL", "SOURCE", "STATE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.contains("web-9"))
        .expect("web-9 listed");
    for cell in [
        "svc.example.",
        "web",
        "tcp",
        "10.0.0.19,fd00::19",
        "8080",
        "30s",
        "runtime",
        "serving",
    ] {
        assert!(row.contains(cell), "{row}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.contains("mx-2") && l.contains("-> mx2.example.net."))
    );
    // Columns line up: every row has STATE where the header has it.
    let at = header.find("STATE").unwrap();
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.len() > at && &l[at - 2..at] == "  ")
    );

    let json: Value = serde_json::from_str(&stdout(&server.cli(&[
        "list",
        "--zone",
        "svc.example",
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(instance(&json, "web-9").unwrap()["tags"], json!(["canary"]));

    let out = server.cli(&[
        "heartbeat",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("renewed web-9"));

    let out = server.cli(&[
        "deregister",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dig(&server, &["+short", "_web._tcp.svc.example", "SRV"]).contains("web-9"));
}

#[test]
fn the_cli_shows_status_as_a_table_or_json() {
    let server = Server::start(&example_zones());
    let out = server.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("signpost "), "{text}");
    assert!(text.contains("up "), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("ZONE"))
        .expect("a table");
    assert!(
        header.contains("SERIAL") && header.contains("STATE"),
        "{header}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("svc.example."))
        .unwrap();
    assert!(
        row.contains("svc.example.toml") && row.contains(" ok "),
        "{row}"
    );

    let json: Value = serde_json::from_str(&stdout(&server.cli(&["status", "--json"]))).unwrap();
    assert_eq!(json["status"]["zones"][0]["zone"], "svc.example.");
}

#[test]
fn a_stale_zone_keeps_the_status_columns_and_says_why_below() {
    let zones = tempfile::tempdir().unwrap();
    let file = zones.path().join("svc.example.toml");
    std::fs::copy(example_zones().join("svc.example.toml"), &file).unwrap();
    let server = Server::start(zones.path());
    std::fs::write(&file, "zone = \"svc.example\"\nttl = \"soon\"\n").unwrap();
    assert!(server.wait_for_log("zone file rejected", Duration::from_secs(10)));
    let text = stdout(&server.cli(&["status"]));
    let header = text.lines().find(|l| l.starts_with("ZONE")).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("svc.example."))
        .unwrap();
    // The row has as many columns as the header: the error is not in it.
    assert_eq!(
        row.split_whitespace().count(),
        header.split_whitespace().count(),
        "{text}"
    );
    assert!(row.contains(" stale "), "{row}");
    let why = text
        .lines()
        .find(|l| l.contains("svc.example.toml:2:"))
        .expect("the error below the table");
    assert!(why.starts_with("svc.example.: stale: "), "{why}");
}

#[test]
fn cli_errors_go_to_stderr_with_a_non_zero_exit() {
    let server = Server::start(&example_zones());
    let out = server.cli(&[
        "register",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-1",
        "--address",
        "10.0.0.1",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).starts_with("signpost: instance \"web-1\" is defined by zone file"),
        "{}",
        stderr(&out)
    );

    let out = server.cli(&[
        "register",
        "--zone",
        "svc.example",
        "--service",
        "web",
        "--instance",
        "web-9",
        "--address",
        "nope",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid IP address \"nope\""));
}

#[test]
fn the_cli_names_the_socket_when_no_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = cli(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to {}", socket.display())),
        "{err}"
    );
    assert!(err.contains("is 'signpost serve' running?"), "{err}");
}

#[test]
fn the_server_and_the_cli_share_the_socket_from_the_environment() {
    let admin_dir = tempfile::tempdir().unwrap();
    let socket = admin_dir.path().join("env.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--zones",
        ])
        .arg(example_zones())
        .arg("--state")
        .arg(admin_dir.path().join("state.json"))
        .env("SIGNPOST_SOCKET", &socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(20), || {
        std::process::Command::new(env!("CARGO_BIN_EXE_signpost"))
            .arg("status")
            .env("SIGNPOST_SOCKET", &socket)
            .output()
            .unwrap()
            .status
            .success()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the CLI reaches the server through SIGNPOST_SOCKET");
}

#[test]
fn registrations_cannot_take_each_others_names() {
    let server = Server::start(&example_zones());
    let mut admin = server.admin();
    admin.ok(register("web-9", "10.0.0.19"));
    let e = admin.error(json!({"op":"register","zone":"svc.example","service":"api",
        "instance":"web-9","address":"10.0.0.20","port":9000}));
    assert!(
        e.contains("already registered for service \"web\" (tcp)"),
        "{e}"
    );
    let e = admin.error(
        json!({"op":"register","zone":"svc.example","service":"web-9",
        "instance":"w-1","address":"10.0.0.20","port":9000}),
    );
    assert!(e.contains("registered instance \"web-9\""), "{e}");
    // The first registration is untouched.
    assert_eq!(
        answers(&server, "web-9.svc.example.", RecordType::A),
        ["10.0.0.19"]
    );
}

#[test]
fn a_registration_whose_names_would_not_fit_is_refused_and_the_server_stays_up() {
    // A 237-byte apex: `_<63 letters>._tcp.<apex>` cannot be a DNS name.
    let apex = vec!["a".repeat(58); 4].join(".");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("long.toml"),
        format!("zone = \"{apex}\"\n[hosts]\nns = \"10.0.0.1\"\n"),
    )
    .unwrap();
    let server = Server::start(dir.path());
    let mut admin = server.admin();
    let e = admin.error(json!({"op":"register","zone":apex,"service":"s".repeat(63),
        "instance":"i","address":"10.0.0.9","port":80}));
    assert!(e.contains("too long"), "{e}");
    let e = admin.error(json!({"op":"register","zone":apex,"service":"s",
        "instance":"i".repeat(20),"address":"10.0.0.9","port":80}));
    assert!(e.contains("too long"), "{e}");
    // Still serving, and still taking registrations.
    admin.ok(
        json!({"op":"register","zone":apex,"service":"s","instance":"i",
        "address":"10.0.0.9","port":80}),
    );
    let reply = server.udp(&query(&format!("i.{apex}."), RecordType::A));
    assert_eq!(reply.answers.len(), 1);
}

#[test]
fn idle_connections_cannot_lock_the_admin_socket_out() {
    let server = Server::start(&example_zones());
    // More idle connections than the server serves at once (64), each made
    // and kept open, sending nothing.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..80)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.socket).unwrap())
        .collect();
    // The server has seen every one of them before the requests below.
    let mut last = server.admin();
    last.ok(json!({"op":"status"}));

    let out = server.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut fresh = server.admin();
    fresh.ok(register("web-9", "10.0.0.19"));
    // The connection that was in use a moment ago is still served.
    last.ok(json!({"op":"status"}));

    // The idlest, the first one, was closed to make room.
    use std::io::Read;
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(first.read(&mut buf).unwrap(), 0, "closed without a reply");
}

#[test]
fn registrations_into_a_large_zone_are_answered_and_leave_the_rest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("zone = \"svc.example\"\n");
    for s in 0..3000 {
        text.push_str(&format!("[[services]]\nname = \"svc-{s}\"\nport = 80\n"));
        for i in 0..3 {
            text.push_str(&format!(
                "[[services.instances]]\nname = \"i-{s}-{i}\"\naddress = \"10.{i}.{}.{}\"\n",
                s / 250,
                s % 250 + 1
            ));
        }
    }
    std::fs::write(dir.path().join("svc.example.toml"), text).unwrap();
    let server = Server::start(dir.path());
    let srv = |name: &str| -> Vec<String> {
        let mut t = answers(&server, name, RecordType::SRV);
        t.sort();
        t
    };
    let before = srv("_svc-1500._tcp.svc.example.");
    assert_eq!(before.len(), 3);
    let mut admin = server.admin();
    // Into a service of the file, and into a new one.
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"svc-7",
        "instance":"extra-7","address":"10.9.0.7","port":81}),
    );
    admin.ok(
        json!({"op":"register","zone":"svc.example","service":"fresh",
        "instance":"fresh-1","address":"10.9.0.8","port":82}),
    );
    let seven = srv("_svc-7._tcp.svc.example.");
    assert_eq!(seven.len(), 4, "{seven:?}");
    assert!(
        seven.iter().any(|t| t.contains("extra-7.svc.example.")),
        "{seven:?}"
    );
    assert_eq!(srv("_fresh._tcp.svc.example.").len(), 1);
    assert_eq!(
        answers(&server, "extra-7.svc.example.", RecordType::A),
        ["10.9.0.7"]
    );
    // DNS-SD lists the new service type; other services are as they were.
    let enumeration = server.tcp(&query(
        "_services._dns-sd._udp.svc.example.",
        RecordType::PTR,
    ));
    let types: Vec<String> = enumeration
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    assert!(
        types.iter().any(|t| t == "_fresh._tcp.svc.example."),
        "{} types, first {:?}, last {:?}",
        types.len(),
        types.first(),
        types.last()
    );
    assert_eq!(srv("_svc-1500._tcp.svc.example."), before);
    // And out again.
    admin
        .ok(json!({"op":"deregister","zone":"svc.example","service":"svc-7","instance":"extra-7"}));
    admin
        .ok(json!({"op":"deregister","zone":"svc.example","service":"fresh","instance":"fresh-1"}));
    assert_eq!(srv("_svc-7._tcp.svc.example.").len(), 3);
    assert_eq!(
        rcode(&server, "_fresh._tcp.svc.example.", RecordType::SRV),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(&server, "extra-7.svc.example.", RecordType::A),
        ResponseCode::NXDomain
    );
}

#[test]
fn batches_into_a_large_service_with_shared_addresses_are_answered_as_registered() {
    // A service of 200 instances, two to an address (two on each host).
    let dir = tempfile::tempdir().unwrap();
    let mut text =
        String::from("zone = \"svc.example\"\n[[services]]\nname = \"web\"\nport = 80\n");
    let mut expected: std::collections::BTreeMap<String, String> = (0..200)
        .map(|i| (format!("f-{i:03}"), format!("10.0.0.{}", i / 2 + 1)))
        .collect();
    for (name, address) in &expected {
        text.push_str(&format!(
            "[[services.instances]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    std::fs::write(dir.path().join("svc.example.toml"), text).unwrap();
    let server = Server::start(dir.path());
    let mut admin = server.admin();
    // Registrations, each a third of them on a host of the file's: written
    // together, so that one batch changes the service in many places.
    let address = |k: usize| match k % 3 {
        0 => format!("10.0.0.{}", k % 100 + 1),
        _ => format!("10.0.1.{k}"),
    };
    let batch = |admin: &mut AdminClient, lines: Vec<Value>| {
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        admin.write_lines(&text).unwrap();
        for line in &lines {
            let reply = admin.read_reply().expect("a reply");
            assert_eq!(reply["ok"], true, "{line} -> {reply}");
        }
    };
    let check = |expected: &std::collections::BTreeMap<String, String>, when: &str| {
        let mut targets: Vec<String> = (server
            .tcp(&query("_web._tcp.svc.example.", RecordType::SRV))
            .answers
            .iter())
        .map(|r| r.data.to_string().rsplit(' ').next().unwrap().to_string())
        .collect();
        targets.sort();
        let hosts: Vec<String> = expected
            .keys()
            .map(|n| format!("{n}.svc.example."))
            .collect();
        assert_eq!(targets, hosts, "{when}");
        let mut addresses: Vec<String> = (server
            .tcp(&query("web.svc.example.", RecordType::A))
            .answers
            .iter())
        .map(|r| r.data.to_string())
        .collect();
        addresses.sort();
        let mut want: Vec<String> = expected.values().cloned().collect();
        want.sort();
        want.dedup();
        assert_eq!(addresses, want, "{when}");
        for (name, address) in expected {
            let host = format!("{name}.svc.example.");
            let got = answers(&server, &host, RecordType::A);
            assert_eq!(got, std::slice::from_ref(address), "{when}");
        }
    };
    let one = |k: usize| register(&format!("r-{k:02}"), &address(k));
    batch(&mut admin, (0..40).step_by(2).map(one).collect());
    expected.extend(
        (0..40)
            .step_by(2)
            .map(|k| (format!("r-{k:02}"), address(k))),
    );
    check(&expected, "after the even ones");
    // In between those: a run of changed instances per registration.
    batch(&mut admin, (1..40).step_by(2).map(one).collect());
    expected.extend(
        (1..40)
            .step_by(2)
            .map(|k| (format!("r-{k:02}"), address(k))),
    );
    check(&expected, "after the odd ones");
    // And out again, every third, leaving addresses held by others in and
    // taking those held by no one else out.
    let out: Vec<usize> = (0..40).step_by(3).collect();
    batch(
        &mut admin,
        (out.iter())
            .map(|k| json!({"op":"deregister","zone":"svc.example","service":"web","instance":format!("r-{k:02}")}))
            .collect(),
    );
    for k in &out {
        expected.remove(&format!("r-{k:02}"));
    }
    check(&expected, "after the deregistrations");
}
