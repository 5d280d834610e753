//! `SimBus`: the [`Bus`] port as a client of the broker host over turmoil's
//! network, one connection per replica, one request in flight at a time.
//! A timeout or a broken connection is `BusError::Unavailable`; the request
//! may or may not have taken effect (a publish may land twice on retry,
//! exactly as with a real broker).

use std::time::Duration;

use async_trait::async_trait;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{Event, Service};
use purchase_saga::runtime::{Bus, BusError, Delivery};
use tokio::sync::Mutex;
use turmoil::net::TcpStream;

use crate::broker::{read_frame, write_frame, Request, Response, HOST, PORT};

/// A request not answered within this fails as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Default)]
pub struct SimBus {
    conn: Mutex<Option<TcpStream>>,
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

    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let response = self
            .call(&Request::Receive {
                service,
                consumer: consumer.to_string(),
                max,
            })
            .await?;
        let Response::Deliveries(list) = response else {
            return Err(BusError::Unavailable(
                "broker answered receive with no deliveries".into(),
            ));
        };
        Ok(list
            .into_iter()
            .map(|(id, attempt, payload)| Delivery {
                entry_id: id.to_string(),
                attempt,
                payload: payload.into_bytes(),
            })
            .collect())
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
