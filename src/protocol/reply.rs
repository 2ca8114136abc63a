//! Responses and their wire encoding.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The command failed; the connection stays usable.
    Warn,
    /// A hint.
    Info,
    /// The connection is closed after this line.
    Fatal,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Fatal => "FATAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Just `OK`.
    Ok,
    /// Data frames (one line each), then `OK`.
    Lines(Vec<Vec<u8>>),
    /// A `SCAN` page: `KEYS:<n>`, n unprefixed lines (keys, or keys with values), then
    /// `MORE AFTER <key>` when the page was cut at its limit, then `OK`; `EMPTY` `OK` when
    /// nothing matched.
    Page {
        lines: Vec<Vec<u8>>,
        more: Option<String>,
    },
    /// `VALUE:<bytes>`, `OK` (the answer of `KEY GET`, written without copying the value
    /// into a line first).
    Value(Vec<u8>),
    /// `BLOB <n>`, n raw bytes, `OK`.
    Blob(Vec<u8>),
    Error(Level, String),
}

impl Reply {
    pub fn warn(message: impl Into<String>) -> Reply {
        Reply::Error(Level::Warn, message.into())
    }

    pub fn line(text: impl Into<Vec<u8>>) -> Reply {
        Reply::Lines(vec![text.into()])
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(..))
    }

    /// Appends the wire form to `out`; every frame carries `[ID:<tag>] ` when tagged.
    pub fn encode(&self, tag: Option<&str>, out: &mut Vec<u8>) {
        let tagged = |out: &mut Vec<u8>| {
            if let Some(tag) = tag {
                out.extend_from_slice(b"[ID:");
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(b"] ");
            }
        };
        let frame = |out: &mut Vec<u8>, body: &[u8]| {
            tagged(out);
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Reply::Ok => frame(out, b"OK"),
            Reply::Value(value) => {
                out.reserve(value.len() + 2 * tag.map_or(0, str::len) + 24);
                tagged(out);
                out.extend_from_slice(b"VALUE:");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
                frame(out, b"OK");
            }
            Reply::Lines(lines) => {
                for line in lines {
                    frame(out, line);
                }
                frame(out, b"OK");
            }
            Reply::Page { lines, more } if lines.is_empty() && more.is_none() => {
                frame(out, b"EMPTY");
                frame(out, b"OK");
            }
            Reply::Page { lines, more } => {
                frame(out, format!("KEYS:{}", lines.len()).as_bytes());
                for line in lines {
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
                if let Some(last) = more {
                    frame(out, format!("MORE AFTER {last}").as_bytes());
                }
                frame(out, b"OK");
            }
            Reply::Blob(bytes) => {
                frame(out, format!("BLOB {}", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                frame(out, b"OK");
            }
            Reply::Error(level, message) => {
                let clean = sanitize(message);
                frame(out, format!("ERROR {} {clean}", level.word()).as_bytes());
            }
        }
    }
}

/// Control characters become spaces so a message can never forge a frame.
pub fn sanitize(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply, tag: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        reply.encode(tag, &mut out);
        out
    }

    #[test]
    fn frames() {
        assert_eq!(wire(&Reply::Ok, None), b"OK\r\n");
        assert_eq!(
            wire(&Reply::line("VALUE:x"), Some("7")),
            b"[ID:7] VALUE:x\r\n[ID:7] OK\r\n"
        );
        // A value answer is the same frames as the line it replaces.
        for tag in [None, Some("7")] {
            assert_eq!(
                wire(&Reply::Value(b"x y".to_vec()), tag),
                wire(&Reply::line("VALUE:x y"), tag)
            );
        }
        let keys = |keys: &[&str]| Reply::Page {
            lines: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            more: None,
        };
        assert_eq!(wire(&keys(&[]), None), b"EMPTY\r\nOK\r\n");
        assert_eq!(
            wire(&keys(&["A.B", "A.C"]), Some("t")),
            b"[ID:t] KEYS:2\r\nA.B\r\nA.C\r\n[ID:t] OK\r\n"
        );
        assert_eq!(
            wire(
                &Reply::Page {
                    lines: vec![b"A.B VALUE:x y".to_vec()],
                    more: Some("A.B".into())
                },
                Some("t")
            ),
            b"[ID:t] KEYS:1\r\nA.B VALUE:x y\r\n[ID:t] MORE AFTER A.B\r\n[ID:t] OK\r\n"
        );
        assert_eq!(
            wire(
                &Reply::Page {
                    lines: vec![],
                    more: None
                },
                None
            ),
            b"EMPTY\r\nOK\r\n"
        );
        assert_eq!(
            wire(&Reply::Blob(b"a\r\nb".to_vec()), None),
            b"BLOB 4\r\na\r\nbOK\r\n"
        );
        assert_eq!(
            wire(&Reply::warn("bad\r\nOK"), None),
            b"ERROR WARN bad  OK\r\n"
        );
    }
}
