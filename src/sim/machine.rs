//! What a simulated node stores: the consensus state and a key-value state machine, in
//! memory, behind the same `driver::Machine` the production replica implements. Writes
//! that were not synced are lost when the simulated machine loses power (a crash of the
//! process keeps them, as the OS keeps a killed process's writes).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::check::Output;
use crate::cluster::driver::Machine;
use crate::consensus::{
    Applied, CommandOp, Completion, Config, GroupState, Outcome, PersistOp, Recovered, RequestId,
    Settings,
};
use crate::storage::stream::{FrameReader, FrameWriter, SnapshotError, SnapshotItem};

/// One image of a node's storage.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub consensus: Recovered,
    pub kv: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct SimMachine {
    /// Everything written, in order.
    pub written: Disk,
    /// As of the last synced batch.
    pub synced: Disk,
    /// Batches written, and how many of them were synced (for the tests' own checks).
    pub batches: u64,
    pub syncs: u64,
}

impl Machine for SimMachine {
    type Error = std::convert::Infallible;
    type Answer = (RequestId, Output);

    fn write(
        &mut self,
        persist: &[PersistOp],
        apply: &[Applied],
        sync: bool,
    ) -> Result<(), Self::Error> {
        let disk = &mut self.written;
        for op in persist {
            match op {
                PersistOp::Promise { group, ballot } => {
                    let g = disk.consensus.groups.entry(group.clone()).or_default();
                    g.promised = g.promised.max(*ballot);
                }
                PersistOp::Accept {
                    group,
                    slot,
                    ballot,
                    command,
                } => {
                    let g = disk.consensus.groups.entry(group.clone()).or_default();
                    g.promised = g.promised.max(*ballot);
                    g.accepted.insert(*slot, (*ballot, command.clone()));
                }
                PersistOp::State { group, state } => {
                    let g = disk.consensus.groups.entry(group.clone()).or_default();
                    g.state = state.clone();
                }
                PersistOp::Forget { group, slots } => {
                    let g = disk.consensus.groups.entry(group.clone()).or_default();
                    for slot in slots {
                        g.accepted.remove(slot);
                    }
                }
                PersistOp::Config(config) => disk.consensus.config = Some(config.clone()),
            }
        }
        for applied in apply.iter().filter(|a| !a.duplicate) {
            match &applied.command.op {
                CommandOp::Put { key, value } => {
                    disk.kv.insert(key.clone(), value.to_vec());
                }
                CommandOp::Delete { key } => {
                    disk.kv.remove(key);
                }
                _ => {}
            }
        }
        self.batches += 1;
        if sync {
            self.syncs += 1;
            self.synced = self.written.clone();
        }
        Ok(())
    }

    fn answer(&mut self, completion: Completion) -> Result<Option<Self::Answer>, Self::Error> {
        let output = match completion.outcome {
            Outcome::Written => Output::Ok,
            Outcome::ReadNow { key } => Output::Value(self.written.kv.get(&key).cloned()),
            Outcome::Timeout => Output::Unknown,
        };
        Ok(Some((completion.request, output)))
    }
}

fn table_of(key: &str) -> &str {
    key.split('.').next().unwrap_or(key)
}

impl SimMachine {
    /// A power failure: only what was synced survives.
    pub fn lose_power(&mut self) {
        self.written = self.synced.clone();
    }

    /// The snapshot stream of `group` as this node has it now.
    pub fn export(&self, group: &str, settings: &Settings) -> Result<Vec<u8>, SnapshotError> {
        let disk = &self.written;
        let state = disk
            .consensus
            .groups
            .get(group)
            .map(|g| g.state.clone())
            .unwrap_or_default();
        let config = (group == crate::consensus::SYSTEM_GROUP)
            .then(|| disk.consensus.config.clone())
            .flatten();
        let mut w = FrameWriter::new(Vec::new());
        w.item(&SnapshotItem::Group {
            group: group.to_string(),
            state,
            config,
        })?;
        for (key, value) in disk
            .kv
            .iter()
            .filter(|(k, _)| settings.group_of(table_of(k)) == group)
        {
            let mut data = (key.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(key.as_bytes());
            data.extend_from_slice(value);
            w.item(&SnapshotItem::Data(Bytes::from(data)))?;
        }
        w.finish()
    }

    /// Installs a snapshot stream of one group (replacing its keys), as one synced batch.
    /// Returns what the node must be told.
    pub fn install(
        &mut self,
        stream: &[u8],
        settings: &Settings,
    ) -> Result<(String, GroupState, Option<Config>), SnapshotError> {
        crate::storage::stream::verify(stream)?;
        let mut reader = FrameReader::new(stream);
        let Some(SnapshotItem::Group {
            group,
            state,
            config,
        }) = reader.next_item()?
        else {
            return Err(SnapshotError::Malformed("no group"));
        };
        let disk = &mut self.written;
        let current = disk
            .consensus
            .groups
            .get(&group)
            .map_or(0, |g| g.state.applied);
        if state.applied <= current {
            // Not newer than what this node has: nothing to replace.
            return Ok((group, state, None));
        }
        disk.kv
            .retain(|k, _| settings.group_of(table_of(k)) != group);
        while let Some(item) = reader.next_item()? {
            let SnapshotItem::Data(data) = item else {
                return Err(SnapshotError::Malformed("one group per simulated snapshot"));
            };
            let len = data
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or(SnapshotError::Malformed("data"))?;
            let key = data
                .get(4..4 + len)
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or(SnapshotError::Malformed("key"))?;
            disk.kv.insert(key.to_string(), data[4 + len..].to_vec());
        }
        let g = disk.consensus.groups.entry(group.clone()).or_default();
        g.accepted = g.accepted.split_off(&(state.applied + 1));
        g.state = state.clone();
        if let Some(c) = &config
            && disk
                .consensus
                .config
                .as_ref()
                .is_none_or(|old| c.epoch > old.epoch)
        {
            disk.consensus.config = Some(c.clone());
        }
        self.synced = self.written.clone();
        Ok((group, state, config))
    }
}
