//! Which of Atlas's endpoints a method and path name.

use super::*;

/// Which handler a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Ca,
    Join,
    Remove,
    Snapshot,
    Transport,
    Faults,
    Nas,
    NotFound,
    MethodNotAllowed(&'static str),
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Ca => "ca",
            Route::Metrics => "metrics",
            Route::Join => "join",
            Route::Transport => "consensus",
            Route::Snapshot => "snapshot",
            Route::Remove => "remove",
            Route::Faults => "faults",
            Route::Nas => "api",
            Route::NotFound => "not_found",
            Route::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

/// The NAS API's router knows its paths under this root; a configured `nas.path_prefix`
/// is translated to it.
pub const NAS_API_ROOT: &str = "/api/v1";

/// Which paths a listener's Atlas API answers: `/atlas` and `/atlas/…`, `/metrics`, and the
/// NAS API's prefix where the NAS API is served on that listener. Every other path — `/api/…`
/// outside the prefix included — belongs to the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPaths {
    /// `nas.path_prefix`, where the NAS API is served on this listener.
    pub nas_prefix: Option<String>,
    /// The `nas.listen` listener: every path is Atlas's (it serves the NAS API only).
    pub everything: bool,
}

impl OwnedPaths {
    pub fn owns(&self, path: &str) -> bool {
        self.everything
            || path == "/atlas"
            || path.starts_with("/atlas/")
            || path == "/metrics"
            || self.nas_path(path).is_some()
    }

    /// The NAS API's own form (`/api/v1/…`) of `path`, when `path` is the prefix or lies
    /// under it (`/api/v1x` does not).
    pub fn nas_path(&self, path: &str) -> Option<String> {
        nas_path_under(self.nas_prefix.as_deref()?, path)
    }
}

/// `path` in the NAS API's own form when it is `prefix` or lies under it.
pub fn nas_path_under(prefix: &str, path: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| format!("{NAS_API_ROOT}{rest}"))
}

/// Pure routing: method and path to a handler.
pub fn route(method: &str, path: &str, paths: &OwnedPaths) -> Route {
    let expect = |wanted: &'static str, route: Route| {
        if method == wanted || (wanted == "GET" && method == "HEAD") {
            route
        } else {
            Route::MethodNotAllowed(wanted)
        }
    };
    match path {
        "/atlas/v1/health" => expect("GET", Route::Health),
        "/metrics" => expect("GET", Route::Metrics),
        CA_PATH => expect("GET", Route::Ca),
        JOIN_PATH => expect("POST", Route::Join),
        TRANSPORT_PATH => expect("POST", Route::Transport),
        SNAPSHOT_PATH => expect("POST", Route::Snapshot),
        REMOVE_PATH => expect("POST", Route::Remove),
        FAULTS_PATH => expect("POST", Route::Faults),
        p if paths.nas_path(p).is_some() => Route::Nas,
        _ => Route::NotFound,
    }
}
