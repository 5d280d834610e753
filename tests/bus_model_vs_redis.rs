//! The consumer-group model (`runtime::memory::streams`, what `MemoryBus`
//! and the simulator's broker run on) against `RedisBus` on the real Redis:
//! proptest generates operation sequences (publish; receive by several
//! consumers with several batch sizes; ack; dead-letter; the clock passing
//! the visibility timeout; XCLAIM of a chosen pending entry, so consumers
//! hold entries they claimed; trim; a consumer that stops for good; XDEL of
//! an entry behind the consumers' back; a dead-letter key of the wrong
//! type, and its repair; the loss of every key, a Redis restarting without
//! persistence) and runs each on both. After every operation what each
//! consumer was handed (entry, attempt, payload), the pending entries (per
//! consumer, with counts), the dead letters (entry, reason, payload,
//! attempt) and the stream's entries (what survives trims and XDELs) must
//! agree. Entry ids are compared through the publish order.
//!
//! Time: Redis measures idle time by its own clock. The visibility timeout
//! is short ([`VISIBILITY`]); "the clock passes it" polls XPENDING until
//! every pending entry's idle time on the server reached it (bounded), then
//! moves the model's clock by the same amount. Between two such steps the
//! model's clock stands still, so a case where the server's idle time of an
//! entry the model sees as fresh nears the timeout before a receive (a
//! machine too busy) is rejected as too slow, not counted as a
//! disagreement.
//!
//! Every check runs on the single test Redis and on a private three-node
//! Redis Cluster (issue 25; `testkit/src/cluster.rs`).
//!
//! `BUS_DIFF_CASES` raises the number of generated cases (default 40). The
//! mutant tests (feature `mutants`) run the same check with a planted bug
//! in `RedisBus` and require a disagreement (on the single Redis).

mod bus_support;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bus_support::{Deployment, TestCluster, TestRedis};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig, RedisConn};
use purchase_saga::domain::Service;
use purchase_saga::runtime::bus::{Bus, Delivery};
use purchase_saga::runtime::memory::streams::{Delivered, EntryId, Streams};

/// The one stream under test.
const SERVICE: Service = Service::User;
const VISIBILITY: Duration = Duration::from_millis(200);
/// A fresh entry must be this far below the timeout when a receive starts.
const MARGIN: Duration = Duration::from_millis(50);
const CONSUMERS: [&str; 3] = ["c0", "c1", "c2"];
const PENDING_MAX: usize = 10_000;

/// One step of a generated history.
#[derive(Debug, Clone)]
enum Op {
    Publish,
    Receive {
        consumer: usize,
        max: usize,
    },
    /// Acknowledges the `nth` delivery the consumer holds.
    Ack {
        consumer: usize,
        nth: usize,
    },
    DeadLetter {
        consumer: usize,
        nth: usize,
    },
    /// Waits until the server's idle time of every pending entry reached
    /// the visibility timeout; the model's clock moves by it.
    PassVisibility,
    /// XCLAIM (min-idle 0) of the `nth` pending entry still in the stream.
    Claim {
        consumer: usize,
        nth: usize,
    },
    Trim,
    /// The consumer never acts again.
    Stop {
        consumer: usize,
    },
    /// XDEL of the `nth` entry of the stream.
    Delete {
        nth: usize,
    },
    /// `SET <dead key> x`.
    BreakDeadKey,
    /// `DEL <dead key>`.
    RepairDeadKey,
    /// Every key of the prefix deleted.
    LoseEverything,
}

/// One operation, or a consumer claiming an entry and then receiving (how
/// a consumer comes to hold an entry inside the range of those it claims
/// next).
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let consumer = 0..CONSUMERS.len();
    let one = |op: Op| vec![op];
    prop_oneof![
        5 => Just(one(Op::Publish)),
        5 => (consumer.clone(), 1..6usize).prop_map(move |(consumer, max)| one(Op::Receive { consumer, max })),
        2 => (consumer.clone(), 0..8usize).prop_map(move |(consumer, nth)| one(Op::Ack { consumer, nth })),
        2 => (consumer.clone(), 0..8usize).prop_map(move |(consumer, nth)| one(Op::DeadLetter { consumer, nth })),
        3 => Just(one(Op::PassVisibility)),
        2 => (consumer.clone(), 0..8usize).prop_map(move |(consumer, nth)| one(Op::Claim { consumer, nth })),
        2 => (consumer.clone(), 0..8usize, 2..6usize).prop_map(|(consumer, nth, max)| vec![
            Op::Claim { consumer, nth },
            Op::Receive { consumer, max },
        ]),
        1 => Just(one(Op::Trim)),
        1 => consumer.prop_map(move |consumer| one(Op::Stop { consumer })),
        1 => (0..8usize).prop_map(move |nth| one(Op::Delete { nth })),
        1 => Just(one(Op::BreakDeadKey)),
        1 => Just(one(Op::RepairDeadKey)),
        1 => Just(one(Op::LoseEverything)),
    ]
}

/// A few entries to start with, then anything (up to ~30 operations).
fn history() -> impl Strategy<Value = Vec<Op>> {
    (0..6usize, prop::collection::vec(ops(), 1..25)).prop_map(|(published, ops)| {
        let mut history = vec![Op::Publish; published];
        history.extend(ops.into_iter().flatten());
        history
    })
}

/// Why a case did not pass.
#[derive(Debug)]
enum Failure {
    /// The model and the server disagree.
    Disagree(String),
    /// The machine was too slow for an honest comparison of idle times.
    TooSlow(String),
}

macro_rules! agree {
    ($step:expr, $what:literal, $model:expr, $redis:expr) => {{
        let (model, redis) = ($model, $redis);
        if model != redis {
            return Err(Failure::Disagree(format!(
                "step {}: {} differ\n  model: {:?}\n  redis: {:?}",
                $step, $what, model, redis
            )));
        }
    }};
}

/// (entry, attempt, payload) of a delivery, entry by publish order.
type Seen = (EntryId, u32, String);

/// A payload, readable in a failure message.
fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// One case: the model, the bus, and what maps one to the other.
struct Case {
    redis: TestRedis,
    bus: RedisBus,
    conn: RedisConn,
    model: Streams<Vec<u8>>,
    now_ms: i64,
    /// Redis id of each model id, and back.
    to_redis: BTreeMap<EntryId, String>,
    to_model: BTreeMap<String, EntryId>,
    /// What each consumer holds: the model's delivery and Redis's.
    held: [Vec<(Delivered<Vec<u8>>, Delivery)>; 3],
    stopped: [bool; 3],
    published: usize,
}

/// Every consumer of a case is a live process: the model has no notion of
/// a gone consumer (the takeover by heartbeat, `tests/redis_bus.rs`, is
/// only ever earlier than the visibility timeout; see the model's table of
/// differences). A consumer that XCLAIMs before it ever received, or after
/// the keys were lost, would otherwise have no heartbeat key.
const HEARTBEAT_TTL: Duration = Duration::from_secs(3600);

async fn keep_alive(bus: &RedisBus) {
    for consumer in CONSUMERS {
        bus.keep_alive(SERVICE, consumer).await.unwrap();
    }
}

impl Case {
    async fn new(deployment: Deployment) -> Case {
        let redis = TestRedis::create(deployment, "bus-diff");
        let bus = RedisBus::connect(
            &redis.url,
            RedisConfig {
                visibility_timeout: VISIBILITY,
                block: Duration::from_millis(2),
                heartbeat_ttl: HEARTBEAT_TTL,
                ..redis.config()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        keep_alive(&bus).await;
        let conn = bus_support::raw(&redis).await;
        Case {
            redis,
            bus,
            conn,
            model: Streams::new(),
            now_ms: 0,
            to_redis: BTreeMap::new(),
            to_model: BTreeMap::new(),
            held: Default::default(),
            stopped: [false; 3],
            published: 0,
        }
    }

    fn model_id(&self, redis_id: &str) -> Result<EntryId, Failure> {
        self.to_model
            .get(redis_id)
            .copied()
            .ok_or_else(|| Failure::Disagree(format!("Redis handed out {redis_id}, which no publish made")))
    }

    fn seen_redis(&self, d: &Delivery) -> Result<Seen, Failure> {
        Ok((self.model_id(&d.entry_id)?, d.attempt, text(&d.payload)))
    }

    /// XPENDING of the group: (entry, consumer, idle ms, count).
    async fn redis_pending(&mut self) -> Vec<(String, String, u64, u32)> {
        let reply: Result<Vec<(String, String, u64, u32)>, redis::RedisError> = redis::cmd("XPENDING")
            .arg(self.bus.stream_key(SERVICE))
            .arg(RedisBus::group(SERVICE))
            .arg("-")
            .arg("+")
            .arg(PENDING_MAX)
            .query_async(&mut self.conn)
            .await;
        match reply {
            Ok(rows) => rows,
            Err(e) if e.code() == Some("NOGROUP") => Vec::new(),
            Err(e) => panic!("XPENDING: {e}"),
        }
    }

    async fn publish(&mut self) {
        self.published += 1;
        let event = bus_support::order_created(self.published);
        self.bus.publish(&event).await.unwrap();
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.bus.stream_key(SERVICE))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let redis_id = last.ids[0].id.clone();
        let id = self.model.append(SERVICE, event.encode().into_bytes());
        self.to_redis.insert(id, redis_id.clone());
        self.to_model.insert(redis_id, id);
    }

    /// Before a receive: the server's idle time must still classify every
    /// pending entry as the model's clock does.
    async fn check_idle_classification(&mut self, step: usize) -> Result<(), Failure> {
        let model: BTreeMap<EntryId, i64> = self
            .model
            .pending(SERVICE)
            .into_iter()
            .map(|(id, p)| (id, self.now_ms - p.delivered_at_ms))
            .collect();
        for (redis_id, _, idle_ms, _) in self.redis_pending().await {
            let Some(model_idle) = model.get(&self.model_id(&redis_id)?) else {
                continue; // a disagreement the comparison after the step reports
            };
            let fresh_in_model = *model_idle < VISIBILITY.as_millis() as i64;
            if fresh_in_model && idle_ms + MARGIN.as_millis() as u64 >= VISIBILITY.as_millis() as u64 {
                return Err(Failure::TooSlow(format!(
                    "step {step}: entry {redis_id} idle {idle_ms} ms on the server, fresh in the model"
                )));
            }
        }
        Ok(())
    }

    async fn pass_visibility(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending = self.redis_pending().await;
            if pending
                .iter()
                .all(|(_, _, idle_ms, _)| *idle_ms >= VISIBILITY.as_millis() as u64)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server's idle times never reached the visibility timeout: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.now_ms += VISIBILITY.as_millis() as i64;
    }

    async fn receive(&mut self, step: usize, consumer: usize, max: usize) -> Result<(), Failure> {
        self.check_idle_classification(step).await?;
        let name = CONSUMERS[consumer];
        let got = self.bus.receive(SERVICE, name, max).await.unwrap();
        let want = self.model.receive(
            SERVICE,
            name,
            max,
            VISIBILITY.as_millis() as i64,
            self.now_ms,
            Vec::new,
        );
        let seen_model: Vec<Seen> = want.iter().map(|d| (d.id, d.attempt, text(&d.payload))).collect();
        let seen_redis = got
            .iter()
            .map(|d| self.seen_redis(d))
            .collect::<Result<Vec<_>, _>>()?;
        agree!(step, "deliveries", seen_model, seen_redis);
        self.held[consumer].extend(want.into_iter().zip(got));
        Ok(())
    }

    async fn settle(&mut self, step: usize, consumer: usize, nth: usize, dead: bool) -> Result<(), Failure> {
        let held = &mut self.held[consumer];
        if held.is_empty() {
            return Ok(());
        }
        let (model, redis) = held.remove(nth % held.len());
        if dead {
            let reason = format!("reason {step}");
            let on_model = self
                .model
                .dead_letter(SERVICE, model.id, &reason, model.payload.clone(), model.attempt)
                .is_ok();
            let on_redis = self.bus.dead_letter(SERVICE, &redis, &reason).await.is_ok();
            agree!(step, "dead-letter outcomes", on_model, on_redis);
        } else {
            self.model.ack(SERVICE, model.id);
            self.bus.ack(SERVICE, &redis.entry_id).await.unwrap();
        }
        Ok(())
    }

    async fn claim(&mut self, step: usize, consumer: usize, nth: usize) -> Result<(), Failure> {
        let candidates: Vec<EntryId> = self
            .model
            .pending(SERVICE)
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| self.model.payload(SERVICE, *id).is_some())
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let id = candidates[nth % candidates.len()];
        let name = CONSUMERS[consumer];
        let model = self
            .model
            .deliver(SERVICE, name, id, self.now_ms)
            .expect("a pending entry in the stream can be claimed");
        let reply: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(self.bus.stream_key(SERVICE))
            .arg(RedisBus::group(SERVICE))
            .arg(name)
            .arg(0)
            .arg(&self.to_redis[&id])
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let claimed: Vec<(EntryId, String)> = reply
            .ids
            .iter()
            .map(|e| Ok((self.model_id(&e.id)?, text(&payload_of(e)))))
            .collect::<Result<_, Failure>>()?;
        agree!(step, "XCLAIM", vec![(model.id, text(&model.payload))], claimed);
        let redis = Delivery {
            entry_id: self.to_redis[&id].clone(),
            attempt: model.attempt,
            payload: model.payload.clone(),
        };
        self.held[consumer].push((model, redis));
        Ok(())
    }

    async fn step(&mut self, step: usize, op: &Op) -> Result<(), Failure> {
        let acting = match op {
            Op::Receive { consumer, .. }
            | Op::Ack { consumer, .. }
            | Op::DeadLetter { consumer, .. }
            | Op::Claim { consumer, .. }
            | Op::Stop { consumer } => Some(*consumer),
            _ => None,
        };
        if acting.is_some_and(|c| self.stopped[c]) {
            return Ok(());
        }
        match *op {
            Op::Publish => self.publish().await,
            Op::Receive { consumer, max } => self.receive(step, consumer, max).await?,
            Op::Ack { consumer, nth } => self.settle(step, consumer, nth, false).await?,
            Op::DeadLetter { consumer, nth } => self.settle(step, consumer, nth, true).await?,
            Op::PassVisibility => self.pass_visibility().await,
            Op::Claim { consumer, nth } => self.claim(step, consumer, nth).await?,
            Op::Trim => {
                let on_model = self.model.trim(SERVICE) as u64;
                let on_redis = self.bus.trim(SERVICE).await.unwrap();
                agree!(step, "trimmed counts", on_model, on_redis);
            }
            Op::Stop { consumer } => self.stopped[consumer] = true,
            Op::Delete { nth } => {
                let ids = self.model.entry_ids(SERVICE);
                if !ids.is_empty() {
                    let id = ids[nth % ids.len()];
                    self.model.delete(SERVICE, id);
                    let _: i64 = redis::cmd("XDEL")
                        .arg(self.bus.stream_key(SERVICE))
                        .arg(&self.to_redis[&id])
                        .query_async(&mut self.conn)
                        .await
                        .unwrap();
                }
            }
            Op::BreakDeadKey => {
                self.model.set_dead_key_wrong_type(SERVICE, true);
                let _: () = redis::cmd("SET")
                    .arg(self.bus.dead_key(SERVICE))
                    .arg("x")
                    .query_async(&mut self.conn)
                    .await
                    .unwrap();
            }
            Op::RepairDeadKey => {
                self.model.set_dead_key_wrong_type(SERVICE, false);
                let _: i64 = redis::cmd("DEL")
                    .arg(self.bus.dead_key(SERVICE))
                    .query_async(&mut self.conn)
                    .await
                    .unwrap();
            }
            Op::LoseEverything => {
                self.model.lose_everything();
                self.redis.flush_prefix();
                keep_alive(&self.bus).await;
            }
        }
        self.compare_state(step).await
    }

    /// Pending entries, stream entries and dead letters on both sides.
    async fn compare_state(&mut self, step: usize) -> Result<(), Failure> {
        let model_pending: Vec<(EntryId, String, u32)> = self
            .model
            .pending(SERVICE)
            .into_iter()
            .map(|(id, p)| (id, p.owner, p.count))
            .collect();
        let mut redis_pending = Vec::new();
        for (id, owner, _, count) in self.redis_pending().await {
            redis_pending.push((self.model_id(&id)?, owner, count));
        }
        agree!(step, "pending entries", model_pending, redis_pending);

        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.bus.stream_key(SERVICE))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let redis_entries = range
            .ids
            .iter()
            .map(|e| self.model_id(&e.id))
            .collect::<Result<Vec<_>, _>>()?;
        agree!(
            step,
            "stream entries",
            self.model.entry_ids(SERVICE),
            redis_entries
        );

        let model_dead = self.model.dead_letters(SERVICE).map(|d| {
            d.iter()
                .map(|r| (r.entry_id, r.reason.clone(), text(&r.payload), r.attempt))
                .collect::<Vec<_>>()
        });
        let redis_dead = match self.bus.dead_letters(SERVICE, PENDING_MAX).await {
            Ok(list) => Some(
                list.iter()
                    .map(|d| {
                        Ok((
                            self.model_id(&d.letter.entry_id)?,
                            d.letter.reason.clone(),
                            text(&d.letter.payload),
                            d.attempt,
                        ))
                    })
                    .collect::<Result<Vec<_>, Failure>>()?,
            ),
            Err(e) if e.to_string().contains("WRONGTYPE") => None,
            Err(e) => panic!("reading dead letters: {e}"),
        };
        agree!(step, "dead letters", model_dead, redis_dead);
        Ok(())
    }
}

fn payload_of(entry: &redis::streams::StreamId) -> Vec<u8> {
    match entry.map.get("payload") {
        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
        _ => Vec::new(),
    }
}

/// Runs `ops` on a fresh prefix of `deployment`; Ok when the model and
/// Redis agreed after every step.
fn run_on(deployment: Deployment, ops: &[Op]) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut case = Case::new(deployment).await;
        for (step, op) in ops.iter().enumerate() {
            case.step(step, op).await?;
        }
        Ok(())
    })
}

/// [`run_on`] the single Redis (the mutant tests).
#[cfg(feature = "mutants")]
fn run(ops: &[Op]) -> Result<(), Failure> {
    run_on(Deployment::Single, ops)
}

#[cfg(feature = "mutants")]
fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    check_on(Deployment::Single, ops)
}

fn check_on(deployment: Deployment, ops: Vec<Op>) -> Result<(), TestCaseError> {
    match run_on(deployment, &ops) {
        Ok(()) => Ok(()),
        Err(Failure::Disagree(why)) => Err(TestCaseError::fail(why)),
        Err(Failure::TooSlow(why)) => Err(TestCaseError::reject(why)),
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/bus_model_vs_redis.proptest-regressions",
        ))),
        ..Config::default()
    }
}

fn cases() -> u32 {
    std::env::var("BUS_DIFF_CASES")
        .ok()
        .map(|v| v.parse().expect("BUS_DIFF_CASES is a number"))
        .unwrap_or(40)
}

/// The cluster a test on `deployment` holds for all its cases (one
/// start, not one per case).
fn hold(deployment: Deployment) -> Option<std::sync::Arc<TestCluster>> {
    (deployment == Deployment::Cluster).then(TestCluster::shared)
}

fn model_and_redis_agree_on_generated_histories(deployment: Deployment) {
    let _cluster = hold(deployment);
    let mut runner = TestRunner::new(config(cases()));
    if let Err(e) = runner.run(&history(), |ops| check_on(deployment, ops)) {
        panic!("the model and Redis ({deployment:?}) disagree: {e}");
    }
}

/// Five entries; B reads 1..4 and stops; after the visibility timeout A
/// takes entry 3 with XCLAIM, then A's receive (XAUTOCLAIM COUNT 3) claims
/// 1, 2 and 4, all three of which must be handed to A with their counts.
fn claim_reproduction() -> Vec<Op> {
    let mut ops = vec![Op::Publish; 5];
    ops.extend([
        Op::Receive { consumer: 1, max: 4 },
        Op::Stop { consumer: 1 },
        Op::PassVisibility,
        Op::Claim { consumer: 0, nth: 2 },
        Op::Receive { consumer: 0, max: 3 },
    ]);
    ops
}

fn a_claim_hands_over_every_claimed_entry_when_the_consumer_already_holds_one_in_range(
    deployment: Deployment,
) {
    if let Err(e) = run_on(deployment, &claim_reproduction()) {
        panic!("{e:?}");
    }
}

fn a_dead_letter_into_a_wrong_type_key_and_an_entry_deleted_while_pending_agree(deployment: Deployment) {
    let ops = vec![
        Op::Publish,
        Op::Publish,
        Op::Receive { consumer: 0, max: 2 },
        Op::BreakDeadKey,
        Op::DeadLetter { consumer: 0, nth: 0 },
        Op::Delete { nth: 1 },
        Op::PassVisibility,
        Op::Receive { consumer: 1, max: 2 },
        Op::RepairDeadKey,
        Op::Receive { consumer: 1, max: 2 },
        Op::LoseEverything,
        Op::Publish,
        Op::Receive { consumer: 2, max: 1 },
    ];
    if let Err(e) = run_on(deployment, &ops) {
        panic!("{e:?}");
    }
}

/// A history that starts with entries idle in one consumer's hands (the
/// situation every claim bug needs), then anything.
#[cfg(feature = "mutants")]
fn with_idle_entries() -> impl Strategy<Value = Vec<Op>> {
    (3..8usize, history()).prop_map(|(published, rest)| {
        let mut ops = vec![Op::Publish; published];
        ops.extend([
            Op::Receive {
                consumer: 1,
                max: published,
            },
            Op::PassVisibility,
        ]);
        ops.extend(rest);
        ops
    })
}

/// Found by the generator against the model's first draft: Redis 7.0's
/// XAUTOCLAIM counts an entry it reports deleted against COUNT, so a claim
/// of one that meets a deleted entry first claims nothing.
fn a_deleted_entry_counts_against_the_claims_count(deployment: Deployment) {
    let ops = vec![
        Op::Publish,
        Op::Publish,
        Op::Receive { consumer: 0, max: 2 },
        Op::Delete { nth: 0 },
        Op::PassVisibility,
        Op::Receive { consumer: 0, max: 1 },
        Op::Receive { consumer: 0, max: 1 },
    ];
    if let Err(e) = run_on(deployment, &ops) {
        panic!("{e:?}");
    }
}

/// Each check above as two tests, `NAME::single` and `NAME::cluster`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn single() {
                super::$name(super::Deployment::Single)
            }
            #[test]
            fn cluster() {
                super::$name(super::Deployment::Cluster)
            }
        }
    )*};
}

on_both!(
    model_and_redis_agree_on_generated_histories,
    a_claim_hands_over_every_claimed_entry_when_the_consumer_already_holds_one_in_range,
    a_dead_letter_into_a_wrong_type_key_and_an_entry_deleted_while_pending_agree,
    a_deleted_entry_counts_against_the_claims_count,
);

/// With `mutant` planted in `RedisBus`, the differential check must find a
/// disagreement: the named cases first, then generated ones.
#[cfg(feature = "mutants")]
fn assert_seen(mutant: purchase_saga::mutants::Mutant, named: Vec<Op>) {
    purchase_saga::mutants::with(Some(mutant), || {
        let named_fails = matches!(run(&named), Err(Failure::Disagree(_)));
        let mut runner = TestRunner::new(Config {
            failure_persistence: None,
            max_shrink_iters: 32,
            ..config(cases())
        });
        let generated = runner.run(&with_idle_entries(), check);
        assert!(
            named_fails,
            "{mutant:?}: the named case passed with the mutant on"
        );
        let disagreeing = match generated {
            Err(proptest::test_runner::TestError::Fail(why, ops)) => {
                eprintln!("{mutant:?} seen: {why}\n  case: {ops:?}");
                ops
            }
            other => panic!("{mutant:?}: no generated case disagreed ({other:?})"),
        };
        // The same cases without the bug agree, so the disagreements were
        // the mutant's (`saga-sim mutants` reads this test's result as
        // "caught, clean without").
        // A run the server was too slow to judge (an idle time the model
        // cannot match on a loaded machine, `Failure::TooSlow`) tells
        // nothing either way: it is run again, a bounded number of times,
        // and only a disagreement fails.
        purchase_saga::mutants::with(None, || {
            const TRIES_MAX: usize = 5;
            for (what, ops) in [("named", &named), ("generated", &disagreeing)] {
                let mut last = None;
                for _ in 0..TRIES_MAX {
                    match run(ops) {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(Failure::TooSlow(why)) => last = Some(why),
                        Err(e) => panic!("{mutant:?}: the {what} case also disagrees without it: {e:?}"),
                    }
                }
                if let Some(why) = last {
                    panic!("{mutant:?}: the {what} case could not be judged without it in {TRIES_MAX} runs: {why}");
                }
            }
        });
    });
}

#[cfg(feature = "mutants")]
#[test]
fn the_differential_check_sees_claim_drops_entries() {
    assert_seen(
        purchase_saga::mutants::Mutant::ClaimDropsEntries,
        claim_reproduction(),
    );
}

#[cfg(feature = "mutants")]
#[test]
fn the_differential_check_sees_trim_below_pending() {
    let named = vec![
        Op::Publish,
        Op::Publish,
        Op::Receive { consumer: 0, max: 2 },
        Op::Ack { consumer: 0, nth: 1 },
        Op::Trim,
    ];
    assert_seen(purchase_saga::mutants::Mutant::TrimBelowPending, named);
}
