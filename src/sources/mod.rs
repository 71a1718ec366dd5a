//! Sources of changes: each describes what it saw as a
//! [`crate::registry::Change`] and sends it to the registry's writer; none
//! touches what queries read.

pub mod admin;
pub mod health_probe;
pub mod watch;
pub mod zone_file;
