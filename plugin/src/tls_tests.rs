//! The internal CA, node leaves, pinned CA files and the PEM helpers.

use super::*;
use crate::pem::{base64_decode, base64_encode};

#[test]
fn a_pinned_ca_file_holds_exactly_the_checked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = InternalCa::load_or_create(dir.path()).unwrap();
    let pem = ca.cert_pem().unwrap();
    let (der, canonical) = single_certificate(&pem).unwrap();
    assert_eq!(pem_to_der(&canonical).unwrap(), der);
    assert_eq!(single_certificate(&canonical).unwrap().0, der);
    // The real CA followed by another one (a man in the middle's): refused.
    let other = tempfile::tempdir().unwrap();
    let other = InternalCa::load_or_create(other.path())
        .unwrap()
        .cert_pem()
        .unwrap();
    assert!(single_certificate(&format!("{pem}{other}")).is_err());
    assert!(
        single_certificate(&format!(
            "{pem}\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ))
        .is_err()
    );
    assert!(single_certificate(&format!("junk\n{pem}")).is_err());
    assert!(single_certificate("").is_err());
    for n in 0..8 {
        let bytes: Vec<u8> = (0..n).map(|i| i * 37 + 1).collect();
        assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
    }
}

#[test]
fn node_organizations_name_exactly_one_node() {
    assert_eq!(node_of_organization(&node_organization(42)), Some(42));
    for not_a_node in [
        "Atlas client",
        "Atlas node ",
        "Atlas node +1",
        "Atlas node  1",
        "Atlas node 1x",
        "atlas node 1",
        "Atlas node 99999999999999999999999",
    ] {
        assert_eq!(node_of_organization(not_a_node), None, "{not_a_node}");
    }
}

#[test]
fn internal_ca_is_created_once_and_leaf_renewed_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let ca = InternalCa::load_or_create(dir.path()).unwrap();
    let ca_pem = ca.cert_pem().unwrap();
    let subject = LeafSubject {
        sans: vec!["node1.example".to_string(), "127.0.0.1".to_string()],
        node: None,
    };
    assert!(ensure_leaf(&ca, &subject, LEAF_RENEW_BEFORE).unwrap());
    assert!(
        !ensure_leaf(&ca, &subject, LEAF_RENEW_BEFORE).unwrap(),
        "fresh leaf is reused"
    );
    // A leaf inside the renewal window is replaced.
    let window = Duration::from_secs(LEAF_VALIDITY_DAYS as u64 * 86400);
    assert!(ensure_leaf(&ca, &subject, window).unwrap());
    // New SANs mean a new leaf; so does a node id (a founder or joiner names itself).
    let other = LeafSubject {
        sans: vec!["other".to_string()],
        node: None,
    };
    assert!(ensure_leaf(&ca, &other, LEAF_RENEW_BEFORE).unwrap());
    let named = LeafSubject {
        node: Some(7),
        ..other
    };
    assert!(ensure_leaf(&ca, &named, LEAF_RENEW_BEFORE).unwrap());
    assert!(!ensure_leaf(&ca, &named, LEAF_RENEW_BEFORE).unwrap());
    let pem = std::fs::read_to_string(dir.path().join("node.crt")).unwrap();
    let der = pem_to_der(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let organizations: Vec<&str> = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    assert_eq!(organizations, ["Atlas node 7"]);
    let again = InternalCa::load_or_create(dir.path()).unwrap();
    assert_eq!(again.cert_pem().unwrap(), ca_pem, "the CA is reused");
    load_certified_key(&dir.path().join("node.crt"), &dir.path().join("node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_pem_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("c.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = load_certified_key(&cert, &cert).unwrap_err().to_string();
    assert!(err.contains("c.pem"), "{err}");
    let missing = load_certified_key(&dir.path().join("none.pem"), &cert)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.pem"), "{missing}");
}

#[test]
fn fingerprint_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = InternalCa::load_or_create(dir.path()).unwrap();
    let text = describe_ca(&ca.cert_pem().unwrap()).unwrap();
    let line = text.lines().last().unwrap();
    assert!(line.starts_with("SHA-256 fingerprint: "));
    assert_eq!(line.len(), "SHA-256 fingerprint: ".len() + 32 * 3 - 1);
}
