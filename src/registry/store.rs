//! Where runtime registrations are kept, so that they survive a restart:
//! a [`Store`] makes each batch of changes durable before any of them is
//! acknowledged: the append-only state file ([`super::state_file`]) on one
//! machine, etcd in a cluster (`crate::cluster`).

use serde::{Deserialize, Serialize};

use super::registration::Registration;
use crate::model::names::parse_apex;

/// Keeps runtime registrations durable.
pub trait Store: Send {
    /// Makes `records` durable: when this returns Ok they survive a crash or
    /// a power loss. `live_count` is how many registrations there are now;
    /// `live` lists them all, and is called only when the store would rather
    /// write the whole set (compaction, or after a failed save), since listing
    /// every registration on every save would make saves cost as much as the
    /// registry is large.
    fn save(
        &mut self,
        records: &[Record],
        live_count: usize,
        live: &dyn Fn() -> Vec<Stored>,
    ) -> Result<(), StoreError>;

    /// Whether a save failed and the store may be behind memory: then even
    /// a request that changes nothing must save (the whole set) before it is
    /// acknowledged.
    fn is_behind(&self) -> bool;

    /// Where the registrations are kept, as `status` shows it.
    fn location(&self) -> String;

    /// Renews the TTL of a registration, for a store that keeps TTLs itself
    /// (etcd's leases); a heartbeat is acknowledged only once this returns Ok.
    fn renew(&mut self, zone: &str, instance: &str) -> Result<(), StoreError> {
        let _ = (zone, instance);
        Ok(())
    }
}

/// Why a store could not read or save.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file failed.
    #[error(transparent)]
    StateFile(#[from] super::state_file::StateError),
    /// etcd did not commit the change.
    #[error("etcd: {0}")]
    Etcd(String),
}

/// A runtime registration as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// The registration, as acknowledged.
    pub registration: Registration,
    /// Whether it had expired when the file was written: an instance that
    /// was dead before a restart stays out of answers until a heartbeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// One change to the registrations, as one line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Record {
    /// Adds or replaces a registration.
    Set(Stored),
    /// Removes a registration.
    Remove(Removed),
}

/// The name of a removed registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// The zone, as [`key`] normalizes it.
    pub zone: String,
    /// The instance, as [`key`] normalizes it.
    pub instance: String,
}

/// The name a registration is kept under: its zone's apex and its instance
/// name, both lowercased, the apex with its final dot.
pub fn key(zone: &str, instance: &str) -> Result<(String, String), String> {
    let apex = parse_apex(zone)?;
    Ok((
        apex.to_ascii().to_ascii_lowercase(),
        instance.to_ascii_lowercase(),
    ))
}
