//! Per-key access control lists: owners, readers, writers.

use std::collections::BTreeSet;

use crate::protocol::Perm;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub owners: BTreeSet<String>,
    pub readers: BTreeSet<String>,
    pub writers: BTreeSet<String>,
}

impl Acl {
    /// A key with no owners is public: anyone may read, write and change its ACL.
    pub fn is_public(&self) -> bool {
        self.owners.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.readers.is_empty() && self.writers.is_empty()
    }

    fn is_owner(&self, principal: Option<&str>) -> bool {
        principal.is_some_and(|p| self.owners.contains(p))
    }

    pub fn may_read(&self, principal: Option<&str>) -> bool {
        self.is_public()
            || self.is_owner(principal)
            || principal.is_some_and(|p| self.readers.contains(p))
    }

    pub fn may_write(&self, principal: Option<&str>) -> bool {
        self.is_public()
            || self.is_owner(principal)
            || principal.is_some_and(|p| self.writers.contains(p))
    }

    pub fn may_change_acl(&self, principal: Option<&str>) -> bool {
        self.is_public() || self.is_owner(principal)
    }

    fn set_mut(&mut self, perm: Perm) -> &mut BTreeSet<String> {
        match perm {
            Perm::Read => &mut self.readers,
            Perm::Write => &mut self.writers,
            Perm::Owner => &mut self.owners,
        }
    }

    pub fn grant(&mut self, principal: &str, perm: Perm) {
        self.set_mut(perm).insert(principal.to_string());
    }

    /// Revoking the last owner makes the key public again.
    pub fn revoke(&mut self, principal: &str, perm: Perm) {
        self.set_mut(perm).remove(principal);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for set in [&self.owners, &self.readers, &self.writers] {
            out.extend_from_slice(&(set.len() as u32).to_be_bytes());
            for name in set {
                out.extend_from_slice(&(name.len() as u32).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Option<Acl> {
        let take_u32 = |bytes: &mut &[u8]| -> Option<u32> {
            let (n, rest) = bytes.split_first_chunk::<4>()?;
            *bytes = rest;
            Some(u32::from_be_bytes(*n))
        };
        let mut sets: [BTreeSet<String>; 3] = Default::default();
        for set in &mut sets {
            let count = take_u32(&mut bytes)?;
            for _ in 0..count {
                let len = take_u32(&mut bytes)? as usize;
                if bytes.len() < len {
                    return None;
                }
                let (name, rest) = bytes.split_at(len);
                set.insert(String::from_utf8(name.to_vec()).ok()?);
                bytes = rest;
            }
        }
        if !bytes.is_empty() {
            return None;
        }
        let [owners, readers, writers] = sets;
        Some(Acl {
            owners,
            readers,
            writers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let mut acl = Acl::default();
        assert!(acl.may_read(None) && acl.may_write(None) && acl.may_change_acl(None));
        acl.grant("alice", Perm::Owner);
        acl.grant("bob", Perm::Read);
        acl.grant("carol", Perm::Write);
        assert!(
            acl.may_read(Some("alice"))
                && acl.may_write(Some("alice"))
                && acl.may_change_acl(Some("alice"))
        );
        assert!(
            acl.may_read(Some("bob"))
                && !acl.may_write(Some("bob"))
                && !acl.may_change_acl(Some("bob"))
        );
        assert!(
            !acl.may_read(Some("carol"))
                && acl.may_write(Some("carol"))
                && !acl.may_change_acl(Some("carol"))
        );
        assert!(!acl.may_read(None) && !acl.may_write(None));
        acl.revoke("alice", Perm::Owner);
        assert!(acl.is_public() && acl.may_write(None));
    }

    #[test]
    fn round_trip() {
        let mut acl = Acl::default();
        acl.grant("alice smith", Perm::Owner);
        acl.grant("é", Perm::Write);
        assert_eq!(Acl::decode(&acl.encode()), Some(acl));
        assert_eq!(Acl::decode(&[0, 0, 0, 9]), None);
    }
}
