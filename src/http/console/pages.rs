//! The console's pages, as maud templates over the operations' outputs.

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};

use super::session::Viewer;
use super::timeline::{self, gate_text, moment, time};
use crate::app::snapshot::Shared;
use crate::audit::{Action as AuditAction, Actor, Event, EventFilter};
use crate::config::human_span as span;
use crate::ops::partners::PartnersReport;
use crate::ops::SetSchedule;
use crate::policy::permission::Action;
use crate::store::issuance::MinuteCount;

/// Keys drawn per set, the newest: years of rotation leave hundreds of retired keys, which
/// would bury the live ones (and make the page slow).
const KEYS_SHOWN: usize = 12;

/// Seconds the ledger chart covers.
const DAY: i64 = 86_400;

/// Admin events the health page lists, the newest.
const EVENTS_SHOWN: i64 = 20;

/// How far back the health page looks for replicas' starts.
const REPLICAS_WITHIN: i64 = 30 * DAY;

/// `server.started` events read at most to find each replica's latest start.
const STARTS_READ: i64 = 500;

fn layout(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header {
                    span class="brand" { "keyward console" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Pages" {
                            @if viewer.client.permissions.check_any(Action::KeysRead).is_ok() {
                                a href="/console/keys" { "Key sets" }
                                a href="/console/health" { "Ledger and health" }
                            }
                            @if viewer.client.permissions.check_any(Action::PartnersRead).is_ok() {
                                a href="/console/partners" { "Partners" }
                            }
                        }
                        form class="sign-out" method="post" action="/console/sign-out" {
                            span { "Signed in as " strong { (viewer.client.name) } }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The sign-in form: a token field, or the certificate this connection presented.
pub(super) fn sign_in(csrf: &str, certificate: Option<&str>, refusal: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(refusal) = refusal { p class="refusal" role="alert" { (refusal) } }
            form class="sign-in" method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                @if let Some(client) = certificate {
                    p { "This connection presented the certificate of client " strong { (client) } "." }
                    button type="submit" { "Sign in with this certificate" }
                } @else {
                    label for="token" { "Client token" }
                    input id="token" name="token" type="password" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
            }
            p class="hint" { "A client with keys:read or partners:read may sign in; the session lasts a while and ends when you sign out." }
        },
    )
}

/// A page refused to a signed-in client.
pub(super) fn refused(viewer: &Viewer, why: &str) -> Markup {
    layout("Not permitted", Some(viewer), html! { p class="refusal" role="alert" { (why) } })
}

/// Every key set the viewer may read: its timeline, then a table of exact times.
pub(super) fn keys(viewer: &Viewer, sets: &[SetSchedule], now: i64) -> Markup {
    layout(
        "Key sets",
        Some(viewer),
        html! {
            p { "Now: " time datetime=(now) { (time(now)) } ". Times marked ~ are planned." }
            ul class="legend" aria-label="Legend" {
                li { span class="swatch published" {} "published, not yet signing" }
                li { span class="swatch signing" {} "signing" }
                li { span class="swatch retained" {} "published after signing (retained)" }
                li { span class="swatch planned" {} "planned" }
            }
            @for set in sets {
                section class="key-set" id={ "set-" (set.name) } {
                    h2 { "Key set " (set.name) }
                    p { "Each key signs for " (span(set.rotate_every)) ", is published " (span(set.publish_ahead))
                        " before it signs and " (span(set.published_after_signing)) " after." }
                    @if let Some(gate) = &set.gate {
                        p class={ "gate" @if gate.holds(now) { " holding" } } { (gate_text(gate)) }
                    }
                    @let hidden = set.keys.len().saturating_sub(KEYS_SHOWN);
                    @let shown = set.keys.get(hidden..).unwrap_or_default();
                    (timeline::svg(set, shown, now))
                    @if hidden > 0 {
                        p class="hint" { (hidden) " older keys, retired long ago, are not drawn: " code { "keyward keys schedule" } " lists them." }
                    }
                    table {
                        caption { "Keys of " (set.name) ", oldest first" }
                        thead { tr { th scope="col" { "Kid" } th scope="col" { "State" } th scope="col" { "Algorithm" }
                            th scope="col" { "Published from" } th scope="col" { "Published until" }
                            th scope="col" { "Signing from" } th scope="col" { "Signing until" } } }
                        tbody {
                            @for k in shown {
                                tr class={ "state-" (k.state.to_string()) } {
                                    td { code { (k.kid) } } td { (k.state.to_string()) } td { (k.algorithm.to_string()) }
                                    td { (moment(k.published_from)) } td { (moment(k.published_until)) }
                                    td { (moment(k.signing_from)) } td { (moment(k.signing_until)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "NO"
    }
}

/// Every partner the viewer may read, the gated hand-overs and the unmatched fetchers.
pub(super) fn partners(viewer: &Viewer, report: &PartnersReport, now: i64) -> Markup {
    layout(
        "Partners",
        Some(viewer),
        html! {
            @if report.partners.is_empty() { p { "No partner is configured (or none you may read)." } }
            @if !report.partners.is_empty() {
                table class="partners" {
                    caption { "Partners at " (time(now)) }
                    thead { tr { th scope="col" { "Partner" } th scope="col" { "Last fetch" } th scope="col" { "Fetches in 24 h" }
                        th scope="col" { "Key set" } th scope="col" { "Holds current" } th scope="col" { "Holds next" } th scope="col" { "Gate" } } }
                    tbody {
                        @for p in &report.partners {
                            @let rows = p.key_sets.len().max(1);
                            @for (i, set) in p.key_sets.iter().map(Some).chain(p.key_sets.is_empty().then_some(None)).enumerate() {
                                tr class={ @if p.overdue { "overdue" } } {
                                    @if i == 0 {
                                        th scope="row" rowspan=(rows) { (p.name) }
                                        td rowspan=(rows) {
                                            (p.last_fetch.map_or("never".to_owned(), time))
                                            @if let Some(age) = p.last_fetch_age { br; small { (span(age)) " ago" } }
                                            @if p.overdue { br; strong { "OVERDUE" } }
                                        }
                                        td rowspan=(rows) { (p.fetches_24h) }
                                    }
                                    @if let Some(set) = set {
                                        td { (set.key_set) }
                                        td { (yes_no(set.holds_current)) " " small { (set.current.as_deref().unwrap_or("-")) } }
                                        td { (yes_no(set.holds_next || set.next.is_none())) " " small { (set.next.as_deref().unwrap_or("-")) } }
                                        td { (set.gate.as_ref().map(gate_text).unwrap_or_else(|| "-".to_owned())) }
                                    } @else {
                                        td colspan="4" { "-" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Gated hand-overs" }
            @if report.handovers.is_empty() { p { "None yet." } } @else {
                table { thead { tr { th scope="col" { "Key set" } th scope="col" { "Kid" } th scope="col" { "At" } th scope="col" { "Confirmed" } } }
                    tbody { @for h in &report.handovers { tr { td { (h.key_set) } td { code { (h.kid) } } td { (time(h.at)) }
                        td { @if h.confirmed { "yes" } @else { "NO: " (h.missing.join(", ")) " had not fetched it" } } } } } }
            }
            h2 { "Fetches matching no partner" }
            @if report.unmatched.is_empty() { p { "None." } } @else {
                table { thead { tr { th scope="col" { "User agent" } th scope="col" { "Fetches" } th scope="col" { "Last" } } }
                    tbody { @for u in &report.unmatched { tr { td { code { (u.user_agent) } } td { (u.count) } td { (time(u.last_at)) } } } } }
            }
        },
    )
}

/// What the health page shows.
pub(super) struct Health {
    readiness: Result<(), &'static str>,
    master_key_id: String,
    custody: Vec<(String, &'static str, bool)>,
    per_minute: BTreeMap<String, Vec<(i64, i64)>>,
    /// The audit trail's part, for a viewer holding `events:read` everywhere.
    audit: Option<Audit>,
}

/// What the health page shows from the audit trail (never an event's before/after values,
/// only the version a replica reported starting).
struct Audit {
    /// The newest admin events, newest first.
    events: Vec<Event>,
    /// Each replica's latest start within [`REPLICAS_WITHIN`]: (replica, version, at),
    /// newest first.
    replicas: Vec<(String, String, i64)>,
    /// The replica that served this page.
    this_replica: String,
}

impl Audit {
    async fn gather(shared: &Shared, now: i64) -> anyhow::Result<Audit> {
        let store = shared.store();
        let events = store.latest_events(&EventFilter::default(), EVENTS_SHOWN).await?;
        let starts = EventFilter {
            since: Some(now - REPLICAS_WITHIN),
            action: Some(AuditAction::ServerStarted.as_str().to_owned()),
            ..EventFilter::default()
        };
        let mut replicas: Vec<(String, String, i64)> = Vec::new();
        for event in store.latest_events(&starts, STARTS_READ).await? {
            let replica = match &event.actor {
                Actor::Server { replica } => replica.clone(),
                _ => continue,
            };
            if replicas.iter().any(|(r, _, _)| *r == replica) {
                continue;
            }
            let version = event
                .after
                .as_ref()
                .and_then(|after| after.get("version"))
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned();
            replicas.push((replica, version, event.at));
        }
        Ok(Audit { events, replicas, this_replica: store.trail().writer.to_string() })
    }
}

impl Health {
    /// Readiness, master key and custody from the process; tokens per minute from the
    /// ledger; recent events and replicas' starts from the audit trail when `with_audit`.
    pub(super) async fn gather(shared: &Shared, now: i64, with_audit: bool) -> anyhow::Result<Health> {
        let mut per_minute: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for MinuteCount { profile, minute, tokens } in shared.store().issuance_per_minute(now - DAY).await? {
            per_minute.entry(profile).or_default().push((minute, tokens));
        }
        let available = shared.custody().is_available();
        let custody = shared
            .config()
            .key_sets
            .iter()
            .map(|set| match set.custody {
                crate::keys::custody::CustodyKind::Sealed => (set.name.clone(), "sealed under the master key", true),
                crate::keys::custody::CustodyKind::Pkcs11 => (set.name.clone(), "PKCS#11 token", available),
                crate::keys::custody::CustodyKind::VaultTransit => (set.name.clone(), "Vault Transit", available),
                crate::keys::custody::CustodyKind::AwsKms => (set.name.clone(), "AWS KMS", available),
            })
            .collect();
        let audit = if with_audit { Some(Audit::gather(shared, now).await?) } else { None };
        Ok(Health {
            readiness: shared.readiness(),
            master_key_id: shared.roots().current.id(),
            custody,
            per_minute,
            audit,
        })
    }
}

/// Readiness, custody and the ledger's tokens per minute over 24 h.
pub(super) fn health(viewer: &Viewer, health: &Health, now: i64) -> Markup {
    layout(
        "Ledger and health",
        Some(viewer),
        html! {
            h2 { "Readiness" }
            @match health.readiness {
                Ok(()) => p class="ready" data-ready="true" { "Ready: the database answers, the ledger commits and every key set can sign." },
                Err(reason) => p class="not-ready" data-ready="false" role="alert" { "NOT ready: " (reason) },
            }
            h2 { "Replicas seen" }
            @match &health.audit {
                Some(audit) => {
                    p { "Each replica's latest start in the last 30 days, from the audit trail; this page was served by the one marked, and each replica has its own console." }
                    @if audit.replicas.is_empty() { p { "No start recorded in the last 30 days." } } @else {
                        table class="replicas" {
                            caption { "Replicas by their latest start, newest first" }
                            thead { tr { th scope="col" { "Replica" } th scope="col" { "Version" } th scope="col" { "Started at" } } }
                            tbody { @for (replica, version, at) in &audit.replicas {
                                tr data-replica=(replica) {
                                    td { code { (replica) } @if *replica == audit.this_replica { " (this page)" } }
                                    td { (version) } td { (time(*at)) }
                                }
                            } }
                        }
                    }
                }
                None => p class="needs-events-read" { "Replicas: this page shows the replica that served it. Listing the replicas seen needs the permission " code { "events:read" } "." },
            }
            h2 { "Key custody" }
            p { "Master key id: " code { (health.master_key_id) } }
            table { thead { tr { th scope="col" { "Key set" } th scope="col" { "Custody" } th scope="col" { "Available" } } }
                tbody { @for (set, kind, ok) in &health.custody { tr { td { (set) } td { (kind) } td { (yes_no(*ok)) } } } } }
            h2 { "Tokens per minute, last 24 h (from the ledger)" }
            @if health.per_minute.is_empty() { p { "No token issued in the last 24 h." } }
            @for (profile, minutes) in &health.per_minute {
                (rate_chart(profile, minutes, now))
            }
            h2 { "Recent admin events" }
            @match &health.audit {
                Some(audit) => {
                    @if audit.events.is_empty() { p { "No event recorded." } } @else {
                        table class="events" {
                            caption { "The latest " (audit.events.len()) " admin events, newest first" }
                            thead { tr {
                                th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "Action" }
                                th scope="col" { "Object" } th scope="col" { "Reason" }
                            } }
                            tbody { @for event in &audit.events {
                                tr data-action=(event.action) {
                                    td { (time(event.at)) } td { (event.actor.name()) } td { code { (event.action) } }
                                    td { code { (event.object) } } td { (event.reason.as_deref().unwrap_or("-")) }
                                }
                            } }
                        }
                    }
                }
                None => p class="needs-events-read" { "Showing the recent admin events needs the permission " code { "events:read" } "." },
            }
        },
    )
}

/// One profile's tokens per minute as bars over the last 24 h.
fn rate_chart(profile: &str, minutes: &[(i64, i64)], now: i64) -> Markup {
    let (width, height) = (960.0_f64, 80.0_f64);
    let start = now - DAY;
    let peak = minutes.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let total: i64 = minutes.iter().map(|(_, n)| n).sum();
    let label = format!("Tokens per minute of profile {profile}: {total} in 24 h, at most {peak} in a minute");
    // One point per minute with tokens, dropping to zero around them: a few characters each.
    let mut points = String::new();
    for (minute, n) in minutes {
        let x = width * (minute - start).max(0) as f64 / DAY as f64;
        let y = height - (height - 4.0) * *n as f64 / peak as f64;
        points.push_str(&format!("{x:.1},{height} {x:.1},{y:.1} {:.1},{y:.1} {:.1},{height} ", x + 0.6, x + 0.6));
    }
    html! {
        figure class="rate" data-profile=(profile) data-total=(total) {
            figcaption { strong { (profile) } ": " (total) " tokens in 24 h, at most " (peak) " in a minute" }
            svg role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width} {height}")) {
                title { (label) }
                polyline class="minutes" points=(points) {}
            }
        }
    }
}
