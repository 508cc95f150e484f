//! The audit trail for admin clients: `GET /v1/events`, oldest first, paged.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::auth::Admin;
use super::{no_store_json, InternalState};
use crate::audit::{Event, EventFilter};
use crate::http::problem::{ApiError, Problem};
use crate::policy::permission::Action;
use crate::store::events::Cursor;

/// Events a page holds at most (and by default).
const MAX_PAGE: i64 = 500;

/// A page of events.
#[derive(Serialize, utoipa::ToSchema)]
struct EventPage {
    /// Oldest first: `at` (Unix seconds), `actor` (`kind`: `cli` with `user`, `host`,
    /// `pid`; `admin` with `client`, `cert_sha256`?, `remote`?, `request_id`?; `scheduler`
    /// or `server` with `replica`), `action`, `object`, `before`?, `after`?, `reason`?,
    /// `writer`, `seq`, `hash`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "admin", security(("bearer" = [])),
    params(("since" = Option<i64>, Query, description = "At or after (Unix seconds)", example = 1796677185),
        ("until" = Option<i64>, Query, description = "Before (Unix seconds)", example = 1796763585),
        ("actor" = Option<String>, Query, description = "Actor name: an admin client, `user@host`, `scheduler@REPLICA`", example = "ops"),
        ("object" = Option<String>, Query, description = "Object, e.g. `key:KID`, or a kind ending in `:` (`client:`)", example = "client:"),
        ("action" = Option<String>, Query, description = "Action, e.g. `key.revoked`, or a prefix ending in `.` (`key.`)", example = "key.revoked"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page", example = "1796677185.3.web-1/1/0c7d5e11"),
        ("limit" = Option<i64>, Query, description = "Events per page, 1 to 500 (default 500)", example = 100)),
    responses((status = 200, description = "Admin events, oldest first", body = EventPage),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem, description = "The client lacks `events:read`"), (status = 429, body = Problem)))]
pub(super) async fn events(
    Admin(caller): Admin,
    req: HttpRequest,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    caller.permit_everywhere(Action::EventsRead)?;
    let (filter, cursor, limit) = parse_query(req.query_string())?;
    let events = state.shared.store().events(&filter, cursor.as_ref(), limit).await?;
    let next = (events.len() as i64 == limit).then(|| events.last().map(|e| Cursor::after(e).token())).flatten();
    Ok(no_store_json(&EventPage { events, next }))
}

fn invalid(parameter: &str, detail: String) -> ApiError {
    ApiError::InvalidQuery { parameter: parameter.to_owned(), detail }
}

/// The filter, page start and page size of a query string.
fn parse_query(query: &str) -> Result<(EventFilter, Option<Cursor>, i64), ApiError> {
    let mut filter = EventFilter::default();
    let (mut cursor, mut limit) = (None, MAX_PAGE);
    for (name, value) in url_pairs(query) {
        let number =
            |value: &str| value.parse::<i64>().map_err(|_| invalid(&name, format!("{name} must be an integer")));
        match name.as_str() {
            "since" => filter.since = Some(number(&value)?),
            "until" => filter.until = Some(number(&value)?),
            "actor" => filter.actor = Some(value),
            "object" => filter.object = Some(value),
            "action" => filter.action = Some(value),
            "after" => {
                cursor = Some(Cursor::parse(&value).ok_or_else(|| {
                    invalid("after", "after must be the `next` of a previous page".to_owned())
                })?)
            }
            "limit" => {
                limit = number(&value)?;
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err(invalid("limit", format!("limit must be from 1 to {MAX_PAGE}")));
                }
            }
            _ => {
                return Err(invalid(
                    &name,
                    format!(
                        "unknown query parameter {name:?}: this resource takes since, until, actor, object, action, after and limit"
                    ),
                ))
            }
        }
    }
    Ok((filter, cursor, limit))
}

/// The decoded name=value pairs of a query string.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// Percent-decoding (and `+` as a space), as forms send it.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
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
    fn a_query_decodes_into_its_filter_and_refuses_what_it_does_not_know() {
        let (filter, cursor, limit) = parse_query("actor=ops%40host&action=key.&since=5&limit=2").unwrap();
        assert_eq!(filter.actor.as_deref(), Some("ops@host"));
        assert_eq!(filter.action.as_deref(), Some("key."));
        assert_eq!((filter.since, cursor, limit), (Some(5), None, 2));
        assert!(parse_query("limit=0").is_err());
        assert!(parse_query("sub=x").is_err());
    }
}
