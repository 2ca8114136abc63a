//! The consensus transport over HTTP/2: `POST /atlas/v1/consensus` carries an envelope of
//! messages. Per peer, one queue bounded by bytes (a stopped or slow peer cannot make it
//! grow: what does not fit is dropped and counted, consensus resends what matters) and a
//! sender task that keeps several POSTs in flight on the pooled h2 connection, each a batch
//! bounded by encoded bytes (a message larger than a batch goes alone). Messages may arrive
//! out of order; the protocol does not need their order (the simulator reorders them too).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas::AtlasConfig;
use atlas::cluster::directory::NodeRecord;
use atlas::cluster::envelope::Envelope;
use atlas::cluster::runtime::{ClusterHandle, FetchFuture, PingFuture, Transport};
use atlas::consensus::{GroupId, Message, NodeId};
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use super::faults::Faults;
use crate::http_reply::{HttpReply, TRANSPORT_PATH};
use crate::peer_client::{PeerClient, PeerClientOptions};

/// A consensus POST (which may carry a blob) must finish within this.
const TRANSPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// A health ping must answer within this.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of encoded messages in one POST (a larger message goes alone).
const BATCH_BYTES: usize = 1024 * 1024;
/// POSTs in flight to one peer at a time.
const POSTS_IN_FLIGHT: usize = 4;
/// Bytes of small messages queued for one peer; one that does not fit is dropped.
const PEER_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// A message at least this large (it goes alone) is queued whenever no other large one is,
/// whatever the small ones hold: a large value is never starved by a busy queue, and the
/// queue holds at most its budget plus one large message.
const LARGE_MESSAGE_BYTES: usize = BATCH_BYTES;

/// `POST /atlas/v1/consensus`: messages from a peer (an empty batch is a ping). `sender`:
/// the node the peer's certificate names, when the listener binds envelopes to it; an
/// envelope from anyone else is refused (the consensus core then decides what a member may
/// say, see `consensus::inbound`).
pub async fn serve_transport(
    cluster: &ClusterHandle,
    faults: &Faults,
    body: Vec<u8>,
    sender: Option<NodeId>,
) -> HttpReply {
    let envelope = match Envelope::decode(&Bytes::from(body)) {
        Ok(e) => e,
        Err(e) => {
            return HttpReply::error(400, "bad_message", &format!("consensus message: {e}"));
        }
    };
    if let Some(node) = sender
        && node != envelope.from
    {
        crate::metrics::metrics()
            .auth_failures
            .with_label_values(&["consensus"])
            .inc();
        return HttpReply::error(
            403,
            "forbidden",
            &format!(
                "the envelope says it is from node {} but the certificate is node {node}'s",
                envelope.from
            ),
        );
    }
    if faults.blocks(envelope.from) {
        return HttpReply::error(503, "partitioned", "fault injection drops this peer");
    }
    let count = envelope.messages.len() as u64;
    if !cluster.deliver(envelope.from, envelope.messages).await {
        return HttpReply::error(503, "busy", "too many messages waiting; try again");
    }
    crate::metrics::metrics()
        .consensus_messages_received
        .inc_by(count);
    HttpReply {
        status: 204,
        content_type: crate::metrics::TEXT_CONTENT_TYPE,
        body: Vec::new(),
        extra_headers: Vec::new(),
    }
}

/// One peer's queue: the messages (with the size they were counted at), the bytes of the
/// small ones and of the large one queued.
struct PeerQueue {
    tx: mpsc::UnboundedSender<(Message, usize)>,
    queued: Arc<Queued>,
}

#[derive(Default)]
struct Queued {
    small: AtomicUsize,
    large: AtomicUsize,
}

impl Queued {
    /// Counts a message in, if there is room for it.
    fn admit(&self, size: usize) -> bool {
        if size >= LARGE_MESSAGE_BYTES {
            return self
                .large
                .compare_exchange(0, size, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        }
        let queued = self.small.load(Ordering::Relaxed);
        if queued + size > PEER_QUEUE_BYTES {
            return false;
        }
        self.small.fetch_add(size, Ordering::Relaxed);
        true
    }

    /// Counts a message out (the sender took it).
    fn release(&self, size: usize) {
        if size >= LARGE_MESSAGE_BYTES {
            self.large.store(0, Ordering::Release);
        } else {
            self.small.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

/// The consensus transport over HTTP/2.
pub struct HttpTransport {
    me: NodeId,
    client: Arc<PeerClient>,
    /// Snapshots are long transfers: their own client, with a long timeout.
    bulk: Arc<PeerClient>,
    peers: Mutex<HashMap<NodeId, PeerQueue>>,
    runtime: tokio::runtime::Handle,
    faults: Arc<Faults>,
}

impl HttpTransport {
    pub fn new(config: &AtlasConfig, me: NodeId, faults: Arc<Faults>) -> Arc<HttpTransport> {
        let options = |request_timeout| PeerClientOptions {
            ca_file: super::peer_ca_file(config),
            credentials: config.credentials.clone().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
            request_timeout,
            client_cert_key: crate::tls::client_cert_key(config),
        };
        Arc::new(HttpTransport {
            me,
            client: Arc::new(PeerClient::new(options(TRANSPORT_TIMEOUT))),
            bulk: Arc::new(PeerClient::new(options(super::snapshot::SNAPSHOT_TIMEOUT))),
            peers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            faults,
        })
    }
}

impl Transport for HttpTransport {
    fn send(&self, to: &NodeRecord, messages: Vec<Message>) -> usize {
        if self.faults.blocks(to.id) {
            return 0;
        }
        let Ok(mut peers) = self.peers.lock() else {
            return messages.len();
        };
        let queue = peers.entry(to.id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(Queued::default());
            let sender = peer_sender(self.me, to.clone(), self.client.clone(), rx, queued.clone());
            self.runtime.spawn(sender);
            PeerQueue { tx, queued }
        });
        let mut dropped = 0;
        for message in messages {
            let size = message.size_hint();
            if !queue.queued.admit(size) {
                dropped += 1;
                continue;
            }
            if queue.tx.send((message, size)).is_err() {
                queue.queued.release(size);
                dropped += 1;
            }
        }
        if dropped > 0 {
            crate::metrics::metrics()
                .consensus_messages_dropped
                .inc_by(dropped as u64);
        }
        dropped
    }

    fn ping(&self, to: &NodeRecord) -> PingFuture {
        let client = self.client.clone();
        let to = to.clone();
        let me = self.me;
        let blocked = self.faults.blocks(to.id);
        Box::pin(async move {
            if blocked {
                return Err("partitioned by fault injection".to_string());
            }
            let body = Envelope {
                from: me,
                messages: Vec::new(),
            }
            .encode();
            let started = Instant::now();
            let address = to.address();
            let post = client.post(&address, &to.host, TRANSPORT_PATH, Bytes::from(body));
            match tokio::time::timeout(PING_TIMEOUT, post).await {
                Ok(Ok(r)) if r.status == 204 => Ok(started.elapsed()),
                Ok(Ok(r)) => Err(format!("answered {}", r.status)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
            }
        })
    }

    fn fetch_snapshot(
        &self,
        from: &NodeRecord,
        groups: Vec<GroupId>,
        into: PathBuf,
    ) -> FetchFuture {
        let bulk = self.bulk.clone();
        let from = from.clone();
        let blocked = self.faults.blocks(from.id);
        Box::pin(async move {
            if blocked {
                return Err("partitioned by fault injection".to_string());
            }
            super::snapshot::download(&bulk, &from.address(), &from.host, &groups, &into)
                .await
                .map(|_| ())
        })
    }
}

/// Sends one peer's messages: whenever one of `POSTS_IN_FLIGHT` slots is free, everything
/// queued since (up to `BATCH_BYTES` encoded) goes in one POST. A failed POST is dropped:
/// consensus re-sends what matters.
async fn peer_sender(
    me: NodeId,
    to: NodeRecord,
    client: Arc<PeerClient>,
    mut rx: mpsc::UnboundedReceiver<(Message, usize)>,
    queued: Arc<Queued>,
) {
    let slots = Arc::new(Semaphore::new(POSTS_IN_FLIGHT));
    let address = Arc::new(to.address());
    let host = Arc::new(to.host.clone());
    // A message taken from the queue that did not fit the last batch.
    let mut carried: Option<Vec<u8>> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(encoded) => encoded,
            None => match rx.recv().await {
                Some((message, size)) => {
                    queued.release(size);
                    message.encode()
                }
                None => return,
            },
        };
        let mut bytes = first.len();
        let mut parts = vec![first];
        while bytes < BATCH_BYTES {
            let Ok((message, size)) = rx.try_recv() else {
                break;
            };
            queued.release(size);
            let encoded = message.encode();
            if bytes + encoded.len() > BATCH_BYTES {
                carried = Some(encoded);
                break;
            }
            bytes += encoded.len();
            parts.push(encoded);
        }
        let count = parts.len() as u64;
        let body = Bytes::from(Envelope::encode_parts(me, &parts));
        let (client, address, host, peer) = (client.clone(), address.clone(), host.clone(), to.id);
        tokio::spawn(async move {
            let _slot = slot;
            match client.post(&address, &host, TRANSPORT_PATH, body).await {
                Ok(r) if r.status == 204 => {
                    crate::metrics::metrics()
                        .consensus_messages_sent
                        .inc_by(count);
                }
                Ok(r) => tracing::debug!(peer, status = r.status, "peer refused messages"),
                Err(e) => tracing::debug!(peer, error = %e, "sending to a peer failed"),
            }
        });
    }
}

/// Pings every other known node every interval, feeding health and zone RTTs.
pub async fn ping_loop(cluster: ClusterHandle, mut shutdown: pingora::server::ShutdownWatch) {
    let interval = cluster.health_policy().ping_interval;
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let view = cluster.view();
        for record in view.directory.values() {
            if record.id == cluster.id() {
                continue;
            }
            let cluster = cluster.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let _ = cluster.ping(&record).await;
            });
        }
    }
}
