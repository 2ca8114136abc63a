//! Snapshots between nodes: `POST /atlas/v1/snapshot` `{"groups": [...]}` (none: every
//! group) answers with the snapshot stream (`atlas::storage::stream`), produced from one
//! RocksDB snapshot on a blocking thread and written as it is made through a small bounded
//! channel, so neither side holds more than a few chunks. The receiver writes it to a file,
//! syncs it and verifies it whole before anything is installed; a broken transfer is
//! started again from the beginning (a new snapshot).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use atlas::cluster::runtime::ClusterHandle;
use atlas::consensus::GroupId;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;

use crate::http_reply::{HttpReply, SNAPSHOT_PATH};
use crate::peer_client::PeerClient;

/// Copying a snapshot must finish within this.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes in one chunk of the response, and chunks queued between the exporter and the
/// connection.
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNKS_QUEUED: usize = 4;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    #[serde(default)]
    groups: Vec<GroupId>,
}

/// Hands written bytes to the connection through a bounded channel (blocks the exporting
/// thread while the connection is behind; fails once the client is gone).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the snapshot asked for in `body`; a refusal is returned as a reply to write.
pub async fn serve_snapshot(
    session: &mut ServerSession,
    cluster: &ClusterHandle,
    body: &[u8],
) -> Result<(), HttpReply> {
    let request: SnapshotRequest = if body.is_empty() {
        SnapshotRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| HttpReply::error(400, "bad_request", &format!("groups: {e}")))?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_QUEUED);
    let exporter = cluster.clone();
    let export = tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(CHUNK_BYTES, ChannelWriter { tx });
        exporter.export_snapshot(request.groups, out)
    });
    let internal = |_| HttpReply::error(500, "internal", "could not start the answer");
    let mut header = ResponseHeader::build(200, Some(3)).map_err(internal)?;
    header
        .insert_header("content-type", "application/octet-stream")
        .map_err(internal)?;
    header
        .insert_header("cache-control", "no-store")
        .map_err(internal)?;
    let mut failed = session
        .write_response_header(Box::new(header))
        .await
        .is_err();
    while let Some(chunk) = rx.recv().await {
        if !failed
            && session
                .write_response_body(Bytes::from(chunk), false)
                .await
                .is_err()
        {
            // Dropping the receiver stops the exporter.
            failed = true;
            break;
        }
    }
    drop(rx);
    match export.await {
        Ok(Ok(())) if !failed => {
            let _ = session.write_response_body(Bytes::new(), true).await;
            let _ = session.finish_body().await;
        }
        Ok(Err(e)) => {
            // Cut the stream short: the receiver finds it truncated and asks again.
            tracing::warn!(error = %e, "exporting a snapshot failed");
            session.set_keepalive(None);
        }
        _ => session.set_keepalive(None),
    }
    Ok(())
}

/// Downloads a snapshot of `groups` (every group: none named) from the node at `addr` into
/// `into`: streamed to `<into>.part`, synced, verified whole, then renamed. Returns its size.
pub async fn download(
    client: &PeerClient,
    addr: &str,
    name: &str,
    groups: &[GroupId],
    into: &Path,
) -> Result<u64, String> {
    let part = into.with_extension("part");
    let mut file = std::io::BufWriter::new(
        atlas::files::create_with_mode(&part, atlas::files::PRIVATE_FILE)
            .map_err(|e| format!("{}: {e}", part.display()))?,
    );
    let body = serde_json::json!({ "groups": groups }).to_string();
    let mut bytes = 0u64;
    let mut sink = |chunk: &[u8]| {
        bytes += chunk.len() as u64;
        file.write_all(chunk)
    };
    let answer = client
        .post_into(addr, name, SNAPSHOT_PATH, Bytes::from(body), &mut sink)
        .await;
    let result = match answer {
        Ok((200, _)) => Ok(()),
        Ok((status, text)) => Err(format!("the peer answered {status}: {text}")),
        Err(e) => Err(e.to_string()),
    };
    let finished = result.and_then(|()| {
        let file = file.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    });
    let checked = match finished {
        Ok(()) => {
            let path = part.clone();
            tokio::task::spawn_blocking(move || {
                let input = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                atlas::storage::stream::verify(std::io::BufReader::new(input))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    match checked {
        Ok(_) => {
            atlas::files::rename_durably(&part, into)
                .map_err(|e| format!("{}: {e}", into.display()))?;
            Ok(bytes)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}
