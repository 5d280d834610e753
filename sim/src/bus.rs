//! `SimBus`: the [`Bus`] port as a client of the broker host over turmoil's
//! network, one connection per replica, one request in flight at a time.
//! A timeout or a broken connection is `BusError::Unavailable`; the request
//! may or may not have taken effect (a publish may land twice on retry,
//! exactly as with a real broker).
//!
//! Consumer groups take `RedisBus::receive`'s path: the bus remembers the
//! groups it created; before a receive it creates its service's group
//! unless known (`ensure_group`); a receive answered NOGROUP (the broker
//! restarted empty, `broker-loss`) forgets the group, creates it again and
//! reads once more. The broker creates no group on a read, so there is no
//! shortcut here that production lacks.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{Event, Service};
use purchase_saga::runtime::bus::publish_one_at_a_time;
use purchase_saga::runtime::{Bus, BusError, Delivery, PartialPublish};
use tokio::sync::Mutex;
use turmoil::net::TcpStream;

use crate::broker::{read_frame, write_frame, Request, Response, HOST, PORT};

/// A request not answered within this fails as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Default)]
pub struct SimBus {
    conn: Mutex<Option<TcpStream>>,
    /// Groups known to exist (as `RedisBus::groups`; forgotten on NOGROUP).
    groups: std::sync::Mutex<BTreeSet<Service>>,
}

impl SimBus {
    async fn call(&self, request: &Request) -> Result<Response, BusError> {
        let mut conn = self.conn.lock().await;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if conn.is_none() {
                *conn = Some(TcpStream::connect((HOST, PORT)).await?);
            }
            let socket = conn.as_mut().expect("connected above");
            write_frame(socket, &request.encode()).await?;
            match read_frame(socket).await? {
                Some(frame) => Response::decode(&frame)
                    .ok_or_else(|| std::io::Error::other("malformed response from the broker")),
                None => Err(std::io::Error::other("broker closed the connection")),
            }
        })
        .await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                *conn = None;
                Err(BusError::Unavailable(e.to_string()))
            }
            Err(_) => {
                *conn = None;
                Err(BusError::Unavailable("broker request timed out".into()))
            }
        }
    }
}

impl SimBus {
    fn known_groups(&self) -> std::sync::MutexGuard<'_, BTreeSet<Service>> {
        self.groups.lock().expect("groups mutex")
    }

    /// `RedisBus::ensure_group`: creates `service`'s group unless known.
    async fn ensure_group(&self, service: Service) -> Result<(), BusError> {
        if self.known_groups().contains(&service) {
            return Ok(());
        }
        self.call(&Request::EnsureGroup { service }).await?;
        self.known_groups().insert(service);
        Ok(())
    }

    /// One receive request: the deliveries, or `None` on NOGROUP.
    async fn receive_once(
        &self,
        service: Service,
        consumer: &str,
        max: usize,
    ) -> Result<Option<Vec<Delivery>>, BusError> {
        let response = self
            .call(&Request::Receive {
                service,
                consumer: consumer.to_string(),
                max,
            })
            .await?;
        let list = match response {
            Response::Deliveries(list) => list,
            Response::NoGroup => return Ok(None),
            Response::Done => {
                return Err(BusError::Unavailable(
                    "broker answered receive with no deliveries".into(),
                ))
            }
        };
        Ok(Some(
            list.into_iter()
                .map(|(id, attempt, payload)| Delivery {
                    entry_id: id.to_string(),
                    attempt,
                    payload: payload.into_bytes(),
                })
                .collect(),
        ))
    }
}

fn nogroup(service: Service) -> BusError {
    BusError::Unavailable(format!("NOGROUP: no consumer group for {service}"))
}

fn entry_id(raw: &str) -> Result<u64, BusError> {
    raw.parse()
        .map_err(|_| BusError::Unavailable(format!("entry id {raw:?} is not the broker's")))
}

#[async_trait]
impl Bus for SimBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let streams = subscribers(event.event_type());
        if streams.is_empty() {
            return Ok(());
        }
        self.call(&Request::Publish {
            streams,
            payload: event.encode(),
        })
        .await
        .map(drop)
    }

    /// One event at a time, as the simulated broker takes one publish per
    /// request (each meets its own faults).
    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        publish_one_at_a_time(self, events).await
    }

    /// `RedisBus::receive`: ensure the group, read; on NOGROUP forget the
    /// group, create it again and read once more.
    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        assert!(max > 0, "a receive asks for at least one delivery");
        self.ensure_group(service).await?;
        if let Some(batch) = self.receive_once(service, consumer, max).await? {
            return Ok(batch);
        }
        // Planted bug (mutants feature): the known group is never forgotten,
        // so a broker that lost it answers NOGROUP for ever.
        if purchase_saga::mutant!(NoGroupRecreate) {
            return Err(nogroup(service));
        }
        self.known_groups().remove(&service);
        self.ensure_group(service).await?;
        self.receive_once(service, consumer, max)
            .await?
            .ok_or_else(|| nogroup(service))
    }

    async fn ack(&self, service: Service, entry_id_raw: &str) -> Result<(), BusError> {
        let id = entry_id(entry_id_raw)?;
        self.call(&Request::Ack { service, id }).await.map(drop)
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let id = entry_id(&delivery.entry_id)?;
        self.call(&Request::DeadLetter {
            service,
            id,
            reason: reason.to_string(),
            payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
        })
        .await
        .map(drop)
    }
}
