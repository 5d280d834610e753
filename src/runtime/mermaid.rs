//! Sagas as Mermaid sequence diagrams in the founding document's style:
//! `Client ->> Order: create-order request`, `Emitter ->> Bus: EVENT`,
//! `Bus ->> Subscriber: EVENT`, with notes over a service or the bus.
//!
//! Pure: it draws a list of [`DiagramEntry`]s and knows nothing of where
//! they came from. The simulator turns a replayed run's trace into entries
//! (`saga-sim replay --mermaid`); the HTTP API turns a live order's outbox
//! and inbox rows into entries (`GET /orders/{id}/diagram`), so an operator
//! sees a production saga the way the simulator shows a seed.

use std::fmt::Write;

use crate::domain::Service;

/// A participant of the diagram, in the order they are declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Whoever places orders (the API's caller, the simulator's client).
    Client,
    Service(Service),
    Bus,
}

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Lane::Client => "Client",
            Lane::Service(s) => s.name(),
            Lane::Bus => "Bus",
        }
    }
}

/// What one line of the diagram shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An arrow `from ->> to: {what} ({order})`; with a note, a dashed
    /// arrow with ` [{note}]` appended (a redelivery, a retry, something
    /// not done yet).
    Message {
        from: Lane,
        to: Lane,
        what: String,
        order: String,
        note: Option<String>,
    },
    /// `Note over {over}: {at_ms} ms {text}` (a fault, a restart, a phase).
    Note { over: Lane, text: String },
}

/// One line of the diagram at `at_ms` (milliseconds since the start of
/// what is drawn: the simulated run, or the order's creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagramEntry {
    pub at_ms: i64,
    pub step: Step,
}

/// Characters a Mermaid note cannot hold as text (`;` ends a statement,
/// `#` starts an entity, braces open a block) replaced or dropped.
fn escape(text: &str) -> String {
    text.replace(';', ",").replace('#', "no.").replace(['{', '}'], "")
}

/// The diagram of `entries`, in the order given: the participants
/// (Client, the six services, Bus), then one line per entry.
pub fn render(entries: &[DiagramEntry]) -> String {
    let mut s = String::from("sequenceDiagram\n    participant Client\n");
    for service in Service::ALL {
        let _ = writeln!(s, "    participant {}", service.name());
    }
    s.push_str("    participant Bus\n");
    for e in entries {
        let line = match &e.step {
            Step::Message {
                from,
                to,
                what,
                order,
                note: None,
            } => format!("{}->>{}: {what} ({order})", from.name(), to.name()),
            Step::Message {
                from,
                to,
                what,
                order,
                note: Some(n),
            } => format!("{}-->>{}: {what} ({order}) [{n}]", from.name(), to.name()),
            Step::Note { over, text } => {
                format!("Note over {}: {} ms {}", over.name(), e.at_ms, escape(text))
            }
        };
        let _ = writeln!(s, "    {line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrows_notes_and_participants_in_the_founding_style() {
        let message = |from, to, note: Option<&str>| DiagramEntry {
            at_ms: 5,
            step: Step::Message {
                from,
                to,
                what: "ORDER_CREATED".into(),
                order: "o-1".into(),
                note: note.map(str::to_string),
            },
        };
        let drawn = render(&[
            message(Lane::Service(Service::Order), Lane::Bus, None),
            message(Lane::Bus, Lane::Service(Service::User), Some("duplicate")),
            DiagramEntry {
                at_ms: 12,
                step: Step::Note {
                    over: Lane::Bus,
                    text: "crash; restart #2 {x}".into(),
                },
            },
        ]);
        let expected = "sequenceDiagram\n    participant Client\n    participant Order\n    participant User\n    \
             participant Inventory\n    participant Item\n    participant Payment\n    participant Notification\n    \
             participant Bus\n    Order->>Bus: ORDER_CREATED (o-1)\n    Bus-->>User: ORDER_CREATED (o-1) [duplicate]\n    \
             Note over Bus: 12 ms crash, restart no.2 x\n";
        assert_eq!(drawn, expected);
    }
}
