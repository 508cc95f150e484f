//! Request bodies: read within a size and time bound, parsed as JSON with errors in
//! keyward's own words naming the field.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use serde::de::DeserializeOwned;

use crate::http::problem::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] within `timeout`.
pub(super) async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: std::time::Duration,
) -> Result<T, ApiError> {
    parse_json(&read_body(req, payload, timeout).await?)
}

/// Reads a body of at most [`MAX_BODY_BYTES`], which must be JSON if it says what it is,
/// and must arrive within `timeout` (actix-web's own timeout covers the headers only).
pub(super) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: std::time::Duration,
) -> Result<actix_web::web::Bytes, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let media = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        let json = media.eq_ignore_ascii_case("application/json") || media.to_ascii_lowercase().ends_with("+json");
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    tokio::time::timeout(timeout, payload.to_bytes_limited(MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_secs()))?
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?
        .map_err(|_| ApiError::InvalidBody { field: None, detail: "the body could not be read".to_owned() })
}

/// Parses JSON, naming the offending field. The messages are keyward's own words, never
/// the parser's.
pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields in order: only objects count.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'[') {
        return Err(ApiError::InvalidBody { field: None, detail: "the body must be a JSON object".to_owned() });
    }
    // Malformed JSON is reported as such, even after a duplicate.
    let well_formed = || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if let Some(member) = duplicate_member(body).filter(|_| well_formed()) {
        return Err(ApiError::InvalidBody {
            detail: format!("the member {member:?} appears more than once"),
            field: Some(member),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        body_error(&path, &inner)
    })?;
    deserializer.end().map_err(|err| body_error(".", &err))?;
    Ok(value)
}

/// The path (`claims.role`, `a[2].b`) of the first member whose name appears twice in one
/// object of `body`, at any depth. serde_json keeps the last of two members silently, so
/// this looks before the body is read for real.
fn duplicate_member(body: &[u8]) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let _ = serde::de::DeserializeSeed::deserialize(
        UniqueMembers { path: String::new(), found: &found },
        &mut deserializer,
    );
    found.into_inner()
}

/// Walks one JSON value, failing at the first duplicate member name (recorded in `found`).
struct UniqueMembers<'a> {
    path: String,
    found: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueMembers<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueMembers<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(UniqueMembers { path: format!("{}[{index}]", self.path), found: self.found })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { name.clone() } else { format!("{}.{name}", self.path) };
            if !seen.insert(name) {
                *self.found.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom("duplicate member"));
            }
            map.next_value_seed(UniqueMembers { path, found: self.found })?;
        }
        Ok(())
    }
}

fn body_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = err.to_string();
    let quoted = message.split('`').nth(1).map(str::to_owned);
    let (field, detail) = match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            (None, format!("the body is not valid JSON (line {}, column {})", err.line(), err.column()))
        }
        Category::Data if message.starts_with("unknown field") => {
            let field = quoted.unwrap_or_default();
            (Some(field.clone()), format!("unknown field {field:?}"))
        }
        Category::Data if message.starts_with("missing field") => {
            let field = quoted.unwrap_or_default();
            (Some(field.clone()), format!("the required field {field:?} is missing"))
        }
        Category::Data if path == "." || path == "?" => (None, "the body must be a JSON object".to_owned()),
        Category::Data => (Some(path.to_owned()), format!("{path:?} has the wrong type")),
    };
    ApiError::InvalidBody { field, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::profile::SignRequest;

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse_json::<SignRequest>(body.as_bytes()) {
            Err(ApiError::InvalidBody { field, detail }) => (field, detail),
            other => panic!("{body}: expected InvalidBody, got {other:?}"),
        }
    }

    #[test]
    fn body_errors_name_the_field_in_keywards_own_words() {
        assert_eq!(field_of(r#"{"sub": "a", "nope": 1}"#), (Some("nope".into()), "unknown field \"nope\"".into()));
        assert_eq!(field_of(r#"{"sub": 5}"#), (Some("sub".into()), "\"sub\" has the wrong type".into()));
        assert_eq!(field_of(r#"[1]"#), (None, "the body must be a JSON object".into()));
        assert_eq!(field_of("{\"sub\": "), (None, "the body is not valid JSON (line 1, column 8)".into()));
        assert_eq!(field_of(r#"{"sub": "a", "nope": 1}"#).0.as_deref(), Some("nope"));
        assert_eq!(field_of(r#"{"sub": 5}"#).0.as_deref(), Some("sub"));
        assert_eq!(field_of(r#"{"sub": "a", "ttl_seconds": "5"}"#).0.as_deref(), Some("ttl_seconds"));
        assert_eq!(field_of(r#"{"sub": "a", "claims": []}"#).0.as_deref(), Some("claims"));
        assert_eq!(field_of(r#"{"sub": "a""#).0, None);
        assert_eq!(field_of(r#"{"sub": "a"} trailing"#).0, None);
    }

    #[test]
    fn a_member_named_twice_in_any_object_is_refused_naming_it() {
        let cases = [
            (r#"{"sub": "a", "sub": "b"}"#, "sub"),
            (r#"{"sub": "a", "claims": {"obo_user": "x", "obo_user": "y"}}"#, "claims.obo_user"),
            (r#"{"sub": "a", "claims": {"roles": [{"k": 1}, {"k": 1, "k": 2}]}}"#, "claims.roles[1].k"),
            (r#"{"s\u0075b": "a", "sub": "b"}"#, "sub"),
        ];
        for (body, member) in cases {
            let (field, detail) = field_of(body);
            assert_eq!(field.as_deref(), Some(member), "{body}");
            assert_eq!(detail, format!("the member {member:?} appears more than once"));
        }
        // The same name in different objects is fine; malformed JSON keeps its own message.
        assert!(duplicate_member(br#"{"a": {"x": 1}, "b": {"x": 1}, "x": [{"x": 1}, {"x": 2}]}"#).is_none());
        assert_eq!(
            field_of(r#"{"claims": {"a": 1, "a": 2}, "sub": "#).1,
            "the body is not valid JSON (line 1, column 36)"
        );
    }
}
