//! A run as a Mermaid sequence diagram in the founding document's style:
//! `Emitter -> Bus: EVENT`, `Bus -> Subscriber: EVENT`; faults, crashes and
//! restarts as notes over the service (or the bus) they hit. This file only
//! picks the trace entries and maps them to the library's diagram entries;
//! the drawing is `purchase_saga::runtime::mermaid`.

use purchase_saga::domain::Service;
use purchase_saga::runtime::mermaid::{self, DiagramEntry, Lane, Step};

use crate::faults::FaultKind;
use crate::world::{EntryKind, TraceEntry};

/// Mermaid's default `maxTextSize`: a diagram longer than this many
/// characters is not drawn ("Maximum text size in diagram exceeded"). A
/// whole heavy run is above it; one order's saga is well below
/// (`saga-sim replay --mermaid` draws one file per order).
pub const MAX_TEXT_SIZE: usize = 50_000;

/// Whether `text` names `order` as a whole word (`order-1`, not `order-10`).
fn mentions(text: &str, order: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .any(|word| word == order)
}

/// Whether `e` belongs in a diagram of `order` alone: its messages, and the
/// crashes, partitions, restarts and heal that shape every saga.
fn concerns(e: &TraceEntry, order: &str) -> bool {
    match &e.kind {
        EntryKind::Place { order: o }
        | EntryKind::Publish { order: o, .. }
        | EntryKind::Delivery { order: o, .. } => o == order,
        EntryKind::Fault { kind, .. } => {
            matches!(
                kind,
                FaultKind::Crash | FaultKind::CrashMidTransaction | FaultKind::Partition
            ) || mentions(&e.text, order)
        }
        EntryKind::Driver { .. } => e.text.starts_with("==") || mentions(&e.text, order),
    }
}

/// The diagram of the whole run, or of one order's saga.
pub fn render_order(entries: &[TraceEntry], order: Option<&str>) -> String {
    let picked: Vec<TraceEntry> = entries
        .iter()
        .filter(|e| order.is_none_or(|o| concerns(e, o)))
        .cloned()
        .collect();
    render(&picked)
}

/// The library's diagram entry of one trace entry.
fn diagram_entry(e: &TraceEntry) -> DiagramEntry {
    let message = |from: Lane, to: Lane, what: &str, order: &str, note: Option<&String>| Step::Message {
        from,
        to,
        what: what.to_string(),
        order: order.to_string(),
        note: note.cloned(),
    };
    let step = match &e.kind {
        EntryKind::Place { order } => message(
            Lane::Client,
            Lane::Service(Service::Order),
            "create-order request",
            order,
            None,
        ),
        EntryKind::Publish {
            from,
            type_name,
            order,
        } => message(Lane::Service(*from), Lane::Bus, type_name, order, None),
        EntryKind::Delivery {
            to,
            type_name,
            order,
            note,
            ..
        } => message(Lane::Bus, Lane::Service(*to), type_name, order, note.as_ref()),
        EntryKind::Fault { at, .. } | EntryKind::Driver { at } => Step::Note {
            over: at.map_or(Lane::Bus, Lane::Service),
            text: e.text.clone(),
        },
    };
    DiagramEntry { at_ms: e.at_ms, step }
}

/// The diagram of `entries`, drawn by the library's renderer
/// (`purchase_saga::runtime::mermaid`, shared with the HTTP API).
pub fn render(entries: &[TraceEntry]) -> String {
    let drawn: Vec<DiagramEntry> = entries.iter().map(diagram_entry).collect();
    mermaid::render(&drawn)
}
