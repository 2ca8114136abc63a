//! Request line → `Request`. Total: any byte string gives a `Request` or a `ParseError`,
//! never a panic (checked by property tests and the fuzz target).

pub use super::command::{Command, Deadline, Perm, Request, Scan, TxnStep};
use super::duration::{parse_go_duration, parse_rfc3339_ms};
use super::key::Key;

pub const MAX_TAG_CHARS: usize = 64;
pub const MAX_PRINCIPAL_CHARS: usize = 256;

/// Why a line is not a request. All are `ERROR WARN`: the connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The tag, when the line had a valid one, so the error can be matched to the request.
    pub tag: Option<String>,
    pub message: String,
    pub kind: ParseErrorKind,
    /// A `KEY BLOB SET` with a valid length but another error: its payload still follows
    /// and must be skipped, or it would be read as commands. (A bad length skips nothing.)
    pub payload_len: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    Usage,
    UnknownCommand,
    InvalidInput,
}

impl ParseErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ParseErrorKind::Usage => "usage",
            ParseErrorKind::UnknownCommand => "unknown_command",
            ParseErrorKind::InvalidInput => "invalid_input",
        }
    }
}

const USAGE_KEY: &str =
    "usage: KEY GET|PUT|SET|CAS|DEL|VERSION <key> ... or KEY BLOB SET|GET <key> ...";
const USAGE_PUT: &str = "usage: KEY PUT <key> [PRINCIPAL <name>] [[WORM] TTL <duration>|[WORM] EXPIRES <rfc3339>] <value>";
const USAGE_CAS: &str = "usage: KEY CAS <key> <version> <value>";
const USAGE_DEL: &str = "usage: KEY DEL <key> [IF VERSION <n>]";
const USAGE_SCAN: &str = "usage: SCAN <prefix> [AFTER <key>] [LIMIT <n>] [VALUES]";
const USAGE_TXN: &str = "usage: TXN BEGIN | TXN IF <key> VERSION <n> | TXN IF <key> ABSENT | TXN PUT <key> <value> | TXN DEL <key> | TXN COMMIT | TXN ABORT";
const USAGE_PRINCIPAL: &str = "usage: PRINCIPAL ASSUME <name> | PRINCIPAL WHOAMI";
const USAGE_ASSUME: &str = "usage: PRINCIPAL ASSUME <name>";

/// Splits a line into whitespace-separated tokens, remembering where each ends so the raw
/// remainder (a value) can be taken without losing its spacing.
struct Tokens<'a> {
    line: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        Tokens { line, pos: 0 }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.pos < self.line.len() && self.line[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        if self.pos == self.line.len() {
            return None;
        }
        let start = self.pos;
        while self.pos < self.line.len() && !self.line[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        Some(&self.line[start..self.pos])
    }

    /// Everything after the current token with the one separating byte removed.
    fn raw_rest(&self) -> &'a [u8] {
        if self.pos < self.line.len() {
            &self.line[self.pos + 1..]
        } else {
            &[]
        }
    }

    fn is_done(&self) -> bool {
        self.line[self.pos..].iter().all(u8::is_ascii_whitespace)
    }
}

fn word_is(token: &[u8], word: &str) -> bool {
    token.eq_ignore_ascii_case(word.as_bytes())
}

/// Parses one request line (without its line end).
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    let (tag, body) = split_tag(line)?;
    let err = |kind, message: String| ParseError {
        tag: tag.clone(),
        message,
        kind,
        payload_len: None,
    };
    let command = parse_command(body).map_err(|(kind, message)| {
        let mut e = err(kind, message);
        e.payload_len = blob_payload_len(body);
        e
    })?;
    Ok(Request { tag, command })
}

fn split_tag(line: &[u8]) -> Result<(Option<String>, &[u8]), ParseError> {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let line = &line[start..];
    if !line.starts_with(b"[ID:") && !line.starts_with(b"[id:") {
        return Ok((None, line));
    }
    let invalid = || ParseError {
        tag: None,
        message: format!(
            "invalid request id: expected [ID:<token>] with 1..{MAX_TAG_CHARS} printable characters"
        ),
        kind: ParseErrorKind::InvalidInput,
        payload_len: None,
    };
    let inner = &line[4..];
    let close = inner.iter().position(|&b| b == b']').ok_or_else(invalid)?;
    let token = &inner[..close];
    if token.is_empty()
        || token.len() > MAX_TAG_CHARS
        || !token.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    let rest = &inner[close + 1..];
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return Err(invalid());
    }
    let tag = String::from_utf8_lossy(token).into_owned();
    Ok((Some(tag), &rest[1..]))
}

type CmdResult = Result<Command, (ParseErrorKind, String)>;

fn usage(text: &str) -> (ParseErrorKind, String) {
    (ParseErrorKind::Usage, text.to_string())
}

fn invalid(message: String) -> (ParseErrorKind, String) {
    (ParseErrorKind::InvalidInput, message)
}

fn parse_command(body: &[u8]) -> CmdResult {
    let mut tokens = Tokens::new(body);
    let Some(word) = tokens.next() else {
        return Err(usage("command expected"));
    };
    if word_is(word, "KEY") {
        parse_key_command(&mut tokens)
    } else if word_is(word, "SCAN") {
        parse_scan(&mut tokens)
    } else if word_is(word, "COUNT") {
        let prefix = single_arg(&mut tokens).ok_or_else(|| usage("usage: COUNT <prefix>"))?;
        Ok(Command::Count(parse_prefix(prefix)?))
    } else if word_is(word, "TXN") {
        parse_txn(&mut tokens)
    } else if word_is(word, "WATCH") {
        const USAGE_WATCH: &str = "usage: WATCH <table>.<prefix> [FROM <revision>]";
        let prefix = parse_prefix(tokens.next().ok_or_else(|| usage(USAGE_WATCH))?)?;
        if !prefix.contains('.') || prefix.starts_with('.') {
            return Err(invalid(
                "invalid watch prefix: name one table, as <table>. or <table>.<prefix> (revisions are per table)"
                    .into(),
            ));
        }
        let from = match (tokens.next(), tokens.next()) {
            (None, _) => None,
            (Some(word), Some(n)) if word_is(word, "FROM") && tokens.is_done() => Some(
                parse_decimal(n)
                    .ok_or_else(|| invalid("invalid revision: expected a whole number".into()))?,
            ),
            _ => return Err(usage(USAGE_WATCH)),
        };
        Ok(Command::Watch { prefix, from })
    } else if word_is(word, "BACKUP") {
        if !tokens.is_done() {
            return Err(usage("usage: BACKUP"));
        }
        Ok(Command::Backup)
    } else if word_is(word, "UNWATCH") {
        let tag = single_arg(&mut tokens).ok_or_else(|| usage("usage: UNWATCH <tag>"))?;
        Ok(Command::Unwatch(String::from_utf8_lossy(tag).into_owned()))
    } else if word_is(word, "PRINCIPAL") {
        parse_principal(&mut tokens)
    } else if word_is(word, "ACL") {
        parse_acl(&mut tokens)
    } else if word_is(word, "NODE") {
        cluster::parse_node(&mut tokens)
    } else if word_is(word, "QUORUM") || word_is(word, "TABLE") {
        cluster::parse_quorum_or_table(word, &mut tokens)
    } else {
        let shown: String = String::from_utf8_lossy(word).chars().take(64).collect();
        Err((
            ParseErrorKind::UnknownCommand,
            format!("command expected, got {shown}"),
        ))
    }
}

/// Exactly one more token, nothing after it.
fn single_arg<'a>(tokens: &mut Tokens<'a>) -> Option<&'a [u8]> {
    let arg = tokens.next()?;
    tokens.is_done().then_some(arg)
}

fn parse_key(raw: &[u8]) -> Result<Key, (ParseErrorKind, String)> {
    Key::parse(raw).map_err(invalid)
}

fn parse_prefix(raw: &[u8]) -> Result<String, (ParseErrorKind, String)> {
    Ok(std::str::from_utf8(raw)
        .map_err(|_| invalid("invalid prefix: not UTF-8".into()))?
        .to_ascii_uppercase())
}

/// `<prefix>` then `AFTER <key>`, `LIMIT <n>` and `VALUES`, each at most once, in any order.
fn parse_scan(tokens: &mut Tokens<'_>) -> CmdResult {
    let prefix = parse_prefix(tokens.next().ok_or_else(|| usage(USAGE_SCAN))?)?;
    let mut scan = Scan {
        prefix,
        after: None,
        limit: None,
        values: false,
    };
    while let Some(word) = tokens.next() {
        if word_is(word, "AFTER") && scan.after.is_none() {
            let key = tokens.next().ok_or_else(|| usage(USAGE_SCAN))?;
            scan.after = Some(parse_prefix(key)?);
        } else if word_is(word, "LIMIT") && scan.limit.is_none() {
            let n = tokens.next().ok_or_else(|| usage(USAGE_SCAN))?;
            let n = parse_decimal(n)
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| invalid("invalid limit: expected a whole number from 1".into()))?;
            scan.limit = Some(n);
        } else if word_is(word, "VALUES") && !scan.values {
            scan.values = true;
        } else {
            return Err(usage(USAGE_SCAN));
        }
    }
    Ok(Command::Scan(scan))
}

fn parse_version(raw: &[u8]) -> Result<u64, (ParseErrorKind, String)> {
    parse_decimal(raw).ok_or_else(|| invalid("invalid version: expected a whole number".into()))
}

fn parse_txn(tokens: &mut Tokens<'_>) -> CmdResult {
    let sub = tokens.next().ok_or_else(|| usage(USAGE_TXN))?;
    let step = if word_is(sub, "IF") {
        let key = parse_key(tokens.next().ok_or_else(|| usage(USAGE_TXN))?)?;
        let what = tokens.next().ok_or_else(|| usage(USAGE_TXN))?;
        let version = if word_is(what, "ABSENT") && tokens.is_done() {
            0
        } else if word_is(what, "VERSION") {
            parse_version(single_arg(tokens).ok_or_else(|| usage(USAGE_TXN))?)?
        } else {
            return Err(usage(USAGE_TXN));
        };
        TxnStep::IfVersion { key, version }
    } else if word_is(sub, "PUT") {
        let key = parse_key(tokens.next().ok_or_else(|| usage(USAGE_TXN))?)?;
        let value = tokens.raw_rest();
        if value.is_empty() {
            return Err(usage("usage: TXN PUT <key> <value>"));
        }
        TxnStep::Put {
            key,
            value: value.to_vec(),
        }
    } else if word_is(sub, "DEL") {
        TxnStep::Del(parse_key(
            single_arg(tokens).ok_or_else(|| usage("usage: TXN DEL <key>"))?,
        )?)
    } else if !tokens.is_done() {
        return Err(usage(USAGE_TXN));
    } else if word_is(sub, "BEGIN") {
        return Ok(Command::TxnBegin);
    } else if word_is(sub, "COMMIT") {
        return Ok(Command::TxnCommit(Vec::new()));
    } else if word_is(sub, "ABORT") {
        return Ok(Command::TxnAbort);
    } else {
        return Err(usage(USAGE_TXN));
    };
    Ok(Command::TxnStep(step))
}

fn parse_key_command(tokens: &mut Tokens<'_>) -> CmdResult {
    let sub = tokens.next().ok_or_else(|| usage(USAGE_KEY))?;
    if word_is(sub, "GET") || word_is(sub, "VERSION") {
        let get = word_is(sub, "GET");
        let form = if get {
            "usage: KEY GET <key>"
        } else {
            "usage: KEY VERSION <key>"
        };
        let key = parse_key(single_arg(tokens).ok_or_else(|| usage(form))?)?;
        Ok(if get {
            Command::Get(key)
        } else {
            Command::Version(key)
        })
    } else if word_is(sub, "DEL") {
        let key = parse_key(tokens.next().ok_or_else(|| usage(USAGE_DEL))?)?;
        if tokens.is_done() {
            return Ok(Command::Del {
                key,
                if_version: None,
            });
        }
        match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(w_if), Some(w_version), Some(n))
                if word_is(w_if, "IF") && word_is(w_version, "VERSION") && tokens.is_done() =>
            {
                Ok(Command::Del {
                    key,
                    if_version: Some(parse_version(n)?),
                })
            }
            _ => Err(usage(USAGE_DEL)),
        }
    } else if word_is(sub, "CAS") {
        let key = parse_key(tokens.next().ok_or_else(|| usage(USAGE_CAS))?)?;
        let version = parse_version(tokens.next().ok_or_else(|| usage(USAGE_CAS))?)?;
        let value = tokens.raw_rest();
        if value.is_empty() {
            return Err(usage(USAGE_CAS));
        }
        Ok(Command::Cas {
            key,
            version,
            value: value.to_vec(),
        })
    } else if word_is(sub, "PUT") || word_is(sub, "SET") {
        let key = parse_key(tokens.next().ok_or_else(|| usage(USAGE_PUT))?)?;
        parse_put_tail(key, tokens.raw_rest())
    } else if word_is(sub, "BLOB") {
        parse_blob(tokens)
    } else {
        Err(usage(USAGE_KEY))
    }
}

/// `[PRINCIPAL <name>] [[WORM] TTL <dur>|[WORM] EXPIRES <ts>] <value>`. A clause that is
/// not complete (including one with no value after it) is part of the value.
fn parse_put_tail(key: Key, rest: &[u8]) -> CmdResult {
    let mut principal = None;
    let mut worm = None;
    let mut expires = None;
    let mut value = rest;
    if value.first().is_some_and(u8::is_ascii_whitespace) {
        // A value that starts with spaces is taken as it is: clauses must follow the key
        // after exactly one space.
        return Ok(Command::Put {
            key,
            principal,
            worm,
            expires,
            value: value.to_vec(),
        });
    }
    let mut tokens = Tokens::new(value);
    if let (Some(word), Some(name)) = (tokens.next(), tokens.next())
        && word_is(word, "PRINCIPAL")
        && !tokens.raw_rest().is_empty()
    {
        principal = Some(String::from_utf8_lossy(name).into_owned());
        value = tokens.raw_rest();
    }
    let mut tokens = Tokens::new(value);
    let mut first = tokens.next();
    let locked = first.is_some_and(|w| word_is(w, "WORM"));
    if locked {
        first = tokens.next();
    }
    if let (Some(kind), Some(arg)) = (first, tokens.next())
        && !tokens.raw_rest().is_empty()
    {
        let arg = std::str::from_utf8(arg).unwrap_or("");
        let clause = if word_is(kind, "TTL") {
            parse_go_duration(arg).map(Deadline::Ttl)
        } else if word_is(kind, "EXPIRES") {
            parse_rfc3339_ms(arg).map(Deadline::ExpiresAt)
        } else {
            None
        };
        if clause.is_some() {
            if locked {
                worm = clause;
            } else {
                expires = clause;
            }
            value = tokens.raw_rest();
        }
    }
    if value.is_empty() {
        return Err(usage(USAGE_PUT));
    }
    Ok(Command::Put {
        key,
        principal,
        worm,
        expires,
        value: value.to_vec(),
    })
}

fn parse_blob(tokens: &mut Tokens<'_>) -> CmdResult {
    const USAGE_BLOB: &str = "usage: KEY BLOB SET <key> <length> | KEY BLOB GET <key>";
    let sub = tokens.next().ok_or_else(|| usage(USAGE_BLOB))?;
    if word_is(sub, "GET") {
        let key = parse_key(single_arg(tokens).ok_or_else(|| usage("usage: KEY BLOB GET <key>"))?)?;
        return Ok(Command::BlobGet(key));
    }
    if !word_is(sub, "SET") {
        return Err(usage(USAGE_BLOB));
    }
    let form = "usage: KEY BLOB SET <key> <length>";
    let key = parse_key(tokens.next().ok_or_else(|| usage(form))?)?;
    let len = single_arg(tokens).ok_or_else(|| usage(form))?;
    let len = parse_decimal(len).ok_or_else(|| invalid("invalid length".into()))?;
    Ok(Command::BlobSet { key, len })
}

/// The length of a `KEY BLOB SET <key> <len>` line whose length is valid, whatever else is
/// wrong with it.
fn blob_payload_len(body: &[u8]) -> Option<u64> {
    let mut tokens = Tokens::new(body);
    let words: Vec<&[u8]> = std::iter::from_fn(|| tokens.next()).take(6).collect();
    match words.as_slice() {
        [k, b, s, _key, len] if word_is(k, "KEY") && word_is(b, "BLOB") && word_is(s, "SET") => {
            parse_decimal(len)
        }
        _ => None,
    }
}

/// Plain decimal digits only (no sign, exponent or separators).
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_principal(tokens: &mut Tokens<'_>) -> CmdResult {
    let sub = tokens.next().ok_or_else(|| usage(USAGE_PRINCIPAL))?;
    if word_is(sub, "WHOAMI") && tokens.is_done() {
        return Ok(Command::WhoAmI);
    }
    if !word_is(sub, "ASSUME") {
        return Err(usage(USAGE_PRINCIPAL));
    }
    let name = String::from_utf8_lossy(tokens.raw_rest())
        .trim()
        .to_string();
    if !valid_principal(&name) {
        return Err(usage(USAGE_ASSUME));
    }
    Ok(Command::Assume(name))
}

/// A principal name: 1 to 256 characters, none of them control characters, no surrounding
/// whitespace (`PRINCIPAL ASSUME` trims it; a certificate or config name must not have it).
pub fn valid_principal(name: &str) -> bool {
    let chars = name.chars().count();
    chars > 0
        && chars <= MAX_PRINCIPAL_CHARS
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

fn parse_acl(tokens: &mut Tokens<'_>) -> CmdResult {
    const USAGE_ACL: &str = "usage: ACL GRANT|REVOKE <key> <principal> PERMS <READ|WRITE|OWNER>";
    let sub = tokens.next().ok_or_else(|| usage(USAGE_ACL))?;
    let grant = word_is(sub, "GRANT");
    if !grant && !word_is(sub, "REVOKE") {
        return Err(usage(USAGE_ACL));
    }
    let (Some(key), Some(principal), Some(perms_word), Some(perm)) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return Err(usage(USAGE_ACL));
    };
    if !word_is(perms_word, "PERMS") || !tokens.is_done() {
        return Err(usage(USAGE_ACL));
    }
    let key = parse_key(key)?;
    let principal = String::from_utf8_lossy(principal).into_owned();
    if principal.chars().count() > MAX_PRINCIPAL_CHARS || principal.chars().any(char::is_control) {
        return Err(invalid("invalid principal name".into()));
    }
    let perm = if word_is(perm, "READ") {
        Perm::Read
    } else if word_is(perm, "WRITE") {
        Perm::Write
    } else if word_is(perm, "OWNER") {
        Perm::Owner
    } else {
        let shown: String = String::from_utf8_lossy(perm).chars().take(32).collect();
        return Err(invalid(format!(
            "invalid permission {shown}: expected READ, WRITE or OWNER"
        )));
    };
    Ok(if grant {
        Command::Grant {
            key,
            principal,
            perm,
        }
    } else {
        Command::Revoke {
            key,
            principal,
            perm,
        }
    })
}

/// The handshake line: `HELLO 1.0 <client-token>`.
pub fn check_handshake(line: &[u8]) -> Result<(), &'static str> {
    let mut tokens = Tokens::new(line);
    let parts: Vec<&[u8]> = std::iter::from_fn(|| tokens.next()).take(4).collect();
    if parts.len() != 3 || !word_is(parts[0], "HELLO") {
        return Err("invalid handshake");
    }
    if parts[1] != super::PROTOCOL_VERSION.as_bytes() {
        return Err("invalid protocol version");
    }
    Ok(())
}

#[path = "parse_cluster.rs"]
mod cluster;

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
