//! The client host: places the scenario's orders, and survives its own
//! crashes (`client-crash`) the way a real client does.
//!
//! A real client that crashed cannot tell whether the request it had sent
//! was committed: the crash may have come after the API's transaction and
//! before the answer. Restarted, it re-sends, under the same order id (the
//! idempotency key), every request it cannot prove was answered. The
//! client's memory of that is its durable [`RequestLog`], which lives
//! outside the host (like the store) and survives the crash; the host's
//! software ([`software`]) resumes from it on every (re)start.
//!
//! [`RequestLog::check`] holds the outcome to "one request, one order":
//! no request has more than one order in the store, no order exists that
//! no request asked for, and `place_order` answered "created" at most once
//! per request.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::{OrderId, Service};
use purchase_saga::runtime::commands::{place_order, PlaceError, Placed};
use purchase_saga::runtime::RuntimeConfig;
use purchase_saga::workload::OrderSpec;

use crate::faults::{ClientCrashPoint, FaultKind};
use crate::finding::{check, Finding};
use crate::host_env::env_for;
use crate::world::{EntryKind, World};

/// Attempts of the client to place one order through store faults.
const PLACE_ATTEMPTS_MAX: u32 = 50;

/// What the client knows about one request.
#[derive(Debug, Clone, Default)]
struct Request {
    /// The order ids it was sent under, in order (one, unless a planted bug
    /// changes the id of a re-send).
    sent_as: Vec<OrderId>,
    /// The API answered it (placed, already placed, or rejected).
    answered: bool,
    /// Times the API answered `Created`.
    created: u32,
}

#[derive(Debug, Default)]
struct LogState {
    /// By the request's index in the scenario.
    requests: BTreeMap<usize, Request>,
    /// The armed crash point: downtime once it fires.
    armed: Option<u64>,
    /// A fired crash point waiting for the driver: downtime.
    crash_request: Option<u64>,
}

/// See the module docs. Shared by the client host (each incarnation) and
/// the driver (crash points, the final check).
#[derive(Debug, Default)]
pub struct RequestLog(Mutex<LogState>);

impl RequestLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.0.lock().expect("request log mutex")
    }

    /// Arms [`ClientCrashPoint::AfterPlace`] with its downtime.
    pub fn arm_after_place(&self, down_ms: u64) {
        self.lock().armed = Some(down_ms);
    }

    /// Disarms the crash point (the faults healed).
    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    /// A crash point that fired since the last call: its downtime.
    pub fn take_crash_request(&self) -> Option<u64> {
        self.lock().crash_request.take()
    }

    /// If armed, fires: records the crash request. The caller then waits
    /// for the driver to crash it.
    pub fn fire(&self) -> bool {
        let mut state = self.lock();
        match state.armed.take() {
            Some(down_ms) => {
                state.crash_request = Some(down_ms);
                true
            }
            None => false,
        }
    }

    pub fn answered(&self, n: usize) -> bool {
        self.lock().requests.get(&n).is_some_and(|r| r.answered)
    }

    /// Records that request `n` is being sent, written before it goes
    /// out; returns the order id to send it under and whether it is a
    /// re-send after a restart.
    pub fn send(&self, n: usize, spec: &OrderSpec) -> (OrderId, bool) {
        let mut state = self.lock();
        let request = state.requests.entry(n).or_default();
        let resend = !request.sent_as.is_empty();
        // Planted bug (mutants feature): a re-send gets a fresh order id.
        let id = if resend && purchase_saga::mutant!(ClientRetryNewId) {
            OrderId::parse(format!("{}-r{}", spec.id, request.sent_as.len()))
                .expect("a suffixed order id is valid")
        } else {
            spec.id.clone()
        };
        if request.sent_as.last() != Some(&id) {
            request.sent_as.push(id.clone());
        }
        (id, resend)
    }

    pub fn record_answer(&self, n: usize, created: bool) {
        let mut state = self.lock();
        let request = state.requests.get_mut(&n).expect("an answered request was sent");
        request.answered = true;
        request.created += u32::from(created);
    }

    /// "One request, one order" over the committed `snapshot` (see the
    /// module docs).
    pub fn check(&self, snapshot: &Snapshot) -> Vec<Finding> {
        let state = self.lock();
        let mut owner: BTreeMap<&OrderId, usize> = BTreeMap::new();
        let mut found = Vec::new();
        for (n, request) in &state.requests {
            for id in &request.sent_as {
                owner.insert(id, *n);
            }
            let placed: Vec<String> = request
                .sent_as
                .iter()
                .filter(|id| snapshot.orders.contains_key(*id))
                .map(ToString::to_string)
                .collect();
            if placed.len() > 1 || request.created > 1 {
                found.push(Finding::new(
                    check::ONE_ORDER_PER_REQUEST,
                    format!("request #{n}"),
                    format!(
                        "one client request placed orders {placed:?}, answered created {} times",
                        request.created
                    ),
                ));
            }
        }
        for id in snapshot.orders.keys() {
            if !owner.contains_key(id) {
                found.push(Finding::new(
                    check::ONE_ORDER_PER_REQUEST,
                    format!("order {id}"),
                    "an order no client request asked for",
                ));
            }
        }
        found
    }
}

/// The turmoil host that places the orders.
pub const CLIENT_HOST: &str = "client";

/// The trace line of the client's request for `o`.
pub fn request_line(o: &OrderSpec) -> String {
    format!(
        "Client -> Order: create-order request {{order={} user={} item={} qty={} method={}}}",
        o.id, o.user, o.item, o.quantity, o.method
    )
}

/// The command that places `o`.
pub fn place_command(o: &OrderSpec) -> PlaceOrder {
    PlaceOrder {
        order_id: o.id.clone(),
        user_id: o.user.clone(),
        item_id: o.item.clone(),
        quantity: o.quantity,
        payment_method: o.method.clone(),
    }
}

/// The client host's software: places each order not yet answered at its
/// arrival time (from the start of the run), re-sending under the same id
/// what an earlier incarnation sent without learning the answer.
pub async fn software(
    world: Arc<World>,
    log: Arc<RequestLog>,
    orders: Vec<OrderSpec>,
    config: RuntimeConfig,
) -> turmoil::Result {
    let env = env_for(&world, None, CLIENT_HOST, config, None);
    // The run's start on this host's timer: now, minus the time the run
    // has been going (zero for the first incarnation).
    let since_start = Duration::from_millis(u64::try_from(world.clock.elapsed_ms()).unwrap_or(0));
    let start = tokio::time::Instant::now() - since_start;
    for (n, o) in orders.iter().enumerate() {
        if log.answered(n) {
            continue;
        }
        tokio::time::sleep_until(start + o.at.as_std()).await;
        let (order_id, resend) = log.send(n, o);
        let line = request_line(o);
        world.log(
            EntryKind::Place {
                order: order_id.to_string(),
            },
            if resend {
                format!("{line} (re-sent after a restart, as {order_id})")
            } else {
                line
            },
        );
        let mut cmd = place_command(o);
        cmd.order_id = order_id;
        for attempt in 1..=PLACE_ATTEMPTS_MAX {
            match place_order(&env, &cmd).await {
                Ok(placed) => {
                    if log.fire() {
                        world.fault(
                            FaultKind::ClientCrash,
                            None,
                            format!(
                                "client crashed after {} was placed, before it learned so",
                                cmd.order_id
                            ),
                        );
                        // The driver crashes the host before the answer is kept.
                        std::future::pending::<()>().await;
                    }
                    log.record_answer(n, matches!(placed, Placed::Created));
                    break;
                }
                Err(PlaceError::Rejected(r)) => {
                    world.log(
                        EntryKind::Driver {
                            at: Some(Service::Order),
                        },
                        format!("Order -> Client: rejected {}: {r}", cmd.order_id),
                    );
                    log.record_answer(n, false);
                    break;
                }
                Err(PlaceError::Store(e)) => {
                    assert!(
                        attempt < PLACE_ATTEMPTS_MAX,
                        "order {} not placed after {attempt} attempts: {e}",
                        cmd.order_id
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    world.client_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Applies a scheduled client crash at `point`: crashes the host now
/// (`Anywhere`) and returns its downtime, or arms the crash point.
pub fn strike(log: &RequestLog, world: &World, point: ClientCrashPoint, down_ms: u64) -> Option<u64> {
    match point {
        ClientCrashPoint::Anywhere => {
            // Counted only while the client still had requests to place.
            if world.client_done.load(Ordering::SeqCst) {
                world.log(
                    EntryKind::Driver { at: None },
                    "== client crashed, done placing ==".into(),
                );
            } else {
                world.fault(FaultKind::ClientCrash, None, "client crashed".into());
            }
            Some(down_ms)
        }
        ClientCrashPoint::AfterPlace => {
            log.arm_after_place(down_ms);
            None
        }
    }
}
