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

pub fn owns_path(path: &str) -> bool {
    OWNED_PREFIXES.iter().any(|p| path.starts_with(p)) || path == "/atlas"
}

/// Pure routing: method and path to a handler.
pub fn route(method: &str, path: &str) -> Route {
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
        p if p == "/api/v1" || p.starts_with("/api/v1/") => Route::Nas,
        _ => Route::NotFound,
    }
}
