//! The HTTP API (axum): placing and reading orders, reading users and
//! items, health and readiness. Built over [`Env`] and a [`ReadModel`], so
//! the same router serves the in-memory adapters (tests, `demo
//! --in-memory`) and Postgres + Redis.
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders[?wait=S]` | 202 `{orderId, status, ...}` while PENDING, 200 once terminal (token) |
//! | `GET /orders/{id}` | the order, its failure step and reason, its event timeline (owner or admin; another user's order is a 404, as a missing one) |
//! | `GET /orders/{id}/diagram` | the order's saga as a Mermaid sequence diagram (owner or admin; [`diagram`]) |
//! | `GET /users/{id}` | balance, inventory capacity/used/reserved, granted items (that user or admin) |
//! | `GET /users/{id}/orders?limit=&cursor=` | that user's orders, newest first, by page (that user or admin; [`user_orders`]) |
//! | `GET /admin/dead-letters?service=S` | a service's dead letters (admin) |
//! | `GET /items` | every item of the catalog: id, name, price, stock ([`items`]) |
//! | `GET /items/{id}` | name, price, stock |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when store and bus answer, else 503 with the reason |
//! | `GET /openapi.json` | this API's OpenAPI document ([`openapi`]) |
//!
//! Routes marked with a token need `Authorization: Bearer <token>` (401
//! without or with a bad or expired one, 403 for the wrong user, except
//! on `/orders/{id}` and its sub-routes, where another user's order is the
//! 404 of a missing one, so that ids cannot be probed); see [`auth`].
//! Every operation has a unique `operationId` and a one-line summary
//! (`tests/openapi.rs`). Requests are counted and timed per route and
//! status ([`crate::adapters::metrics::http`]).
//! Every error has the JSON body of [`error::ApiError`]; the status codes of
//! bad input are listed in [`body`] and [`orders`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod diagram;
pub mod error;
pub mod items;
pub mod openapi;
pub mod orders;
pub mod probe;
pub mod read_model;
pub mod reads;
pub mod user_orders;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;

use crate::adapters::tokens::TokenStore;
use crate::runtime::Env;

pub use admin::DeadLetterSource;
pub use probe::Probe;
pub use read_model::ReadModel;

/// The API's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `POST /orders` body; beyond it, 413.
    pub body_bytes_max: usize,
    /// Largest `?wait=`.
    pub wait_max: Duration,
    /// How often a waiting request re-reads its order.
    pub wait_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 4 * 1024,
            wait_max: Duration::from_secs(30),
            wait_poll: Duration::from_millis(20),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub env: Env,
    pub read: Arc<dyn ReadModel>,
    /// `/readyz` runs these, in order.
    pub probes: Vec<Arc<dyn Probe>>,
    pub limits: Limits,
    /// The API tokens (see [`auth`]).
    pub tokens: Arc<dyn TokenStore>,
    /// What `GET /admin/dead-letters` lists.
    pub dead_letters: Arc<dyn DeadLetterSource>,
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    assert!(
        state.limits.body_bytes_max > 0 && !state.limits.wait_poll.is_zero(),
        "limits must be positive"
    );
    Router::new()
        .route("/orders", post(orders::place))
        .route("/orders/{id}", get(orders::get))
        .route("/orders/{id}/diagram", get(diagram::get))
        .route("/users/{id}", get(reads::user))
        .route("/users/{id}/orders", get(user_orders::list))
        .route("/items", get(items::list))
        .route("/items/{id}", get(reads::item))
        .route("/admin/dead-letters", get(admin::dead_letters))
        .route("/healthz", get(reads::healthz))
        .route("/readyz", get(reads::readyz))
        .route("/openapi.json", get(openapi::serve))
        .fallback(reads::no_route)
        .method_not_allowed_fallback(reads::wrong_method)
        .with_state(state)
}
