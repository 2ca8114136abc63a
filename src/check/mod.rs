//! Linearizability checker for key-value histories (Wing–Gong search with Lowe's memoisation,
//! partitioned per key, as in Porcupine).
//!
//! A history is a list of [`Operation`]s with call and return instants on one clock (any
//! totally ordered counter). An operation whose outcome is unknown (timeout, crash) has no
//! return: it may have taken effect at any point after its call, or never. The checker is
//! independent of how the history was produced: the simulator and real-process tests feed it.

mod search;

use std::collections::BTreeMap;
use std::fmt;

pub use search::Verdict;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put(Vec<u8>),
    Delete,
    /// `KEY VERSION`.
    Version,
    /// `KEY CAS <key> <version> <value>`.
    Cas {
        version: u64,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// A write was acknowledged.
    Ok,
    /// A read returned this value (`None`: absent).
    Value(Option<Vec<u8>>),
    /// `KEY VERSION` answered this version.
    Version(u64),
    /// A compare-and-set was refused: the key was at this version.
    Mismatch(u64),
    /// No answer: the operation may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub input: Input,
    pub output: Output,
    pub call: u64,
    /// `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

impl Operation {
    fn is_pending(&self) -> bool {
        self.ret.is_none() || self.output == Output::Unknown
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let input = match &self.input {
            Input::Get => "get".to_string(),
            Input::Put(v) => format!("put {}", show(v)),
            Input::Delete => "delete".to_string(),
            Input::Version => "version".to_string(),
            Input::Cas { version, value } => format!("cas {version} {}", show(value)),
        };
        let output = match &self.output {
            Output::Ok => "ok".to_string(),
            Output::Value(Some(v)) => show(v),
            Output::Value(None) => "(absent)".to_string(),
            Output::Version(v) => format!("version {v}"),
            Output::Mismatch(v) => format!("mismatch, at {v}"),
            Output::Unknown => "?".to_string(),
        };
        let ret = self.ret.map_or("…".to_string(), |r| r.to_string());
        write!(
            f,
            "[{:>6} .. {:>6}] client {:>3} {} {} -> {}",
            self.call, ret, self.client, self.key, input, output
        )
    }
}

/// A key whose history has no linearization, with a small sub-history that shows it.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub key: String,
    /// A minimal (by greedy removal) sub-history that is still not linearizable.
    pub witness: Vec<Operation>,
    /// True when the search gave up (step budget) instead of proving the anomaly.
    pub undecided: bool,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.undecided {
            "could not be decided (search budget)"
        } else {
            "is not linearizable"
        };
        writeln!(
            f,
            "history of key {} {what}; minimal sub-history:",
            self.key
        )?;
        for op in &self.witness {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Steps of the search per key before it gives up.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks every key; returns the anomalies (empty: linearizable).
pub fn check(history: &[Operation]) -> Vec<Anomaly> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        // A read with no answer constrains nothing.
        if matches!(op.input, Input::Get | Input::Version) && op.is_pending() {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut anomalies = Vec::new();
    for (key, ops) in by_key {
        match search::linearizable(&ops, DEFAULT_BUDGET) {
            Verdict::Linearizable => {}
            verdict => anomalies.push(Anomaly {
                key: key.to_string(),
                witness: minimise(ops),
                undecided: verdict == Verdict::Undecided,
            }),
        }
    }
    anomalies
}

/// Shrinks a non-linearizable history: the shortest bad prefix (in call order), then chunks
/// and single operations removed while the rest stays non-linearizable (delta debugging).
fn minimise(mut ops: Vec<Operation>) -> Vec<Operation> {
    const BUDGET: u64 = 500_000;
    // A witness keeps the write of every value its reads return (unless the original lacked
    // it): dropping it would turn any anomaly into "read of a value never written".
    let written = |h: &[Operation], v: &Vec<u8>| {
        h.iter()
            .any(|op| matches!(&op.input, Input::Put(w) | Input::Cas { value: w, .. } if w == v))
    };
    let orphans = |h: &[Operation]| {
        h.iter()
            .filter(|op| matches!(&op.output, Output::Value(Some(v)) if !written(h, v)))
            .count()
    };
    let allowed_orphans = orphans(&ops);
    let bad = |h: &[Operation]| {
        orphans(h) <= allowed_orphans && search::linearizable(h, BUDGET) == Verdict::NotLinearizable
    };
    ops.sort_by_key(|op| op.call);
    // Badness is nearly monotone in the prefix length: binary search, then confirm.
    let (mut lo, mut hi) = (1, ops.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if bad(&ops[..mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if bad(&ops[..hi]) {
        ops.truncate(hi);
    }
    // Removing one operation can make another removable: repeat until nothing changes.
    let mut chunk = (ops.len() / 2).max(1);
    loop {
        let before = ops.len();
        let mut i = 0;
        while i < ops.len() {
            let end = (i + chunk).min(ops.len());
            let candidate: Vec<Operation> = ops[..i].iter().chain(&ops[end..]).cloned().collect();
            if !candidate.is_empty() && bad(&candidate) {
                ops = candidate;
            } else {
                i += chunk;
            }
        }
        if chunk > 1 {
            chunk /= 2;
        } else if ops.len() == before {
            break;
        }
    }
    ops
}

#[cfg(test)]
mod tests;
