//! Where operators may point shares, exports and LUNs (`nas.allowed_paths`,
//! `nas.allowed_devices`): the NAS API's operators are not root, so a share of `/`, an export
//! of `/etc` or a LUN over `/dev/sda` is refused with a 400 naming the field.
//!
//! Paths are compared as written (they are absolute and free of `..`, see
//! `validate::absolute_path`); symbolic links inside an allowed directory are not resolved
//! (the paths may not exist yet), so whoever can create links there is trusted as well.

use super::error::NasError;
use crate::config::NasConfig;

pub const DEFAULT_ALLOWED_PATHS: &[&str] = &["/tank", "/mnt", "/srv", "/export"];
pub const DEFAULT_ALLOWED_DEVICES: &[&str] = &["/dev/zvol/"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPolicy {
    pub paths: Vec<String>,
    pub devices: Vec<String>,
}

impl Default for PathPolicy {
    fn default() -> PathPolicy {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        PathPolicy {
            paths: owned(DEFAULT_ALLOWED_PATHS),
            devices: owned(DEFAULT_ALLOWED_DEVICES),
        }
    }
}

/// `path` is `root` or inside it (`/srvx` is not inside `/srv`; a root of `/` holds all).
fn within(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

impl PathPolicy {
    pub fn from_config(nas: &NasConfig) -> PathPolicy {
        let defaults = PathPolicy::default();
        PathPolicy {
            paths: nas.allowed_paths.clone().unwrap_or(defaults.paths),
            devices: nas.allowed_devices.clone().unwrap_or(defaults.devices),
        }
    }

    /// A share, export or file backstore path.
    pub fn check_path(&self, field: &str, path: &str) -> Result<(), NasError> {
        if self.paths.iter().any(|root| within(path, root)) {
            return Ok(());
        }
        Err(NasError::field(
            field,
            format!(
                "must be under one of {} (nas.allowed_paths)",
                self.paths.join(", ")
            ),
        ))
    }

    /// A block backstore device.
    pub fn check_device(&self, field: &str, device: &str) -> Result<(), NasError> {
        if self.devices.iter().any(|root| {
            within(device, root)
                && device.trim_end_matches('/').len() > root.trim_end_matches('/').len()
        }) {
            return Ok(());
        }
        Err(NasError::field(
            field,
            format!(
                "must be a device under one of {} (nas.allowed_devices)",
                self.devices.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_devices_outside_the_allowed_roots_are_refused() {
        let policy = PathPolicy::default();
        for ok in [
            "/srv",
            "/srv/data",
            "/tank/media/x",
            "/export/a b",
            "/mnt/usb/",
        ] {
            assert!(policy.check_path("path", ok).is_ok(), "{ok}");
        }
        for bad in [
            "/",
            "/etc",
            "/etc/samba",
            "/srvx",
            "/root/.ssh",
            "/dev/sda",
            "/var/lib",
        ] {
            let err = policy.check_path("path", bad).unwrap_err().to_string();
            assert!(
                err.contains("path") && err.contains("nas.allowed_paths"),
                "{bad}: {err}"
            );
        }
        assert!(policy.check_device("device", "/dev/zvol/tank/vm").is_ok());
        for bad in [
            "/dev/sda",
            "/dev/zvol",
            "/dev/zvol/",
            "/dev/zvolx/a",
            "/etc/passwd",
        ] {
            assert!(policy.check_device("device", bad).is_err(), "{bad}");
        }
        let everything = PathPolicy {
            paths: vec!["/".into()],
            devices: vec!["/dev/".into()],
        };
        assert!(everything.check_path("path", "/etc").is_ok());
        assert!(everything.check_device("device", "/dev/sda").is_ok());
    }
}
