//! The network: UDP (batched) and TCP listeners that answer from the
//! published snapshot, and forwarding of names outside every zone.

pub mod forward;
pub mod notify;
pub mod server;
pub mod udp_batch;
