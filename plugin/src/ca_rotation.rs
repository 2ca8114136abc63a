//! Rotating the cluster CA of `tls: internal` without downtime, node by node, in three
//! rounds with a restart of each node after each (`atlas ca rotate …`, see
//! docs/security.md):
//!
//! 1. `begin` on a CA holder makes the new CA (`<tls>/next/`); `trust FILE` on every other
//!    node adds its certificate to the CAs it trusts (`ca-next.crt`). Nodes still issue
//!    and present certificates of the current CA, and now accept the new one's too.
//! 2. `promote`, holders first: the new CA becomes `ca.crt` (on a holder, with its key) and
//!    the old one moves to `ca-previous.crt`, still trusted. At restart a holder issues itself
//!    a leaf from the new CA; a member asks a holder for one, proving who it is with its
//!    old leaf, which the holder still trusts.
//! 3. `end`: `ca-previous.crt` goes; only the new CA is trusted.
//!
//! Peers are verified against [`trusted_cas`]: `ca.crt` alone, or with the extra CAs.

use std::path::{Path, PathBuf};

use crate::tls::{self, InternalCa, TlsError, certificates};
use atlas::AtlasConfig;
use rustls::pki_types::CertificateDer;

/// The new CA's certificate, trusted before it is promoted (`begin`, `trust`).
const NEXT_CA: &str = "ca-next.crt";
/// The old CA's certificate, trusted after the new one is promoted, until `end`.
const PREVIOUS_CA: &str = "ca-previous.crt";
/// Where a holder keeps the new CA (certificate and key) until it is promoted.
const NEXT: &str = "next";
/// `ca.crt` with the next or previous CA: what peers are verified with during a rotation.
const TRUST: &str = "trust.crt";

/// The file of every CA this node trusts for peers and clients: `<tls>/ca.crt`, or while a
/// rotation is under way `<tls>/trust.crt`, written here from `ca.crt` and the next or
/// previous CA.
pub fn trusted_cas(config: &AtlasConfig) -> PathBuf {
    let dir = tls::tls_dir(config);
    let ca = dir.join("ca.crt");
    let extra: Vec<String> = [NEXT_CA, PREVIOUS_CA]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
        .collect();
    let Ok(current) = std::fs::read_to_string(&ca) else {
        return ca;
    };
    if extra.is_empty() {
        return ca;
    }
    let mut bundle = format!("{}\n", current.trim_end());
    for pem in extra {
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    let path = dir.join(TRUST);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(bundle.as_str())
        && let Err(e) = tls::write(&path, &bundle)
    {
        tracing::error!(error = %e, "cannot write the CA bundle of the rotation; trusting ca.crt only");
        return ca;
    }
    path
}

/// Whether this node is in a CA rotation (it trusts a CA besides `ca.crt`).
pub fn under_way(config: &AtlasConfig) -> bool {
    let dir = tls::tls_dir(config);
    dir.join(NEXT_CA).exists() || dir.join(PREVIOUS_CA).exists()
}

fn fail(e: TlsError) -> String {
    e.to_string()
}

/// Refuses a step when the round it belongs to is over on this node.
fn not_promoted(dir: &Path, step: &str) -> Result<(), String> {
    if dir.join(PREVIOUS_CA).exists() {
        return Err(format!(
            "the new CA is promoted here already ({} exists): `{step}` belongs to an earlier \
             round; run `atlas ca rotate end` to finish",
            dir.join(PREVIOUS_CA).display()
        ));
    }
    Ok(())
}

/// `atlas ca rotate begin`, on a holder: makes the new CA and trusts it.
pub fn begin(config: &AtlasConfig) -> Result<String, String> {
    let dir = tls::tls_dir(config);
    if !crate::node_cert::holds_ca_key(config) {
        return Err(format!(
            "{} holds no CA key: run `atlas ca rotate begin` on a CA holder, then \
             `atlas ca rotate trust FILE` here with the new CA certificate it prints",
            dir.display()
        ));
    }
    if under_way(config) {
        return Err(format!(
            "a rotation is under way in {}: finish it with promote and end first",
            dir.display()
        ));
    }
    let next = InternalCa::load_or_create(&dir.join(NEXT)).map_err(fail)?;
    let pem = next.cert_pem().map_err(fail)?;
    tls::write(&dir.join(NEXT_CA), &pem).map_err(fail)?;
    let path = dir.join(NEXT).join("ca.crt");
    Ok(format!(
        "new CA made: {}\n{}next: copy {} to every other node and run \
         `atlas ca rotate trust FILE` there; restart every node, then run \
         `atlas ca rotate promote` (CA holders first)\n",
        path.display(),
        tls::describe_ca(&pem).map_err(fail)?,
        path.display()
    ))
}

/// `atlas ca rotate trust FILE`, on a node without the new CA: trusts it too.
pub fn trust(config: &AtlasConfig, file: &Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (der, canonical) = tls::single_certificate(&pem).map_err(|what| {
        format!(
            "{}: {what} (expected the new CA's certificate)",
            file.display()
        )
    })?;
    let dir = tls::tls_dir(config);
    not_promoted(&dir, "trust")?;
    let made_here = certificates(&dir.join(NEXT).join("ca.crt"));
    if !made_here.is_empty() && made_here.first() != Some(&der) {
        return Err(format!(
            "this node made a new CA with `begin` ({}): trust that one, or delete {} first",
            dir.join(NEXT).join("ca.crt").display(),
            dir.join(NEXT).display()
        ));
    }
    if certificates(&dir.join("ca.crt")).contains(&der) {
        return Err(format!("{} is already this node's CA", file.display()));
    }
    tls::write(&dir.join(NEXT_CA), &canonical).map_err(fail)?;
    Ok(format!(
        "trusting the new CA from the next start: {}\nnext: restart this node\n",
        tls::fingerprint(&der)
    ))
}

/// `atlas ca rotate promote`: the new CA becomes this node's, the old one stays trusted.
/// Safe to run again after an interruption: `ca-next.crt` goes last, and while it is there
/// the step resumes where it stopped.
pub fn promote(config: &AtlasConfig) -> Result<String, String> {
    let dir = tls::tls_dir(config);
    let next = certificates(&dir.join(NEXT_CA));
    if next.is_empty() {
        not_promoted(&dir, "promote")?;
    }
    let [new] = next.as_slice() else {
        return Err(format!(
            "{} must hold the one new CA certificate (`atlas ca rotate begin` on a holder, \
             `atlas ca rotate trust FILE` elsewhere)",
            dir.join(NEXT_CA).display()
        ));
    };
    let ca_path = dir.join("ca.crt");
    let current = certificates(&ca_path);
    if current.first() != Some(new) {
        if !dir.join(PREVIOUS_CA).exists() {
            let old = std::fs::read_to_string(&ca_path)
                .map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?;
            tls::write(&dir.join(PREVIOUS_CA), &old).map_err(fail)?;
        }
        if crate::node_cert::holds_ca_key(config) {
            let key = std::fs::read_to_string(dir.join(NEXT).join("ca.key")).map_err(|e| {
                format!(
                    "cannot read {}: {e} (this holder trusts a new CA another holder made: \
                     copy that holder's {NEXT}/ directory here, or delete ca.key to renew \
                     through a holder)",
                    dir.join(NEXT).join("ca.key").display()
                )
            })?;
            tls::write(&dir.join("ca.key"), &key).map_err(fail)?;
        }
        tls::write(&ca_path, &tls::der_to_pem(new)).map_err(fail)?;
    }
    let _ = std::fs::remove_dir_all(dir.join(NEXT));
    std::fs::remove_file(dir.join(NEXT_CA))
        .map_err(|e| format!("cannot remove {}: {e}", dir.join(NEXT_CA).display()))?;
    Ok(
        "the new CA is this node's from the next start, the old one still trusted\n\
        next: restart this node (CA holders first); when every node runs with a \
        certificate of the new CA, run `atlas ca rotate end` on each and restart it\n"
            .to_string(),
    )
}

/// A node not yet promoted that was handed a leaf of the next CA (its seed holder was
/// promoted first): promotes it here, as `promote` would. True when it did.
pub fn promote_to(config: &AtlasConfig, ca_der: &[u8]) -> Result<bool, String> {
    let dir = tls::tls_dir(config);
    if certificates(&dir.join(NEXT_CA)).first().map(Vec::as_slice) != Some(ca_der)
        || crate::node_cert::holds_ca_key(config)
    {
        return Ok(false);
    }
    promote(config)?;
    tracing::info!("promoted the next CA: the seed issues from it already");
    Ok(true)
}

/// `atlas ca rotate end`: only the new CA is trusted, once this node's leaf is from it.
pub fn end(config: &AtlasConfig) -> Result<String, String> {
    let dir = tls::tls_dir(config);
    if !dir.join(PREVIOUS_CA).exists() {
        return Err(format!(
            "no promoted CA in {}: run `atlas ca rotate promote` (and restart) first",
            dir.display()
        ));
    }
    let ca = certificates(&dir.join("ca.crt"));
    let chain = certificates(&dir.join("node.crt"));
    let issued = match (chain.first(), ca.first()) {
        (Some(leaf), Some(ca)) => {
            crate::node_cert::signed_by(&CertificateDer::from(leaf.clone()), ca).is_ok()
        }
        _ => false,
    };
    if !issued {
        return Err(format!(
            "{}'s certificate is not from the new CA yet: restart this node (a CA holder \
             must have been promoted and restarted before) first",
            dir.display()
        ));
    }
    for file in [PREVIOUS_CA, TRUST] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok("only the new CA is trusted from the next start\nnext: restart this node\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas::config::TlsConfig;

    fn node(dir: &Path) -> AtlasConfig {
        AtlasConfig {
            data_dir: dir.to_path_buf(),
            tls: TlsConfig::Internal,
            ..AtlasConfig::default()
        }
    }

    fn stranger_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    #[test]
    fn a_rotation_trusts_both_cas_until_it_ends() {
        let holder_dir = tempfile::tempdir().unwrap();
        let holder = node(holder_dir.path());
        let member_dir = tempfile::tempdir().unwrap();
        let member = node(member_dir.path());
        let old = InternalCa::load_or_create(&tls::tls_dir(&holder)).unwrap();
        let old_pem = old.cert_pem().unwrap();
        std::fs::create_dir_all(tls::tls_dir(&member)).unwrap();
        tls::write(&tls::tls_dir(&member).join("ca.crt"), &old_pem).unwrap();
        let trusted = |config: &AtlasConfig| certificates(&trusted_cas(config));
        let old_der = tls::pem_to_der(&old_pem).unwrap();
        assert_eq!(trusted(&holder), vec![old_der.clone()]);

        assert!(
            begin(&member).is_err(),
            "a node without the key cannot begin"
        );
        begin(&holder).unwrap();
        assert!(begin(&holder).is_err(), "one rotation at a time");
        let new_file = tls::tls_dir(&holder).join(NEXT).join("ca.crt");
        let new_der = tls::pem_to_der(&std::fs::read_to_string(&new_file).unwrap()).unwrap();
        assert!(trust(&member, &tls::tls_dir(&member).join("ca.crt")).is_err());
        // Not a certificate, or a file of several: refused, nothing trusted.
        let junk = stranger_file(b"not a certificate");
        assert!(trust(&member, junk.path()).is_err());
        let two = stranger_file(format!("{old_pem}{old_pem}").as_bytes());
        assert!(trust(&member, two.path()).is_err());
        assert!(!under_way(&member));
        // The holder that made the new CA trusts no other one in its place.
        let stranger = tempfile::tempdir().unwrap();
        InternalCa::load_or_create(stranger.path()).unwrap();
        assert!(trust(&holder, &stranger.path().join("ca.crt")).is_err());
        trust(&holder, &new_file).unwrap();
        trust(&member, &new_file).unwrap();
        for config in [&holder, &member] {
            assert_eq!(trusted(config), vec![old_der.clone(), new_der.clone()]);
            // Not ended before this node's leaf is from the new CA.
            assert!(end(config).is_err());
        }

        promote(&holder).unwrap();
        assert!(promote(&holder).is_err(), "promoted already");
        // A promote interrupted after its first write resumes and keeps the old CA.
        tls::write(&tls::tls_dir(&member).join(PREVIOUS_CA), &old_pem).unwrap();
        promote(&member).unwrap();
        for config in [&holder, &member] {
            assert_eq!(trusted(config), vec![new_der.clone(), old_der.clone()]);
        }
        // The holder signs with the new key: its leaf, issued at start, is from the new CA.
        let ca = InternalCa::load_existing(&tls::tls_dir(&holder)).unwrap();
        let subject = tls::LeafSubject {
            sans: vec!["localhost".into()],
            node: Some(1),
        };
        tls::ensure_leaf(&ca, &subject, tls::LEAF_RENEW_BEFORE).unwrap();
        end(&holder).unwrap();
        assert_eq!(trusted(&holder), vec![new_der.clone()]);
        assert!(!tls::tls_dir(&holder).join(TRUST).exists());
        // A key that is not the certificate's is refused, not used.
        let dir = tls::tls_dir(&holder);
        std::fs::copy(stranger.path().join("ca.key"), dir.join("ca.key")).unwrap();
        assert!(InternalCa::load_existing(&dir).is_err());
    }
}
