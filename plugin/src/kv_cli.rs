//! `atlas kv …` and `atlas repl -e …`: one-shot requests for scripts. The exit status says
//! how the answer went: 0 success, 1 an `ERROR` answer (or `NOT_FOUND` for `get`), 2 no
//! connection or bad arguments.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use atlas::client::{Client, Frame, is_error, strip_tag};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a key's value (exit 1 when it is absent).
    Get { key: String },
    /// Store a value (the rest of the arguments, joined by spaces).
    Put {
        key: String,
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        value: Vec<String>,
    },
    /// Store a value only if the key is at VERSION (0: absent).
    Cas {
        key: String,
        version: u64,
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        value: Vec<String>,
    },
    /// Delete a key (only at VERSION with --if-version).
    Del {
        key: String,
        #[arg(long = "if-version")]
        if_version: Option<u64>,
    },
    /// Print a key's version.
    Version { key: String },
    /// Print every key under PREFIX (all pages), with `--values` its value after a space.
    Scan {
        prefix: String,
        #[arg(long)]
        values: bool,
    },
    /// Print changes under PREFIX (`PUT|DEL KEY VERSION REVISION`, one per line) as they
    /// are committed, after `--from REVISION` when given; stop after `--count N` of them.
    Watch {
        prefix: String,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        count: Option<u64>,
    },
}

fn connect(socket: &Path) -> Result<Client, ExitCode> {
    Client::connect(socket, "atlas-kv").map_err(|e| {
        eprintln!("atlas: cannot connect to {}: {e}", socket.display());
        ExitCode::from(2)
    })
}

fn lines(frames: &[Frame]) -> Vec<&[u8]> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Line(l) => Some(strip_tag(l)),
            Frame::Blob(_) => None,
        })
        .collect()
}

fn request(client: &mut Client, line: &str) -> Result<Vec<Frame>, ExitCode> {
    let frames = client.request(line.as_bytes(), None).map_err(|e| {
        eprintln!("atlas: connection lost: {e}");
        ExitCode::from(2)
    })?;
    if is_error(&frames) {
        let last = lines(&frames).last().copied().unwrap_or_default();
        eprintln!("{}", String::from_utf8_lossy(last));
        return Err(ExitCode::from(1));
    }
    Ok(frames)
}

fn print(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.write_all(b"\n");
}

/// Runs one `atlas kv` command against the node at `socket`.
pub fn run(command: KvCommand, socket: &Path) -> ExitCode {
    match run_inner(command, socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run_inner(command: KvCommand, socket: &Path) -> Result<(), ExitCode> {
    let mut client = connect(socket)?;
    match command {
        KvCommand::Get { key } => {
            let frames = request(&mut client, &format!("KEY GET {key}"))?;
            match lines(&frames).first() {
                Some(line) if line.starts_with(b"VALUE:") => print(&line[b"VALUE:".len()..]),
                _ => {
                    eprintln!("NOT_FOUND");
                    return Err(ExitCode::from(1));
                }
            }
        }
        KvCommand::Put { key, value } => {
            request(&mut client, &format!("KEY PUT {key} {}", value.join(" ")))?;
        }
        KvCommand::Cas {
            key,
            version,
            value,
        } => {
            request(
                &mut client,
                &format!("KEY CAS {key} {version} {}", value.join(" ")),
            )?;
        }
        KvCommand::Del { key, if_version } => {
            let line = match if_version {
                Some(v) => format!("KEY DEL {key} IF VERSION {v}"),
                None => format!("KEY DEL {key}"),
            };
            request(&mut client, &line)?;
        }
        KvCommand::Version { key } => {
            let frames = request(&mut client, &format!("KEY VERSION {key}"))?;
            if let Some(line) = lines(&frames).first() {
                print(line.strip_prefix(b"VERSION:").unwrap_or(line));
            }
        }
        KvCommand::Scan { prefix, values } => scan(&mut client, &prefix, values)?,
        KvCommand::Watch {
            prefix,
            from,
            count,
        } => watch(&mut client, &prefix, from, count)?,
    }
    Ok(())
}

/// Streams a watch's events; its first line (`WATCHING <revision>`) goes to stderr.
fn watch(
    client: &mut Client,
    prefix: &str,
    from: Option<u64>,
    count: Option<u64>,
) -> Result<(), ExitCode> {
    let mut line = format!("[ID:kv] WATCH {prefix}");
    if let Some(from) = from {
        line.push_str(&format!(" FROM {from}"));
    }
    let lost = |e: std::io::Error| {
        eprintln!("atlas: connection lost: {e}");
        ExitCode::from(2)
    };
    client.send(line.as_bytes(), None).map_err(lost)?;
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let line = client.read_line().map_err(lost)?;
        let bare = strip_tag(&line);
        if let Some(event) = bare.strip_prefix(b"EVENT ") {
            print(event);
            seen += 1;
        } else if bare.starts_with(b"WATCHING ") {
            eprintln!("{}", String::from_utf8_lossy(bare));
        } else {
            eprintln!("{}", String::from_utf8_lossy(bare));
            return Err(ExitCode::from(1));
        }
    }
    Ok(())
}

/// Follows `MORE AFTER` lines page by page.
fn scan(client: &mut Client, prefix: &str, values: bool) -> Result<(), ExitCode> {
    let mut after: Option<String> = None;
    loop {
        let mut line = format!("SCAN {prefix}");
        if let Some(last) = &after {
            line.push_str(&format!(" AFTER {last}"));
        }
        if values {
            line.push_str(" VALUES");
        }
        let frames = request(client, &line)?;
        after = None;
        for line in lines(&frames) {
            if let Some(last) = line.strip_prefix(b"MORE AFTER ") {
                after = Some(String::from_utf8_lossy(last).into_owned());
            } else if line != b"OK" && line != b"EMPTY" && !line.starts_with(b"KEYS:") {
                print(line);
            }
        }
        if after.is_none() {
            return Ok(());
        }
    }
}

/// `atlas repl -e LINE …`: sends each line in turn and prints its answer; stops at the
/// first `ERROR` (exit 1).
pub fn run_lines(socket: &Path, lines_to_send: &[String]) -> ExitCode {
    let mut client = match connect(socket) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for line in lines_to_send {
        let frames = match client.request(line.as_bytes(), None) {
            Ok(frames) => frames,
            Err(e) => {
                eprintln!("atlas: connection lost: {e}");
                return ExitCode::from(2);
            }
        };
        let mut out = std::io::stdout().lock();
        for frame in &frames {
            match frame {
                Frame::Line(l) => {
                    let _ = out.write_all(l);
                    let _ = out.write_all(b"\n");
                }
                Frame::Blob(bytes) => {
                    let _ = out.write_all(bytes);
                    let _ = out.write_all(b"\n");
                }
            }
        }
        if is_error(&frames) {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
