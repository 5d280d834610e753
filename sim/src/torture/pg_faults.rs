//! Torture's PostgreSQL faults of issue 24, each counted by its effect:
//!
//! - `type-change`: a column type change on a table the pooled paths read
//!   (the outbox's `created_at`, which the relay's claim returns, between
//!   `timestamptz(3)` and `timestamptz`), so every connection that cached
//!   the claim meets SQLSTATE 0A000. Counted when the catalog shows the new
//!   type.
//! - `disk-full`: one service's inbox and its indexes moved into a
//!   tablespace on a small tmpfs, which a filler table then fills; counted
//!   when an insert into that inbox (rolled back, as the store's probe
//!   does) actually fails with 53100. Freed after its window: the filler
//!   dropped, the inbox moved back, the tablespace dropped and the tmpfs
//!   unmounted ([`SmallDisk::free`]; [`Drop`] does the same if the seed
//!   ends first). It needs the seed's PostgreSQL on this machine and root
//!   (mount, chown to the server's user); otherwise it is not injected and
//!   says why.
//! - `frozen-replica`: a process with the replicas' pool configuration
//!   locks a row of a service's table in a transaction and is not polled
//!   again for longer than every timeout ([`FrozenHolder`]); counted when
//!   it resumes and finds that the server ended its session
//!   (`idle_in_transaction_session_timeout`), so the lock was released
//!   while it was frozen; a transaction that survives is a finding. It is
//!   a holder beside the replicas, not one of them: freezing a replica's
//!   own store mid-transaction needs a hook in the fault wrapper
//!   (`boundary.rs`), left for later.

use std::path::PathBuf;
use std::process::Command;

use purchase_saga::adapters::postgres;
use purchase_saga::domain::Service;
use sqlx::{Connection, PgConnection};

use super::databases::{SeedDb, SeedDbs};

/// Size of the tmpfs under the tablespace: a few pages of inbox past the
/// filler.
const SMALL_DISK: &str = "size=2m";

/// Attempts of the frozen holder to take its row lock.
const LOCK_TRIES_MAX: u32 = 10;

/// Inserts the filler makes at most before the disk must be full.
const FILL_INSERTS_MAX: usize = 10_000;

/// Changes the type of `service`'s `outbox.created_at` (the `n`th change
/// of the run: odd to `timestamptz(3)`, even back to `timestamptz`).
/// Returns the statement, once the catalog shows the new type.
pub async fn change_type(db: &SeedDb, service: Service, n: u64) -> Result<String, String> {
    let s = postgres::schema(service);
    let to = if n % 2 == 1 {
        "timestamptz(3)"
    } else {
        "timestamptz"
    };
    let sql = format!("ALTER TABLE {s}.outbox ALTER COLUMN created_at TYPE {to}");
    let mut conn = db.writer().await?;
    sqlx::query(&sql)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let now: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = $1::regclass AND attname = 'created_at'",
    )
    .bind(format!("{s}.outbox"))
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("reading the new type: {e}"))?;
    let _ = conn.close().await;
    let expected = if n % 2 == 1 {
        "timestamp(3) with time zone"
    } else {
        "timestamp with time zone"
    };
    if now != expected {
        return Err(format!("{sql} left the column {now}"));
    }
    Ok(sql)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `sql`; the error names it.
async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), String> {
    sqlx::query(&sql)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    }
}

/// A full tablespace under one service's inbox; see the module docs.
pub struct SmallDisk {
    db_url: String,
    admin_url: String,
    service: Service,
    tablespace: String,
    mount: PathBuf,
    /// What is still to undo: (mounted, tablespace created, inbox moved).
    mounted: bool,
    created: bool,
    moved: bool,
}

impl SmallDisk {
    /// Fills a new small tablespace under `service`'s inbox; Ok once an
    /// inbox insert meets 53100, with what it did.
    pub async fn fill(db: &SeedDb, service: Service, n: u64) -> Result<(SmallDisk, String), String> {
        let tablespace = format!("{}_disk_{n}", db.name);
        let mount = std::env::temp_dir().join(&tablespace);
        let mut disk = SmallDisk {
            db_url: db.url.clone(),
            admin_url: db.admin_url.clone(),
            service,
            tablespace,
            mount,
            mounted: false,
            created: false,
            moved: false,
        };
        let detail = disk.set_up(db).await?;
        Ok((disk, detail))
    }

    async fn set_up(&mut self, db: &SeedDb) -> Result<String, String> {
        use std::os::unix::fs::MetadataExt;
        let mut conn = db.writer().await?;
        let data_directory: String = sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("SHOW data_directory: {e}"))?;
        // The server's OS user owns its data directory; the tablespace's
        // directory must be that user's too.
        let owner = std::fs::metadata(&data_directory).map_err(|e| {
            format!("the server's data directory {data_directory} is not on this machine ({e}): a tablespace here would not be its")
        })?;
        let owner = format!("{}:{}", owner.uid(), owner.gid());
        let mount = self.mount.to_str().ok_or("a non-UTF-8 temp dir")?.to_string();
        std::fs::create_dir_all(&self.mount).map_err(|e| format!("mkdir {mount}: {e}"))?;
        run("mount", &["-t", "tmpfs", "-o", SMALL_DISK, "tmpfs", &mount])?;
        self.mounted = true;
        run("chown", &[&owner, &mount])?;
        let s = postgres::schema(self.service);
        let ts = &self.tablespace;
        execute(&mut conn, format!("CREATE TABLESPACE {ts} LOCATION '{mount}'")).await?;
        self.created = true;
        execute(&mut conn, format!("ALTER TABLE {s}.inbox SET TABLESPACE {ts}")).await?;
        self.moved = true;
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'inbox'",
        )
        .bind(s)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        for index in &indexes {
            execute(&mut conn, format!("ALTER INDEX {s}.{index} SET TABLESPACE {ts}")).await?;
        }
        execute(
            &mut conn,
            format!("CREATE TABLE public.torture_filler (pad text) TABLESPACE {ts}"),
        )
        .await?;
        let mut filled = false;
        for _ in 0..FILL_INSERTS_MAX {
            let done = sqlx::query(
                "INSERT INTO public.torture_filler SELECT repeat('x', 1000) FROM generate_series(1, 50)",
            )
            .execute(&mut conn)
            .await;
            match done {
                Ok(_) => {}
                Err(e) if sqlstate(&e).as_deref() == Some("53100") => {
                    filled = true;
                    break;
                }
                Err(e) => return Err(format!("filling {ts}: {e}")),
            }
        }
        if !filled {
            return Err(format!("{FILL_INSERTS_MAX} filler inserts did not fill {ts}"));
        }
        // The effect: an inbox insert fails as a step's would. Rolled back,
        // so no row is left; each leaves a dead tuple that uses up the
        // inbox's last page, as the store's probe does.
        for attempt in 1..=FILL_INSERTS_MAX {
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            let done = sqlx::query(&format!(
                "INSERT INTO {s}.inbox (event_id, processed_at) VALUES (gen_random_uuid(), now())"
            ))
            .execute(&mut *tx)
            .await;
            let _ = tx.rollback().await;
            match done {
                Ok(_) => {}
                Err(e) if sqlstate(&e).as_deref() == Some("53100") => {
                    let _ = conn.close().await;
                    return Ok(format!(
                        "{s}.inbox on tablespace {ts} ({SMALL_DISK} tmpfs at {mount}) filled; \
                         inbox insert {attempt} met 53100: {e}"
                    ));
                }
                Err(e) => return Err(format!("probing {s}.inbox: {e}")),
            }
        }
        Err(format!("{s}.inbox inserts never met 53100 on {ts}"))
    }

    /// The service whose inbox is on the full tablespace.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Gives the space back and undoes everything; what it did.
    pub async fn free(mut self) -> Result<String, String> {
        let done = self.undo().await;
        done.map(|()| {
            format!(
                "{} inbox back on pg_default; {} dropped",
                self.service, self.tablespace
            )
        })
    }

    async fn undo(&mut self) -> Result<(), String> {
        if self.moved {
            // Best effort: when the seed's database is gone, so are the
            // inbox and the filler, and the tablespace is empty.
            if let Err(e) = self.move_back().await {
                eprintln!("torture: disk-full: {e}");
            }
            self.moved = false;
        }
        self.drop_tablespace_and_unmount().await
    }

    async fn move_back(&self) -> Result<(), String> {
        let s = postgres::schema(self.service);
        {
            let mut conn = PgConnection::connect(&self.db_url)
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let mut statements = vec![
                "SET default_transaction_read_only = off".to_string(),
                "DROP TABLE IF EXISTS public.torture_filler".to_string(),
                format!("ALTER TABLE {s}.inbox SET TABLESPACE pg_default"),
            ];
            let indexes: Vec<String> = sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'inbox'",
            )
            .bind(s)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            statements.extend(
                indexes
                    .iter()
                    .map(|i| format!("ALTER INDEX {s}.{i} SET TABLESPACE pg_default")),
            );
            for sql in statements {
                sqlx::query(&sql)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("{sql}: {e}"))?;
            }
            let _ = conn.close().await;
        }
        Ok(())
    }

    async fn drop_tablespace_and_unmount(&mut self) -> Result<(), String> {
        if self.created {
            let mut admin = PgConnection::connect(&self.admin_url)
                .await
                .map_err(|e| format!("admin connection: {e}"))?;
            let sql = format!("DROP TABLESPACE IF EXISTS {}", self.tablespace);
            sqlx::query(&sql)
                .execute(&mut admin)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let _ = admin.close().await;
            self.created = false;
        }
        if self.mounted {
            run("umount", &[self.mount.to_str().unwrap_or_default()])?;
            self.mounted = false;
            let _ = std::fs::remove_dir(&self.mount);
        }
        Ok(())
    }
}

impl Drop for SmallDisk {
    /// The seed ended inside the window (or the free failed): undo from a
    /// thread with a runtime of its own, as `SeedDb`'s drop does.
    fn drop(&mut self) {
        if !(self.mounted || self.created || self.moved) {
            return;
        }
        let mut rest = SmallDisk {
            db_url: self.db_url.clone(),
            admin_url: self.admin_url.clone(),
            service: self.service,
            tablespace: self.tablespace.clone(),
            mount: self.mount.clone(),
            mounted: self.mounted,
            created: self.created,
            moved: self.moved,
        };
        (self.mounted, self.created, self.moved) = (false, false, false);
        let undone = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(rest.undo())
        })
        .join();
        if !matches!(undone, Ok(Ok(()))) {
            eprintln!(
                "torture: could not undo the disk-full fault ({}, {}): {undone:?}; \
                 drop the tablespace and unmount by hand",
                self.tablespace,
                self.mount.display()
            );
        }
    }
}

/// A frozen process: a transaction on a connection of the seed's pool
/// configuration (so with its `idle_in_transaction_session_timeout`) that
/// locks a row a saga needs and then is not polled again until
/// [`FrozenHolder::resume`], as a replica stopped by SIGSTOP or a long
/// pause would be.
pub struct FrozenHolder {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pool: sqlx::PgPool,
    what: String,
}

impl FrozenHolder {
    /// Locks the first row of a seeded table that `service`'s steps lock
    /// (Payment and Notification seed none: their events need the
    /// account too, so the holder locks User's row, in User's database)
    /// in a transaction left open.
    pub async fn freeze(
        dbs: &SeedDbs,
        config: &postgres::PgConfig,
        service: Service,
    ) -> Result<(FrozenHolder, String), String> {
        let (table, owner) = match service {
            Service::Order => ("order_svc.catalog", Service::Order),
            Service::Inventory => ("inventory_svc.inventory_accounts", Service::Inventory),
            Service::Item => ("item_svc.item_stocks", Service::Item),
            Service::User | Service::Payment | Service::Notification => ("user_svc.accounts", Service::User),
        };
        let pool = postgres::connect(&dbs.of(owner).url, config)
            .await
            .map_err(|e| e.to_string())?;
        let sql = format!("SELECT ctid::text FROM {table} ORDER BY ctid LIMIT 1 FOR UPDATE");
        // A replica may hold the row for a moment (the pool's lock timeout
        // ends each wait): a few tries, then it is not injected.
        let mut tries = 0;
        let (tx, row) = loop {
            tries += 1;
            let mut tx = pool.begin().await.map_err(|e| format!("begin: {e}"))?;
            // Inside a read-only window too: a frozen process may have
            // begun before it.
            sqlx::query("SET TRANSACTION READ WRITE")
                .execute(&mut *tx)
                .await
                .map_err(|e| format!("SET TRANSACTION READ WRITE: {e}"))?;
            match sqlx::query_scalar::<_, String>(&sql)
                .fetch_optional(&mut *tx)
                .await
            {
                Ok(Some(row)) => break (tx, row),
                Ok(None) => return Err(format!("{table} has no row to hold")),
                Err(e) if tries >= LOCK_TRIES_MAX => return Err(format!("{sql}: {e} ({tries} tries)")),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let what = format!("{table} row {row}");
        Ok((
            FrozenHolder {
                tx,
                pool,
                what: what.clone(),
            },
            format!("{what} locked, holder frozen"),
        ))
    }

    /// The holder runs again: Ok (the effect) when the server has ended
    /// its session meanwhile, so its locks were released without it.
    pub async fn resume(self) -> Result<String, String> {
        let resumed = self.tx.commit().await;
        self.pool.close().await;
        match resumed {
            Err(e) => Ok(format!("{}: session ended by the server while frozen ({e})", self.what)),
            Ok(()) => Err(format!(
                "{}: the frozen transaction committed on resume: idle_in_transaction_session_timeout did not end it",
                self.what
            )),
        }
    }
}
