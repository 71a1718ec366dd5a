//! The network: UDP (batched) and TCP listeners that answer from the
//! published snapshot, forwarding of names outside every zone, the query
//! log and the metrics endpoint.

pub mod forward;
pub mod metrics_http;
pub mod notify;
pub mod query_log;
pub mod server;
pub mod udp_batch;
