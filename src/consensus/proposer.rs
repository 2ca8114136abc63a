//! The proposer side of a group: taking ownership (phase 1 with re-proposal, or a
//! handoff), the lease checks, and the timer that drives both roles. What the owner does
//! once it leads is `leader.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::acceptor::MAX_SLOTS_AHEAD;
use super::ballot::{Ballot, CommandId, NodeId, Slot};
use super::command::Command;
use super::ctx::Ctx;
use super::group::Group;
use super::leader::Leader;
use super::lease::LeaseGrants;
use super::membership::SYSTEM_GROUP;
use super::message::{AcceptedEntry, Message};
use super::migration::AccessWindow;
use super::quorum::JointQuorums;
use super::settings::{MigrationMode, Settings};

pub enum Role {
    Follower,
    Preparing(Preparing),
    Leading(Box<Leader>),
}

pub struct Preparing {
    pub ballot: Ballot,
    started_at: u64,
    last_sent: u64,
    handoff_from: Option<Ballot>,
    /// Per acceptor: how far it applied, and which of its promise's pages arrived.
    promises: BTreeMap<NodeId, PromiseProgress>,
    /// The highest-ballot accepted value per slot reported so far. Values from acceptors
    /// whose promise is not complete yet are safe to consider too: every one of them was
    /// accepted below this ballot, and the highest one at or above a chosen ballot is the
    /// chosen value.
    best: BTreeMap<Slot, (Ballot, Command)>,
    /// The highest seal epoch a promise reported.
    sealed: u64,
}

struct PromiseProgress {
    applied: Slot,
    pages: u32,
    seen: BTreeSet<u32>,
}

impl PromiseProgress {
    fn complete(&self) -> bool {
        self.seen.len() as u64 >= u64::from(self.pages.max(1))
    }
}

/// What one page of an acceptor's promise reports besides the ballot.
pub(super) struct PromiseReport {
    pub applied: Slot,
    pub accepted: Vec<AcceptedEntry>,
    pub sealed: u64,
    pub page: u32,
    pub pages: u32,
}

/// Sequence number used in the ids of entries no client asked for (hole-filling no-ops,
/// seals, `LeaveJoint`): they are never de-duplicated.
pub(super) const FILLER_SEQ: u64 = 0;

impl Group {
    pub fn is_leading(&self) -> bool {
        matches!(self.role, Role::Leading(_))
    }

    pub fn is_preparing(&self) -> bool {
        matches!(self.role, Role::Preparing(_))
    }

    /// Whether the owner's lease is valid now (for reporting and tests).
    pub fn lease_valid(&self, ctx: &Ctx<'_>) -> bool {
        match &self.role {
            Role::Leading(_) if ctx.settings.inject.ignore_lease_expiry => true,
            Role::Leading(l) => {
                ctx.settings.leases_enabled()
                    && l.grants.is_valid(
                        ctx.quorums,
                        ctx.settings.lease_ms,
                        ctx.settings.drift_margin_ms,
                        ctx.now,
                    )
            }
            _ => false,
        }
    }

    /// The node-clock instant the owner's lease ends, while this node leads with one (for
    /// reports; serving decisions use `lease_valid`).
    pub fn lease_until(&self, quorums: &JointQuorums, settings: &Settings) -> Option<u64> {
        match &self.role {
            Role::Leading(l) if settings.leases_enabled() => {
                l.grants
                    .valid_until(quorums, settings.lease_ms, settings.drift_margin_ms)
            }
            _ => None,
        }
    }

    /// Phase 1a: ask every member to promise a ballot above any seen.
    pub(super) fn start_phase1(&mut self, ctx: &mut Ctx<'_>, handoff_from: Option<Ballot>) {
        if !matches!(self.role, Role::Follower) {
            return;
        }
        if handoff_from.is_none() && ctx.now < self.not_before {
            return;
        }
        let ballot = Ballot::next_after(self.seen.max(self.acceptor.promised()), ctx.id);
        self.role = Role::Preparing(Preparing {
            ballot,
            started_at: ctx.now,
            last_sent: ctx.now,
            handoff_from,
            promises: BTreeMap::new(),
            best: BTreeMap::new(),
            sealed: 0,
        });
        let group = self.name.clone();
        ctx.broadcast(Message::Prepare {
            group,
            ballot,
            token: ctx.now,
            handoff_from,
            epoch: ctx.epoch,
        });
    }

    /// The node applied a new configuration: a candidate or owner of this group started
    /// under the old one, so it takes the group again under the new one (phase 1 with the
    /// new quorums; its own lease does not block it). Acceptors refuse the old epoch.
    pub(super) fn on_epoch_change(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
        self.not_before = 0;
        self.start_phase1(ctx, None);
    }

    pub(super) fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        report: PromiseReport,
    ) {
        let Role::Preparing(p) = &mut self.role else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        // An acceptor never holds a slot that far past what it applied (`acceptor.rs`): such
        // a promise is not counted, so it cannot make this owner fill millions of holes.
        let limit = report.applied.saturating_add(1 + MAX_SLOTS_AHEAD);
        if report.accepted.iter().any(|e| e.slot > limit) {
            return;
        }
        p.sealed = p.sealed.max(report.sealed);
        let progress = p.promises.entry(from).or_insert_with(|| PromiseProgress {
            applied: report.applied,
            pages: report.pages,
            seen: BTreeSet::new(),
        });
        if !progress.seen.insert(report.page) {
            return;
        }
        if !ctx.settings.inject.skip_reproposal {
            for e in report.accepted {
                let better = p.best.get(&e.slot).is_none_or(|(b, _)| e.ballot > *b);
                if better {
                    p.best.insert(e.slot, (e.ballot, e.command));
                }
            }
        }
        let promised: BTreeSet<NodeId> = p
            .promises
            .iter()
            .filter(|(_, progress)| progress.complete())
            .map(|(node, _)| *node)
            .collect();
        // A seal reported by any promiser is real: only an owner that saw a Q2 of the
        // sealing configuration apply what its phase 1 found proposes one, and a Q1 of that
        // configuration meets the Q2 that accepted it.
        if ctx.quorums.is_q1_sealed(&promised, p.sealed) {
            let Role::Preparing(p) = std::mem::replace(&mut self.role, Role::Follower) else {
                return;
            };
            self.take_ownership(ctx, p);
        }
    }

    /// With a Q1 of promises: re-propose what may have been chosen, fill holes, catch up.
    fn take_ownership(&mut self, ctx: &mut Ctx<'_>, mut p: Preparing) {
        // Slots up to `caught` are committed (some promiser applied them): fetch, never
        // re-propose, since their acceptors no longer hold them.
        let (caught_by, caught) = p
            .promises
            .iter()
            .map(|(node, progress)| (*node, progress.applied))
            .max_by_key(|(node, applied)| (*applied, *node))
            .unwrap_or((ctx.id, 0));
        let caught = caught.max(self.log.applied());
        // Above it, the highest ballot wins per slot.
        let mut best = p.best.split_off(&(caught + 1));
        // Entries this node already knows committed are the chosen values.
        for (slot, command) in self.log.pending().filter(|(s, _)| **s > caught) {
            best.insert(*slot, (Ballot::new(u64::MAX, u64::MAX), command.clone()));
        }
        let end = best.keys().next_back().copied().unwrap_or(0).max(caught);
        // How far each promiser had applied (durably: promises leave after their sync) is
        // what sealing needs to know; a group whose phase 1 found nothing can seal at once.
        let reported: BTreeMap<NodeId, Slot> = p
            .promises
            .iter()
            .map(|(node, progress)| (*node, progress.applied))
            .collect();
        self.seen = self.seen.max(p.ballot);
        self.owner_hint = Some(ctx.id);
        self.last_heard = ctx.now;
        self.role = Role::Leading(Box::new(Leader {
            ballot: p.ballot,
            next_slot: end + 1,
            recovery_end: end,
            inflight: BTreeMap::new(),
            inflight_bytes: 0,
            inflight_ids: BTreeMap::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            queued_ids: BTreeSet::new(),
            waiters: BTreeMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            grants: LeaseGrants::default(),
            last_heartbeat: ctx.now,
            last_renew: ctx.now,
            access: AccessWindow::starting(ctx.now),
            parked: Vec::new(),
            reported,
            sealing: None,
            last_probe: 0,
        }));
        self.log.note_known(caught);
        if self.log.applied() < caught && caught_by != ctx.id {
            let group = self.name.clone();
            let from = self.log.applied() + 1;
            ctx.send(
                caught_by,
                Message::CatchUp {
                    group,
                    from,
                    to: caught,
                },
            );
        }
        for slot in caught + 1..=end {
            let command = match best.remove(&slot) {
                Some((_, command)) => command,
                None => Command::noop(CommandId {
                    origin: ctx.id,
                    seq: FILLER_SEQ,
                }),
            };
            self.propose_at(ctx, slot, command, None);
        }
        // Seal before any client write is proposed when nothing needs recovering (a new
        // group, or one sealed earlier under another configuration): the first write's
        // commit then commits the seal too, so a takeover right after it needs only the
        // current configuration's quorums, not those of memberships that ended.
        self.seal(ctx);
        self.heartbeat(ctx);
        self.renew_lease(ctx);
        self.flush(ctx);
    }

    /// The owner handed the group to this node.
    pub(super) fn on_handoff(&mut self, ctx: &mut Ctx<'_>, released: Ballot) {
        if released >= self.seen && !self.is_leading() {
            self.role = Role::Follower;
            self.start_phase1(ctx, Some(released));
        }
    }

    /// Timer duties: retries, heartbeats, lease renewal, migration, phase 1 timeouts.
    pub(super) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        self.fill_gaps(ctx);
        match &mut self.role {
            // A joint configuration must be left even when no client asks anything: if
            // nobody has owned `atlas` for a while, take it (after any back-off) so its owner
            // proposes `LeaveJoint`.
            Role::Follower => {
                if self.name == SYSTEM_GROUP
                    && ctx.quorums.is_joint()
                    && ctx.now >= self.last_heard.saturating_add(ctx.settings.suspect_ms)
                {
                    self.start_phase1(ctx, None);
                }
            }
            Role::Preparing(p) => {
                if ctx.now >= p.started_at + 4 * ctx.settings.retry_ms {
                    self.role = Role::Follower;
                    self.not_before = ctx.backoff();
                } else if ctx.now >= p.last_sent + ctx.settings.retry_ms {
                    p.last_sent = ctx.now;
                    let message = Message::Prepare {
                        group: self.name.clone(),
                        ballot: p.ballot,
                        token: ctx.now,
                        handoff_from: p.handoff_from,
                        epoch: ctx.epoch,
                    };
                    let missing: Vec<NodeId> = ctx
                        .membership
                        .nodes()
                        .filter(|n| !p.promises.get(n).is_some_and(PromiseProgress::complete))
                        .collect();
                    for to in missing {
                        ctx.send(to, message.clone());
                    }
                }
            }
            Role::Leading(l) => {
                let ballot = l.ballot;
                let renew = ctx.now >= l.last_renew + ctx.settings.lease_ms / 4;
                let handoff = if ctx.settings.migration == MigrationMode::Adaptive && !self.pinned {
                    let membership = ctx.membership;
                    l.access.decide(
                        ctx.now,
                        ctx.settings.migration_window_ms,
                        ctx.settings.migration_min_accesses,
                        ctx.zone,
                        |n| membership.zone_of(n).cloned(),
                    )
                } else {
                    None
                };
                let beat = ctx.now >= l.last_heartbeat + ctx.settings.heartbeat_ms;
                self.retry_accepts(ctx);
                if beat {
                    self.heartbeat(ctx);
                }
                if self.name == SYSTEM_GROUP {
                    self.drive_config(ctx);
                }
                self.seal(ctx);
                self.drain_queue(ctx);
                if renew {
                    self.renew_lease(ctx);
                }
                if let Some(target) = handoff {
                    self.hand_off(ctx, target, ballot);
                }
            }
        }
    }

    /// Hands the group this node leads at `ballot` to `target` (a planned move: the target
    /// takes it with a phase 1 that the acceptors answer despite this owner's lease).
    pub(super) fn hand_off(&mut self, ctx: &mut Ctx<'_>, target: NodeId, ballot: Ballot) {
        if target == ctx.id || !ctx.membership.contains(target) {
            return;
        }
        // Stop serving (and stop trusting the lease) before the target asks the acceptors
        // to release it; clients retry at the new owner.
        self.role = Role::Follower;
        self.owner_hint = Some(target);
        self.last_heard = ctx.now;
        let group = self.name.clone();
        ctx.send(
            target,
            Message::Handoff {
                group,
                from: ballot,
            },
        );
    }
}
