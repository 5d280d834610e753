//! The databases one torture seed runs against, in one of two layouts
//! ([`Layout`]), and the PostgreSQL faults that reach them directly.
//!
//! - **single** (the default): one fresh database `torture_<seed>_<pid>_<n>`
//!   on `DATABASE_URL`'s server with every part (`migrate`), as a
//!   one-`DATABASE_URL` deployment has.
//! - **split** (issue 25): three fresh databases on that server, grouped as
//!   the cluster proof groups them (order+user | payment+inventory+api |
//!   item+notification), each migrated with only its parts
//!   (`PgRoutes::migrate`, the library's per-part migrations) and checked
//!   to hold no other part's schema, so that a misrouted statement fails
//!   loudly. A replica of service S holds a pool to S's database only
//!   (`PgRoutes::only`, as `serve --services S`), under the application
//!   name `torture/<service>`, which [`SeedDbs::misrouted`] checks in
//!   `pg_stat_activity`; the witness, the checker, the seeding and the
//!   final snapshot go through routes over all three ([`DbMap`]).
//!
//! Every database is dropped (`WITH (FORCE)`) when its guard drops, also
//! after a failure or a panic. A fault names its target through
//! [`SeedDbs::of`] (the database of the service it names; in the single
//! layout always the one database): backends terminated by `datname`,
//! `ALTER DATABASE` read-only, ADD COLUMN, outbox rows, and (split only)
//! `db-down`: `ALLOW_CONNECTIONS false` plus the backends terminated, so
//! new connections are refused ([`SeedDb::set_down`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use purchase_saga::adapters::postgres::{self, Part, PgConfig, PgRoutes, PgStore};
use purchase_saga::domain::Service;
use purchase_saga::runtime::Store;
use sqlx::{Connection, PgConnection};

use super::servers::START_POSTGRES;

/// Where a seed's service data lives: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Single,
    Split,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Single, Layout::Split];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::Split => "split",
        }
    }

    pub fn parse(raw: &str) -> Result<Layout, String> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == raw)
            .ok_or_else(|| format!("unknown layout {raw:?}; known: single, split"))
    }

    /// The parts of each database (the cluster proof's grouping when split).
    pub fn groups(self) -> Vec<Vec<Part>> {
        use Service::*;
        match self {
            Layout::Single => vec![Part::ALL.to_vec()],
            Layout::Split => vec![
                vec![Part::Service(Order), Part::Service(User)],
                vec![Part::Service(Payment), Part::Service(Inventory), Part::Api],
                vec![Part::Service(Item), Part::Service(Notification)],
            ],
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The application name of a replica's (or the client's) connections in
/// the split layout: `torture/<service>`.
fn application_name(service: Service) -> String {
    format!("torture/{}", service.slug())
}

/// The URLs and parts of a seed's databases, cheap to clone: what the
/// replicas, the witness and the checker connect with.
#[derive(Debug, Clone)]
pub struct DbMap {
    pub layout: Layout,
    /// Each database's URL with the parts it holds.
    dbs: Vec<(String, Vec<Part>)>,
    /// A planted routing error (tests only): this service's replicas get
    /// the next database's URL.
    misroute: Option<Service>,
}

impl DbMap {
    fn index_of(&self, service: Service) -> usize {
        self.dbs
            .iter()
            .position(|(_, parts)| parts.contains(&Part::Service(service)))
            .expect("every service has a database")
    }

    /// The URL of `service`'s database.
    pub fn url_of(&self, service: Service) -> &str {
        &self.dbs[self.index_of(service)].0
    }

    /// Routes over every database, a pool of `config` each.
    pub async fn routes(&self, config: &PgConfig) -> Result<PgRoutes, String> {
        let mut databases = Vec::new();
        for (url, parts) in &self.dbs {
            let pool = postgres::connect(url, config).await.map_err(|e| e.to_string())?;
            databases.push((PgStore::new(pool), parts.clone()));
        }
        Ok(PgRoutes::new(databases))
    }

    /// The store of a replica of `service` (the client: None, which places
    /// orders in Order's database), on one pool of `config`, and that
    /// pool's store (for the statement counts). Single layout: the one
    /// database's `PgStore`, as before the split. Split: routes to
    /// `service`'s database only (`PgRoutes::only`), under the
    /// application name [`SeedDbs::misrouted`] checks.
    pub async fn replica_store(
        &self,
        service: Option<Service>,
        config: &PgConfig,
    ) -> Result<(Arc<dyn Store>, PgStore), String> {
        if self.layout == Layout::Single {
            let pool = postgres::connect(&self.dbs[0].0, config)
                .await
                .map_err(|e| e.to_string())?;
            let store = PgStore::new(pool);
            return Ok((Arc::new(store.clone()), store));
        }
        let service = service.unwrap_or(Service::Order);
        let mut index = self.index_of(service);
        if self.misroute == Some(service) {
            index = (index + 1) % self.dbs.len();
        }
        let (url, _) = &self.dbs[index];
        let (_, parts) = &self.dbs[self.index_of(service)];
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}application_name={}", application_name(service));
        let pool = postgres::connect(&url, config).await.map_err(|e| e.to_string())?;
        let store = PgStore::new(pool);
        let routes = PgRoutes::new(vec![(store.clone(), parts.clone())]).only(&[service]);
        Ok((Arc::new(routes), store))
    }
}

/// The seed's databases; each dropped with its guard.
pub struct SeedDbs {
    pub layout: Layout,
    dbs: Vec<SeedDb>,
    misroute: Option<Service>,
}

impl SeedDbs {
    /// Creates and migrates the databases of `layout` (see the module
    /// docs); `misroute` plants a routing error ([`DbMap`]).
    pub async fn create(
        admin_url: &str,
        seed: u64,
        layout: Layout,
        misroute: Option<Service>,
    ) -> Result<SeedDbs, String> {
        let mut dbs = Vec::new();
        for parts in layout.groups() {
            // Pushed as soon as created: a later failure drops it too.
            dbs.push(SeedDb::create(admin_url, seed, parts).await?);
        }
        let all = SeedDbs {
            layout,
            dbs,
            misroute,
        };
        let routes = all.map().routes(&small_pool()).await?;
        let migrated = routes.migrate().await.map_err(|e| e.to_string());
        // Every part is routed to one of the seed's databases, so a part's
        // schema anywhere else is a foreign schema (the check `migrate`
        // warns with).
        let foreign = match migrated {
            Ok(()) => routes.foreign_schemas().await,
            Err(e) => Err(e),
        };
        routes.close().await;
        let foreign = foreign?;
        if !foreign.is_empty() {
            let found: Vec<String> = foreign
                .iter()
                .map(|f| format!("{} in {}", f.part.schema(), f.found_in))
                .collect();
            return Err(format!("foreign schemas: {}", found.join(", ")));
        }
        Ok(all)
    }

    /// Every database, in the layout's order.
    pub fn all(&self) -> &[SeedDb] {
        &self.dbs
    }

    /// The database of `service`.
    pub fn of(&self, service: Service) -> &SeedDb {
        self.dbs
            .iter()
            .find(|d| d.parts.contains(&Part::Service(service)))
            .expect("every service has a database")
    }

    /// The target of a fault that may name a service: its database, else
    /// (the single layout) the one database.
    pub fn target(&self, service: Option<Service>) -> &SeedDb {
        match service {
            Some(s) => self.of(s),
            None => &self.dbs[0],
        }
    }

    pub fn map(&self) -> DbMap {
        DbMap {
            layout: self.layout,
            dbs: self
                .dbs
                .iter()
                .map(|d| (d.url.clone(), d.parts.clone()))
                .collect(),
            misroute: self.misroute,
        }
    }

    /// Split layout: every connection under a `torture/<service>`
    /// application name (a replica's or the client's) that is open to a
    /// database other than that service's: `(service, database)` pairs,
    /// and how many such connections were seen in all.
    pub async fn misrouted(&self) -> Result<(Vec<(String, String)>, u64), String> {
        let names: Vec<String> = self.dbs.iter().map(|d| d.name.clone()).collect();
        let mut admin = self.dbs[0].admin().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT application_name::text, datname::text FROM pg_stat_activity
             WHERE datname::text = ANY($1) AND application_name LIKE 'torture/%'",
        )
        .bind(&names)
        .fetch_all(&mut admin)
        .await
        .map_err(|e| format!("pg_stat_activity: {e}"))?;
        let _ = admin.close().await;
        let seen = rows.len() as u64;
        let wrong = rows
            .into_iter()
            .filter(|(app, datname)| {
                Service::ALL
                    .into_iter()
                    .find(|s| application_name(*s) == *app)
                    .is_none_or(|s| self.of(s).name != *datname)
            })
            .collect();
        Ok((wrong, seen))
    }
}

/// The pool torture's own setup steps use.
fn small_pool() -> PgConfig {
    PgConfig {
        connections_max: 1,
        ..PgConfig::default()
    }
}

/// One fresh database of a seed, holding `parts` (migrated by
/// [`SeedDbs::create`]); dropped with the guard.
pub struct SeedDb {
    pub(super) admin_url: String,
    pub name: String,
    pub url: String,
    pub parts: Vec<Part>,
}

impl SeedDb {
    async fn create(admin_url: &str, seed: u64, parts: Vec<Part>) -> Result<SeedDb, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "torture_{seed}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let url = postgres::create_database(admin_url, &name)
            .await
            .map_err(|e| format!("{e}. To fix: {START_POSTGRES}"))?;
        Ok(SeedDb {
            admin_url: admin_url.to_string(),
            url,
            name,
            parts,
        })
    }

    /// `db-down`: new connections refused (`ALLOW_CONNECTIONS false`) and
    /// every backend terminated; or connections allowed again. Returns
    /// how many backends were terminated.
    pub async fn set_down(&self, down: bool) -> Result<i64, String> {
        let mut admin = self.admin().await?;
        let allow = if down { "false" } else { "true" };
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", self.name))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("ALTER DATABASE ALLOW_CONNECTIONS {allow}: {e}"))?;
        let _ = admin.close().await;
        if down {
            self.terminate_backends().await
        } else {
            Ok(0)
        }
    }

    /// The effect of [`SeedDb::set_down`]: a new connection is refused.
    /// Ok(the server's answer) when it was; Err when it connected.
    pub async fn refuses_connections(&self) -> Result<String, String> {
        match PgConnection::connect(&self.url).await {
            Err(e) => Ok(e.to_string()),
            Ok(conn) => {
                let _ = conn.close().await;
                Err(format!("a new connection to {} still succeeds", self.name))
            }
        }
    }

    async fn admin(&self) -> Result<PgConnection, String> {
        PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| format!("admin connection: {e}"))
    }

    /// A connection to the seed's database that writes even while the
    /// database defaults to read-only.
    pub(super) async fn writer(&self) -> Result<PgConnection, String> {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connection to {}: {e}", self.name))?;
        sqlx::query("SET default_transaction_read_only = off")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Terminates every backend of this database; returns how many
    /// `pg_terminate_backend` actually terminated (it answers false for a
    /// backend that was already gone).
    pub async fn terminate_backends(&self) -> Result<i64, String> {
        let mut admin = self.admin().await?;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .map_err(|e| format!("pg_terminate_backend: {e}"))?;
        let _ = admin.close().await;
        Ok(killed)
    }

    /// Makes new transactions read-only (or writable again), then
    /// terminates the backends so that pooled connections reconnect with
    /// the new default.
    pub async fn set_read_only(&self, on: bool) -> Result<i64, String> {
        let mut admin = self.admin().await?;
        let value = if on { "on" } else { "off" };
        sqlx::query(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {value}",
            self.name
        ))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("ALTER DATABASE read-only {value}: {e}"))?;
        let _ = admin.close().await;
        self.terminate_backends().await
    }

    /// Whether a new connection to this database starts read-only: the
    /// effect of [`SeedDb::set_read_only`], seen as a replica sees it.
    pub async fn starts_read_only(&self) -> Result<bool, String> {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connection to {}: {e}", self.name))?;
        let on: String = sqlx::query_scalar("SHOW default_transaction_read_only")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(on == "on")
    }

    /// An additive migration: a nullable column on each of `service`'s
    /// tables. Returns the statements.
    pub async fn add_columns(&self, service: Service, n: u64) -> Result<Vec<String>, String> {
        let mut conn = self.writer().await?;
        let mut done = Vec::new();
        for table in tables(service) {
            let sql = format!("ALTER TABLE {table} ADD COLUMN torture_note_{n} text");
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            done.push(sql);
        }
        let _ = conn.close().await;
        Ok(done)
    }

    /// Inserts an outbox row of `service` that does not decode: a copy of
    /// its newest row with `"schemaVersion":2` (when it has one and not
    /// `garbage`), else a payload that is not JSON. Returns its seq and
    /// what it is.
    pub async fn insert_bad_outbox_row(
        &self,
        service: Service,
        garbage: bool,
    ) -> Result<(i64, String), String> {
        let s = postgres::schema(service);
        let mut conn = self.writer().await?;
        let copied: Option<i64> = if garbage {
            None
        } else {
            sqlx::query_scalar(&format!(
                "INSERT INTO {s}.outbox (event_id, event_type, order_id, payload, created_at)
                 SELECT gen_random_uuid(), event_type, order_id,
                        replace(payload, '\"schemaVersion\":1', '\"schemaVersion\":2'), now()
                 FROM {s}.outbox WHERE payload LIKE '%\"schemaVersion\":1%' ORDER BY seq DESC LIMIT 1
                 RETURNING seq"
            ))
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| format!("{s}.outbox copy: {e}"))?
        };
        let made = match copied {
            Some(seq) => (seq, "a copy with \"schemaVersion\":2".to_string()),
            None => {
                let seq: i64 = sqlx::query_scalar(&format!(
                    "INSERT INTO {s}.outbox (event_id, event_type, order_id, payload, created_at)
                     VALUES (gen_random_uuid(), 'TORTURE_GARBAGE', 'torture-garbage', '{{not json', now())
                     RETURNING seq"
                ))
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("{s}.outbox garbage: {e}"))?;
                (seq, "garbage".to_string())
            }
        };
        let _ = conn.close().await;
        Ok(made)
    }
}

/// The tables of `service`'s rows (not its inbox and outbox).
fn tables(service: Service) -> &'static [&'static str] {
    match service {
        Service::Order => &["order_svc.orders", "order_svc.catalog"],
        Service::User => &["user_svc.accounts", "user_svc.balance_holds"],
        Service::Inventory => &[
            "inventory_svc.inventory_accounts",
            "inventory_svc.slot_reservations",
        ],
        Service::Item => &["item_svc.item_stocks", "item_svc.stock_reservations"],
        Service::Payment => &["payment_svc.payments"],
        Service::Notification => &["notification_svc.notification_logs"],
    }
}

impl Drop for SeedDb {
    fn drop(&mut self) {
        if !purchase_saga::adapters::postgres::drop_database_blocking(&self.admin_url, &self.name) {
            eprintln!("torture: could not drop database {} (drop it by hand)", self.name);
        }
    }
}
