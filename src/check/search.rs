//! The search: Lowe's version of Wing & Gong's algorithm. Calls and returns form a linked
//! list in time order; the search linearizes a call when the model accepts it, backtracks
//! when it meets the return of an operation it has not linearized, and remembers
//! (linearized set, state) pairs it has tried so no configuration is explored twice.

use std::collections::HashSet;

use super::{Input, Operation, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    Undecided,
}

/// A key's value (`None`: absent) and its version: 0 while absent, one more for every
/// write of it since it was created.
type State = (Option<Vec<u8>>, u64);

/// The versioned register model: the next state, if `op` may happen in `state`.
fn step(state: &State, op: &Operation) -> Option<State> {
    let (value, version) = state;
    let written = |v: &Vec<u8>| (Some(v.clone()), version + 1);
    match (&op.input, &op.output) {
        (Input::Get, Output::Value(v)) => (v == value).then(|| state.clone()),
        (Input::Version, Output::Version(v)) => (v == version).then(|| state.clone()),
        (Input::Get | Input::Version, _) => Some(state.clone()),
        (Input::Put(v), _) => Some(written(v)),
        (Input::Delete, _) => Some((None, 0)),
        (
            Input::Cas {
                version: at,
                value: v,
            },
            Output::Ok,
        ) => (at == version).then(|| written(v)),
        (Input::Cas { version: at, .. }, Output::Mismatch(m)) => {
            (m == version && at != version).then(|| state.clone())
        }
        // Unknown: it took effect if its condition held where it is placed.
        (
            Input::Cas {
                version: at,
                value: v,
            },
            _,
        ) => Some(if at == version {
            written(v)
        } else {
            state.clone()
        }),
    }
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

pub fn linearizable(ops: &[Operation], budget: u64) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Events: (time, is_return, op). A pending op returns after everything. At equal times a
    // call sorts before a return, so the two count as concurrent (never a false alarm).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        let ret = if op.is_pending() {
            u64::MAX
        } else {
            op.ret.unwrap_or(u64::MAX)
        };
        events.push((ret.max(op.call), true, i));
    }
    events.sort();
    let n = events.len();
    // Slot n is the list head (sentinel).
    let head = n;
    let mut entries: Vec<Entry> = events
        .iter()
        .enumerate()
        .map(|(i, (_, is_return, op))| Entry {
            op: *op,
            is_call: !is_return,
            partner: NIL,
            prev: if i == 0 { head } else { i - 1 },
            next: if i + 1 == n { NIL } else { i + 1 },
        })
        .collect();
    entries.push(Entry {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: 0,
    });
    let mut return_of = vec![NIL; ops.len()];
    for (i, e) in entries.iter().enumerate().take(n) {
        if !e.is_call {
            return_of[e.op] = i;
        }
    }
    for e in entries.iter_mut().take(n) {
        if e.is_call {
            e.partner = return_of[e.op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: State = (None, 0);
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut entry = entries[head].next;
    let mut steps = 0u64;

    // Unlinks a call and its return from the list.
    fn lift(entries: &mut [Entry], call: usize) {
        for i in [call, entries[call].partner] {
            let (p, nx) = (entries[i].prev, entries[i].next);
            entries[p].next = nx;
            if nx != NIL {
                entries[nx].prev = p;
            }
        }
    }
    // Puts them back (in reverse order of lifting).
    fn unlift(entries: &mut [Entry], call: usize) {
        for i in [entries[call].partner, call] {
            let (p, nx) = (entries[i].prev, entries[i].next);
            entries[p].next = i;
            if nx != NIL {
                entries[nx].prev = i;
            }
        }
    }

    while entries[head].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Undecided;
        }
        if entry == NIL {
            // Only possible if every remaining entry was skipped; treat as a dead end.
            match calls.pop() {
                None => return Verdict::NotLinearizable,
                Some((call, saved)) => {
                    state = saved;
                    let op = entries[call].op;
                    linearized[op / 64] &= !(1 << (op % 64));
                    unlift(&mut entries, call);
                    entry = entries[call].next;
                    continue;
                }
            }
        }
        let e = entries[entry];
        if e.is_call {
            if let Some(next_state) = step(&state, &ops[e.op]) {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    calls.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = bits;
                    lift(&mut entries, entry);
                    entry = entries[head].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // The return of an operation not linearized yet: backtrack.
            let Some((call, saved)) = calls.pop() else {
                return Verdict::NotLinearizable;
            };
            state = saved;
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
    Verdict::Linearizable
}
