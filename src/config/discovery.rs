//! Issuer discovery (`discovery = true` on a `[[profile]]`): where the public listener
//! serves the profile's OpenID / OAuth metadata, and what that document says.

use std::collections::HashMap;

use serde::Serialize;

use super::validate::RESERVED_PUBLIC_PATHS;
use super::{Config, ProfileConfig};

/// One issuer's metadata, ready to serve at its two well-known paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// `/.well-known/openid-configuration` under the issuer's path (OpenID Connect
    /// Discovery), then `/.well-known/oauth-authorization-server` before it (RFC 8414).
    pub paths: [String; 2],
    /// The key set whose JWKS `jwks_uri` names (its caching headers are the document's).
    pub key_set: String,
    /// The document.
    pub metadata: Metadata,
}

/// The members of the discovery document: only what a verifier needs to find the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// Exactly the profile's `issuer`, as its tokens' `iss`.
    pub issuer: String,
    /// The absolute URL of the key set's first JWKS path, on the issuer's origin.
    pub jwks_uri: String,
    /// The key set's algorithm.
    pub id_token_signing_alg_values_supported: [&'static str; 1],
}

/// The discovery documents of every profile that asks for one.
pub fn documents(config: &Config) -> Vec<Discovery> {
    config.profiles.iter().filter(|p| p.discovery).filter_map(|p| document(config, p).ok()).collect()
}

/// A profile's document, or which field is at fault and why.
fn document(config: &Config, profile: &ProfileConfig) -> Result<Discovery, (&'static str, String)> {
    let name =
        profile.key_set.as_deref().ok_or(("discovery", "only key-set profiles publish keys to discover".to_owned()))?;
    let set = config.key_set(name).ok_or_else(|| ("key_set", format!("no [[key_set]] is named {name:?}")))?;
    let issuer = profile.issuer.clone().unwrap_or_default();
    let (origin, path) = split_issuer(&issuer).ok_or_else(|| {
        (
            "issuer",
            format!(
                "{issuer:?} is not an https:// (or http://) URL without query or fragment, which discovery needs \
                 to find the metadata from the issuer"
            ),
        )
    })?;
    let jwks_path = set.jwks_paths.first().ok_or(("discovery", format!("key set {:?} has no jwks_paths", set.name)))?;
    Ok(Discovery {
        paths: [
            format!("{path}/.well-known/openid-configuration"),
            format!("/.well-known/oauth-authorization-server{path}"),
        ],
        key_set: set.name.clone(),
        metadata: Metadata {
            jwks_uri: format!("{origin}{jwks_path}"),
            issuer,
            id_token_signing_alg_values_supported: [set.algorithm.as_str()],
        },
    })
}

/// `https://host[:port]` and the path without its trailing slash (RFC 8414 section 3).
fn split_issuer(issuer: &str) -> Option<(&str, &str)> {
    let rest = issuer.strip_prefix("https://").or_else(|| issuer.strip_prefix("http://"))?;
    if issuer.contains(['?', '#', ' ']) {
        return None;
    }
    let authority_len = rest.find('/').unwrap_or(rest.len());
    if authority_len == 0 {
        return None;
    }
    let origin_len = issuer.len() - rest.len() + authority_len;
    Some((&issuer[..origin_len], issuer[origin_len..].trim_end_matches('/')))
}

/// The discovery rules: a key-set profile with a URL issuer, and paths no one else serves.
pub(crate) fn validate(config: &Config) -> Result<(), (String, &'static str, String)> {
    let mut owner: HashMap<String, (&str, &Discovery)> = HashMap::new();
    let documents: Vec<(&ProfileConfig, Discovery)> = config
        .profiles
        .iter()
        .filter(|p| p.discovery)
        .map(|p| document(config, p).map(|d| (p, d)).map_err(|(field, m)| (p.name.clone(), field, m)))
        .collect::<Result<_, _>>()?;
    for (profile, doc) in &documents {
        for path in &doc.paths {
            let taken_by_jwks = config.key_sets.iter().find(|s| s.jwks_paths.contains(path));
            if RESERVED_PUBLIC_PATHS.contains(&path.as_str()) || taken_by_jwks.is_some() {
                return Err((profile.name.clone(), "issuer", format!("{path:?} is already served by a JWKS path")));
            }
            match owner.insert(path.clone(), (&profile.name, doc)) {
                // Two profiles of one issuer and key set share one document.
                Some((_, other)) if other == doc => {}
                Some((other, _)) => {
                    return Err((
                        profile.name.clone(),
                        "issuer",
                        format!("{path:?} is also profile {other:?}'s discovery document, with other contents"),
                    ))
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_paths_follow_the_issuer_path() {
        assert_eq!(split_issuer("https://keys.example.com"), Some(("https://keys.example.com", "")));
        assert_eq!(split_issuer("https://h:8443/tenant/a/"), Some(("https://h:8443", "/tenant/a")));
        assert_eq!(split_issuer("http://127.0.0.1:9/"), Some(("http://127.0.0.1:9", "")));
        for bad in ["keys.example.com", "https:///x", "https://h/?q=1", "https://h/#f", "ftp://h"] {
            assert_eq!(split_issuer(bad), None, "{bad}");
        }
    }

    fn config_with(issuer: &str, discovery: bool) -> Config {
        let mut config = Config::default();
        config.profiles[0].issuer = Some(issuer.to_owned());
        config.profiles[0].discovery = discovery;
        config
    }

    #[test]
    fn a_discovery_document_names_the_issuer_and_the_absolute_jwks_uri() {
        let config = config_with("https://id.example.com/tenant", true);
        let [doc] = &documents(&config)[..] else { panic!("one document") };
        assert_eq!(
            doc.paths,
            ["/tenant/.well-known/openid-configuration", "/.well-known/oauth-authorization-server/tenant"]
        );
        assert_eq!(doc.metadata.issuer, "https://id.example.com/tenant");
        assert_eq!(doc.metadata.jwks_uri, format!("https://id.example.com{}", config.key_sets[0].jwks_paths[0]));
        assert!(documents(&config_with("https://id.example.com", false)).is_empty(), "off by default");
    }

    #[test]
    fn discovery_needs_an_issuer_url() {
        let (profile, field, why) = validate(&config_with("npm-sandbox", true)).unwrap_err();
        assert_eq!((profile.as_str(), field), (config_with("x", true).profiles[0].name.as_str(), "issuer"));
        assert!(why.contains("https://"), "{why}");
    }

    #[test]
    fn profiles_sharing_an_issuer_must_publish_the_same_keys_there() {
        let mut config = config_with("https://id.example.com", true);
        let mut same = config.profiles[0].clone();
        same.name = "same-issuer-same-keys".to_owned();
        config.profiles.push(same);
        assert!(validate(&config).is_ok(), "one issuer and key set may back several profiles");

        let mut other_set = config.key_sets[0].clone();
        other_set.name = "other".to_owned();
        other_set.jwks_paths = vec!["/other/jwks.json".to_owned()];
        config.key_sets.push(other_set);
        config.profiles[1].key_set = Some("other".to_owned());
        let (profile, field, why) = validate(&config).unwrap_err();
        assert_eq!((profile.as_str(), field), ("same-issuer-same-keys", "issuer"));
        assert!(why.contains("with other contents"), "{why}");
    }
}
