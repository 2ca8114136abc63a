//! The snapshot scheduler: pure `is_due` and `plan_prune`, and `run_due`, which creates and
//! prunes ZFS snapshots through a [`CommandRunner`] (so dry-run and tests only record).

use chrono::{DateTime, Duration, Months, NaiveDateTime, Utc};
use serde::Serialize;

use super::error::NasError;
use super::runner::CommandRunner;
use super::snapshot_policies::{self, SnapshotPolicy};
use super::{NasStore, audit, format_ts, parse_ts};

const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";
const TIMESTAMP_LEN: usize = 15;

/// When a policy that last ran at `last` is next due.
pub fn next_due(frequency: &str, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match frequency {
        "hourly" => Some(last + Duration::hours(1)),
        "daily" => Some(last + Duration::days(1)),
        "weekly" => Some(last + Duration::weeks(1)),
        // Calendar months: Jan 31 → Feb 28/29 (chrono clamps to the month's end).
        "monthly" => last.checked_add_months(Months::new(1)),
        _ => None,
    }
}

/// Due when enabled and `now - last_run_at >= period` (never run: due at once).
pub fn is_due(policy: &SnapshotPolicy, now: DateTime<Utc>) -> bool {
    if !policy.enabled {
        return false;
    }
    let Some(last) = policy.last_run_at.as_deref().and_then(parse_ts) else {
        return true;
    };
    next_due(&policy.frequency, last).is_some_and(|due| now >= due)
}

/// `<dataset>@<prefix>-<frequency>-YYYYmmdd-HHMMSS` (UTC).
pub fn snapshot_name(policy: &SnapshotPolicy, at: DateTime<Utc>) -> String {
    format!(
        "{}@{}-{}-{}",
        policy.dataset,
        policy.prefix,
        policy.frequency,
        at.format(TIMESTAMP_FORMAT)
    )
}

/// The time in a snapshot name if the snapshot belongs to `policy` — exact dataset, prefix,
/// frequency and a well-formed timestamp — else `None`.
pub fn policy_snapshot_time(policy: &SnapshotPolicy, name: &str) -> Option<NaiveDateTime> {
    let head = format!("{}@{}-{}-", policy.dataset, policy.prefix, policy.frequency);
    let stamp = name.strip_prefix(&head)?;
    if stamp.len() != TIMESTAMP_LEN {
        return None;
    }
    NaiveDateTime::parse_from_str(stamp, TIMESTAMP_FORMAT).ok()
}

/// The snapshots to destroy: all of this policy's snapshots except the newest `retention`,
/// oldest first. Snapshots of anything else are never included.
pub fn plan_prune(policy: &SnapshotPolicy, existing: &[String]) -> Vec<String> {
    let mut own: Vec<(NaiveDateTime, &String)> = existing
        .iter()
        .filter_map(|name| policy_snapshot_time(policy, name).map(|t| (t, name)))
        .collect();
    own.sort();
    own.dedup_by(|a, b| a.1 == b.1);
    let keep = policy.retention as usize;
    let excess = own.len().saturating_sub(keep);
    own.into_iter()
        .take(excess)
        .map(|(_, n)| n.clone())
        .collect()
}

/// What one policy run did (or, in dry-run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRun {
    pub policy_id: i64,
    pub created: String,
    pub destroyed: Vec<String>,
    pub commands: Vec<String>,
    pub error: Option<String>,
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs every due policy: `zfs snapshot`, then `zfs list` and `zfs destroy` for pruning.
/// Each run is audited (actor `scheduler`) and stamps `last_run_at`; a failed snapshot leaves
/// the policy due, so the next tick retries. The lead's background service calls this
/// periodically (e.g. every minute) on the blocking pool.
pub fn run_due(
    store: &NasStore,
    runner: &dyn CommandRunner,
    now: DateTime<Utc>,
) -> Result<Vec<SnapshotRun>, NasError> {
    let _serialised = store.apply_guard();
    let due: Vec<SnapshotPolicy> = store
        .read(super::entity::list::<SnapshotPolicy>)?
        .into_iter()
        .filter(|p| is_due(p, now))
        .collect();
    let mut runs = Vec::new();
    for policy in due {
        let run = run_policy(&policy, runner, now);
        let ts = format_ts(now);
        let entry = audit::Entry::new("scheduler", "snapshot", "snapshot_policy", &ts)
            .resource_id(policy.id)
            .result(match (&run.error, runner.is_dry_run()) {
                (Some(_), _) => "failure",
                (None, true) => "dry_run",
                (None, false) => "success",
            })
            .message(
                run.error
                    .clone()
                    .unwrap_or_else(|| format!("created {}", run.created)),
            )
            .details(serde_json::json!({"created": run.created, "destroyed": run.destroyed}));
        store.write(|c| {
            // A policy deleted meanwhile simply updates no row.
            if run.error.is_none() {
                snapshot_policies::set_last_run(c, policy.id, &ts)?;
            }
            audit::record(c, &entry)
        })?;
        runs.push(run);
    }
    Ok(runs)
}

/// `run_due` with the store's own runner and the current time: what a background timer calls.
pub fn run_due_now(store: &NasStore) -> Result<Vec<SnapshotRun>, NasError> {
    let runner = store.runner();
    run_due(store, runner.as_ref(), store.now())
}

fn run_policy(
    policy: &SnapshotPolicy,
    runner: &dyn CommandRunner,
    now: DateTime<Utc>,
) -> SnapshotRun {
    let name = snapshot_name(policy, now);
    let mut run = SnapshotRun {
        policy_id: policy.id,
        created: name.clone(),
        destroyed: Vec::new(),
        commands: Vec::new(),
        error: None,
    };
    let call = |run: &mut SnapshotRun, a: Vec<String>| -> Result<String, String> {
        run.commands.push(super::runner::command_line("zfs", &a));
        match runner.run("zfs", &a) {
            Ok(out) if out.success => Ok(out.stdout),
            Ok(out) => Err(format!("zfs {} failed: {}", a[0], out.stderr.trim())),
            Err(e) => Err(e),
        }
    };
    let create = if policy.recursive {
        args(&["snapshot", "-r", &name])
    } else {
        args(&["snapshot", &name])
    };
    if let Err(e) = call(&mut run, create) {
        tracing::warn!(policy = policy.id, error = %e, "snapshot failed");
        run.error = Some(e);
        return run;
    }
    let listed = call(
        &mut run,
        args(&[
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-d",
            "1",
            &policy.dataset,
        ]),
    );
    let mut existing: Vec<String> = match listed {
        Ok(stdout) => stdout
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(e) => {
            run.error = Some(format!("snapshot created, pruning skipped: {e}"));
            return run;
        }
    };
    // In dry-run the listing is empty; the new snapshot exists either way.
    if !existing.contains(&name) {
        existing.push(name);
    }
    for victim in plan_prune(policy, &existing) {
        let destroy = if policy.recursive {
            args(&["destroy", "-r", &victim])
        } else {
            args(&["destroy", &victim])
        };
        match call(&mut run, destroy) {
            Ok(_) => run.destroyed.push(victim),
            Err(e) => {
                run.error = Some(e);
                break;
            }
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::entity;
    use crate::nas::runner::{CommandOutput, RecordingRunner};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn policy(frequency: &str, retention: u32, last: Option<&str>) -> SnapshotPolicy {
        SnapshotPolicy {
            id: 1,
            dataset: "tank/data".into(),
            recursive: false,
            frequency: frequency.into(),
            retention,
            prefix: "auto".into(),
            enabled: true,
            last_run_at: last.map(str::to_string),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_ts(text).unwrap()
    }

    #[test]
    fn due_exactly_at_the_period_boundary() {
        let last = "2024-01-01T00:00:00.000Z";
        for (freq, before, boundary) in [
            ("hourly", "2024-01-01T00:59:59.999Z", "2024-01-01T01:00:00Z"),
            ("daily", "2024-01-01T23:59:59Z", "2024-01-02T00:00:00Z"),
            ("weekly", "2024-01-07T23:59:59Z", "2024-01-08T00:00:00Z"),
            ("monthly", "2024-01-31T23:59:59Z", "2024-02-01T00:00:00Z"),
        ] {
            let p = policy(freq, 3, Some(last));
            assert!(!is_due(&p, at(before)), "{freq} before");
            assert!(is_due(&p, at(boundary)), "{freq} at boundary");
        }
        // Month ends clamp: Jan 31 → Feb 29 (leap year).
        let p = policy("monthly", 3, Some("2024-01-31T12:00:00Z"));
        assert!(!is_due(&p, at("2024-02-29T11:59:59Z")));
        assert!(is_due(&p, at("2024-02-29T12:00:00Z")));
        assert!(is_due(&policy("daily", 1, None), at(last)), "never run");
        let mut disabled = policy("hourly", 1, None);
        disabled.enabled = false;
        assert!(!is_due(&disabled, at(last)));
    }

    #[test]
    fn names_are_utc_and_prune_keeps_the_newest() {
        let p = policy("daily", 2, None);
        let t = Utc.with_ymd_and_hms(2024, 3, 5, 7, 8, 9).unwrap();
        assert_eq!(snapshot_name(&p, t), "tank/data@auto-daily-20240305-070809");
        let existing: Vec<String> = [
            "tank/data@auto-daily-20240103-000000",
            "tank/data@auto-daily-20240101-000000",
            "tank/data@auto-daily-20240102-000000",
            "tank/data@manual-before-upgrade",
            "tank/data@auto-hourly-20230101-000000",
            "tank/data/child@auto-daily-20200101-000000",
            "tank/database@auto-daily-20200101-000000",
            "tank/data@auto-daily-2024",
            "tank/data@auto-daily-20241301-000000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            plan_prune(&p, &existing),
            vec!["tank/data@auto-daily-20240101-000000"]
        );
        // retention exactly met: nothing to do; one fewer kept: two go, oldest first.
        assert!(plan_prune(&policy("daily", 3, None), &existing).is_empty());
        assert_eq!(
            plan_prune(&policy("daily", 1, None), &existing),
            vec![
                "tank/data@auto-daily-20240101-000000",
                "tank/data@auto-daily-20240102-000000"
            ]
        );
    }

    proptest! {
        #[test]
        fn prune_never_touches_other_snapshots(
            stamps in proptest::collection::vec((2000u32..2100, 1u32..=12, 1u32..=28, 0u32..24), 0..30),
            others in proptest::collection::vec("[a-z/@:-]{1,30}", 0..10),
            retention in 1u32..10,
        ) {
            let p = policy("hourly", retention, None);
            let mut names: Vec<String> = stamps.iter()
                .map(|(y, m, d, h)| format!("tank/data@auto-hourly-{y:04}{m:02}{d:02}-{h:02}0000"))
                .collect();
            names.extend(others.iter().cloned());
            let plan = plan_prune(&p, &names);
            let mut own: Vec<&String> = names.iter().filter(|n| policy_snapshot_time(&p, n).is_some()).collect();
            own.sort();
            own.dedup();
            prop_assert_eq!(plan.len(), own.len().saturating_sub(retention as usize));
            for victim in &plan {
                prop_assert!(victim.starts_with("tank/data@auto-hourly-"));
                prop_assert!(names.contains(victim));
            }
            // Every kept own snapshot is newer than every victim.
            let newest_victim = plan.iter().max();
            for kept in own.iter().filter(|n| !plan.contains(n)) {
                prop_assert!(newest_victim.is_none_or(|v| *kept > v));
            }
        }
    }

    #[test]
    fn run_due_plans_snapshot_and_prune_through_the_runner() {
        let store = NasStore::in_memory(Default::default()).unwrap();
        let p: SnapshotPolicy = entity::read_new(
            br#"{"dataset": "tank/data", "frequency": "hourly", "retention": 2, "recursive": true}"#,
        )
        .unwrap();
        let id = store.write(|c| entity::create(c, &p, "t")).unwrap().id;
        let runner = RecordingRunner::new();
        runner.respond(
            "zfs list",
            CommandOutput::ok(
                "tank/data@auto-hourly-20240101-000000\ntank/data@auto-hourly-20240101-010000\n\
                 tank/data@other\n",
            ),
        );
        let now = at("2024-01-01T02:00:00Z");
        let runs = run_due(&store, &runner, now).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            runner.commands(),
            vec![
                "zfs snapshot -r tank/data@auto-hourly-20240101-020000",
                "zfs list -H -t snapshot -o name -d 1 tank/data",
                "zfs destroy -r tank/data@auto-hourly-20240101-000000",
            ]
        );
        let stored = store
            .read(|c| entity::get::<SnapshotPolicy>(c, id))
            .unwrap();
        assert_eq!(
            stored.last_run_at.as_deref(),
            Some("2024-01-01T02:00:00.000Z")
        );
        // Not due again until an hour later.
        assert!(
            run_due(&store, &runner, at("2024-01-01T02:59:59Z"))
                .unwrap()
                .is_empty()
        );
        let rows = store
            .read(|c| {
                audit::query(
                    c,
                    &audit::Filter {
                        action: Some("snapshot".into()),
                        limit: 10,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].actor, "scheduler");
    }

    #[test]
    fn a_failed_snapshot_stays_due() {
        let store = NasStore::in_memory(Default::default()).unwrap();
        let p: SnapshotPolicy =
            entity::read_new(br#"{"dataset": "tank", "frequency": "daily", "retention": 1}"#)
                .unwrap();
        store.write(|c| entity::create(c, &p, "t")).unwrap();
        let runner = RecordingRunner::new();
        runner.respond("zfs snapshot", CommandOutput::failed("dataset is busy"));
        let now = at("2024-01-01T00:00:00Z");
        let runs = run_due(&store, &runner, now).unwrap();
        assert!(runs[0].error.as_deref().unwrap().contains("busy"));
        assert_eq!(
            runner.commands().len(),
            1,
            "no prune after a failed snapshot"
        );
        assert_eq!(run_due(&store, &runner, now).unwrap().len(), 1, "still due");
    }
}
