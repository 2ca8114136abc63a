//! Writing rendered configuration to the system and reloading the services.

use std::fs;
use std::path::Path;
use std::path::PathBuf;

use serde::Serialize;

use super::NasStore;
use super::error::NasError;
use super::render::{self, ConfigKind, Secrets};
use super::runner::{CommandRunner, command_line};

/// Where apply writes each file. Defaults leave the administrator's own files alone: Samba
/// includes ours (`include = /etc/samba/atlas-shares.conf` in `[global]`), NFS reads
/// `/etc/exports.d/*.exports`, and `targetctl restore` reads LIO's saveconfig file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPaths {
    pub smb_conf: PathBuf,
    pub exports: PathBuf,
    pub lio_saveconfig: PathBuf,
}

impl Default for ApplyPaths {
    fn default() -> Self {
        ApplyPaths {
            smb_conf: PathBuf::from("/etc/samba/atlas-shares.conf"),
            exports: PathBuf::from("/etc/exports.d/atlas.exports"),
            lio_saveconfig: PathBuf::from("/etc/rtslib-fb-target/saveconfig.json"),
        }
    }
}

impl ApplyPaths {
    /// All three files under one directory (tests, staging areas).
    pub fn under(dir: &Path) -> ApplyPaths {
        ApplyPaths {
            smb_conf: dir.join("smb.conf"),
            exports: dir.join("exports"),
            lio_saveconfig: dir.join("saveconfig.json"),
        }
    }

    pub fn path_of(&self, kind: ConfigKind) -> &Path {
        match kind {
            ConfigKind::Smb => &self.smb_conf,
            ConfigKind::Nfs => &self.exports,
            ConfigKind::Iscsi => &self.lio_saveconfig,
        }
    }
}

/// What apply did with one file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileReport {
    pub kind: &'static str,
    pub path: String,
    pub bytes: usize,
    /// `written`, `unchanged` (same content, nothing done) or `dry_run`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApplyReport {
    pub dry_run: bool,
    pub files: Vec<FileReport>,
    pub commands: Vec<String>,
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The command that makes a service pick up its new file.
fn reload_command(kind: ConfigKind, path: &Path) -> (&'static str, Vec<String>) {
    match kind {
        ConfigKind::Smb => ("smbcontrol", args(&["all", "reload-config"])),
        ConfigKind::Nfs => ("exportfs", args(&["-ra"])),
        ConfigKind::Iscsi => (
            "targetctl",
            vec!["restore".into(), path.display().to_string()],
        ),
    }
}

/// The check run on the candidate file before it replaces the current one.
fn validate_command(kind: ConfigKind, candidate: &Path) -> Option<(&'static str, Vec<String>)> {
    match kind {
        ConfigKind::Smb => Some((
            "testparm",
            vec![
                "-s".into(),
                "--suppress-prompt".into(),
                candidate.display().to_string(),
            ],
        )),
        // exportfs and targetctl have no offline check; the reload is the check and a
        // failure rolls back.
        ConfigKind::Nfs | ConfigKind::Iscsi => None,
    }
}

fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `content` to `path` atomically and durably: a temp file in the same directory
/// created with `mode`, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), NasError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    crate::files::write_atomically(path, content, mode)?;
    Ok(())
}

fn run_checked(
    runner: &dyn CommandRunner,
    commands: &mut Vec<String>,
    program: &str,
    a: &[String],
) -> Result<(), String> {
    commands.push(command_line(program, a));
    match runner.run(program, a) {
        Ok(out) if out.success => Ok(()),
        Ok(out) => Err(format!(
            "`{}` failed: {}",
            command_line(program, a),
            out.stderr.trim()
        )),
        Err(e) => Err(e),
    }
}

/// Renders `kinds` from one consistent read and applies each file in turn: write the
/// candidate, validate it, keep the current file as `.bak`, rename into place, reload; if the
/// reload fails, put the `.bak` back and reload again. In dry-run nothing is written and the
/// commands are only recorded. Stops at the first failure (earlier kinds stay applied).
pub fn apply(
    store: &NasStore,
    runner: &dyn CommandRunner,
    kinds: &[ConfigKind],
) -> Result<ApplyReport, NasError> {
    let _serialised = store.apply_guard();
    let rendered: Vec<(ConfigKind, String)> = store.write(|c| {
        kinds
            .iter()
            .map(|k| Ok((*k, render::render_from_db(c, *k, Secrets::Include)?)))
            .collect()
    })?;
    let paths = &store.options().apply_paths;
    let mut report = ApplyReport {
        dry_run: runner.is_dry_run(),
        files: Vec::new(),
        commands: Vec::new(),
    };
    for (kind, content) in rendered {
        let path = paths.path_of(kind);
        let outcome = apply_one(runner, kind, path, &content, &mut report.commands)?;
        report.files.push(FileReport {
            kind: kind.as_str(),
            path: path.display().to_string(),
            bytes: content.len(),
            outcome,
        });
    }
    Ok(report)
}

fn apply_one(
    runner: &dyn CommandRunner,
    kind: ConfigKind,
    path: &Path,
    content: &str,
    commands: &mut Vec<String>,
) -> Result<&'static str, NasError> {
    let candidate = sibling(path, ".atlas-new");
    let (reload, reload_args) = reload_command(kind, path);
    if runner.is_dry_run() {
        if let Some((program, a)) = validate_command(kind, &candidate) {
            let _ = run_checked(runner, commands, program, &a);
        }
        let _ = run_checked(runner, commands, reload, &reload_args);
        return Ok("dry_run");
    }
    if fs::read(path).is_ok_and(|current| current == content.as_bytes()) {
        return Ok("unchanged");
    }
    // LIO's file holds CHAP secrets.
    let mode = if kind == ConfigKind::Iscsi {
        0o600
    } else {
        0o644
    };
    write_atomically(&candidate, content.as_bytes(), mode)?;
    if let Some((program, a)) = validate_command(kind, &candidate)
        && let Err(e) = run_checked(runner, commands, program, &a)
    {
        let _ = fs::remove_file(&candidate);
        return Err(NasError::Apply(format!(
            "{} did not validate: {e}",
            kind.as_str()
        )));
    }
    let backup = sibling(path, ".bak");
    let had_previous = path.exists();
    if had_previous {
        fs::copy(path, &backup)?;
    }
    crate::files::rename_durably(&candidate, path)?;
    let Err(reload_error) = run_checked(runner, commands, reload, &reload_args) else {
        return Ok("written");
    };
    // Roll back to the previous file and reload it.
    let restored = if had_previous {
        fs::read(&backup).and_then(|old| {
            write_atomically(path, &old, mode).map_err(|e| std::io::Error::other(e.to_string()))
        })
    } else {
        fs::remove_file(path)
    };
    let reloaded = run_checked(runner, commands, reload, &reload_args);
    let rollback = match (restored, reloaded) {
        (Ok(()), Ok(())) => "previous configuration restored".to_string(),
        (Err(e), _) => format!("ROLLBACK FAILED, could not restore the previous file: {e}"),
        (Ok(()), Err(e)) => format!("previous file restored but reloading it failed: {e}"),
    };
    Err(NasError::Apply(format!(
        "{}: {reload_error}; {rollback}",
        kind.as_str()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::runner::{CommandOutput, DryRunRunner, RecordingRunner};
    use crate::nas::{NasOptions, entity, smb};
    use std::sync::Arc;

    fn store(dir: &Path) -> NasStore {
        let store = NasStore::open_with(
            crate::nas::DbLocation::Memory,
            NasOptions {
                apply_paths: ApplyPaths::under(dir),
                ..NasOptions::default()
            },
            Arc::new(DryRunRunner::default()),
        )
        .unwrap();
        let share: smb::SmbShare =
            entity::read_new(br#"{"name": "data", "path": "/srv/data"}"#).unwrap();
        store.write(|c| entity::create(c, &share, "t")).unwrap();
        store
    }

    #[test]
    fn dry_run_writes_nothing_and_records_commands() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let runner = DryRunRunner::default();
        let report = apply(&store, &runner, &ConfigKind::ALL).unwrap();
        assert!(report.dry_run);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no files"
        );
        let cmds = runner.commands();
        assert!(
            cmds.iter().any(|c| c.starts_with("testparm -s")),
            "{cmds:?}"
        );
        assert!(cmds.contains(&"smbcontrol all reload-config".to_string()));
        assert!(cmds.contains(&"exportfs -ra".to_string()));
        assert!(cmds.iter().any(|c| c.starts_with("targetctl restore")));
    }

    #[test]
    fn apply_writes_keeps_bak_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let smb_path = dir.path().join("smb.conf");
        std::fs::write(&smb_path, "old config\n").unwrap();
        let runner = RecordingRunner::new();
        let report = apply(&store, &runner, &ConfigKind::ALL).unwrap();
        assert!(!report.dry_run);
        assert!(
            report.files.iter().all(|f| f.outcome == "written"),
            "{report:?}"
        );
        assert!(
            std::fs::read_to_string(&smb_path)
                .unwrap()
                .contains("[data]")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("smb.conf.bak")).unwrap(),
            "old config\n"
        );
        assert!(!dir.path().join("smb.conf.atlas-new").exists());
        let again = apply(&store, &runner, &[ConfigKind::Smb]).unwrap();
        assert_eq!(again.files[0].outcome, "unchanged");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("saveconfig.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn failed_validation_leaves_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let smb_path = dir.path().join("smb.conf");
        std::fs::write(&smb_path, "old config\n").unwrap();
        let runner = RecordingRunner::new();
        runner.respond("testparm", CommandOutput::failed("Unknown parameter"));
        let err = apply(&store, &runner, &[ConfigKind::Smb]).unwrap_err();
        assert!(matches!(err, NasError::Apply(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&smb_path).unwrap(), "old config\n");
        assert!(
            !runner
                .commands()
                .iter()
                .any(|c| c.starts_with("smbcontrol"))
        );
    }

    #[test]
    fn failed_reload_rolls_back_and_reloads_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let exports = dir.path().join("exports");
        std::fs::write(&exports, "/old *(ro)\n").unwrap();
        let nfs: crate::nas::nfs::NfsExport =
            entity::read_new(br#"{"path": "/srv/x", "clients": ["*"]}"#).unwrap();
        store.write(|c| entity::create(c, &nfs, "t")).unwrap();
        let runner = RecordingRunner::new();
        runner.respond("exportfs -ra", CommandOutput::failed("bad export"));
        let err = apply(&store, &runner, &[ConfigKind::Nfs]).unwrap_err();
        assert!(err.to_string().contains("previous"), "{err}");
        assert_eq!(std::fs::read_to_string(&exports).unwrap(), "/old *(ro)\n");
        assert_eq!(runner.commands(), vec!["exportfs -ra", "exportfs -ra"]);
        // Without a previous file, the new one is removed again.
        std::fs::remove_file(&exports).unwrap();
        assert!(apply(&store, &runner, &[ConfigKind::Nfs]).is_err());
        assert!(!exports.exists());
    }
}
