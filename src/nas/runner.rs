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

/// Runs commands for real, each within a time limit: a hung `exportfs` or `targetctl` is
/// killed and the apply fails with a clear error (and releases the apply lock) instead of
/// hanging. Output is kept up to `MAX_OUTPUT_BYTES` per stream.
#[derive(Debug, Clone, Copy)]
pub struct SystemRunner {
    pub timeout: std::time::Duration,
}

/// How long a system command may run by default.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Output kept per stream of a command.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;

impl Default for SystemRunner {
    fn default() -> SystemRunner {
        SystemRunner {
            timeout: COMMAND_TIMEOUT,
        }
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, String> {
        use std::io::Read;
        use std::process::Stdio;
        tracing::info!(command = %command_line(program, args), "running");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let drain = |stream: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(stream) = stream {
                    let mut limited = stream.take(MAX_OUTPUT_BYTES);
                    let _ = limited.read_to_end(&mut text);
                    // Whatever exceeds the limit is read and dropped, so the child never
                    // blocks on a full pipe.
                    let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
                }
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let deadline = std::time::Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(command = %command_line(program, args), "command timed out; killed");
                    return Err(format!(
                        "{program} did not finish within {} s and was killed",
                        self.timeout.as_secs_f64()
                    ));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => return Err(format!("waiting for {program}: {e}")),
            }
        };
        Ok(CommandOutput {
            success: status.success(),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
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
        let runner = SystemRunner::default();
        assert!(runner.run("/nonexistent/atlas-test", &[]).is_err());
        assert!(runner.run("true", &[]).unwrap().success);
        assert!(!runner.run("false", &[]).unwrap().success);
        let echo = runner.run("echo", &["hi".to_string()]).unwrap();
        assert_eq!(echo.stdout, "hi\n");
    }

    #[test]
    fn a_hung_command_is_killed_at_its_time_limit() {
        let runner = SystemRunner {
            timeout: std::time::Duration::from_millis(300),
        };
        let started = std::time::Instant::now();
        let err = runner.run("sleep", &["30".to_string()]).unwrap_err();
        assert!(err.contains("did not finish within 0.3 s"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Output beyond the limit is dropped, and the command still finishes.
        let big = runner
            .run("head", &["-c".into(), "3000000".into(), "/dev/zero".into()])
            .unwrap();
        assert!(big.success);
        assert_eq!(big.stdout.len() as u64, MAX_OUTPUT_BYTES);
    }
}
