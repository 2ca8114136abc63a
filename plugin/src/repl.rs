//! `atlas repl`: an interactive shell with history, or a script reader when stdin is not a
//! terminal. `KEY BLOB SET <key> @FILE` uploads a file; `KEY BLOB GET <key> > FILE` saves one.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use atlas::client::{Client, Frame, is_error, strip_tag};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::target::Target;

/// What the user typed, after the REPL's own syntax is resolved.
enum Input {
    Quit,
    Send {
        line: Vec<u8>,
        payload: Option<Vec<u8>>,
        save_to: Option<PathBuf>,
    },
    LocalError(String),
}

fn interpret(text: &str) -> Input {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    if upper.len() == 1 && (upper[0] == "EXIT" || upper[0] == "QUIT") {
        return Input::Quit;
    }
    let is_blob =
        |sub: &str| upper.len() >= 4 && upper[0] == "KEY" && upper[1] == "BLOB" && upper[2] == sub;
    if is_blob("SET") && tokens.len() == 5 && tokens[4].starts_with('@') {
        let path = &tokens[4][1..];
        return match std::fs::read(path) {
            Ok(bytes) => Input::Send {
                line: format!("KEY BLOB SET {} {}", tokens[3], bytes.len()).into_bytes(),
                payload: Some(bytes),
                save_to: None,
            },
            Err(e) => Input::LocalError(format!("cannot read {path}: {e}")),
        };
    }
    if is_blob("GET") {
        // `KEY BLOB GET k > FILE` or `KEY BLOB GET k >FILE`
        let target = match tokens.len() {
            6 if tokens[4] == ">" => Some(tokens[5]),
            5 if tokens[4].starts_with('>') && tokens[4].len() > 1 => Some(&tokens[4][1..]),
            _ => None,
        };
        if let Some(target) = target {
            return Input::Send {
                line: format!("KEY BLOB GET {}", tokens[3]).into_bytes(),
                payload: None,
                save_to: Some(PathBuf::from(target)),
            };
        }
    }
    Input::Send {
        line: text.as_bytes().to_vec(),
        payload: None,
        save_to: None,
    }
}

fn printable(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\t')
        .then_some(text)
}

/// Prints a response; a blob payload goes to `save_to` when given. Returns false on failure.
fn show(frames: &[Frame], save_to: Option<&Path>) -> bool {
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    for frame in frames {
        match frame {
            Frame::Line(line) => {
                let bare = strip_tag(line);
                if save_to.is_some() && bare.starts_with(b"BLOB ") {
                    continue;
                }
                let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
            }
            Frame::Blob(bytes) => match save_to {
                Some(path) => match std::fs::write(path, bytes) {
                    Ok(()) => {
                        let _ = writeln!(out, "saved {} bytes to {}", bytes.len(), path.display());
                    }
                    Err(e) => {
                        let _ = writeln!(out, "cannot write {}: {e}", path.display());
                        ok = false;
                    }
                },
                None => match printable(bytes) {
                    Some(text) => {
                        let _ = writeln!(out, "{text}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "({} bytes of binary data; use KEY BLOB GET <key> > FILE to save them)",
                            bytes.len()
                        );
                    }
                },
            },
        }
    }
    let _ = out.flush();
    ok && !is_error(frames)
}

/// Handles one input line; returns (keep going, succeeded).
fn handle(client: &mut Client, text: &str) -> (bool, bool) {
    if text.trim().is_empty() {
        return (true, true);
    }
    match interpret(text.trim_end_matches(['\r', '\n'])) {
        Input::Quit => (false, true),
        Input::LocalError(message) => {
            println!("ERROR {message}");
            (true, false)
        }
        Input::Send {
            line,
            payload,
            save_to,
        } => match client.request(&line, payload.as_deref()) {
            Ok(frames) => {
                let fatal = frames.last().is_some_and(
                    |f| matches!(f, Frame::Line(l) if strip_tag(l).starts_with(b"ERROR FATAL")),
                );
                let ok = show(&frames, save_to.as_deref());
                (!fatal, ok)
            }
            Err(e) => {
                eprintln!("atlas: connection lost: {e}");
                (false, false)
            }
        },
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".atlas_history"))
}

pub fn run(target: &Target) -> ExitCode {
    let mut client = match target.connect("atlas-repl") {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut all_ok = true;
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let (more, ok) = handle(&mut client, &line);
            all_ok &= ok;
            if !more {
                break;
            }
        }
        return if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }

    let Ok(mut editor) = DefaultEditor::new() else {
        eprintln!("atlas: cannot open the terminal");
        return ExitCode::from(2);
    };
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("connected to {} — EXIT or Ctrl-D quits", target.describe());
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let (more, ok) = handle(&mut client, &line);
                all_ok &= ok;
                if !more {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
