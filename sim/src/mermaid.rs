//! A run as a Mermaid sequence diagram in the founding document's style:
//! `Emitter -> Bus: EVENT`, `Bus -> Subscriber: EVENT`; faults, crashes and
//! restarts as notes over the service (or the bus) they hit.

use std::fmt::Write;

use purchase_saga::domain::Service;

use crate::faults::FaultKind;
use crate::world::{EntryKind, TraceEntry};

fn escape(text: &str) -> String {
    text.replace(';', ",").replace('#', "no.").replace(['{', '}'], "")
}

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

pub fn render(entries: &[TraceEntry]) -> String {
    let mut s = String::from("sequenceDiagram\n    participant Client\n");
    for service in Service::ALL {
        let _ = writeln!(s, "    participant {}", service.name());
    }
    s.push_str("    participant Bus\n");
    for e in entries {
        let line = match &e.kind {
            EntryKind::Place { order } => format!("Client->>Order: create-order request ({order})"),
            EntryKind::Publish {
                from,
                type_name,
                order,
            } => format!("{}->>Bus: {type_name} ({order})", from.name()),
            EntryKind::Delivery {
                to,
                type_name,
                order,
                note,
                ..
            } => match note {
                None => format!("Bus->>{}: {type_name} ({order})", to.name()),
                Some(n) => format!("Bus-->>{}: {type_name} ({order}) [{n}]", to.name()),
            },
            EntryKind::Fault { at, .. } | EntryKind::Driver { at } => {
                let over = at.map_or("Bus", |s| s.name());
                format!("Note over {over}: {} ms {}", e.at_ms, escape(&e.text))
            }
        };
        let _ = writeln!(s, "    {line}");
    }
    s
}
