//! Running system commands (`testparm`, `smbcontrol`, `exportfs`, `targetctl`, `zfs`)
//! behind a trait: the real runner on a NAS, a dry-run runner by default, and a recording
//! fake with scripted answers for tests.

use std::process::Command;
use std::sync::Mutex;

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn ok(stdout: &str) -> CommandOutput {
        CommandOutput {
            success: true,
            stdout: stdout.to_string(),
            stderr: String::new(),
        }
    }

    pub fn failed(stderr: &str) -> CommandOutput {
        CommandOutput {
            success: false,
            stdout: String::new(),
            stderr: stderr.to_string(),
        }
    }
}

/// Runs one program with arguments (no shell, so no quoting problems).
pub trait CommandRunner: Send + Sync {
    /// `Err` when the program could not be started at all.
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, String>;

    /// True when commands are only recorded, not run (apply then writes no files).
    fn is_dry_run(&self) -> bool {
        false
    }
}

/// Renders `program args…` for logs and API answers.
pub fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            line.push_str(&format!("{arg:?}"));
        } else {
            line.push_str(arg);
        }
    }
    line
}

/// Runs commands for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, String> {
        tracing::info!(command = %command_line(program, args), "running");
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        Ok(CommandOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Logs and records commands without running them; every command "succeeds" with no output.
#[derive(Debug, Default)]
pub struct DryRunRunner {
    log: Mutex<Vec<String>>,
}

impl DryRunRunner {
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl CommandRunner for DryRunRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, String> {
        let line = command_line(program, args);
        tracing::info!(command = %line, "dry run: not running");
        if let Ok(mut log) = self.log.lock() {
            // Keep the record bounded in a long-running server.
            if log.len() >= 1000 {
                log.remove(0);
            }
            log.push(line);
        }
        Ok(CommandOutput::ok(""))
    }

    fn is_dry_run(&self) -> bool {
        true
    }
}

/// A test double: records every command and answers from a script. A rule matches when the
/// command line starts with its prefix; the first matching rule wins; without a match the
/// command succeeds with no output. Unlike [`DryRunRunner`] it is not a dry run, so apply
/// really writes files (under the test's directory).
#[derive(Debug, Default)]
pub struct RecordingRunner {
    rules: Mutex<Vec<(String, CommandOutput)>>,
    log: Mutex<Vec<String>>,
}

impl RecordingRunner {
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// Answers commands starting with `prefix` (e.g. `"exportfs -ra"`) with `output`.
    pub fn respond(&self, prefix: &str, output: CommandOutput) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push((prefix.to_string(), output));
        }
    }

    pub fn commands(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, String> {
        let line = command_line(program, args);
        if let Ok(mut log) = self.log.lock() {
            log.push(line.clone());
        }
        let rules = self.rules.lock().map_err(|e| e.to_string())?;
        Ok(rules
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, out)| out.clone())
            .unwrap_or_else(|| CommandOutput::ok("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_runner_scripts_answers_in_order() {
        let r = RecordingRunner::new();
        r.respond("exportfs -ra", CommandOutput::failed("boom"));
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!r.run("exportfs", &args(&["-ra"])).unwrap().success);
        assert!(r.run("exportfs", &args(&["-v"])).unwrap().success);
        assert_eq!(r.commands(), vec!["exportfs -ra", "exportfs -v"]);
        assert_eq!(command_line("a", &args(&["b c", ""])), "a \"b c\" \"\"");
    }

    #[test]
    fn system_runner_reports_missing_programs() {
        assert!(SystemRunner.run("/nonexistent/atlas-test", &[]).is_err());
        assert!(SystemRunner.run("true", &[]).unwrap().success);
        assert!(!SystemRunner.run("false", &[]).unwrap().success);
    }
}
