//! LIO `saveconfig.json` (the format `targetctl restore` reads).

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::nas::iscsi::IscsiTarget;
use crate::nas::iscsi_luns::IscsiLun;

/// Whether CHAP secrets are written (apply) or masked (preview, which viewers may read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Include,
    Mask,
}

const DEFAULT_PORTAL: &str = "0.0.0.0:3260";

/// Storage objects are named after their target and LUN, so names are unique and stable.
pub fn storage_object_name(lun: &IscsiLun) -> String {
    format!("atlas_t{}_lun{}", lun.target_id, lun.lun)
}

fn secret(value: &Option<String>, mode: Secrets) -> Value {
    match (value, mode) {
        (None, _) => Value::String(String::new()),
        (Some(_), Secrets::Mask) => Value::String(crate::nas::audit::MASK.into()),
        (Some(s), Secrets::Include) => Value::String(s.clone()),
    }
}

fn storage_object(lun: &IscsiLun) -> Value {
    match lun.backstore.as_str() {
        "block" => json!({
            "plugin": "block",
            "name": storage_object_name(lun),
            "dev": lun.device.clone().unwrap_or_default(),
            "readonly": lun.read_only,
            "write_back": false,
            "attributes": {},
        }),
        _ => json!({
            "plugin": "fileio",
            "name": storage_object_name(lun),
            "dev": lun.path.clone().unwrap_or_default(),
            "size": lun.size_bytes.unwrap_or(0),
            "write_back": false,
            "aio": false,
            "attributes": {},
        }),
    }
}

fn portal(text: &str) -> Value {
    let addr: SocketAddr = text
        .parse()
        .unwrap_or_else(|_| DEFAULT_PORTAL.parse().expect("constant portal parses"));
    // rtslib wants IPv6 portal addresses in brackets.
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    json!({"ip_address": ip, "port": addr.port(), "iser": false})
}

/// CHAP fields as LIO names them, on a node ACL or (demo mode) on the TPG.
fn chap_fields(target: &IscsiTarget, mode: Secrets, object: &mut serde_json::Map<String, Value>) {
    if target.auth == "none" {
        return;
    }
    object.insert(
        "chap_userid".into(),
        target.chap_user.clone().unwrap_or_default().into(),
    );
    object.insert("chap_password".into(), secret(&target.chap_secret, mode));
    if target.auth == "mutual_chap" {
        object.insert(
            "chap_mutual_userid".into(),
            target.mutual_user.clone().unwrap_or_default().into(),
        );
        object.insert(
            "chap_mutual_password".into(),
            secret(&target.mutual_secret, mode),
        );
    }
}

fn target_json(target: &IscsiTarget, luns: &[&IscsiLun], mode: Secrets) -> Value {
    let mut portals: Vec<&str> = target.portals.iter().map(String::as_str).collect();
    if portals.is_empty() {
        portals.push(DEFAULT_PORTAL);
    }
    portals.sort();
    let lun_entries: Vec<Value> = luns
        .iter()
        .map(|l| {
            json!({
                "index": l.lun,
                "storage_object": format!("/backstores/{}/{}", l.backstore, storage_object_name(l)),
            })
        })
        .collect();
    let mut initiators = target.initiators.clone();
    initiators.sort();
    // No listed initiators: any initiator may log in (LIO "demo mode"), with CHAP at TPG level.
    let demo_mode = initiators.is_empty();
    let node_acls: Vec<Value> = initiators
        .iter()
        .map(|wwn| {
            let mut acl = serde_json::Map::new();
            acl.insert("node_wwn".into(), wwn.clone().into());
            chap_fields(target, mode, &mut acl);
            let mapped: Vec<Value> = luns
                .iter()
                .map(|l| json!({"index": l.lun, "tpg_lun": l.lun, "write_protect": l.read_only}))
                .collect();
            acl.insert("mapped_luns".into(), Value::Array(mapped));
            acl.insert("attributes".into(), json!({}));
            Value::Object(acl)
        })
        .collect();
    let authentication = u8::from(target.auth != "none");
    let mut tpg = serde_json::Map::new();
    tpg.insert("tag".into(), 1.into());
    tpg.insert("enable".into(), true.into());
    tpg.insert(
        "attributes".into(),
        json!({
            "authentication": authentication,
            "generate_node_acls": u8::from(demo_mode),
            "cache_dynamic_acls": u8::from(demo_mode),
            // Demo mode has no ACLs to carry per-LUN write protection, so one read-only LUN
            // write-protects the whole TPG: a read-only LUN is never exported writable (list
            // the initiators to mix read-only and writable LUNs).
            "demo_mode_write_protect": u8::from(demo_mode && luns.iter().any(|l| l.read_only)),
        }),
    );
    tpg.insert(
        "parameters".into(),
        json!({"AuthMethod": if authentication == 1 { "CHAP" } else { "None" }}),
    );
    if demo_mode {
        chap_fields(target, mode, &mut tpg);
    }
    tpg.insert(
        "portals".into(),
        portals.into_iter().map(portal).collect::<Vec<_>>().into(),
    );
    tpg.insert("luns".into(), Value::Array(lun_entries));
    tpg.insert("node_acls".into(), Value::Array(node_acls));
    // The alias is not written: targetctl has no field for it.
    json!({"fabric": "iscsi", "wwn": target.iqn, "tpgs": [Value::Object(tpg)]})
}

/// The whole saveconfig document for the enabled targets and their LUNs, ordered by IQN and
/// LUN number, pretty-printed with a trailing newline.
pub fn render_saveconfig(targets: &[IscsiTarget], luns: &[IscsiLun], mode: Secrets) -> String {
    let mut targets: Vec<&IscsiTarget> = targets.iter().filter(|t| t.enabled).collect();
    targets.sort_by(|a, b| a.iqn.cmp(&b.iqn).then(a.id.cmp(&b.id)));
    let mut storage_objects = Vec::new();
    let mut target_values = Vec::new();
    for target in targets {
        let mut own: Vec<&IscsiLun> = luns.iter().filter(|l| l.target_id == target.id).collect();
        own.sort_by_key(|l| l.lun);
        storage_objects.extend(own.iter().map(|l| storage_object(l)));
        target_values.push(target_json(target, &own, mode));
    }
    let doc = json!({
        "fabric_modules": [],
        "storage_objects": storage_objects,
        "targets": target_values,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: i64, iqn: &str) -> IscsiTarget {
        IscsiTarget {
            id,
            iqn: iqn.into(),
            alias: String::new(),
            initiators: vec![],
            auth: "none".into(),
            chap_user: None,
            chap_secret: None,
            mutual_user: None,
            mutual_secret: None,
            portals: vec![],
            enabled: true,
        }
    }

    fn sample() -> (Vec<IscsiTarget>, Vec<IscsiLun>) {
        let targets = vec![
            IscsiTarget {
                alias: "backups".into(),
                initiators: vec![
                    "iqn.2024-01.com.example:host2".into(),
                    "iqn.2024-01.com.example:host1".into(),
                ],
                auth: "mutual_chap".into(),
                chap_user: Some("initiator".into()),
                chap_secret: Some("chap-secret-12".into()),
                mutual_user: Some("target".into()),
                mutual_secret: Some("mutual-secret-1".into()),
                portals: vec!["192.168.1.10:3260".into(), "[fd00::1]:3260".into()],
                ..target(2, "iqn.2024-01.com.example:backup")
            },
            target(1, "iqn.2024-01.com.example:scratch"),
            IscsiTarget {
                enabled: false,
                ..target(3, "iqn.2024-01.com.example:off")
            },
        ];
        let luns = vec![
            IscsiLun {
                id: 1,
                target_id: 2,
                lun: 1,
                backstore: "fileio".into(),
                device: None,
                path: Some("/srv/iscsi/b.img".into()),
                size_bytes: Some(10_737_418_240),
                read_only: true,
            },
            IscsiLun {
                id: 2,
                target_id: 2,
                lun: 0,
                backstore: "block".into(),
                device: Some("/dev/zvol/tank/backup".into()),
                path: None,
                size_bytes: None,
                read_only: false,
            },
            IscsiLun {
                id: 3,
                target_id: 1,
                lun: 0,
                backstore: "block".into(),
                device: Some("/dev/sdb".into()),
                path: None,
                size_bytes: None,
                read_only: false,
            },
            IscsiLun {
                id: 4,
                target_id: 3,
                lun: 0,
                backstore: "block".into(),
                device: Some("/dev/sdz".into()),
                path: None,
                size_bytes: None,
                read_only: false,
            },
        ];
        (targets, luns)
    }

    #[test]
    fn golden_saveconfig() {
        let (targets, luns) = sample();
        let text = render_saveconfig(&targets, &luns, Secrets::Include);
        crate::nas::render::assert_golden("saveconfig.json", &text);
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["targets"].as_array().unwrap().len(),
            2,
            "disabled target left out"
        );
        assert!(!text.contains("/dev/sdz"));
    }

    #[test]
    fn masked_preview_never_shows_secrets() {
        let (targets, luns) = sample();
        let text = render_saveconfig(&targets, &luns, Secrets::Mask);
        assert!(!text.contains("chap-secret-12") && !text.contains("mutual-secret-1"));
        assert!(text.contains("\"chap_password\": \"***\""));
    }
}
