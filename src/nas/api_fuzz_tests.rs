//! Property tests of the API: random bodies to every endpoint never produce a 500.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::api_tests::{EXPORT, Harness, LUN, POLICY, SHARE, TARGET, call};

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/auth/login"),
    ("POST", "/users"),
    ("PUT", "/users/2"),
    ("PATCH", "/users/1"),
    ("POST", "/shares/smb"),
    ("PUT", "/shares/smb/1"),
    ("POST", "/exports/nfs"),
    ("PUT", "/exports/nfs/1"),
    ("POST", "/iscsi/targets"),
    ("PUT", "/iscsi/targets/1"),
    ("POST", "/iscsi/targets/1/luns"),
    ("PUT", "/iscsi/targets/1/luns/0"),
    ("POST", "/snapshot-policies"),
    ("PUT", "/snapshot-policies/1"),
    ("POST", "/config/apply"),
    ("POST", "/config/restore"),
    ("GET", "/audit-logs"),
    ("GET", "/shares/smb"),
];

fn fuzz_harness() -> Harness {
    let h = Harness::new();
    h.user("vera", "viewer");
    for (path, body) in [
        ("/shares/smb", SHARE),
        ("/exports/nfs", EXPORT),
        ("/iscsi/targets", TARGET),
        ("/iscsi/targets/1/luns", LUN),
        ("/snapshot-policies", POLICY),
    ] {
        assert_eq!(h.admin("POST", path, body).0, 201);
    }
    h
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("path".to_string()),
                    Just("clients".to_string()),
                    Just("iqn".to_string()),
                    Just("lun".to_string()),
                    Just("backstore".to_string()),
                    Just("retention".to_string()),
                    Just("password".to_string()),
                    Just("role".to_string()),
                    Just("kinds".to_string()),
                    Just("auth".to_string()),
                    Just("size_bytes".to_string()),
                    ".{0,8}",
                ],
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_yield_500(body in proptest::collection::vec(any::<u8>(), 0..256), query in "[a-z=&%0-9]{0,20}") {
        let h = fuzz_harness();
        for (method, path) in ENDPOINTS {
            let path = if *method == "GET" { format!("{path}?{query}") } else { path.to_string() };
            let (status, value) = call(&h.api, method, &path, Some(&h.admin), body.clone());
            prop_assert!(status < 500, "{} {} -> {} {}", method, path, status, value);
        }
    }

    #[test]
    fn random_json_never_yields_500(body in json_value()) {
        let h = fuzz_harness();
        let bytes = body.to_string().into_bytes();
        for (method, path) in ENDPOINTS {
            let (status, value) = call(&h.api, method, path, Some(&h.admin), bytes.clone());
            prop_assert!(status < 500, "{} {} -> {} {}", method, path, status, value);
        }
    }
}
