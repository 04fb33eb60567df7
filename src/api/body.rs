//! Reading JSON request bodies. Bodies are parsed into a JSON object first and fields are
//! then taken one by one, so every problem is reported per field and no error message ever
//! echoes a submitted value (serde's messages would, e.g. a mistyped password).

use actix_web::error::JsonPayloadError;
use actix_web::web;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::service::FieldError;

/// A request body that is a JSON object whose fields are each given once. serde_json keeps
/// the last of repeated keys; a body like `{"email": "a@…", "email": "b@…"}` means two
/// things at once, so it is refused rather than guessed.
#[derive(Debug)]
pub struct JsonObject(pub Value);

/// The start of the error a repeated field raises, told apart from other type errors.
const REPEATED_FIELD: &str = "repeated field";

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonObject, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<JsonObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(REPEATED_FIELD));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(JsonObject(Value::Object(map)))
            }
        }
        d.deserialize_any(Object)
    }
}

/// The 400 for a body that parsed as JSON syntax but is not one object with unique fields,
/// or is not JSON at all.
pub fn malformed(e: &serde_json::Error) -> ApiError {
    if e.is_eof() {
        ApiError::MalformedRequest("the JSON body is truncated")
    } else if e.is_data() && e.to_string().starts_with(REPEATED_FIELD) {
        ApiError::MalformedRequest("a field is given more than once")
    } else if e.is_data() {
        ApiError::MalformedRequest("the body must be a JSON object")
    } else {
        ApiError::MalformedRequest("the body is not valid UTF-8 JSON")
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(super::MAX_BODY_BYTES)
        .content_type_required(true)
        .content_type(|mime| {
            mime.type_() == actix_web::mime::APPLICATION
                && (mime.subtype() == actix_web::mime::JSON
                    || mime.suffix() == Some(actix_web::mime::JSON))
        })
        .error_handler(|err, _req| {
            let api = match &err {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => ApiError::PayloadTooLarge,
                JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
                JsonPayloadError::Deserialize(e) => malformed(e),
                JsonPayloadError::Payload(e) if super::middleware::is_body_timeout(e) => {
                    ApiError::RequestTimeout
                }
                JsonPayloadError::Payload(_) => {
                    ApiError::MalformedRequest("the body could not be read")
                }
                // JsonPayloadError is non-exhaustive; anything new is still the client's body.
                _ => ApiError::MalformedRequest("the body could not be read"),
            };
            api.into()
        })
}

/// A JSON object being taken apart into typed fields.
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn new(body: Value) -> Result<Fields, ApiError> {
        match body {
            Value::Object(map) => Ok(Fields {
                map,
                errors: Vec::new(),
            }),
            _ => Err(ApiError::MalformedRequest("the body must be a JSON object")),
        }
    }

    /// A required string field; records an error and returns "" when absent or mistyped.
    pub fn string(&mut self, name: &'static str) -> String {
        match self.map.remove(name) {
            Some(Value::String(s)) => s,
            Some(_) => {
                self.errors.push(FieldError {
                    field: name,
                    code: "invalid_type",
                    message: "must be a string".into(),
                });
                String::new()
            }
            None => {
                self.errors.push(FieldError {
                    field: name,
                    code: "required",
                    message: "is required".into(),
                });
                String::new()
            }
        }
    }

    /// An optional string field: `None` when absent; records an error when mistyped.
    pub fn optional_string(&mut self, name: &'static str) -> Option<String> {
        match self.map.remove(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.errors.push(FieldError {
                    field: name,
                    code: "invalid_type",
                    message: "must be a string".into(),
                });
                None
            }
        }
    }

    /// A required boolean field; records an error and returns `false` when absent or
    /// mistyped.
    pub fn bool(&mut self, name: &'static str) -> bool {
        match self.map.remove(name) {
            Some(Value::Bool(b)) => b,
            other => {
                self.errors.push(FieldError {
                    field: name,
                    code: if other.is_some() {
                        "invalid_type"
                    } else {
                        "required"
                    },
                    message: if other.is_some() {
                        "must be true or false".into()
                    } else {
                        "is required".into()
                    },
                });
                false
            }
        }
    }

    /// A required array of strings; records an error and returns what it could read when
    /// absent or mistyped.
    pub fn strings(&mut self, name: &'static str) -> Vec<String> {
        let mistyped = |errors: &mut Vec<FieldError>| {
            errors.push(FieldError {
                field: name,
                code: "invalid_type",
                message: "must be an array of strings".into(),
            });
        };
        match self.map.remove(name) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        _ => {
                            mistyped(&mut self.errors);
                            return Vec::new();
                        }
                    }
                }
                out
            }
            Some(_) => {
                mistyped(&mut self.errors);
                Vec::new()
            }
            None => {
                self.errors.push(FieldError {
                    field: name,
                    code: "required",
                    message: "is required".into(),
                });
                Vec::new()
            }
        }
    }

    /// Records a problem found while interpreting a field.
    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Fails with every collected problem, plus one per unexpected field (a typo such as
    /// `passwrd` should not pass silently).
    pub fn finish(mut self) -> Result<(), ApiError> {
        for key in self.map.keys() {
            let shown: String = key.chars().take(64).collect();
            self.errors.push(FieldError {
                field: "body",
                code: "unknown_field",
                message: format!("unknown field `{shown}`"),
            });
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::ValidationFailed(self.errors))
        }
    }
}

/// The `{email, password}` body of registration and login.
pub fn credentials(body: Value) -> Result<(String, zeroize::Zeroizing<String>), ApiError> {
    let mut fields = Fields::new(body)?;
    let email = fields.string("email");
    let password = zeroize::Zeroizing::new(fields.string("password"));
    fields.finish()?;
    Ok((email, password))
}
