//! `/etc/exports` lines.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::nas::nfs::NfsExport;

/// Options of one client entry: `rw`/`ro`, `sync`/`async`, `no_subtree_check`, the squash
/// option, then `anonuid=`/`anongid=` when set.
fn options(export: &NfsExport) -> String {
    let mut opts = vec![
        if export.read_only { "ro" } else { "rw" }.to_string(),
        if export.sync { "sync" } else { "async" }.to_string(),
        "no_subtree_check".to_string(),
        export.squash.clone(),
    ];
    if let Some(uid) = export.anonuid {
        opts.push(format!("anonuid={uid}"));
    }
    if let Some(gid) = export.anongid {
        opts.push(format!("anongid={gid}"));
    }
    opts.join(",")
}

/// Paths with spaces (or other blanks) are quoted; validation rejects `"` in paths.
fn quote_path(path: &str) -> String {
    if path.contains(|c: char| c.is_whitespace()) {
        format!("\"{path}\"")
    } else {
        path.to_string()
    }
}

/// One line per path (enabled exports of the same path merge, ordered by id), paths sorted;
/// clients as `client(opts)`, never a space before `(`.
pub fn render_exports(exports: &[NfsExport]) -> String {
    let mut by_path: BTreeMap<&str, Vec<&NfsExport>> = BTreeMap::new();
    for export in exports.iter().filter(|e| e.enabled) {
        by_path
            .entry(export.path.as_str())
            .or_default()
            .push(export);
    }
    let mut out = String::new();
    out.push_str(super::GENERATED_HEADER);
    out.push('\n');
    for (path, mut group) in by_path {
        group.sort_by_key(|e| e.id);
        let mut line = quote_path(path);
        for export in group {
            let opts = options(export);
            for client in &export.clients {
                let _ = write!(line, " {client}({opts})");
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(id: i64, path: &str, clients: &[&str]) -> NfsExport {
        NfsExport {
            id,
            path: path.into(),
            comment: String::new(),
            clients: clients.iter().map(|c| c.to_string()).collect(),
            read_only: false,
            sync: true,
            squash: "root_squash".into(),
            anonuid: None,
            anongid: None,
            enabled: true,
            allow_insecure: false,
        }
    }

    #[test]
    fn golden_exports() {
        let exports = vec![
            NfsExport {
                read_only: true,
                sync: false,
                squash: "all_squash".into(),
                anonuid: Some(65534),
                anongid: Some(65534),
                ..export(3, "/srv/media", &["*"])
            },
            export(1, "/srv/data", &["10.0.0.0/24", "nas.example.com"]),
            NfsExport {
                squash: "no_root_squash".into(),
                ..export(2, "/srv/data", &["@backup", "fd00::/8"])
            },
            export(4, "/srv/with space", &["192.168.1.7"]),
            NfsExport {
                enabled: false,
                ..export(5, "/srv/off", &["*"])
            },
        ];
        let text = render_exports(&exports);
        crate::nas::render::assert_golden("exports", &text);
        assert!(!text.contains(" ("));
        assert!(!text.contains("/srv/off"));
    }
}
