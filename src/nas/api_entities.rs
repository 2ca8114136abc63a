//! CRUD handlers of the API: users, shares, exports, iSCSI targets and LUNs, snapshot
//! policies. Each mutation runs in one transaction with its audit row (`NasApi::mutate`).

use super::api::{ApiRequest, ApiResponse, Caller, NasApi, Route, resource_type};
use super::entity::{self, Entity};
use super::error::NasError;
use super::policy::PathPolicy;
use super::snapshot_policies::SnapshotPolicy;
use super::users::{self, Role};
use super::{format_ts, iscsi, iscsi_luns, nfs, smb};

fn lun_allowed(lun: &iscsi_luns::IscsiLun, policy: &PathPolicy) -> Result<(), NasError> {
    if let Some(device) = &lun.device {
        policy.check_device("device", device)?;
    }
    if let Some(path) = &lun.path {
        policy.check_path("path", path)?;
    }
    Ok(())
}

pub(crate) fn serve(
    api: &NasApi,
    route: Route,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    use Route::*;
    match route {
        Users | User(_) => serve_users(api, route, method, request, caller),
        SmbShares => collection::<smb::SmbShare>(api, route, method, request, caller),
        SmbShare(id) => item::<smb::SmbShare>(api, route, id, method, request, caller),
        NfsExports => collection::<nfs::NfsExport>(api, route, method, request, caller),
        NfsExport(id) => item::<nfs::NfsExport>(api, route, id, method, request, caller),
        Targets => collection::<iscsi::IscsiTarget>(api, route, method, request, caller),
        Target(id) => item::<iscsi::IscsiTarget>(api, route, id, method, request, caller),
        Policies => collection::<SnapshotPolicy>(api, route, method, request, caller),
        Policy(id) => item::<SnapshotPolicy>(api, route, id, method, request, caller),
        Luns(target) => luns(api, target, method, request, caller),
        Lun(target, lun) => one_lun(api, target, lun, method, request, caller),
        _ => Err(NasError::NotFound("endpoint".into())),
    }
}

fn now_text(api: &NasApi) -> String {
    format_ts(api.store().now())
}

fn collection<E: Entity>(
    api: &NasApi,
    route: Route,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    if method == "GET" {
        return Ok(ApiResponse::json(
            200,
            &api.store().read(entity::list::<E>)?,
        ));
    }
    let created = api.mutate(caller, "create", resource_type(route), request, |c, now| {
        let value: E = entity::read_new(&request.body)?;
        value.allowed(&api.store().options().paths)?;
        let created = entity::create(c, &value, &format_ts(*now))?;
        Ok((Some(created.id().to_string()), created))
    })?;
    Ok(ApiResponse::json(201, &created))
}

fn item<E: Entity>(
    api: &NasApi,
    route: Route,
    id: i64,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    let kind = resource_type(route);
    match method {
        "GET" => Ok(ApiResponse::json(
            200,
            &api.store().read(|c| entity::get::<E>(c, id))?,
        )),
        "DELETE" => {
            api.mutate(caller, "delete", kind, request, |c, _| {
                entity::delete::<E>(c, id)?;
                Ok((Some(id.to_string()), ()))
            })?;
            Ok(ApiResponse::no_content())
        }
        _ => {
            let updated = api.mutate(caller, "update", kind, request, |c, now| {
                let current: E = entity::get(c, id)?;
                let changed = entity::read_update(&request.body, &current)?;
                changed.allowed(&api.store().options().paths)?;
                Ok((
                    Some(id.to_string()),
                    entity::update(c, &changed, &format_ts(*now))?,
                ))
            })?;
            Ok(ApiResponse::json(200, &updated))
        }
    }
}

fn luns(
    api: &NasApi,
    target: i64,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    if method == "GET" {
        let luns = api.store().read(|c| {
            entity::get::<iscsi::IscsiTarget>(c, target)?;
            iscsi_luns::list(c, Some(target))
        })?;
        return Ok(ApiResponse::json(200, &luns));
    }
    let created = api.mutate(caller, "create", "iscsi_lun", request, |c, now| {
        entity::get::<iscsi::IscsiTarget>(c, target)?;
        let lun = iscsi_luns::read_new(&request.body, target)?;
        lun_allowed(&lun, &api.store().options().paths)?;
        let created = iscsi_luns::create(c, &lun, &format_ts(*now))?;
        Ok((Some(format!("{target}/{}", created.lun)), created))
    })?;
    Ok(ApiResponse::json(201, &created))
}

fn one_lun(
    api: &NasApi,
    target: i64,
    lun: i64,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    let resource_id = Some(format!("{target}/{lun}"));
    match method {
        "GET" => Ok(ApiResponse::json(
            200,
            &api.store().read(|c| iscsi_luns::get(c, target, lun))?,
        )),
        "DELETE" => {
            api.mutate(caller, "delete", "iscsi_lun", request, |c, _| {
                iscsi_luns::delete(c, target, lun)?;
                Ok((resource_id, ()))
            })?;
            Ok(ApiResponse::no_content())
        }
        _ => {
            let updated = api.mutate(caller, "update", "iscsi_lun", request, |c, now| {
                let current = iscsi_luns::get(c, target, lun)?;
                let changed = iscsi_luns::read_update(&request.body, &current)?;
                lun_allowed(&changed, &api.store().options().paths)?;
                Ok((
                    resource_id,
                    iscsi_luns::update(c, &changed, &format_ts(*now))?,
                ))
            })?;
            Ok(ApiResponse::json(200, &updated))
        }
    }
}

fn serve_users(
    api: &NasApi,
    route: Route,
    method: &str,
    request: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, NasError> {
    let store = api.store();
    match (route, method) {
        (Route::Users, "GET") => Ok(ApiResponse::json(200, &store.read(users::list)?)),
        (Route::Users, _) => {
            // Hash before taking the database lock: argon2 is deliberately slow.
            let parsed = users::read_new(&request.body).and_then(|(mut user, password)| {
                user.password_hash = users::hash_password(&password)?;
                Ok(user)
            });
            let created = api.mutate(caller, "create", "user", request, |c, _| {
                let user = parsed?;
                let created = users::create(c, &user, &now_text(api))?;
                Ok((Some(created.id.to_string()), created))
            })?;
            Ok(ApiResponse::json(201, &created))
        }
        (Route::User(id), "GET") => Ok(ApiResponse::json(200, &store.read(|c| users::get(c, id))?)),
        (Route::User(id), "DELETE") => {
            api.mutate(caller, "delete", "user", request, |c, _| {
                users::delete(c, id)?;
                Ok((Some(id.to_string()), ()))
            })?;
            Ok(ApiResponse::no_content())
        }
        (Route::User(id), _) => {
            let is_admin = caller
                .user
                .as_ref()
                .is_some_and(|u| u.role == Role::Administrator);
            let is_self = caller.user.as_ref().is_some_and(|u| u.id == id);
            let parsed = users::read_changes(&request.body).and_then(|asked| {
                let users::ChangeRequest {
                    mut changes,
                    password,
                    current_password,
                } = asked;
                if !(is_admin || (is_self && changes.is_self_service())) {
                    return Err(NasError::Forbidden(
                        "only an administrator may change other users, roles or activation".into(),
                    ));
                }
                if let Some(p) = password {
                    // One's own password needs the current one (administrators too): a
                    // stolen session must not be able to lock its owner out.
                    if is_self {
                        let Some(current) = current_password else {
                            return Err(NasError::field(
                                "current_password",
                                "required to change your own password",
                            ));
                        };
                        // Guesses at it count like failed logins (same limits, same
                        // 429), so a stolen session cannot try passwords without end.
                        let name = caller.user.as_ref().map_or("", |u| u.username.as_str());
                        let addr = request.client_addr.as_deref();
                        let now = store.now();
                        store
                            .limiter()
                            .check(name, addr, now)
                            .map_err(NasError::RateLimited)?;
                        let stored = store.read(|c| users::password_hash_of(c, id))?;
                        if !users::verify_password(&current, &stored) {
                            store.limiter().record_failure(name, addr, now);
                            return Err(NasError::field(
                                "current_password",
                                "does not match your current password",
                            ));
                        }
                        store.limiter().record_success(name, addr);
                    }
                    changes.password_hash = Some(users::hash_password(&p)?);
                }
                Ok(changes)
            });
            let updated = api.mutate(caller, "update", "user", request, |c, _| {
                let changes = parsed?;
                Ok((
                    Some(id.to_string()),
                    users::update(c, id, &changes, &now_text(api))?,
                ))
            })?;
            Ok(ApiResponse::json(200, &updated))
        }
        _ => Err(NasError::NotFound("endpoint".into())),
    }
}
