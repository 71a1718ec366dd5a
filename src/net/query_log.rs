//! The query log: one JSON line per query (or one in N), written by a
//! thread of its own.
//!
//! The query path only copies the question's name and a few numbers into a
//! bounded channel and never waits: when the writer falls behind (a slow
//! disk, a pipe nobody reads), lines are dropped and counted in
//! `signpost_query_log_dropped_total`, and queries are answered as fast as
//! ever. With no query log configured, the cost is one load of a pointer.

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Instant, SystemTime};

use crate::answer::wire::HEADER_LEN;
use crate::metrics::dns::{self, PROTOS, Proto};

/// Lines waiting for the writer at most; beyond this they are dropped.
pub const CAPACITY: usize = 4096;

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`--query-log -`).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The query log in force, set once at start-up.
static LOG: OnceLock<QueryLog> = OnceLock::new();

struct QueryLog {
    lines: SyncSender<Entry>,
    /// Log one query in this many.
    sample: u64,
}

thread_local! {
    /// Queries seen by this thread, for sampling without a shared counter.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// What one line says, copied from the query and response as they are.
struct Entry {
    at: SystemTime,
    client: SocketAddr,
    /// The question name in wire format (or as much of it as the query had).
    name: [u8; 255],
    name_len: u8,
    qtype: Option<u16>,
    rcode: &'static str,
    answers: u16,
    micros: u64,
    proto: Proto,
}

/// Opens `target` and starts the writer; every query is logged from then on
/// (one in `sample`). Call once.
pub fn start(target: &Target, sample: u64) -> io::Result<()> {
    let out: Box<dyn Write + Send> = match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            // Owner and group only: the log holds every client's address
            // and what it looked up.
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)?;
            Box::new(file)
        }
    };
    let (lines, rx) = sync_channel(CAPACITY);
    std::thread::Builder::new()
        .name("query-log".into())
        .spawn(move || write_lines(rx, BufWriter::with_capacity(64 * 1024, out)))?;
    let _ = LOG.set(QueryLog {
        lines,
        sample: sample.max(1),
    });
    Ok(())
}

/// Logs one answered query, if the query log is on and this query is
/// sampled. Never blocks.
pub fn record(client: SocketAddr, query: &[u8], response: &[u8], proto: Proto, since: Instant) {
    let Some(log) = LOG.get() else {
        return;
    };
    if log.sample > 1 {
        let seen = SEEN.get();
        SEEN.set(seen.wrapping_add(1));
        if !seen.is_multiple_of(log.sample) {
            return;
        }
    }
    let mut entry = Entry {
        at: SystemTime::now(),
        client,
        name: [0; 255],
        name_len: 0,
        qtype: dns::query_type(query),
        rcode: dns::rcode_name(response),
        answers: response
            .get(6..8)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
        micros: since.elapsed().as_micros() as u64,
        proto,
    };
    let name = question_name(query);
    entry.name[..name.len()].copy_from_slice(name);
    entry.name_len = name.len() as u8;
    if log.lines.try_send(entry).is_err() {
        crate::metrics::global().query_log_dropped.inc();
    }
}

/// The bytes of the question name, up to 255, without looking inside.
fn question_name(query: &[u8]) -> &[u8] {
    let rest = query.get(HEADER_LEN..).unwrap_or_default();
    let mut at = 0;
    while let Some(&len) = rest.get(at) {
        if len == 0 || len & 0xC0 != 0 || at + 1 + len as usize > rest.len().min(255) {
            break;
        }
        at += 1 + len as usize;
    }
    &rest[..at]
}

fn write_lines(rx: Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>) {
    let mut line = String::with_capacity(256);
    loop {
        // Flush only when nothing waits, so a burst is one write.
        let entry = match rx.try_recv() {
            Ok(entry) => entry,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    return;
                }
                match rx.recv() {
                    Ok(entry) => entry,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        line.clear();
        entry.write_json(&mut line);
        if out.write_all(line.as_bytes()).is_err() {
            // Standard output closed or the disk gone: nothing more to do,
            // and the channel filling up counts what is lost.
            return;
        }
    }
}

impl Entry {
    fn write_json(&self, line: &mut String) {
        use std::fmt::Write as _;
        let name = name_text(&self.name[..usize::from(self.name_len)]);
        let qtype = match self.qtype {
            Some(t) => match dns::type_name(Some(t)) {
                "other" => format!("TYPE{t}"),
                known => known.to_string(),
            },
            None => "unknown".into(),
        };
        let _ = writeln!(
            line,
            r#"{{"time":"{}","client":"{}","name":{},"type":"{}","rcode":"{}","answers":{},"micros":{},"proto":"{}"}}"#,
            crate::utc::rfc3339(self.at, true),
            self.client,
            serde_json::Value::String(name),
            qtype,
            self.rcode,
            self.answers,
            self.micros,
            PROTOS[self.proto as usize],
        );
    }
}

/// A wire-format name in presentation format, as dig prints it: `a.b.`,
/// with dots and backslashes in labels escaped and other unprintable bytes
/// as `\DDD`.
fn name_text(wire: &[u8]) -> String {
    let mut text = String::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at).filter(|&&len| len != 0) {
        let label = wire
            .get(at + 1..at + 1 + usize::from(len))
            .unwrap_or_default();
        for &b in label {
            match b {
                b'.' | b'\\' => {
                    text.push('\\');
                    text.push(b as char);
                }
                0x21..=0x7E => text.push(b as char),
                _ => text.push_str(&format!("\\{b:03}")),
            }
        }
        text.push('.');
        at += 1 + usize::from(len);
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_as_dig_does() {
        assert_eq!(
            name_text(b"\x03web\x03svc\x07example\x00"),
            "web.svc.example."
        );
        assert_eq!(name_text(b"\x00"), ".");
        assert_eq!(name_text(b"\x03a.b\x02\x01\"\x00"), "a\\.b.\\001\".");
    }

    #[test]
    fn the_name_stops_at_the_end_of_the_query() {
        let mut query = vec![0u8; 12];
        query.extend_from_slice(b"\x03web\x03sv");
        assert_eq!(question_name(&query), b"\x03web");
    }
}
