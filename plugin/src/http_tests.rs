use super::*;

#[test]
fn routing() {
    let paths = OwnedPaths {
        nas_prefix: Some("/api/v1".into()),
        everything: false,
    };
    let route = |method, path| route(method, path, &paths);
    assert_eq!(route("GET", "/atlas/v1/health"), Route::Health);
    assert_eq!(route("HEAD", "/metrics"), Route::Metrics);
    assert_eq!(
        route("POST", "/atlas/v1/health"),
        Route::MethodNotAllowed("GET")
    );
    assert_eq!(route("GET", JOIN_PATH), Route::MethodNotAllowed("POST"));
    assert_eq!(route("POST", TRANSPORT_PATH), Route::Transport);
    assert_eq!(route("DELETE", "/api/v1/users/3"), Route::Nas);
    assert_eq!(route("GET", "/api/v1"), Route::Nas);
    assert_eq!(route("GET", "/atlas/v2/x"), Route::NotFound);
    assert!(paths.owns("/api/v1/users") && paths.owns("/metrics") && paths.owns("/atlas"));
    // Everything else is the routes': other `/api/` paths, look-alikes of Atlas's.
    for path in [
        "/app/x",
        "/api/v2/users",
        "/api/v1x",
        "/api",
        "/metricsx",
        "/atlasx",
    ] {
        assert!(!paths.owns(path), "{path}");
    }
}

#[test]
fn the_nas_prefix_is_configurable_and_absent_where_the_api_is_not_served() {
    let custom = OwnedPaths {
        nas_prefix: Some("/admin/nas".into()),
        everything: false,
    };
    assert_eq!(
        custom.nas_path("/admin/nas/users/3").as_deref(),
        Some("/api/v1/users/3")
    );
    assert_eq!(custom.nas_path("/admin/nas").as_deref(), Some("/api/v1"));
    assert!(!custom.owns("/api/v1/users") && !custom.owns("/admin/nasty"));
    assert_eq!(route("GET", "/admin/nas/health", &custom), Route::Nas);
    let off = OwnedPaths {
        nas_prefix: None,
        everything: false,
    };
    assert!(!off.owns("/api/v1/users") && off.owns("/atlas/v1/health"));
    let only = OwnedPaths {
        nas_prefix: Some("/api/v1".into()),
        everything: true,
    };
    assert!(only.owns("/app/x"));
    assert_eq!(route("GET", "/app/x", &only), Route::NotFound);
}

#[test]
fn credentials() {
    assert!(credentials_match(Some("s3cret"), "s3cret"));
    assert!(!credentials_match(Some("s3cret "), "s3cret"));
    assert!(!credentials_match(Some(""), "s3cret"));
    assert!(!credentials_match(None, "s3cret"));
}
