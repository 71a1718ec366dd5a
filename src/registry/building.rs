//! Zone builds away from the writer.
//!
//! Building a zone from a file of 100 000 services takes seconds. Were the
//! writer to do it, every registration, into any zone, would wait for it.
//! So once the writer runs, a zone file's build runs on a thread of its own
//! and comes back to the writer as a [`Built`], while the writer goes on
//! with the other zones. Until it is back, the zone is served as it was,
//! whole: its changes meanwhile (registrations, expiries, health) are kept
//! in the registry and marked, and are applied to the new version when it
//! is installed. A file change therefore appears at once, never in part.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::Registry;
use super::served::BuildInput;
use crate::answer::live::LiveZone;

/// A zone built away from the writer, for [`super::Registry::install`].
pub struct Built {
    key: Vec<u8>,
    generation: u64,
    /// `None`: the build panicked (a bug), and the zone keeps serving
    /// what it served, rather than waiting for a build that never comes.
    live: Option<LiveZone>,
}

/// Where builds run, and which are running.
#[derive(Default)]
pub(super) struct Builds {
    /// Where finished builds go; `None`: builds run in place (at start-up,
    /// where nothing else waits, and in tests of the registry alone).
    done: Option<mpsc::UnboundedSender<Built>>,
    /// The build each zone waits for, by zone key: a later file version
    /// supersedes an earlier one still running.
    running: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Builds {
    /// From now on, builds run on threads of their own and are sent here.
    pub(super) fn in_background(&mut self) -> mpsc::UnboundedReceiver<Built> {
        let (done, finished) = mpsc::unbounded_channel();
        self.done = Some(done);
        finished
    }

    /// Builds the zone `key`: in place (returned), or on a thread of its own
    /// (`None`; the result comes back as a [`Built`]).
    pub(super) fn start(&mut self, key: &[u8], input: BuildInput) -> Option<LiveZone> {
        let Some(done) = self.done.clone() else {
            return Some(input.run());
        };
        self.next += 1;
        let generation = self.next;
        // Handed over through a slot, so that it is still here to build in
        // place if no thread can be had.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(input)));
        let theirs = slot.clone();
        let for_thread = key.to_vec();
        let spawned = std::thread::Builder::new()
            .name("zone-build".into())
            .spawn(move || {
                let input = theirs.lock().map(|mut s| s.take());
                if let Ok(Some(input)) = input {
                    let run = std::panic::AssertUnwindSafe(|| input.run());
                    // The writer gone means the server is stopping.
                    let _ = done.send(Built {
                        key: for_thread,
                        generation,
                        live: std::panic::catch_unwind(run).ok(),
                    });
                }
            });
        match spawned {
            Ok(_) => {
                self.running.insert(key.to_vec(), generation);
                None
            }
            Err(error) => {
                warn!(%error, "no thread for a zone build; building it on the writer");
                let input = slot.lock().ok().and_then(|mut s| s.take());
                input.map(BuildInput::run)
            }
        }
    }

    /// Whether the zone `key` waits for a build: its changes wait with it.
    pub(super) fn is_running(&self, key: &[u8]) -> bool {
        self.running.contains_key(key)
    }

    /// Takes a finished build: its zone key and what was built, if it is
    /// the one the zone waits for (else a later one superseded it).
    #[allow(clippy::type_complexity)]
    pub(super) fn finish(
        &mut self,
        built: Built,
    ) -> (Vec<u8>, Result<Option<LiveZone>, Option<LiveZone>>) {
        let Built {
            key,
            generation,
            live,
        } = built;
        if self.running.get(&key) == Some(&generation) {
            self.running.remove(&key);
            (key, Ok(live))
        } else {
            (key, Err(live))
        }
    }
}

impl Registry {
    /// From now on, zone files are built away from the writer, which is
    /// given each build to [`Registry::install`] as it finishes.
    pub fn build_in_background(&mut self) -> tokio::sync::mpsc::UnboundedReceiver<Built> {
        self.builds.in_background()
    }

    /// Serves a zone built away from the writer at the next publish, with
    /// the changes made to it meanwhile. Returns what it replaced, or the
    /// build itself if a later file version superseded it, to be freed
    /// where no one waits.
    pub fn install(&mut self, built: Built) -> Option<LiveZone> {
        let (key, built) = self.builds.finish(built);
        let live = match built {
            Ok(live) => live,
            Err(superseded) => return superseded,
        };
        let Some(entry) = self.zones.get_mut(&key) else {
            return live;
        };
        let Some(live) = live else {
            // Its changes meanwhile go to the version still served.
            error!(zone = %entry.file.zone.apex, file = %entry.source.display(),
                "building the zone failed (a bug); still serving its previous version");
            return None;
        };
        self.files_changed = true;
        entry.live.replace(live)
    }

    /// Whether the zone `key` is being built: a change to it is
    /// answerable only once the build is installed and published.
    pub fn is_building(&self, key: &[u8]) -> bool {
        self.builds.is_running(key)
    }
}
