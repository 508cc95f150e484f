//! Administrative permissions of a client: a few named actions, each on every key set (or
//! partner) or only on some. Signing stays a matter of profiles; `--admin` holds them all.
//!
//! Written `ACTION` (everywhere) or `ACTION=NAME[,NAME...]` (only there), e.g.
//! `keys:rotate=payments`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// An administrative action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read key sets and their keys' timelines (`GET /v1/key-sets`).
    KeysRead,
    /// Rotate a key set (`POST /v1/key-sets/{name}/rotate`).
    KeysRotate,
    /// Revoke a key (`POST /v1/keys/{kid}/revoke`), scoped by the key's set.
    KeysRevoke,
    /// Read partners' fetches and hand-over gates (`GET /v1/partners`).
    PartnersRead,
    /// Read the audit trail: events and checkpoints (`GET /v1/events`); only unscoped.
    EventsRead,
}

impl Action {
    /// Every action, in the order they are listed.
    pub const ALL: [Action; 5] =
        [Action::KeysRead, Action::KeysRotate, Action::KeysRevoke, Action::PartnersRead, Action::EventsRead];

    /// Its name, as written in a permission.
    pub fn name(self) -> &'static str {
        match self {
            Action::KeysRead => "keys:read",
            Action::KeysRotate => "keys:rotate",
            Action::KeysRevoke => "keys:revoke",
            Action::PartnersRead => "partners:read",
            Action::EventsRead => "events:read",
        }
    }

    /// What its scope names: key sets or partners.
    pub fn scope_kind(self) -> &'static str {
        match self {
            Action::PartnersRead => "partner",
            _ => "key set",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an action is permitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// On every key set (or partner).
    All,
    /// Only on these.
    Only(BTreeSet<String>),
}

impl Scope {
    /// Whether `name` is within this scope.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.contains(name),
        }
    }
}

/// One permission: an action and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The action.
    pub action: Action,
    /// Where.
    pub scope: Scope,
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, names) = match text.split_once('=') {
            Some((name, names)) => (name, Some(names)),
            None => (text, None),
        };
        let action = Action::ALL.into_iter().find(|a| a.name() == name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            format!("unknown permission {name:?} (known: {})", known.join(", "))
        })?;
        let scope = match names {
            None => Scope::All,
            Some(names) => {
                let names: BTreeSet<String> =
                    names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
                if names.is_empty() {
                    return Err(format!(
                        "{text:?} names no {}: write {name}=NAME[,NAME...], or {name} alone for all",
                        action.scope_kind()
                    ));
                }
                Scope::Only(names)
            }
        };
        Ok(Permission { action, scope })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::All => write!(f, "{}", self.action),
            Scope::Only(names) => {
                write!(f, "{}=", self.action)?;
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// A client's administrative permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// `--admin`: every action everywhere.
    all: bool,
    granted: BTreeMap<Action, Scope>,
}

/// An action the client may not take there: names the missing permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{missing}")]
pub struct Missing {
    /// The permission that would allow it.
    pub missing: Permission,
}

impl Permissions {
    /// Every action everywhere (`--admin`).
    pub fn admin() -> Self {
        Permissions { all: true, granted: BTreeMap::new() }
    }

    /// The union of `permissions` (a scope of all wins over names; names add up).
    pub fn of(permissions: impl IntoIterator<Item = Permission>) -> Self {
        let mut granted: BTreeMap<Action, Scope> = BTreeMap::new();
        for Permission { action, scope } in permissions {
            let merged = match (granted.remove(&action), scope) {
                (None, scope) => scope,
                (Some(Scope::All), _) | (_, Scope::All) => Scope::All,
                (Some(Scope::Only(mut a)), Scope::Only(b)) => {
                    a.extend(b);
                    Scope::Only(a)
                }
            };
            granted.insert(action, merged);
        }
        Permissions { all: false, granted }
    }

    /// Whether this is `--admin`.
    pub fn is_admin(&self) -> bool {
        self.all
    }

    /// Whether it holds any administrative permission at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.granted.is_empty()
    }

    /// Where `action` is permitted, if anywhere.
    pub fn scope(&self, action: Action) -> Option<&Scope> {
        if self.all {
            return Some(&Scope::All);
        }
        self.granted.get(&action)
    }

    /// Whether `action` may be taken on `name` (a key set or partner); else the permission
    /// that is missing.
    pub fn check(&self, action: Action, name: &str) -> Result<(), Missing> {
        if self.scope(action).is_some_and(|scope| scope.covers(name)) {
            return Ok(());
        }
        Err(Missing { missing: Permission { action, scope: Scope::Only(BTreeSet::from([name.to_owned()])) } })
    }

    /// Whether `action` is permitted somewhere; else the permission that is missing.
    pub fn check_any(&self, action: Action) -> Result<&Scope, Missing> {
        self.scope(action).ok_or(Missing { missing: Permission { action, scope: Scope::All } })
    }

    /// The granted permissions, as written (none for `--admin`, which holds all).
    pub fn granted(&self) -> Vec<Permission> {
        self.granted.iter().map(|(action, scope)| Permission { action: *action, scope: scope.clone() }).collect()
    }

    /// The granted permissions as stored: a JSON array of their written forms.
    pub fn to_json(&self) -> String {
        let written: Vec<String> = self.granted().iter().map(ToString::to_string).collect();
        serde_json::to_string(&written).unwrap_or_else(|_| "[]".to_owned())
    }

    /// Parses the stored form (see [`Permissions::to_json`]); `admin` grants everything.
    pub fn from_stored(json: &str, admin: bool) -> Result<Self, String> {
        if admin {
            return Ok(Permissions::admin());
        }
        let written: Vec<String> = serde_json::from_str(json).map_err(|why| format!("not a JSON list: {why}"))?;
        let parsed: Result<Vec<Permission>, String> = written.iter().map(|w| w.parse()).collect();
        Ok(Permissions::of(parsed?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(texts: &[&str]) -> Permissions {
        Permissions::of(texts.iter().map(|t| t.parse::<Permission>().unwrap()))
    }

    #[test]
    fn a_scoped_permission_covers_only_its_key_sets() {
        let p = parse(&["keys:rotate=payments,orders", "keys:read"]);
        assert!(p.check(Action::KeysRotate, "payments").is_ok());
        assert!(p.check(Action::KeysRotate, "orders").is_ok());
        let missing = p.check(Action::KeysRotate, "billing").unwrap_err();
        assert_eq!(missing.to_string(), "keys:rotate=billing");
        assert!(p.check(Action::KeysRead, "billing").is_ok());
        assert_eq!(p.check(Action::KeysRevoke, "payments").unwrap_err().to_string(), "keys:revoke=payments");
        assert_eq!(p.check_any(Action::PartnersRead).unwrap_err().to_string(), "partners:read");
    }

    #[test]
    fn admin_holds_every_action_everywhere() {
        let p = Permissions::admin();
        for action in Action::ALL {
            assert!(p.check(action, "anything").is_ok());
        }
        assert_eq!(Permissions::from_stored("[]", true).unwrap(), p);
    }

    #[test]
    fn grants_add_up_and_all_wins() {
        let p = parse(&["keys:read=a", "keys:read=b", "partners:read=x", "partners:read"]);
        assert_eq!(p.scope(Action::KeysRead), Some(&Scope::Only(BTreeSet::from(["a".into(), "b".into()]))));
        assert_eq!(p.scope(Action::PartnersRead), Some(&Scope::All));
    }

    #[test]
    fn the_stored_form_reads_back() {
        let p = parse(&["keys:revoke=payments", "partners:read"]);
        assert_eq!(Permissions::from_stored(&p.to_json(), false).unwrap(), p);
        assert_eq!(p.to_json(), r#"["keys:revoke=payments","partners:read"]"#);
    }

    #[test]
    fn unknown_or_empty_permissions_are_refused_naming_the_known_ones() {
        let err = "keys:destroy".parse::<Permission>().unwrap_err();
        assert!(err.contains("keys:read") && err.contains("partners:read"), "{err}");
        assert!("keys:rotate=".parse::<Permission>().unwrap_err().contains("names no key set"));
    }
}
