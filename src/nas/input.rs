//! Reading JSON request bodies field by field, so every wrong field is reported at once
//! (a derived `Deserialize` stops at the first problem and names no field reliably).

use serde_json::{Map, Value};

use super::error::{FieldErrors, NasError};

/// A JSON object being read; problems are collected per field.
pub struct Input {
    object: Map<String, Value>,
    pub errors: FieldErrors,
}

impl Input {
    /// Parses `body` as a JSON object. Not JSON or not an object is a plain bad request.
    pub fn parse(body: &[u8]) -> Result<Input, NasError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(NasError::BadRequest(
                "request body must be a JSON object".into(),
            ));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| NasError::BadRequest(format!("malformed JSON: {e}")))?;
        Input::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Input, NasError> {
        match value {
            Value::Object(object) => Ok(Input {
                object,
                errors: FieldErrors::new(),
            }),
            _ => Err(NasError::BadRequest(
                "request body must be a JSON object".into(),
            )),
        }
    }

    /// Overlays the fields of `self` on `base` (an update merges into the stored entity).
    pub fn merged_over(self, base: Value) -> Input {
        let mut object = match base {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (k, v) in self.object {
            object.insert(k, v);
        }
        Input {
            object,
            errors: self.errors,
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.object.contains_key(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.object.get(key).is_some_and(|v| !v.is_null())
    }

    fn error(&mut self, key: &str, problem: &str) {
        self.errors
            .entry(key.to_string())
            .or_insert_with(|| problem.to_string());
    }

    /// Marks every key not in `known` as an error; `ignored` keys (read-only fields a client
    /// may echo back, like `id`) are accepted and dropped.
    pub fn reject_unknown(&mut self, known: &[&str], ignored: &[&str]) {
        let unknown: Vec<String> = self
            .object
            .keys()
            .filter(|k| !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            self.error(&key, "unknown field");
        }
    }

    pub fn required_string(&mut self, key: &str) -> String {
        match self.object.get(key) {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                self.error(key, "is required");
                String::new()
            }
            Some(_) => {
                self.error(key, "must be a string");
                String::new()
            }
        }
    }

    pub fn optional_string(&mut self, key: &str) -> Option<String> {
        match self.object.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(_) => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    pub fn string_or(&mut self, key: &str, default: &str) -> String {
        self.optional_string(key)
            .unwrap_or_else(|| default.to_string())
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.object.get(key) {
            Some(Value::Bool(b)) => *b,
            None | Some(Value::Null) => default,
            Some(_) => {
                self.error(key, "must be true or false");
                default
            }
        }
    }

    pub fn string_list(&mut self, key: &str) -> Vec<String> {
        match self.object.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            self.error(key, "must be a list of strings");
                            return Vec::new();
                        }
                    }
                }
                out
            }
            Some(_) => {
                self.error(key, "must be a list of strings");
                Vec::new()
            }
        }
    }

    /// An optional integer within `min..=max`.
    pub fn optional_int(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        match self.object.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (min..=max).contains(&v) => Some(v),
                _ => {
                    self.error(key, &format!("must be an integer from {min} to {max}"));
                    None
                }
            },
            Some(_) => {
                self.error(key, &format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    pub fn required_int(&mut self, key: &str, min: i64, max: i64) -> i64 {
        if !self.has(key) {
            self.error(key, "is required");
            return min;
        }
        self.optional_int(key, min, max).unwrap_or(min)
    }

    /// Records a validation result for `key` (validators return `Err(problem)`).
    pub fn check(&mut self, key: &str, result: Result<(), String>) {
        if let Err(problem) = result {
            self.error(key, &problem);
        }
    }

    /// Finishes reading: the collected errors, if any, become `Invalid`.
    pub fn finish(self) -> Result<(), NasError> {
        super::error::check_fields(self.errors)
    }
}

/// Reads `?a=1&b=x%20y` into decoded pairs. Malformed escapes are kept literally.
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or(b""))
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "actor=al%20ice&since=2024-01-01T00%3A00%3A00Z&x&bad=%zz&end=%4",
        ));
        assert_eq!(q[0], ("actor".into(), "al ice".into()));
        assert_eq!(q[1].1, "2024-01-01T00:00:00Z");
        assert_eq!(q[2], ("x".into(), "".into()));
        assert_eq!(q[3].1, "%zz");
        assert_eq!(q[4].1, "%4");
    }

    #[test]
    fn errors_are_collected_per_field() {
        let mut input = Input::parse(br#"{"a": 1, "b": "x", "c": [1], "zzz": true}"#).unwrap();
        input.required_string("a");
        input.bool_or("b", false);
        input.string_list("c");
        input.required_string("missing");
        input.reject_unknown(&["a", "b", "c", "missing"], &[]);
        let errors = input.errors.clone();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(matches!(Input::parse(b"[1]"), Err(NasError::BadRequest(_))));
        assert!(matches!(Input::parse(b"{"), Err(NasError::BadRequest(_))));
        assert!(matches!(Input::parse(b""), Err(NasError::BadRequest(_))));
    }
}
