//! TOML text into a [`Config`], and errors that name file, table, field and line.

use super::Config;

/// A configuration that cannot be used, with enough context for a person to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {location}: {message}")]
pub struct ConfigError {
    /// The file (or "environment", or "built-in defaults").
    pub source_name: String,
    /// Table and field, e.g. `[[key_set]] "npm", field rsa_bits`.
    pub location: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Parses TOML text, naming the table and field of any error.
pub fn parse_toml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.message().to_owned();
        let line = inner.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let mut location = describe_path(&path, &message);
        if let Some(line) = line {
            location.push_str(&format!(" (line {line})"));
        }
        ConfigError { source_name: source_name.to_owned(), location, message }
    })
}

/// Turns `key_set[0].rsa_bits` into `[[key_set]] #1, field rsa_bits`.
fn describe_path(path: &str, message: &str) -> String {
    let named_field = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next());
    let mut parts = path.split('.').filter(|p| !p.is_empty() && *p != "?").collect::<Vec<_>>();
    if let Some(field) = named_field.filter(|f| parts.last() != Some(f)) {
        parts.push(field);
    }
    let mut table = String::from("top level");
    let mut field: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        // The first part names the table; the rest, however deep, is the field.
        if i == 0 && (parts.len() > 1 || part.contains('[')) {
            table = match part.split_once('[') {
                Some((name, index)) => {
                    let index: usize = index.trim_end_matches(']').parse().unwrap_or(0);
                    format!("[[{name}]] #{}", index + 1)
                }
                None => format!("[{part}]"),
            };
        } else {
            field.push(part);
        }
    }
    if field.is_empty() {
        table
    } else {
        format!("{table}, field {}", field.join("."))
    }
}
