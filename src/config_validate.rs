//! What serde cannot check in the `atlas:` section: addresses parse, numbers are in range,
//! keys that need each other are there. Every message names its key.

use std::net::SocketAddr;

use super::*;

impl AtlasConfig {
    fn validate_acme(&self, acme: &AcmeConfig) -> Result<(), String> {
        let url = acme.directory.strip_prefix("https://").unwrap_or_default();
        if url.is_empty() || url.starts_with('/') || url.chars().any(char::is_whitespace) {
            return Err(format!(
                "atlas.tls.acme.directory: `{}` is not an https:// URL (e.g. \
                 https://acme-v02.api.letsencrypt.org/directory)",
                acme.directory
            ));
        }
        if acme.domains.is_empty() {
            return Err("atlas.tls.acme.domains: name at least one DNS name".into());
        }
        for name in &acme.domains {
            if !valid_dns_name(name) {
                return Err(format!(
                    "atlas.tls.acme.domains: `{name}` is not a DNS name (letters, digits and \
                     hyphens in dot-separated labels; wildcards need DNS-01, not offered)"
                ));
            }
        }
        if let Some(email) = &acme.email
            && (email
                .split_once('@')
                .is_none_or(|(u, d)| u.is_empty() || d.is_empty())
                || email.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "atlas.tls.acme.email: `{email}` is not an email address"
            ));
        }
        match acme.challenge {
            AcmeChallenge::Http01 if self.http_listen.is_none() => Err(
                "atlas.tls.acme.challenge: http-01 needs atlas.http_listen (the CA fetches its \
                 token over plain HTTP, port 80 as it sees this node)"
                    .into(),
            ),
            AcmeChallenge::Http01 => Ok(()),
            // Pingora's TLS settings negotiate h2 and http/1.1 or one custom protocol, never
            // a list with `acme-tls/1` beside them; the challenge cannot be answered without
            // giving up HTTP/2 on the listener.
            AcmeChallenge::TlsAlpn01 => Err(
                "atlas.tls.acme.challenge: tls-alpn-01 is not supported (Pingora's TLS \
                 listener cannot offer ALPN acme-tls/1 beside h2 and http/1.1); use http-01 \
                 with atlas.http_listen"
                    .into(),
            ),
        }
    }

    fn validate_client_listener(&self) -> Result<(), String> {
        if let Some(c) = &self.client_listen {
            if c.parse::<SocketAddr>().is_err() {
                return Err(format!(
                    "atlas.client_listen: `{c}` is not a socket address (e.g. 0.0.0.0:7379)"
                ));
            }
            if !matches!(self.tls, TlsConfig::Internal) && self.peer_ca.is_none() {
                return Err(
                    "atlas.client_listen: needs the CA that signs client certificates \
                     (tls: internal, or atlas.peer_ca with tls files)"
                        .into(),
                );
            }
        }
        for name in &self.client_admins {
            if !crate::protocol::valid_principal(name) {
                return Err(format!(
                    "atlas.client_admins: `{name}` is not a principal name (1 to 256 characters, \
                     no control characters)"
                ));
            }
        }
        for print in &self.client_revoked {
            if normalize_fingerprint(print).is_none() {
                return Err(format!(
                    "atlas.client_revoked: `{print}` is not a SHA-256 fingerprint (64 hex \
                     digits, as `atlas ca client-cert` prints them)"
                ));
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: addresses parse, numbers are in range.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("atlas.data_dir: must not be empty".into());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "atlas.listen: `{}` is not a socket address (e.g. 127.0.0.1:4444)",
                self.listen
            ));
        }
        if let Some(m) = &self.metrics_listen
            && m.parse::<SocketAddr>().is_err()
        {
            return Err(format!(
                "atlas.metrics_listen: `{m}` is not a socket address"
            ));
        }
        if let Some(h) = &self.http_listen
            && h.parse::<SocketAddr>().is_err()
        {
            return Err(format!(
                "atlas.http_listen: `{h}` is not a socket address (e.g. 0.0.0.0:80)"
            ));
        }
        self.validate_client_listener()?;
        if let TlsConfig::Acme(acme) = &self.tls {
            self.validate_acme(acme)?;
        }
        if self.region.trim().is_empty()
            || self
                .region
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("atlas.region: must be a non-empty word".into());
        }
        if let Some(l) = &self.nas.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!("atlas.nas.listen: `{l}` is not a socket address"));
        }
        if let Some(prefix) = &self.nas.path_prefix {
            let reserved =
                prefix == "/atlas" || prefix.starts_with("/atlas/") || prefix == "/metrics";
            if !prefix.starts_with('/')
                || prefix.len() < 2
                || prefix.ends_with('/')
                || prefix.split('/').any(|p| p == "..")
                || prefix
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "?#%".contains(c))
                || reserved
            {
                return Err(format!(
                    "atlas.nas.path_prefix: `{prefix}` must be a path like /api/v1 (starting with \
                     /, without a trailing /, `..`, `?`, `#` or `%`, outside /atlas and /metrics)"
                ));
            }
        }
        if self
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.chars().count() < MIN_CREDENTIAL_CHARS)
        {
            return Err(format!(
                "atlas.metrics_token: must be at least {MIN_CREDENTIAL_CHARS} characters"
            ));
        }
        for (key, list) in [
            ("atlas.nas.allowed_paths", &self.nas.allowed_paths),
            ("atlas.nas.allowed_devices", &self.nas.allowed_devices),
        ] {
            for entry in list.iter().flatten() {
                if !entry.starts_with('/') || entry.split('/').any(|p| p == "..") {
                    return Err(format!(
                        "{key}: `{entry}` must be an absolute path without `..`"
                    ));
                }
            }
        }
        self.validate_cluster()?;
        self.validate_limits()?;
        self.validate_tables()?;
        self.validate_routes()
    }

    /// The cluster keys: joining, the seed's CA, the credential, mTLS.
    fn validate_cluster(&self) -> Result<(), String> {
        if let Some(c) = &self.connect
            && !c.starts_with("https://")
        {
            return Err(format!("atlas.connect: `{c}` must start with https://"));
        }
        if self.connect.is_some() && self.credentials.is_none() {
            return Err(
                "atlas.credentials: required with atlas.connect (the cluster's shared secret)"
                    .into(),
            );
        }
        if self.connect.is_some() && self.peer_ca.is_none() && self.peer_ca_sha256.is_none() {
            return Err(
                "atlas.peer_ca: required with atlas.connect (the CA file that verifies the seed; \
                 or pin its fingerprint with atlas.peer_ca_sha256)"
                    .into(),
            );
        }
        if let Some(pin) = &self.peer_ca_sha256
            && normalize_fingerprint(pin).is_none()
        {
            return Err(
                "atlas.peer_ca_sha256: expected 64 hex digits, as `atlas ca show` prints them \
                 (colons optional)"
                    .into(),
            );
        }
        if self.credentials.is_some()
            && !matches!(self.tls, TlsConfig::Internal)
            && self.peer_ca.is_none()
        {
            return Err(
                "atlas.peer_ca: required in a cluster with tls files (the CA that signed the nodes' certificates)"
                    .into(),
            );
        }
        if self.peer_mtls == Some(true) && self.credentials.is_none() {
            return Err("atlas.peer_mtls: needs atlas.credentials (it secures a cluster)".into());
        }
        if self
            .credentials
            .as_deref()
            .is_some_and(|c| c.chars().count() < MIN_CREDENTIAL_CHARS)
        {
            return Err(format!(
                "atlas.credentials: must be at least {MIN_CREDENTIAL_CHARS} characters \
                 (32 recommended; `atlas ca secret` prints one)"
            ));
        }
        if !self.accepted_credentials.is_empty() && self.credentials.is_none() {
            return Err(
                "atlas.accepted_credentials: needs atlas.credentials (the secret nodes send)"
                    .into(),
            );
        }
        if let Some(i) = self
            .accepted_credentials
            .iter()
            .position(|c| c.chars().count() < MIN_CREDENTIAL_CHARS)
        {
            return Err(format!(
                "atlas.accepted_credentials[{i}]: must be at least {MIN_CREDENTIAL_CHARS} characters"
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), String> {
        if self.limits.max_line_bytes < 64 {
            return Err("atlas.limits.max_line_bytes: must be at least 64".into());
        }
        if self.limits.max_connections == 0 {
            return Err("atlas.limits.max_connections: must be at least 1".into());
        }
        if self.limits.max_tagged_in_flight == 0 {
            return Err("atlas.limits.max_tagged_in_flight: must be at least 1".into());
        }
        if self.expiry_sweep_ms < 100 {
            return Err("atlas.expiry_sweep_ms: must be at least 100".into());
        }
        if self.limits.max_txn_ops == 0 {
            return Err("atlas.limits.max_txn_ops: must be at least 1".into());
        }
        if self.limits.max_scan_keys == 0 {
            return Err("atlas.limits.max_scan_keys: must be at least 1".into());
        }
        Ok(())
    }

    fn validate_tables(&self) -> Result<(), String> {
        for (table, declared) in &self.tables {
            if crate::protocol::key::parse_table(table.as_bytes()).is_err()
                || table.chars().any(char::is_whitespace)
            {
                return Err(format!(
                    "atlas.tables: `{table}` is not a table name (no dots or spaces)"
                ));
            }
            if let Some(region) = &declared.pin
                && (region.is_empty()
                    || region.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(format!(
                    "atlas.tables.{table}.pin: must be a region name (one word)"
                ));
            }
        }
        if !self.tables.is_empty() && self.credentials.is_none() {
            return Err("atlas.tables: placement needs a cluster (atlas.credentials)".into());
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), String> {
        for (i, route) in self.routes.iter().enumerate() {
            if route.upstreams.is_empty() {
                return Err(format!(
                    "atlas.routes[{i}].upstreams: needs at least one upstream"
                ));
            }
            if let Some(check) = &route.health_check
                && check.kind != "tcp"
                && !check.kind.starts_with('/')
            {
                return Err(format!(
                    "atlas.routes[{i}].health_check.kind: `{}` must be `tcp` or an HTTP path such as /healthz",
                    check.kind
                ));
            }
            if !route.path_prefix.starts_with('/') {
                return Err(format!("atlas.routes[{i}].path_prefix: must start with /"));
            }
        }
        Ok(())
    }
}

/// A DNS name a certificate can carry: 1 to 253 characters, dot-separated labels of 1 to 63
/// letters, digits and hyphens (not at either end), at least two labels.
fn valid_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
