//! The runtime's [`Observer`] in the simulator: one trace line per delivery
//! and per publish, the safety invariants after every commit, and the
//! coverage counts the runtime alone can show: relays woken by a commit
//! (`wake`) and applied events delivered past the limit
//! (`applied-past-limit`).

use std::sync::Arc;

use purchase_saga::runtime::observer::{Disposition, Observer, RuntimeEvent};
use purchase_saga::runtime::trace::delivery_line;

use crate::faults::FaultKind;
use crate::world::{EntryKind, World};

pub struct SimObserver {
    pub world: Arc<World>,
}

impl Observer for SimObserver {
    fn observe(&self, event: RuntimeEvent<'_>) {
        match &event {
            RuntimeEvent::Handled {
                service,
                consumer,
                event: decoded,
                disposition,
                attempt,
                ..
            } => {
                if let Some(e) = decoded.filter(|_| *attempt > self.world.deliveries_max) {
                    // Past the limit with the event applied: the consumer
                    // must ask the inbox (counted whatever it then did).
                    if self.world.store.inbox_contains(*service, e.event_id) {
                        self.world.count(FaultKind::AppliedPastLimit);
                    }
                }
                let line = delivery_line(&event).expect("a handled delivery has a line");
                let note = match disposition {
                    Disposition::Applied { .. } => None,
                    Disposition::Duplicate => Some("duplicate".to_string()),
                    Disposition::Ignored => Some("no-op".to_string()),
                    Disposition::Retry { .. } => Some("retry".to_string()),
                    Disposition::DeadLettered { .. } => Some("dead-letter".to_string()),
                };
                self.world.log(
                    EntryKind::Delivery {
                        from: decoded.map(|e| e.emitter()),
                        to: *service,
                        type_name: decoded.map_or("?".into(), |e| e.event_type().as_str().to_string()),
                        order: decoded.map_or("?".into(), |e| e.order_id.to_string()),
                        note,
                    },
                    format!("{consumer} #{attempt} | {line}"),
                );
            }
            RuntimeEvent::Published {
                service,
                event: e,
                republish,
            } => {
                let again = if *republish > 0 {
                    format!(" [republish {republish}]")
                } else {
                    String::new()
                };
                self.world.log(
                    EntryKind::Publish {
                        from: *service,
                        type_name: e.event_type().as_str().to_string(),
                        order: e.order_id.to_string(),
                    },
                    format!("{service} -> Bus: {} {}{again}", e.event_type(), e.order_id),
                );
            }
            RuntimeEvent::Committed { .. } => self.world.check_commit(),
            // A relay that a commit woke ran its pass (`relay::run_woken`).
            RuntimeEvent::RelayWoken { .. } => self.world.count(FaultKind::Wake),
            RuntimeEvent::ConflictRetried { .. } | RuntimeEvent::Quarantined { .. } => {}
        }
    }
}
