//! Keys: `table.row[.more]`, case-insensitive (stored upper-case), at most 1024 bytes.

use std::fmt;

pub const MAX_KEY_BYTES: usize = 1024;
/// Tables whose name starts with this are system tables: readable, not writable by clients.
pub const SYSTEM_TABLE_PREFIX: &str = "ATLAS";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Validates and normalises a key as typed by a client.
    pub fn parse(raw: &[u8]) -> Result<Key, String> {
        if raw.is_empty() {
            return Err("invalid key: empty".into());
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(format!("invalid key: longer than {MAX_KEY_BYTES} bytes"));
        }
        let text = std::str::from_utf8(raw).map_err(|_| "invalid key: not UTF-8".to_string())?;
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("invalid key: contains whitespace or control characters".into());
        }
        match text.split_once('.') {
            Some((table, row)) if !table.is_empty() && !row.is_empty() => {}
            _ => return Err("invalid key: expected <table>.<row>".into()),
        }
        Ok(Key(text.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The first segment: the unit of ownership.
    pub fn table(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }

    pub fn is_system(&self) -> bool {
        is_system_table(self.table())
    }

    /// Builds a key the server itself writes (system tables); the caller guarantees the shape.
    pub fn system(text: &str) -> Key {
        Key(text.to_ascii_uppercase())
    }
}

pub fn is_system_table(table: &str) -> bool {
    table.to_ascii_uppercase().starts_with(SYSTEM_TABLE_PREFIX)
}

/// A table name as given to `QUORUM INFO` / `TABLE INFO`.
pub fn parse_table(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "invalid table: not UTF-8".to_string())?;
    if text.is_empty()
        || text.len() > MAX_KEY_BYTES
        || text.contains('.')
        || text.chars().any(|c| c.is_control())
    {
        return Err("invalid table: expected a table name without dots".into());
    }
    Ok(text.to_ascii_uppercase())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_finds_table() {
        let k = Key::parse(b"users.alice.x").unwrap();
        assert_eq!(k.as_str(), "USERS.ALICE.X");
        assert_eq!(k.table(), "USERS");
        assert!(!k.is_system());
        assert!(Key::parse(b"atlas.nodes.1").unwrap().is_system());
        assert!(Key::parse(b"atlasx.y").unwrap().is_system());
    }

    #[test]
    fn rejects_bad_keys() {
        for bad in [
            &b""[..],
            b"nodot",
            b".row",
            b"table.",
            b"a.b\x01",
            b"a.\xff",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Key::parse(&[b'a'; 1025]).is_err());
        let mut ok = b"t.".to_vec();
        ok.resize(1024, b'x');
        assert!(Key::parse(&ok).is_ok());
    }
}
