//! `smb.conf` share sections.

use std::fmt::Write;

use crate::nas::smb::SmbShare;

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// One section per enabled share, sorted by name (ignoring case) then id. `read only` is
/// always written because Samba's default is `yes`.
pub fn render_smb_conf(shares: &[SmbShare]) -> String {
    let mut shares: Vec<&SmbShare> = shares.iter().filter(|s| s.enabled).collect();
    shares.sort_by_key(|s| (s.name.to_lowercase(), s.id));
    let mut out = String::new();
    out.push_str(super::GENERATED_HEADER);
    out.push('\n');
    for share in shares {
        let _ = writeln!(out, "\n[{}]", share.name);
        let _ = writeln!(out, "\tpath = {}", share.path);
        if !share.comment.is_empty() {
            let _ = writeln!(out, "\tcomment = {}", share.comment);
        }
        let _ = writeln!(out, "\tread only = {}", yes_no(share.read_only));
        let _ = writeln!(out, "\tbrowseable = {}", yes_no(share.browseable));
        let _ = writeln!(out, "\tguest ok = {}", yes_no(share.guest_ok));
        for (key, list) in [
            ("valid users", &share.valid_users),
            ("hosts allow", &share.hosts_allow),
            ("hosts deny", &share.hosts_deny),
        ] {
            if !list.is_empty() {
                let _ = writeln!(out, "\t{key} = {}", list.join(" "));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_shares() -> Vec<SmbShare> {
        let share = |id: i64, name: &str, path: &str| SmbShare {
            id,
            name: name.into(),
            path: path.into(),
            comment: String::new(),
            read_only: false,
            browseable: true,
            guest_ok: false,
            valid_users: vec![],
            hosts_allow: vec![],
            hosts_deny: vec![],
            enabled: true,
        };
        vec![
            SmbShare {
                comment: "Team files".into(),
                valid_users: vec!["alice".into(), "@staff".into()],
                hosts_allow: vec!["192.168.1.".into(), "10.0.0.0/8".into()],
                hosts_deny: vec!["10.9.9.9".into()],
                ..share(2, "team", "/srv/team")
            },
            SmbShare {
                read_only: true,
                guest_ok: true,
                browseable: false,
                ..share(1, "Public Media", "/srv/public media")
            },
            SmbShare {
                enabled: false,
                ..share(3, "old", "/srv/old")
            },
        ]
    }

    #[test]
    fn golden_smb_conf() {
        let text = render_smb_conf(&sample_shares());
        crate::nas::render::assert_golden("smb.conf", &text);
        assert!(!text.contains("[old]"), "disabled shares are left out");
        let mut reversed = sample_shares();
        reversed.reverse();
        assert_eq!(
            render_smb_conf(&reversed),
            text,
            "input order does not matter"
        );
    }

    /// Runs Samba's own checker on the output. Skipped (with a message) only when testparm
    /// is missing outside CI; under `CI=true` a missing testparm fails.
    #[test]
    fn generated_smb_conf_passes_testparm() {
        let found = std::process::Command::new("testparm")
            .arg("--version")
            .output();
        if found.is_err() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("testparm is not installed (apt-get install samba-common-bin)");
            }
            eprintln!("SKIPPED: testparm not installed (apt-get install samba-common-bin)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smb.conf");
        std::fs::write(&path, render_smb_conf(&sample_shares())).unwrap();
        let out = std::process::Command::new("testparm")
            .args(["-s", "--suppress-prompt"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "testparm failed:\n{stderr}\n{stdout}");
        assert!(!stderr.contains("Unknown parameter"), "{stderr}");
        assert!(!stderr.contains("ERROR"), "{stderr}");
        assert!(
            stdout.contains("[team]") && stdout.contains("[Public Media]"),
            "{stdout}"
        );
        assert!(stdout.contains("path = /srv/public media"), "{stdout}");
    }
}
