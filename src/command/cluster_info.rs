//! NODE LIST/INFO/PING, QUORUM INFO and TABLE INFO for a single node: Q1 = Q2 = {self}, the
//! node owns every table, and fn/fz are reduced to 0 (there is no other node or zone).

use std::time::Instant;

use crate::protocol::Reply;
use crate::protocol::duration::format_rfc3339_ms;
use crate::protocol::key::is_system_table;

use super::{CommandError, Engine, now_ms};

impl Engine {
    fn node_fields(&self) -> String {
        let n = &self.node;
        format!(
            "id={} region={} addr={} port={}",
            n.id, n.region, n.host, n.port
        )
    }

    fn check_node(&self, id: &str) -> Result<(), CommandError> {
        if id == self.node.id.to_string() {
            Ok(())
        } else {
            Err(CommandError::UnknownNode(id.to_string()))
        }
    }

    pub(super) fn node_list(&self) -> Reply {
        let n = &self.node;
        Reply::line(format!(
            "NODE id={} region={} status=ACTIVE rtt_ms=0.000 addr={} port={}",
            n.id, n.region, n.host, n.port
        ))
    }

    pub(super) fn node_info(&self, id: &str) -> Result<Reply, CommandError> {
        self.check_node(id)?;
        let n = &self.node;
        let owned = self.store.tables()?.len();
        let lines = [
            format!("id={}", n.id),
            format!("region={}", n.region),
            format!("addr={}", n.host),
            format!("port={}", n.port),
            "status=ACTIVE".to_string(),
            "rtt_ms=0.000".to_string(),
            format!("owned_tables={owned}"),
            format!("last_seen={}", format_rfc3339_ms(now_ms())),
            format!("uptime_s={}", self.started.elapsed().as_secs()),
        ];
        Ok(Reply::Lines(
            lines.into_iter().map(String::into_bytes).collect(),
        ))
    }

    /// A ping of this node measures a round trip through its storage path.
    pub(super) async fn node_ping(
        self: &std::sync::Arc<Self>,
        id: &str,
    ) -> Result<Reply, CommandError> {
        self.check_node(id)?;
        let start = Instant::now();
        self.blocking(|e| Ok(e.store.get_meta("node_id")?)).await?;
        let rtt_ms = start.elapsed().as_secs_f64() * 1000.0;
        Ok(Reply::line(format!(
            "PONG node={} rtt_ms={rtt_ms:.3}",
            self.node.id
        )))
    }

    pub(super) fn quorum_info(&self, _table: &str) -> Reply {
        let me = self.node_fields();
        Reply::Lines(vec![
            b"Q1 size=1".to_vec(),
            me.clone().into_bytes(),
            b"Q2 size=1".to_vec(),
            me.into_bytes(),
        ])
    }

    /// Every client table holding a record, all owned by this node.
    pub(super) fn table_list(&self) -> Result<Reply, CommandError> {
        let n = &self.node;
        let mut lines = Vec::new();
        for table in self.store.tables()? {
            if is_system_table(&table) {
                continue;
            }
            let slot = self.store.table_slot(&table)?;
            lines.push(super::table_list_line(
                &table,
                Some(n.id),
                Some(&n.region),
                slot,
            ));
        }
        Ok(Reply::Lines(lines))
    }

    pub(super) fn table_info(&self, table: &str) -> Result<Reply, CommandError> {
        let n = &self.node;
        let lines = [
            format!("owner={}", n.id),
            // The single node took every table with the first ballot of its own.
            format!("ballot=1.{}", n.id),
            format!("region={}", n.region),
            // One node is its own quorum: reads need no lease.
            "lease_until=unbounded".to_string(),
            format!("last_slot={}", self.store.table_slot(table)?),
            format!("table={table}"),
            "fn=0".to_string(),
            "fz=0".to_string(),
            format!("configured_fn={}", n.configured_fn),
            format!("configured_fz={}", n.configured_fz),
            "group=-".to_string(),
            "replication=global".to_string(),
            "pinned=-".to_string(),
        ];
        Ok(Reply::Lines(
            lines.into_iter().map(String::into_bytes).collect(),
        ))
    }
}
