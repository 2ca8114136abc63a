//! Atlas as a cluster member inside Pingora: joining (`join`), the HTTP/2 consensus
//! transport and health pings (`transport`), snapshots streamed between nodes
//! (`snapshot`), and the test-only fault layer (`faults`).

mod faults;
mod join;
mod snapshot;
mod transport;

pub use faults::Faults;
pub use join::{
    JoinAnswer, JoinRequest, SNAPSHOT_FILE, peer_ca_file, prepare_identity, renew_certificate,
    serve_join, serve_remove,
};
pub use snapshot::serve_snapshot;
pub use transport::{HttpTransport, ping_loop, serve_transport};
