//! `atlas kv …` and `atlas repl -e …`: one-shot requests for scripts. The exit status says
//! how the answer went: 0 success, 1 an `ERROR` answer (or `NOT_FOUND` for `get`), 2 no
//! connection or bad arguments.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use atlas::client::{Client, Frame, is_error, strip_tag};
use clap::Subcommand;

use crate::target::Target;

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
    /// Save every client key of the node (one point in time) to FILE (created, mode 0600;
    /// it must not exist).
    Backup { file: std::path::PathBuf },
    /// Write every key of a backup FILE into the node (which must not hold them yet).
    Restore { file: std::path::PathBuf },
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

/// Runs one `atlas kv` command against the node at `target`.
pub fn run(command: KvCommand, target: &Target) -> ExitCode {
    match run_inner(command, target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run_inner(command: KvCommand, target: &Target) -> Result<(), ExitCode> {
    let mut client = target.connect("atlas-kv")?;
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
        KvCommand::Backup { file } => backup(&mut client, &file)?,
        KvCommand::Restore { file } => restore(&mut client, &file)?,
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
pub fn run_lines(target: &Target, lines_to_send: &[String]) -> ExitCode {
    let mut client = match target.connect("atlas-kv") {
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

/// Streams `BACKUP` into a new file; a failed backup leaves no file behind.
fn backup(client: &mut Client, file: &Path) -> Result<(), ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |message: String| {
        eprintln!("atlas: {message}");
        ExitCode::from(2)
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| fail(format!("cannot create {}: {e}", file.display())))?;
    let result = (|| -> Result<u64, ExitCode> {
        let lost = |e: std::io::Error| fail(format!("connection lost: {e}"));
        client.send(b"BACKUP", None).map_err(lost)?;
        let mut total = 0u64;
        loop {
            let line = client.read_line().map_err(lost)?;
            if line == b"OK" {
                return Ok(total);
            }
            let Some(len) = line
                .strip_prefix(b"BLOB ")
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                eprintln!("{}", String::from_utf8_lossy(&line));
                return Err(ExitCode::from(1));
            };
            let chunk = client.read_payload(len).map_err(lost)?;
            out.write_all(&chunk)
                .map_err(|e| fail(format!("cannot write {}: {e}", file.display())))?;
            total += len as u64;
        }
    })();
    let total = match result.and_then(|t| {
        out.sync_all()
            .map_err(|e| fail(format!("cannot sync {}: {e}", file.display())))?;
        Ok(t)
    }) {
        Ok(total) => total,
        Err(code) => {
            let _ = std::fs::remove_file(file);
            return Err(code);
        }
    };
    eprintln!("atlas: saved {total} bytes to {}", file.display());
    Ok(())
}

/// Replays a backup as writes: values first (with their WORM or expiry deadline), then
/// ACLs. A key the node already holds stops the restore (it never overwrites).
fn restore(client: &mut Client, file: &Path) -> Result<(), ExitCode> {
    use atlas::storage::backup::{BackupEntry, read_backup};
    let reader = std::fs::File::open(file)
        .map(std::io::BufReader::new)
        .map_err(|e| {
            eprintln!("atlas: cannot open {}: {e}", file.display());
            ExitCode::from(2)
        })?;
    // The whole file is checked (it ends with its counts) before anything is written.
    let entries = read_backup(reader).map_err(|e| {
        eprintln!("atlas: {}: {e}", file.display());
        ExitCode::from(2)
    })?;
    let lost = |e: std::io::Error| {
        eprintln!("atlas: connection lost: {e}");
        ExitCode::from(2)
    };
    let check = |frames: Vec<Frame>, what: &str| -> Result<(), ExitCode> {
        if is_error(&frames) {
            let last = lines(&frames)
                .last()
                .map(|l| String::from_utf8_lossy(l).into_owned());
            eprintln!("atlas: restoring {what}: {}", last.unwrap_or_default());
            return Err(ExitCode::from(1));
        }
        Ok(())
    };
    let mut owner_of: Option<String> = None;
    let (mut values, mut acls) = (0u64, 0u64);
    for entry in entries {
        match entry {
            BackupEntry::Value {
                key,
                blob,
                worm_until_ms,
                expires_ms,
                bytes,
            } => {
                // Never overwrite: the node must not hold the key (a deadline's PUT and a
                // BLOB SET would replace it; CAS 0 would refuse it anyway).
                let version = client.request(format!("KEY VERSION {key}").as_bytes(), None);
                if lines(&version.map_err(lost)?).first() != Some(&&b"VERSION:0"[..]) {
                    eprintln!("atlas: restoring {key}: the node already holds it");
                    return Err(ExitCode::from(1));
                }
                let (line, payload) = if blob {
                    let line = format!("KEY BLOB SET {key} {}", bytes.len()).into_bytes();
                    (line, Some(bytes))
                } else {
                    let mut line = match (worm_until_ms, expires_ms) {
                        (Some(at), _) => format!("KEY PUT {key} WORM EXPIRES {} ", rfc3339(at)),
                        (None, Some(at)) => format!("KEY PUT {key} EXPIRES {} ", rfc3339(at)),
                        // CAS takes the value as it is (no clause is read).
                        (None, None) => format!("KEY CAS {key} 0 "),
                    }
                    .into_bytes();
                    line.extend_from_slice(&bytes);
                    (line, None)
                };
                let answer = client.request(&line, payload.as_deref()).map_err(lost)?;
                check(answer, &key)?;
                values += 1;
            }
            BackupEntry::Acl {
                key,
                perm,
                principal,
            } => {
                // Readers and writers come first, while the key is still public; the first
                // owner grants itself, and as an owner it grants the others.
                if perm == "OWNER" && owner_of.as_deref() != Some(key.as_str()) {
                    let assume = format!("PRINCIPAL ASSUME {principal}");
                    check(client.request(assume.as_bytes(), None).map_err(lost)?, &key)?;
                    owner_of = Some(key.clone());
                }
                let line = format!("ACL GRANT {key} {principal} PERMS {perm}");
                check(client.request(line.as_bytes(), None).map_err(lost)?, &key)?;
                acls += 1;
            }
        }
    }
    eprintln!(
        "atlas: restored {values} values and {acls} ACL entries from {}",
        file.display()
    );
    Ok(())
}

/// A deadline as a clause reads it back exactly (clamped to the year 9999).
fn rfc3339(ms: i64) -> String {
    atlas::protocol::duration::format_rfc3339_exact(ms)
}
