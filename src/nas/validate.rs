//! Field validators shared by the entities. Each returns `Err(what is wrong)`, phrased to
//! follow the field name in an error body.

use std::net::{IpAddr, SocketAddr};

const SMB_FORBIDDEN: &[char] = &[
    '\\', '/', '[', ']', ':', '|', '<', '>', '+', '=', ';', ',', '*', '?', '"',
];
const SMB_RESERVED: &[&str] = &["global", "homes", "printers"];

/// SMB share name: 1–80 chars, none of `\ / [ ] : | < > + = ; , * ? "`, no control
/// characters, not a reserved section name in any case.
pub fn smb_share_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > 80 {
        return Err("must be 1 to 80 characters".into());
    }
    if let Some(c) = name.chars().find(|c| SMB_FORBIDDEN.contains(c)) {
        return Err(format!("must not contain `{c}`"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if SMB_RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        return Err(format!("`{name}` is reserved by Samba"));
    }
    if name.trim() != name {
        return Err("must not start or end with a space".into());
    }
    Ok(())
}

/// An absolute path without `..` components or control characters.
pub fn absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain `..`".into());
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if path.len() > 4096 {
        return Err("must be at most 4096 bytes".into());
    }
    no_trailing_backslash(path)
}

/// Samba joins a line that ends in `\` with the next one: a value ending so would swallow the
/// following setting of the share (e.g. `hosts allow`).
pub fn no_trailing_backslash(text: &str) -> Result<(), String> {
    if text.ends_with('\\') {
        return Err("must not end with a backslash".into());
    }
    Ok(())
}

/// `user` or `@group` (Samba `valid users`).
pub fn smb_valid_user(entry: &str) -> Result<(), String> {
    let name = entry.strip_prefix('@').unwrap_or(entry);
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '$' | '\\'))
        && !name.starts_with('\\')
        && !name.ends_with('\\');
    if ok {
        Ok(())
    } else {
        Err(format!("`{entry}` is not a user name or @group"))
    }
}

/// Samba `hosts allow`/`hosts deny` entry: an IP address, a CIDR, or an IPv4 prefix such as
/// `192.168.1.`.
pub fn smb_host_entry(entry: &str) -> Result<(), String> {
    if entry.parse::<IpAddr>().is_ok() || cidr(entry).is_ok() || ipv4_prefix(entry) {
        Ok(())
    } else {
        Err(format!(
            "`{entry}` is not an IP address, CIDR or prefix (e.g. 192.168.1.)"
        ))
    }
}

fn ipv4_prefix(entry: &str) -> bool {
    let Some(body) = entry.strip_suffix('.') else {
        return false;
    };
    let parts: Vec<&str> = body.split('.').collect();
    (1..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u8>().is_ok())
}

/// `address/prefix-length` for IPv4 or IPv6.
pub fn cidr(entry: &str) -> Result<(), String> {
    let bad = || format!("`{entry}` is not a CIDR");
    let (addr, len) = entry.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max { Err(bad()) } else { Ok(()) }
}

/// A DNS host name (RFC 1123 labels).
pub fn host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// NFS client: `*`, an IPv4/IPv6 address, a CIDR, `@netgroup` or a host name.
pub fn nfs_client(client: &str) -> Result<(), String> {
    if client
        .chars()
        .any(|c| c.is_whitespace() || c == '(' || c == ')')
    {
        return Err(format!("`{client}` must not contain spaces or parentheses"));
    }
    let ok = client == "*"
        || client.parse::<IpAddr>().is_ok()
        || cidr(client).is_ok()
        || client
            .strip_prefix('@')
            .is_some_and(|g| !g.is_empty() && g.len() <= 255 && g.bytes().all(is_netgroup_byte))
        || host_name(client);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{client}` is not *, an IP address, a CIDR, @netgroup or a host name"
        ))
    }
}

fn is_netgroup_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// RFC 3720 iSCSI name: `iqn.YYYY-MM.reversed.domain[:id]` (lower case, ≤ 223 bytes) or
/// `eui.` + 16 hex digits.
pub fn iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err("must be at most 223 bytes".into());
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        return if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("an eui. name needs exactly 16 hex digits".into())
        };
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Err("must start with iqn. or eui.".into());
    };
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("an iqn. name must be lower case".into());
    }
    let (date, rest) = rest
        .split_once('.')
        .ok_or("needs iqn.YYYY-MM.reversed.domain")?;
    let valid_date = date.len() == 7
        && date.as_bytes()[4] == b'-'
        && date[..4].bytes().all(|b| b.is_ascii_digit())
        && date[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
        && date[5..].bytes().all(|b| b.is_ascii_digit());
    if !valid_date {
        return Err("needs a date YYYY-MM (month 01-12) after iqn.".into());
    }
    let (domain, id) = match rest.split_once(':') {
        Some((d, id)) => (d, Some(id)),
        None => (rest, None),
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !domain_ok {
        return Err("needs a reversed domain name (e.g. com.example) after the date".into());
    }
    if let Some(id) = id {
        let id_ok = !id.is_empty()
            && id.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
            });
        if !id_ok {
            return Err("the part after `:` may use only a-z, 0-9, `-`, `.` and `:`".into());
        }
    }
    Ok(())
}

/// `ip:port` (IPv6 as `[addr]:port`), port 1–65535.
pub fn portal(portal: &str) -> Result<(), String> {
    match portal.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(()),
        _ => Err(format!(
            "`{portal}` is not ip:port (e.g. 192.168.1.10:3260, [::]:3260)"
        )),
    }
}

/// ZFS dataset name: `pool[/child...]`, components of `[A-Za-z0-9_.:-]`, pool starting
/// with a letter and not a reserved vdev word, < 256 bytes, no `@` or `#`.
pub fn zfs_dataset(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= 256 {
        return Err("must be 1 to 255 bytes".into());
    }
    let mut components = name.split('/');
    let pool = components.next().unwrap_or("");
    if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("the pool name must start with a letter".into());
    }
    let reserved = ["mirror", "raidz", "draid", "spare", "log"];
    if reserved.iter().any(|r| pool.starts_with(r))
        || (pool.len() > 1 && pool.starts_with('c') && pool.as_bytes()[1].is_ascii_digit())
    {
        return Err(format!("`{pool}` is a reserved pool name"));
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err("must not contain empty components (`//` or a trailing `/`)".into());
        }
        if component == "." || component == ".." {
            return Err("must not contain `.` or `..` components".into());
        }
        if !component.bytes().all(zfs_name_byte) {
            return Err("may use only letters, digits, `_`, `-`, `.`, `:` and `/`".into());
        }
    }
    Ok(())
}

pub fn zfs_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// Snapshot name prefix: 1–64 ZFS name characters.
pub fn snapshot_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !prefix.bytes().all(zfs_name_byte) {
        return Err("may use only letters, digits, `_`, `-`, `.` and `:`".into());
    }
    Ok(())
}

/// User names: 1–64 of `[A-Za-z0-9_.-]`, starting with a letter, digit or `_`.
pub fn username(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter, digit or _".into())
    }
}

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

pub fn email(email: &str) -> Result<(), String> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && host_name(domain));
    if ok {
        Ok(())
    } else {
        Err("is not an e-mail address".into())
    }
}

/// Free text (comments, aliases): bounded, single line, no control characters.
pub fn single_line(text: &str, max_chars: usize) -> Result<(), String> {
    if text.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters or line breaks".into());
    }
    no_trailing_backslash(text)
}

/// Checks each entry of a list and rejects duplicates (compared with `key`).
pub fn list<F, K>(items: &[String], check: F, key: K) -> Result<(), String>
where
    F: Fn(&str) -> Result<(), String>,
    K: Fn(&str) -> String,
{
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        check(item)?;
        if !seen.insert(key(item)) {
            return Err(format!("`{item}` is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn smb_names() {
        for good in ["data", "Team Share", "a", &"x".repeat(80), "média"] {
            assert!(smb_share_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "GLOBAL",
            "Homes",
            "printers",
            "a/b",
            "a\\b",
            "a[b",
            "x:y",
            "a|b",
            "a<b",
            "a>b",
            "a+b",
            "a=b",
            "a;b",
            "a,b",
            "a*b",
            "a?b",
            "a\"b",
            "a\tb",
            &"x".repeat(81),
        ] {
            assert!(smb_share_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(absolute_path("/srv/data").is_ok());
        assert!(absolute_path("/srv/my share").is_ok());
        for bad in ["srv", "", "/srv/../etc", "/..", "/a/\n"] {
            assert!(absolute_path(bad).is_err(), "{bad:?}");
        }
        assert!(absolute_path("/srv/..data").is_ok());
    }

    #[test]
    fn hosts_and_clients() {
        for good in [
            "192.168.1.5",
            "10.0.0.0/8",
            "192.168.1.",
            "10.",
            "::1",
            "fd00::/8",
        ] {
            assert!(smb_host_entry(good).is_ok(), "{good}");
        }
        for bad in [
            "300.1.1.1",
            "10.0.0.0/33",
            "host name",
            "1.2.3.4.",
            "",
            "10.0.0.0/",
        ] {
            assert!(smb_host_entry(bad).is_err(), "{bad}");
        }
        for good in [
            "*",
            "10.0.0.1",
            "10.0.0.0/24",
            "@trusted",
            "nas.example.com",
            "fe80::1",
        ] {
            assert!(nfs_client(good).is_ok(), "{good}");
        }
        for bad in ["a b", "host(rw)", "", "@", "-bad.example", "10.0.0.0/40"] {
            assert!(nfs_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iscsi_names() {
        for good in [
            "iqn.2003-01.org.linux-iscsi.host:sn.1234",
            "iqn.2024-12.com.example",
            "iqn.2024-12.com.example:storage:disk-1",
            "eui.02004567A425678D",
            "eui.0123456789abcdef",
        ] {
            assert!(iscsi_name(good).is_ok(), "{good}");
        }
        for bad in [
            "iqn.2024-13.com.example",
            "iqn.2024-00.com.example",
            "iqn.24-01.com.example",
            "iqn.2024-01.Com.Example",
            "iqn.2024-01.example",
            "iqn.2024-01.com.example:",
            "iqn.2024-01.com..example",
            "iqn.2024-01.com.example:a b",
            "eui.0123",
            "eui.0123456789abcdeg",
            "naa.0123456789abcdef",
            "",
        ] {
            assert!(iscsi_name(bad).is_err(), "{bad}");
        }
        let long = format!("iqn.2024-01.com.example:{}", "a".repeat(200));
        assert!(iscsi_name(&long).is_err());
        let at_limit = format!("iqn.2024-01.com.example:{}", "a".repeat(223 - 24));
        assert_eq!(at_limit.len(), 223);
        assert!(iscsi_name(&at_limit).is_ok());
    }

    #[test]
    fn datasets() {
        for good in ["tank", "tank/data", "tank/a_b-c.d:e", "pool1/x/y"] {
            assert!(zfs_dataset(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1tank",
            "tank/",
            "tank//a",
            "tank@snap",
            "tank#b",
            "mirror",
            "c0d0",
            "tank/..",
            "tank/a b",
            "/tank",
        ] {
            assert!(zfs_dataset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn portals() {
        assert!(portal("192.168.1.10:3260").is_ok());
        assert!(portal("[::]:3260").is_ok());
        assert!(portal("0.0.0.0:0").is_err());
        assert!(portal("host:3260").is_err());
        assert!(portal("1.2.3.4").is_err());
    }

    proptest! {
        #[test]
        fn validators_never_panic(s in ".{0,300}") {
            let _ = smb_share_name(&s);
            let _ = absolute_path(&s);
            let _ = smb_valid_user(&s);
            let _ = smb_host_entry(&s);
            let _ = nfs_client(&s);
            let _ = iscsi_name(&s);
            let _ = portal(&s);
            let _ = zfs_dataset(&s);
            let _ = snapshot_prefix(&s);
            let _ = username(&s);
            let _ = email(&s);
        }

        #[test]
        fn accepted_share_names_are_safe_in_smb_conf(s in ".{0,100}") {
            if smb_share_name(&s).is_ok() {
                prop_assert!(!s.contains(['[', ']', '\n', '\r']));
                prop_assert!(!s.is_empty() && s.chars().count() <= 80);
            }
        }

        #[test]
        fn accepted_nfs_clients_never_break_an_exports_line(s in "[ -~]{0,40}") {
            if nfs_client(&s).is_ok() {
                prop_assert!(!s.contains([' ', '(', ')', '\t']));
            }
        }

        #[test]
        fn generated_iqns_are_accepted(
            year in 1990u32..2100, month in 1u32..=12,
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 2..5),
            id in proptest::option::of("[a-z0-9.:-]{1,40}"),
        ) {
            let mut name = format!("iqn.{year:04}-{month:02}.{}", labels.join("."));
            if let Some(id) = id { name.push(':'); name.push_str(&id); }
            prop_assert!(iscsi_name(&name).is_ok(), "{}", name);
            prop_assert!(iscsi_name(&name.to_uppercase()).is_err());
        }

        #[test]
        fn accepted_paths_are_absolute_without_dotdot(s in "[/a-z. ]{0,30}") {
            if absolute_path(&s).is_ok() {
                prop_assert!(s.starts_with('/'));
                prop_assert!(!s.split('/').any(|p| p == ".."));
            }
        }
    }
}

#[cfg(test)]
mod backslash_tests {
    use super::*;

    #[test]
    fn values_ending_in_a_backslash_are_refused() {
        assert!(absolute_path("/srv/share\\").is_err());
        assert!(single_line("comment\\", 80).is_err());
        assert!(smb_valid_user("DOM\\").is_err());
        assert!(smb_valid_user("DOM\\alice").is_ok());
        assert!(single_line("a\\b", 80).is_ok());
    }
}
