//! The `purchase-saga` binary's commands: flags and environment (clap),
//! and one module per command.
//!
//! - `migrate`: create or update the schemas (idempotent).
//! - `serve`: run services' consumers, relays, the sweeper, the pruner and
//!   optionally the HTTP API, until SIGTERM or Ctrl-C.
//! - `seed-demo`: the demo's users and items (idempotent).
//! - `audit`: the domain's invariants over the stores' state (exit 2 while
//!   sagas are in flight; see `audit.rs`).
//! - `status`: consumer lag and pending entries, outbox backlog and dead
//!   letters per service, sagas by state, the oldest saga in flight.
//! - `token`: issue and revoke API tokens.
//! - `dlq`: list and replay the Redis bus's dead letters.
//! - `outbox`: list and release outbox rows set aside (quarantined, or left
//!   for a newer build).
//! - `chaos`: one process per service replica under kill -9 and backend
//!   restarts, then audit (not for CI; see `chaos.rs`).
//! - `demo`: all of the above in one process, with orders over HTTP.
//! - `bench`: throughput and latency against the database's own ceiling.
//! - `completions`: a shell completion script (bash, zsh, fish, ...).
//!
//! Every `serve` setting comes from a flag or from the environment
//! variable named in `--help` (a flag wins); URLs are never echoed with
//! their password (`hide_env_values`). Output that scripts read has a
//! `--json` form with stable field names (see `output.rs`); a closed
//! stdout (`| head`) ends the process quietly.

pub mod audit;
pub mod backend;
pub mod bench;
pub mod bus_check;
pub mod chaos;
pub mod client;
pub mod completions;
pub mod demo;
pub mod dlq;
pub mod hops;
pub mod inflight;
pub mod logging;
pub mod outbox;
pub mod output;
pub mod progress;
pub mod seed;
pub mod serve;
pub mod status;
pub mod token;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::{DurationMs, Service};
use crate::runtime::{Dispatch, RuntimeConfig};

/// Default PostgreSQL URL: the local service, trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default Redis URL: the local service.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PURCHASE_SAGA_COMMIT"),
    ")"
);

/// What `--help` says after the options: the logging variable.
const AFTER_HELP: &str = "\
Environment:
  RUST_LOG   which log lines go to stderr, as tracing's EnvFilter reads it
             (default `info,sqlx=warn`; e.g. `RUST_LOG=debug`,
             `RUST_LOG=purchase_saga=trace,info`)
  NO_COLOR   set to anything: no colour in human logs (none when stderr
             is not a terminal anyway)
Every option that names an [env: ...] variable reads it when the option
is not given; URL values from the environment are not shown.";

/// A choreographed purchase saga on PostgreSQL and Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "purchase-saga", version = VERSION, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true,
          global = true)]
    pub database_url: String,
    /// PostgreSQL URL of the Order service's database (its schema
    /// `order_svc`); DATABASE_URL when unset. One pool per distinct URL:
    /// with none of the per-service URLs set, every service shares
    /// DATABASE_URL's one database.
    #[arg(
        long,
        env = "DATABASE_URL_ORDER",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_order: Option<String>,
    /// PostgreSQL URL of the User service's database (`user_svc`).
    #[arg(
        long,
        env = "DATABASE_URL_USER",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_user: Option<String>,
    /// PostgreSQL URL of the Payment service's database (`payment_svc`).
    #[arg(
        long,
        env = "DATABASE_URL_PAYMENT",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_payment: Option<String>,
    /// PostgreSQL URL of the Inventory service's database (`inventory_svc`).
    #[arg(
        long,
        env = "DATABASE_URL_INVENTORY",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_inventory: Option<String>,
    /// PostgreSQL URL of the Item service's database (`item_svc`).
    #[arg(
        long,
        env = "DATABASE_URL_ITEM",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_item: Option<String>,
    /// PostgreSQL URL of the Notification service's database
    /// (`notification_svc`).
    #[arg(
        long,
        env = "DATABASE_URL_NOTIFICATION",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_notification: Option<String>,
    /// PostgreSQL URL of the HTTP API's database (tokens, `api_auth`).
    #[arg(
        long,
        env = "DATABASE_URL_API",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url_api: Option<String>,
    /// Most connections of each PostgreSQL pool (one pool per distinct
    /// database URL), unless a part's own size below says otherwise. Keep
    /// the sum over every process sharing a server under its
    /// `max_connections` (refused connections: SQLSTATE 53300).
    #[arg(long, env = "PG_POOL_MAX", value_name = "CONNECTIONS", default_value_t = 80,
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max: u32,
    /// Most connections of the Order service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_ORDER", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_order: Option<u32>,
    /// Most connections of the User service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_USER", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_user: Option<u32>,
    /// Most connections of the Payment service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_PAYMENT", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_payment: Option<u32>,
    /// Most connections of the Inventory service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_INVENTORY", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_inventory: Option<u32>,
    /// Most connections of the Item service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_ITEM", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_item: Option<u32>,
    /// Most connections of the Notification service's pool; --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_NOTIFICATION", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_notification: Option<u32>,
    /// Most connections of the HTTP API's pool (tokens); --pg-pool-max when unset. A pool
    /// that several parts share (one URL) gets the largest of their sizes.
    #[arg(long, env = "PG_POOL_MAX_API", value_name = "CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    pub pg_pool_max_api: Option<u32>,
    /// Redis connection URL; several, comma-separated, name the nodes of
    /// a Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true,
          global = true)]
    pub redis_url: String,
    /// The Redis URL is the seed of a Redis Cluster (a comma-separated
    /// list of node URLs names a cluster without this flag).
    #[arg(long, env = "REDIS_CLUSTER", global = true,
          value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false,
          num_args = 0, default_missing_value = "true")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key (streams, groups, dead letters).
    #[arg(long, env = "REDIS_PREFIX", default_value = "purchase-saga", global = true)]
    pub redis_prefix: String,
    /// Seconds from an order's creation to its saga deadline (the founding
    /// document's 5-minute reservation TTL by default).
    #[arg(long, env = "SAGA_DEADLINE", value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=86_400), global = true)]
    pub saga_deadline: u32,
    /// Entries a consumer takes from the bus per receive (and outbox rows a
    /// relay publishes per pass). A smaller batch spreads a burst over the
    /// replicas sooner.
    #[arg(long, env = "SAGA_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1_000), global = true)]
    pub batch_size: u16,
    /// Orders of one batch a consumer handles at once (one order's events
    /// stay in order); each holds a database connection meanwhile.
    #[arg(long, env = "SAGA_HANDLE_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256), global = true)]
    pub handle_concurrency: u16,
    /// Whether a consumer applies a batch's events in one database
    /// transaction (`on`) or one transaction per event (`off`, the
    /// control). `bench` runs both in one run whatever this says.
    #[arg(long, env = "SAGA_BATCH_APPLY", value_enum, default_value_t = OnOff::On, global = true)]
    pub batch_apply: OnOff,
    /// Who publishes a step's events: the committing task right after its
    /// commit (`commit`: send on commit, the relay only recovers rows whose
    /// lease ended and re-drives) or only the outbox relay (`relay`, the
    /// control).
    #[arg(long, env = "DISPATCH", value_enum, default_value_t = DispatchArg::Commit, global = true)]
    pub dispatch: DispatchArg,
    /// Log format on stderr.
    #[arg(long, env = "SAGA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Seconds a PostgreSQL session may sit idle inside a transaction before
    /// the server ends it and releases its locks (a frozen or paused
    /// process). Keep it well under the delivery budget's span
    /// (deliveries x the bus's visibility timeout, 300 s by default).
    #[arg(long, env = "PG_IDLE_IN_TRANSACTION_TIMEOUT", value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400), global = true)]
    pub pg_idle_in_transaction_timeout: u32,
    /// Run on the in-memory store and bus instead of Postgres and Redis
    /// (one process only: nothing is kept after it exits).
    #[arg(long, env = "SAGA_IN_MEMORY", global = true)]
    pub in_memory: bool,
}

/// `--dispatch`: [`Dispatch`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DispatchArg {
    Relay,
    Commit,
}

impl From<DispatchArg> for Dispatch {
    fn from(arg: DispatchArg) -> Dispatch {
        match arg {
            DispatchArg::Relay => Dispatch::Relay,
            DispatchArg::Commit => Dispatch::Commit,
        }
    }
}

/// A switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update every service's schema (idempotent).
    Migrate,
    /// Run services until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Insert the demo's users and items where absent (idempotent), and
    /// print API tokens for them and an admin (`token <user-or-admin>
    /// <token>` lines): the ones kept from the last run while they are
    /// valid, fresh ones otherwise.
    SeedDemo(seed::SeedArgs),
    /// Check the saga's invariants over every service's state.
    ///
    /// Reports the work in flight (bus entries pending or undelivered,
    /// outbox rows unpublished, orders not terminal). The safety invariants
    /// are always checked; the ones that hold only at quiescence (every
    /// order terminal, conservation, one notification per order) only when
    /// nothing is in flight, or once it is with `--wait`.
    ///
    /// Exit codes: 0 clean; 1 a violation (or an error); 2 not quiescent
    /// (the safety invariants held, the others were not checked).
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
    /// The health of a running deployment: per service the consumer
    /// group's lag and pending entries (and the oldest's age), outbox
    /// backlog and dead letters; sagas by state; the oldest saga in flight
    /// with its last event. Exit 1 if a source could not be read.
    Status(status::StatusArgs),
    /// Migrate, serve every service in-process, seed, place orders over
    /// HTTP, wait for quiescence, audit and summarize.
    Demo(demo::DemoArgs),
    /// Issue or revoke API tokens.
    Token(token::TokenArgs),
    /// List or replay dead letters.
    Dlq(dlq::DlqArgs),
    /// List or release outbox rows no relay publishes: quarantined
    /// (undecodable) or left for a build that reads a newer schema version.
    Outbox(outbox::OutboxArgs),
    /// Services as child processes under kill -9 and Redis/PostgreSQL
    /// restarts, orders over HTTP, then audit (local addresses only).
    Chaos(chaos::ChaosArgs),
    /// Saga throughput and latency on PostgreSQL and Redis next to the
    /// database's own single-row transaction ceiling (fresh database and
    /// Redis prefix per run).
    Bench(bench::BenchArgs),
    /// Print a shell completion script, e.g.
    /// `purchase-saga completions bash > /etc/bash_completion.d/purchase-saga`.
    Completions(completions::CompletionsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Services to run, comma-separated, or `all`.
    #[arg(long, env = "SAGA_SERVICES", value_delimiter = ',', default_value = "all",
          value_parser = parse_services)]
    pub services: Vec<Vec<Service>>,
    /// Consumers per service (they share the service's consumer group).
    #[arg(long, env = "SAGA_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: u16,
    /// Serve the HTTP API on this address: `HOST:PORT` with an IP address
    /// or a host name (resolved once, at start), e.g. `127.0.0.1:8080`,
    /// `localhost:8080`, `[::]:8080`.
    #[arg(long, env = "SAGA_HTTP", value_name = "ADDR", value_parser = parse_http_addr)]
    pub http: Option<std::net::SocketAddr>,
}

impl ServeArgs {
    /// The selected services, each once, in [`Service::ALL`] order.
    pub fn services(&self) -> Vec<Service> {
        let chosen: Vec<Service> = self.services.iter().flatten().copied().collect();
        Service::ALL.into_iter().filter(|s| chosen.contains(s)).collect()
    }
}

/// `HOST:PORT` to the first address it resolves to (IPv4 first, as
/// `localhost` is most often meant so).
pub fn parse_http_addr(raw: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    if !raw.contains(':') {
        return Err(format!(
            "expected HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080; got {raw:?}"
        ));
    }
    let mut addrs: Vec<std::net::SocketAddr> = raw
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {raw:?}: {e} (expected HOST:PORT)"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{raw:?} resolves to no address"))
}

fn parse_services(raw: &str) -> Result<Vec<Service>, String> {
    if raw == "all" {
        return Ok(Service::ALL.to_vec());
    }
    Service::from_slug(raw).map(|s| vec![s]).ok_or_else(|| {
        let names: Vec<&str> = Service::ALL.iter().map(|s| s.slug()).collect();
        format!(
            "unknown service {raw:?}; expected `all` or one of {}",
            names.join(", ")
        )
    })
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Check only the invariants that hold at every moment (use while
    /// traffic is running); needs no Redis.
    #[arg(long, conflicts_with = "wait")]
    pub safety_only: bool,
    /// One JSON object on stdout instead of the report (see
    /// `audit::AuditReport`; the exit code is the same).
    #[arg(long)]
    pub json: bool,
    /// Wait up to this many seconds for the system to become quiescent
    /// before checking (0: judge it as it is now).
    #[arg(long, value_name = "SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=3_600))]
    pub wait: u32,
    /// No progress on stderr while `--wait` waits (by default a spinner on
    /// a terminal, else a line when the counts change and at least every
    /// 5 s).
    #[arg(long)]
    pub quiet: bool,
}

impl GlobalArgs {
    /// The most connections of `part`'s pool: its own size
    /// (`--pg-pool-max-<part>`), else `--pg-pool-max`.
    pub fn pool_max_of(&self, part: crate::adapters::postgres::Part) -> u32 {
        use crate::adapters::postgres::Part;
        let own = match part {
            Part::Service(Service::Order) => self.pg_pool_max_order,
            Part::Service(Service::User) => self.pg_pool_max_user,
            Part::Service(Service::Payment) => self.pg_pool_max_payment,
            Part::Service(Service::Inventory) => self.pg_pool_max_inventory,
            Part::Service(Service::Item) => self.pg_pool_max_item,
            Part::Service(Service::Notification) => self.pg_pool_max_notification,
            Part::Api => self.pg_pool_max_api,
        };
        own.unwrap_or(self.pg_pool_max)
    }

    /// The database URL of `part`: its own variable, else DATABASE_URL.
    pub fn database_url_of(&self, part: crate::adapters::postgres::Part) -> &str {
        use crate::adapters::postgres::Part;
        let own = match part {
            Part::Service(Service::Order) => &self.database_url_order,
            Part::Service(Service::User) => &self.database_url_user,
            Part::Service(Service::Payment) => &self.database_url_payment,
            Part::Service(Service::Inventory) => &self.database_url_inventory,
            Part::Service(Service::Item) => &self.database_url_item,
            Part::Service(Service::Notification) => &self.database_url_notification,
            Part::Api => &self.database_url_api,
        };
        own.as_deref().unwrap_or(&self.database_url)
    }

    /// The runtime's settings: production defaults with this deadline.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            saga_deadline: DurationMs::from_secs(i64::from(self.saga_deadline)),
            batch_size: usize::from(self.batch_size),
            handle_concurrency: usize::from(self.handle_concurrency),
            batch_apply: self.batch_apply == OnOff::On,
            dispatch: self.dispatch.into(),
            ..RuntimeConfig::default()
        }
    }
}

/// Longest the process waits for its loops to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the parsed command on a multi-threaded runtime; the exit code says
/// whether it succeeded.
pub fn main(cli: Cli) -> ExitCode {
    output::quiet_on_broken_pipe();
    logging::init(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => backend::run_migrate(&cli.global).await,
            Command::Serve(args) => serve::run_serve(&cli.global, &args).await,
            Command::SeedDemo(args) => seed::run_seed_demo(&cli.global, &args).await,
            Command::Audit(args) => audit::run_audit(&cli.global, &args).await,
            Command::Status(args) => status::run_status(&cli.global, &args).await,
            Command::Demo(args) => demo::run_demo(&cli.global, &args).await,
            Command::Token(args) => token::run_token(&cli.global, &args).await,
            Command::Dlq(args) => dlq::run_dlq(&cli.global, &args).await,
            Command::Outbox(args) => outbox::run_outbox(&cli.global, &args).await,
            Command::Chaos(args) => chaos::run_chaos(&cli.global, &args).await,
            Command::Bench(args) => bench::run_bench(&cli.global, &args).await,
            Command::Completions(args) => completions::run_completions(&args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
