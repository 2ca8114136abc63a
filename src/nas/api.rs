//! The REST API under `/api/v1`, independent of any HTTP framework: the listener turns a
//! request into an [`ApiRequest`], calls [`NasApi::handle`] (blocking: run it on the blocking
//! pool) and writes the [`ApiResponse`] back.
//!
//! Every endpoint but `/health`, `/openapi.json` and `/auth/login` needs a bearer token, and
//! each checks the caller's role. Errors are `{"error", "message", "fields"}`; this module is
//! the one place where [`NasError`] becomes an HTTP status.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use rusqlite::Connection;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{FieldErrors, NasError};
use super::render::ConfigKind;
use super::users::{Role, User};
use super::{NasStore, audit, format_ts};

/// One HTTP request, as the listener hands it over.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: String,
    /// The path after `/api/v1` (a leading `/api/v1` is accepted too), without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
    /// The peer address (`ip:port`), recorded in the audit log.
    pub client_addr: Option<String>,
}

/// The answer: status, body and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const SQLITE: &str = "application/vnd.sqlite3";

impl ApiResponse {
    pub fn json(status: u16, value: &impl Serialize) -> ApiResponse {
        match serde_json::to_vec(value) {
            Ok(body) => ApiResponse {
                status,
                body,
                content_type: JSON,
            },
            Err(e) => error_response(&NasError::Internal(e.to_string())),
        }
    }

    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: Vec::new(),
            content_type: JSON,
        }
    }

    fn error(status: u16, kind: &str, message: &str, fields: &FieldErrors) -> ApiResponse {
        ApiResponse::json(
            status,
            &json!({"error": kind, "message": message, "fields": fields}),
        )
    }
}

/// The one mapping from errors to statuses.
pub fn error_response(error: &NasError) -> ApiResponse {
    let empty = FieldErrors::new();
    let message = error.to_string();
    match error {
        NasError::Invalid(fields) => ApiResponse::error(400, "validation_failed", &message, fields),
        NasError::BadRequest(_) => ApiResponse::error(400, "bad_request", &message, &empty),
        NasError::NotABackup(_) => ApiResponse::error(400, "not_a_backup", &message, &empty),
        NasError::SchemaTooNew { .. } => {
            ApiResponse::error(400, "schema_too_new", &message, &empty)
        }
        NasError::Unauthorized(_) => ApiResponse::error(401, "unauthorized", &message, &empty),
        NasError::Forbidden(_) => ApiResponse::error(403, "forbidden", &message, &empty),
        NasError::NotFound(_) => ApiResponse::error(404, "not_found", &message, &empty),
        NasError::Conflict { fields, .. } => ApiResponse::error(409, "conflict", &message, fields),
        NasError::PayloadTooLarge { .. } => {
            ApiResponse::error(413, "payload_too_large", &message, &empty)
        }
        NasError::RateLimited(_) => ApiResponse::error(429, "rate_limited", &message, &empty),
        NasError::Db(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            // A uniqueness race between the check and the insert.
            ApiResponse::error(409, "conflict", "conflicts with an existing entry", &empty)
        }
        NasError::Apply(_) => ApiResponse::error(500, "apply_failed", &message, &empty),
        NasError::Db(_) | NasError::Io(_) | NasError::Internal(_) | NasError::Bootstrap(_) => {
            tracing::error!(error = %error, "NAS API internal error");
            ApiResponse::error(
                500,
                "internal",
                "internal error (details in the server log)",
                &empty,
            )
        }
    }
}

/// Which endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    OpenApi,
    Login,
    Logout,
    Me,
    Users,
    User(i64),
    SmbShares,
    SmbShare(i64),
    NfsExports,
    NfsExport(i64),
    Targets,
    Target(i64),
    Luns(i64),
    Lun(i64, i64),
    Policies,
    Policy(i64),
    AuditLogs,
    Preview(ConfigKind),
    Apply,
    Backup,
    Restore,
}

fn id(segment: &str) -> Option<i64> {
    (!segment.is_empty() && segment.len() <= 18 && segment.bytes().all(|b| b.is_ascii_digit()))
        .then(|| segment.parse().ok())
        .flatten()
}

pub(crate) fn route(path: &str) -> Option<Route> {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    use Route::*;
    Some(match segments.as_slice() {
        ["health"] => Health,
        ["openapi.json"] => OpenApi,
        ["auth", "login"] => Login,
        ["auth", "logout"] => Logout,
        ["auth", "me"] => Me,
        ["users"] => Users,
        ["users", i] => User(id(i)?),
        ["shares", "smb"] => SmbShares,
        ["shares", "smb", i] => SmbShare(id(i)?),
        ["exports", "nfs"] => NfsExports,
        ["exports", "nfs", i] => NfsExport(id(i)?),
        ["iscsi", "targets"] => Targets,
        ["iscsi", "targets", i] => Target(id(i)?),
        ["iscsi", "targets", i, "luns"] => Luns(id(i)?),
        ["iscsi", "targets", i, "luns", l] => Lun(id(i)?, id(l)?),
        ["snapshot-policies"] => Policies,
        ["snapshot-policies", i] => Policy(id(i)?),
        ["audit-logs"] => AuditLogs,
        ["config", "preview", kind] => Preview(ConfigKind::parse(kind)?),
        ["config", "apply"] => Apply,
        ["config", "backup"] => Backup,
        ["config", "restore"] => Restore,
        _ => return None,
    })
}

/// Methods a route answers; anything else is 405.
pub(crate) fn allowed_methods(route: Route) -> &'static [&'static str] {
    use Route::*;
    match route {
        Health | OpenApi | Me | AuditLogs | Preview(_) => &["GET"],
        Login | Logout | Apply | Backup | Restore => &["POST"],
        Users | SmbShares | NfsExports | Targets | Luns(_) | Policies => &["GET", "POST"],
        User(_) | SmbShare(_) | NfsExport(_) | Target(_) | Lun(..) | Policy(_) => {
            &["GET", "PUT", "PATCH", "DELETE"]
        }
    }
}

/// The least role a request needs; `None` for public endpoints.
pub(crate) fn required_role(route: Route, method: &str) -> Option<Role> {
    use Route::*;
    let read = method == "GET";
    match route {
        Health | OpenApi | Login => None,
        Me | Logout | Preview(_) => Some(Role::Viewer),
        AuditLogs | Backup | Restore => Some(Role::Administrator),
        // Users may change their own password and e-mail; checked in the handler.
        Users | User(_) if read => Some(Role::Viewer),
        User(_) if method == "PUT" || method == "PATCH" => Some(Role::Viewer),
        Users | User(_) => Some(Role::Administrator),
        Apply => Some(Role::Operator),
        _ if read => Some(Role::Viewer),
        _ => Some(Role::Operator),
    }
}

/// Who is asking, for handlers and the audit log.
pub(crate) struct Caller {
    pub user: Option<User>,
    pub client_addr: Option<String>,
}

impl Caller {
    pub fn actor(&self) -> &str {
        self.user
            .as_ref()
            .map(|u| u.username.as_str())
            .unwrap_or("anonymous")
    }
}

/// The NAS REST API. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct NasApi {
    store: Arc<NasStore>,
    /// The OpenAPI document, its `servers` naming where the API is served.
    openapi: Arc<Vec<u8>>,
}

impl NasApi {
    pub fn new(store: Arc<NasStore>) -> NasApi {
        NasApi::serving_under(store, "/api/v1")
    }

    /// The API as served under `prefix` (`nas.path_prefix`): the paths it routes stay
    /// `/api/v1/…` (the HTTP layer translates), the OpenAPI document names `prefix`.
    pub fn serving_under(store: Arc<NasStore>, prefix: &str) -> NasApi {
        let mut document = super::openapi::document().clone();
        document["servers"] = serde_json::json!([{ "url": prefix }]);
        NasApi {
            store,
            openapi: Arc::new(document.to_string().into_bytes()),
        }
    }

    /// The role of the active user whose live session `token` is, if any. Blocking. Lets the
    /// HTTP layer refuse a large upload (restore) before reading it.
    pub fn token_role(&self, token: &str) -> Option<Role> {
        let now = self.store.now();
        self.store
            .read(|c| super::auth::authenticate(c, token, now))
            .ok()
            .filter(|user| user.active)
            .map(|user| user.role)
    }

    pub fn store(&self) -> &Arc<NasStore> {
        &self.store
    }

    /// Answers one request. Blocking (SQLite, argon2, commands): call it from the blocking
    /// pool. Never panics outward; a panic inside becomes a 500.
    pub fn handle(&self, request: ApiRequest) -> ApiResponse {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.dispatch(&request))).unwrap_or_else(
            |_| {
                tracing::error!(path = %request.path, "NAS API handler panicked");
                error_response(&NasError::Internal("handler panicked".into()))
            },
        )
    }

    fn dispatch(&self, request: &ApiRequest) -> ApiResponse {
        let Some(route) = route(&request.path) else {
            return error_response(&NasError::NotFound(format!("endpoint {}", request.path)));
        };
        let method = request.method.to_ascii_uppercase();
        let allowed = allowed_methods(route);
        if !allowed.contains(&method.as_str()) {
            return ApiResponse::error(
                405,
                "method_not_allowed",
                &format!("{method} not allowed here; allowed: {}", allowed.join(", ")),
                &FieldErrors::new(),
            );
        }
        let limit = if route == Route::Restore {
            self.store.options().max_restore_bytes
        } else {
            self.store.options().max_body_bytes
        };
        if request.body.len() > limit {
            return error_response(&NasError::PayloadTooLarge { limit });
        }
        let mut caller = Caller {
            user: None,
            client_addr: request.client_addr.clone(),
        };
        if let Some(role) = required_role(route, &method) {
            let Some(token) = request.bearer.as_deref() else {
                return error_response(&NasError::Unauthorized(
                    "log in first: send Authorization: Bearer <token>".into(),
                ));
            };
            let now = self.store.now();
            let user = match self
                .store
                .read(|c| super::auth::authenticate(c, token, now))
            {
                Ok(user) => user,
                Err(e) => return error_response(&e),
            };
            if user.role < role {
                let error = NasError::Forbidden(format!(
                    "this needs the {} role; you are {}",
                    role.as_str(),
                    user.role.as_str()
                ));
                if method != "GET" {
                    caller.user = Some(user);
                    self.audit_failure(&caller, &method, route, &request.body, &error);
                }
                return error_response(&error);
            }
            caller.user = Some(user);
        }
        match self.serve(route, &method, request, &caller) {
            Ok(response) => response,
            Err(error) => error_response(&error),
        }
    }

    fn serve(
        &self,
        route: Route,
        method: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> Result<ApiResponse, NasError> {
        use Route::*;
        let store = &self.store;
        match route {
            Health => {
                let version = store.read(super::db::schema_version)?;
                Ok(ApiResponse::json(
                    200,
                    &json!({"status": "ok", "schema_version": version}),
                ))
            }
            OpenApi => Ok(ApiResponse {
                status: 200,
                body: self.openapi.as_ref().clone(),
                content_type: JSON,
            }),
            Login => self.login(request),
            Logout => {
                let token = request.bearer.clone().unwrap_or_default();
                self.mutate(caller, "logout", "session", request, |c, now| {
                    super::auth::revoke(c, &token, *now)?;
                    Ok((caller.user.as_ref().map(|u| u.id.to_string()), ()))
                })?;
                Ok(ApiResponse::no_content())
            }
            Me => Ok(ApiResponse::json(200, &caller.user)),
            AuditLogs => {
                let pairs = super::input::parse_query(request.query.as_deref());
                let filter = audit::Filter::from_query(&pairs)?;
                Ok(ApiResponse::json(
                    200,
                    &store.read(|c| audit::query(c, &filter))?,
                ))
            }
            Preview(kind) => {
                let text = store.read(|c| {
                    super::render::render_from_db(c, kind, super::render::Secrets::Mask)
                })?;
                let content_type = if kind == ConfigKind::Iscsi {
                    JSON
                } else {
                    TEXT
                };
                Ok(ApiResponse {
                    status: 200,
                    body: text.into_bytes(),
                    content_type,
                })
            }
            Apply => self.apply(request, caller),
            Backup => {
                let bytes = super::backup::backup_to_bytes(store)?;
                let entry = self
                    .entry(caller, "backup", "database")
                    .details(json!({"bytes": bytes.len()}));
                store.write(|c| audit::record(c, &entry))?;
                Ok(ApiResponse {
                    status: 200,
                    body: bytes,
                    content_type: SQLITE,
                })
            }
            Restore => {
                let result = super::backup::restore_from_bytes(
                    store,
                    &request.body,
                    caller.actor(),
                    caller.client_addr.as_deref(),
                );
                if let Err(error) = &result {
                    self.audit_failure(caller, method, route, &[], error);
                }
                Ok(ApiResponse::json(200, &result?))
            }
            _ => super::api_entities::serve(self, route, method, request, caller),
        }
    }

    fn login(&self, request: &ApiRequest) -> Result<ApiResponse, NasError> {
        let mut input = super::input::Input::parse(&request.body)?;
        input.reject_unknown(&["username", "password"], &[]);
        let username = input.required_string("username");
        let password = input.required_string("password");
        input.finish()?;
        if username.len() > 256 || password.len() > super::validate::MAX_PASSWORD_BYTES {
            return Err(NasError::Unauthorized(
                "invalid user name or password".into(),
            ));
        }
        let result = super::auth::login(
            &self.store,
            &username,
            &password,
            request.client_addr.as_deref(),
        )?;
        Ok(ApiResponse::json(200, &result))
    }

    fn apply(&self, request: &ApiRequest, caller: &Caller) -> Result<ApiResponse, NasError> {
        let kinds = read_apply_kinds(&request.body)?;
        let runner = self.store.runner();
        let result = super::apply::apply(&self.store, runner.as_ref(), &kinds);
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let mut entry = self
            .entry(caller, "apply", "config")
            .details(json!({"kinds": names}));
        match &result {
            Ok(report) => {
                entry = entry
                    .result(if report.dry_run { "dry_run" } else { "success" })
                    .details(
                        json!({"kinds": names, "files": report.files, "commands": report.commands}),
                    );
            }
            Err(e) => entry = entry.result("failure").message(e.to_string()),
        }
        self.store.write(|c| audit::record(c, &entry))?;
        Ok(ApiResponse::json(200, &result?))
    }

    pub(crate) fn entry(&self, caller: &Caller, action: &str, resource_type: &str) -> audit::Entry {
        audit::Entry::new(
            caller.actor(),
            action,
            resource_type,
            &format_ts(self.store.now()),
        )
        .client_addr(caller.client_addr.as_deref())
    }

    /// Runs a mutation in one transaction together with its audit row; a failed mutation is
    /// audited afterwards with the error.
    pub(crate) fn mutate<T>(
        &self,
        caller: &Caller,
        action: &str,
        resource_type: &str,
        request: &ApiRequest,
        change: impl FnOnce(
            &Connection,
            &chrono::DateTime<chrono::Utc>,
        ) -> Result<(Option<String>, T), NasError>,
    ) -> Result<T, NasError> {
        let now = self.store.now();
        let details = body_details(&request.body);
        let entry = self.entry(caller, action, resource_type);
        let result = self.store.write(|c| {
            let (resource_id, value) = change(c, &now)?;
            let mut entry = entry.clone().details(details.clone());
            entry.resource_id = resource_id;
            audit::record(c, &entry)?;
            Ok(value)
        });
        if let Err(error) = &result {
            let failed = entry
                .result(result_of(error))
                .message(error.to_string())
                .details(details);
            if let Err(e) = self.store.write(|c| audit::record(c, &failed)) {
                tracing::error!(error = %e, "could not write an audit row");
            }
        }
        result
    }

    fn audit_failure(
        &self,
        caller: &Caller,
        method: &str,
        route: Route,
        body: &[u8],
        error: &NasError,
    ) {
        let action = match (route, method) {
            (Route::Restore, _) => "restore",
            (Route::Apply, _) => "apply",
            (Route::Backup, _) => "backup",
            (_, "POST") => "create",
            (_, "DELETE") => "delete",
            _ => "update",
        };
        let entry = self
            .entry(caller, action, resource_type(route))
            .result(result_of(error))
            .message(error.to_string())
            .details(body_details(body));
        if let Err(e) = self.store.write(|c| audit::record(c, &entry)) {
            tracing::error!(error = %e, "could not write an audit row");
        }
    }
}

/// The audit log's name for what a route changes.
pub(crate) fn resource_type(route: Route) -> &'static str {
    use Route::*;
    match route {
        Users | User(_) => "user",
        SmbShares | SmbShare(_) => "smb_share",
        NfsExports | NfsExport(_) => "nfs_export",
        Targets | Target(_) => "iscsi_target",
        Luns(_) | Lun(..) => "iscsi_lun",
        Policies | Policy(_) => "snapshot_policy",
        Login | Logout | Me => "session",
        Apply | Preview(_) => "config",
        Backup | Restore => "database",
        Health | OpenApi | AuditLogs => "api",
    }
}

fn result_of(error: &NasError) -> &'static str {
    match error {
        NasError::Forbidden(_) => "denied",
        _ => "failure",
    }
}

/// The request body for the audit log (secrets are masked when the row is written).
fn body_details(body: &[u8]) -> Value {
    if body.is_empty() {
        return json!({});
    }
    if body.len() > 16 * 1024 {
        return json!({"body_bytes": body.len()});
    }
    serde_json::from_slice(body).unwrap_or_else(|_| json!({"body": "not JSON"}))
}

/// `{"kinds": ["smb", "nfs"]}`, or an empty body for all three.
fn read_apply_kinds(body: &[u8]) -> Result<Vec<ConfigKind>, NasError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ConfigKind::ALL.to_vec());
    }
    let mut input = super::input::Input::parse(body)?;
    input.reject_unknown(&["kinds"], &[]);
    let names = input.string_list("kinds");
    let mut kinds = Vec::new();
    for name in &names {
        match ConfigKind::parse(name) {
            Some(k) if !kinds.contains(&k) => kinds.push(k),
            Some(_) => {}
            None => input.check("kinds", Err(format!("`{name}` is not smb, nfs or iscsi"))),
        }
    }
    input.finish()?;
    Ok(if kinds.is_empty() {
        ConfigKind::ALL.to_vec()
    } else {
        kinds
    })
}
