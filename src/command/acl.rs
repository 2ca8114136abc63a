//! ACL GRANT / REVOKE: only an owner (or anyone, while the key is public) may change an ACL.

use crate::protocol::{Key, Perm, Reply};
use crate::storage::Change;

use super::{CommandError, Engine, now_ms, shown_principal};

impl Engine {
    pub(super) fn change_acl(
        &self,
        key: &Key,
        principal: Option<&str>,
        subject: &str,
        perm: Perm,
        grant: bool,
    ) -> Result<Reply, CommandError> {
        if key.is_system() {
            return Err(CommandError::SystemTable(key.table().to_string()));
        }
        self.store.update(key, now_ms(), |current| {
            if !current.acl.may_change_acl(principal) {
                return Err(CommandError::PermissionDenied {
                    principal: shown_principal(principal),
                    what: "owner",
                });
            }
            let mut acl = current.acl.clone();
            let line = if grant {
                acl.grant(subject, perm);
                format!(
                    "ACL granted to {subject} for {key} with permissions {}",
                    perm.name()
                )
            } else {
                acl.revoke(subject, perm);
                format!(
                    "ACL revoked from {subject} for {key} with permissions {}",
                    perm.name()
                )
            };
            Ok((Change::SetAcl(acl), Reply::line(line)))
        })
    }
}
