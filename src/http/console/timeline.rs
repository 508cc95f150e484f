//! A key set's timeline as SVG, drawn from the same [`SetSchedule`] `keys schedule --json`
//! prints: per key, bands for the time it is published before signing, signs, and stays
//! published after; the now-line; the planned hand-over; a gate holding it; revoked keys.

use maud::{html, Markup};

use crate::keys::gate::GateState;
use crate::keys::timeline::{Moment, Timeline};
use crate::keys::KeyState;
use crate::ops::SetSchedule;

/// Where the plot starts (the kid labels are left of it), its width, a row's height.
const PLOT_LEFT: f64 = 150.0;
const PLOT_WIDTH: f64 = 780.0;
const ROW: f64 = 24.0;
const TOP: f64 = 20.0;

/// What part of a key's life a band is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BandKind {
    /// Published, not yet signing.
    Published,
    /// Signing.
    Signing,
    /// Published after it stopped signing.
    Retained,
}

impl BandKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            BandKind::Published => "published",
            BandKind::Signing => "signing",
            BandKind::Retained => "retained",
        }
    }
}

/// One band: from a moment until another (`None`: no end is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Band {
    pub(super) kind: BandKind,
    pub(super) from: Moment,
    pub(super) until: Option<Moment>,
}

/// A key's bands, from its timeline.
pub(super) fn bands(t: &Timeline) -> Vec<Band> {
    let mut bands = Vec::new();
    let end_of_publication = t.published_until;
    if let Some(from) = t.published_from {
        let until = t.signing_from.or(end_of_publication);
        if until.is_none_or(|u| u.at > from.at) {
            bands.push(Band { kind: BandKind::Published, from, until });
        }
    }
    if let Some(from) = t.signing_from {
        bands.push(Band { kind: BandKind::Signing, from, until: t.signing_until.or(end_of_publication) });
    }
    if let (Some(from), Some(until)) = (t.signing_until, end_of_publication) {
        if until.at > from.at {
            bands.push(Band { kind: BandKind::Retained, from, until: Some(until) });
        }
    }
    bands
}

/// The last second of year 9999: a gate that holds with no deadline puts the moments it
/// holds at the end of time, past it.
const END_OF_DATES: i64 = 253_402_300_799;

/// Unix seconds as the console shows them.
pub(super) fn time(at: i64) -> String {
    if at > END_OF_DATES {
        return "when the gate releases".to_owned();
    }
    chrono::DateTime::from_timestamp(at, 0)
        .map_or_else(|| at.to_string(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

/// A moment as the console shows it: `~` before a planned one.
pub(super) fn moment(m: Option<Moment>) -> String {
    match m {
        Some(Moment { at, planned: true }) => format!("~{}", time(at)),
        Some(Moment { at, planned: false }) => time(at),
        None => "-".to_owned(),
    }
}

/// The span the plot shows: every known moment of `keys` and `now`, with a margin.
fn span(keys: &[Timeline], now: i64) -> (i64, i64) {
    let moments = keys.iter().flat_map(|t| [t.published_from, t.published_until, t.signing_from, t.signing_until]);
    let ats: Vec<i64> = moments.flatten().map(|m| m.at).filter(|at| *at <= END_OF_DATES).chain([now]).collect();
    let (min, max) = (ats.iter().copied().min().unwrap_or(now), ats.iter().copied().max().unwrap_or(now));
    let margin = ((max - min) / 20).max(60);
    (min - margin, max + margin)
}

/// The timeline of `keys`, of `set`.
pub(super) fn svg(set: &SetSchedule, keys: &[Timeline], now: i64) -> Markup {
    let (start, end) = span(keys, now);
    let x = |at: i64| PLOT_LEFT + PLOT_WIDTH * (at.clamp(start, end) - start) as f64 / (end - start) as f64;
    let height = TOP + ROW * keys.len() as f64 + 24.0;
    let handover = keys.iter().find(|t| t.state == KeyState::Current).and_then(|t| t.signing_until);
    let held = set.gate.as_ref().filter(|g| g.holds(now));
    let label = format!("Timeline of key set {}", set.name);
    html! {
        svg class="timeline" role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg"
            viewBox=(format!("0 0 {} {height}", PLOT_LEFT + PLOT_WIDTH + 20.0)) data-key-set=(set.name) {
            title { (label) }
            text class="axis" x=(PLOT_LEFT) y="12" { (time(start)) }
            text class="axis end" x=(PLOT_LEFT + PLOT_WIDTH) y="12" { (time(end)) }
            @for (row, t) in keys.iter().enumerate() {
                @let y = TOP + ROW * row as f64;
                g class={ "key " (t.state.to_string()) } data-kid=(t.kid) data-state=(t.state.to_string()) {
                    text class="kid" x="4" y=(y + 15.0) { (short(&t.kid)) }
                    @for band in bands(t) {
                        @let (x0, x1) = (x(band.from.at), x(band.until.map_or(end, |u| u.at)));
                        rect class={ "band " (band.kind.name()) @if band.from.planned { " planned" } }
                            data-band=(band.kind.name()) data-from=(band.from.at)
                            data-until=(band.until.map(|u| u.at.to_string()).unwrap_or_default())
                            x=(x0) y=(y + 4.0) width=((x1 - x0).max(1.0)) height=(ROW - 8.0) {
                            title { (t.kid) ": " (band.kind.name()) " from " (moment(Some(band.from))) " until " (moment(band.until)) }
                        }
                    }
                    @if t.state == KeyState::Revoked {
                        @let at = t.published_until.map_or(now, |m| m.at);
                        text class="revoked-mark" x=(x(at) + 3.0) y=(y + 16.0) data-revoked-at=(at) {
                            "✕ revoked " title { (t.kid) " revoked at " (time(at)) }
                        }
                    }
                }
            }
            @if let Some(Moment { at, planned: true }) = handover.filter(|m| m.at <= END_OF_DATES) {
                line class="handover" data-handover=(at) x1=(x(at)) x2=(x(at)) y1=(TOP - 4.0) y2=(height - 20.0) {
                    title { "planned hand-over at " (time(at)) }
                }
            }
            @if let Some(gate) = held {
                text class="gate-held" x=(x(now) + 4.0) y=(height - 6.0) data-gate=(gate_name(gate)) {
                    "gate " (gate_name(gate)) ": hand-over waits" title { (gate_text(gate)) }
                }
            }
            line class="now" data-now=(now) x1=(x(now)) x2=(x(now)) y1=(TOP - 4.0) y2=(height - 20.0) {
                title { "now: " (time(now)) }
            }
        }
    }
}

/// A kid short enough for the label column (the table below has it whole).
fn short(kid: &str) -> String {
    match kid.char_indices().nth(16) {
        Some((cut, _)) => format!("{}…", &kid[..cut]),
        None => kid.to_owned(),
    }
}

/// The gate's state as a word.
pub(super) fn gate_name(gate: &GateState) -> &'static str {
    match gate {
        GateState::Released { .. } => "released",
        GateState::Waiting { .. } => "waiting",
        GateState::Held { .. } => "held",
        GateState::ProceededUnconfirmed { .. } => "proceeded-unconfirmed",
    }
}

/// The gate's state in a sentence.
pub(super) fn gate_text(gate: &GateState) -> String {
    match gate {
        GateState::Released { kid, at } => format!("gate released: {kid} signs from {}", time(*at)),
        GateState::Waiting { kid, missing, deadline, .. } => {
            format!("gate waiting until {} for {} to fetch {kid}", time(*deadline), missing.join(", "))
        }
        GateState::Held { kid, missing, since } => {
            format!("gate HELD since {}: {} never fetched {kid}", time(*since), missing.join(", "))
        }
        GateState::ProceededUnconfirmed { kid, missing, at } => {
            format!(
                "proceeded unconfirmed at {}: {kid} signs although {} never fetched it",
                time(*at),
                missing.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;

    fn at(at: i64, planned: bool) -> Option<Moment> {
        Some(Moment { at, planned })
    }

    fn line(state: KeyState, moments: [Option<Moment>; 4]) -> Timeline {
        let [published_from, signing_from, signing_until, published_until] = moments;
        Timeline {
            kid: "k".to_owned(),
            key_set: "s".to_owned(),
            algorithm: Algorithm::Es256,
            state,
            published_from,
            published_until,
            signing_from,
            signing_until,
        }
    }

    #[test]
    fn a_current_key_has_published_signing_and_planned_retained_bands() {
        let t = line(KeyState::Current, [at(0, false), at(10, false), at(20, true), at(30, true)]);
        let kinds: Vec<(BandKind, i64, Option<i64>)> =
            bands(&t).iter().map(|b| (b.kind, b.from.at, b.until.map(|u| u.at))).collect();
        assert_eq!(
            kinds,
            [(BandKind::Published, 0, Some(10)), (BandKind::Signing, 10, Some(20)), (BandKind::Retained, 20, Some(30))]
        );
    }

    #[test]
    fn a_key_revoked_before_it_signed_has_only_its_published_band() {
        let t = line(KeyState::Revoked, [at(0, false), None, None, at(5, false)]);
        let kinds: Vec<BandKind> = bands(&t).iter().map(|b| b.kind).collect();
        assert_eq!(kinds, [BandKind::Published]);
    }
}
