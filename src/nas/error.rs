//! The NAS layer's error type. The API maps it to HTTP statuses in exactly one place
//! (`api::error_response`).

use std::collections::BTreeMap;

/// Field name → what is wrong with it. A `BTreeMap` so error bodies are deterministic.
pub type FieldErrors = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum NasError {
    /// One or more fields failed validation (400).
    #[error("validation failed: {}", describe_fields(.0))]
    Invalid(FieldErrors),
    /// The request itself is malformed: not JSON, not an object, bad query (400).
    #[error("{0}")]
    BadRequest(String),
    /// A uniqueness or overlap rule (409).
    #[error("{message}")]
    Conflict {
        message: String,
        fields: FieldErrors,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(
        "database schema version {found} is newer than this program supports ({supported}); \
         upgrade Atlas or restore an older backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("not an Atlas backup: {0}")]
    NotABackup(String),
    /// Applying rendered configuration failed (a command or a file step); rolled back.
    #[error("apply failed: {0}")]
    Apply(String),
    #[error("initial administrator: {0}")]
    Bootstrap(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_fields(fields: &FieldErrors) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NasError {
    pub fn field(name: &str, problem: impl Into<String>) -> NasError {
        let mut fields = FieldErrors::new();
        fields.insert(name.to_string(), problem.into());
        NasError::Invalid(fields)
    }

    pub fn conflict(field: &str, message: impl Into<String>) -> NasError {
        let message = message.into();
        let mut fields = FieldErrors::new();
        fields.insert(field.to_string(), message.clone());
        NasError::Conflict { message, fields }
    }
}

/// Turns a collected set of field errors into `Ok(())` or `Invalid`.
pub fn check_fields(errors: FieldErrors) -> Result<(), NasError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NasError::Invalid(errors))
    }
}
