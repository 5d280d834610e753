//! The bus's Lua scripts, each one atomic step on the server: the claim
//! (the caller's heartbeat, the takeover of gone consumers' entries,
//! XAUTOCLAIM, the exact delivery count of every claimed entry, dead
//! letters for the entries deleted while pending), the dead letter (XADD,
//! and only if it succeeded, XACK) and the heartbeat (ZADD of consumer
//! names to the service's heartbeat set, scored by their expiry on the
//! server's TIME). Each script declares every key it touches, all of one
//! service and so of one hash tag (one slot on a Redis Cluster).
//! The claim and the dead letter count what the dead-letter stream's
//! `MAXLEN ~` cap drops in the dead-trimmed counter key.
//!
//! Atomic because each step's parts must not be separated: a claim whose
//! counts were read by a later command could be answered with another
//! entry's row (the bug this replaced: one XPENDING over the claimed range
//! filled by an entry the consumer already held), and a dead letter acked
//! although its XADD failed (MULTI/EXEC runs the XACK anyway) vanishes.
//!
//! # Out of memory
//!
//! A Redis at `maxmemory` with `noeviction` refuses every command flagged
//! `denyoom` (SET, XADD, XGROUP CREATE, ...) and runs the rest (XREADGROUP,
//! XACK, XCLAIM, XAUTOCLAIM, XTRIM, PEXPIRE). The only way out is that
//! consumers acknowledge and the trimmer frees what they acknowledged, so
//! the scripts that keep consumers going carry the shebang flag
//! `allow-oom` (Redis >= 7.0) and run whatever the memory:
//!
//! - the heartbeat: it rewrites one small member per consumer in place (a
//!   member that had expired comes back at the size it had). Were it refused,
//!   every heartbeat would expire after one TTL and each receive would take
//!   every other live consumer's entries at once: a takeover storm in which
//!   entries bounce between live consumers and their delivery counts race
//!   toward the dead-letter limit.
//! - the claim: its first write is the caller's heartbeat, so that a
//!   consumer that cannot show itself alive takes nothing; it stays the
//!   first write (a claim that could not write it must not take a gone
//!   consumer's entries). The rest moves ownership of entries that exist
//!   (no memory) and writes an empty dead letter for an entry deleted
//!   while pending (its XDEL freed more than the letter takes). Refused,
//!   it would leave every retry and every crashed consumer's entry pending
//!   for ever, and a pending entry pins the trim floor: memory never
//!   comes back.
//!
//! The consumer's dead letter is not flagged (`#!lua` with no flags:
//! refused as a whole under OOM, before it changes anything): it writes
//! the event's payload, which is what memory ran out of. Refused, its
//! entry stays pending with its delivery count, the next delivery after
//! the visibility timeout tries again, and nothing is lost; the consumer
//! reports the error and carries on. Publishes (XADD) are refused too and
//! wait in the outbox. Other options were weighed: moving the heartbeat
//! out of the claim leaves the claim's other writes to Redis's "first
//! write of a script" OOM rule (a takeover whose first write is a dead
//! letter fails, one whose first write is an XCLAIM runs), and treating
//! OOM like DEADKEY (reading new entries only) strands every entry that
//! needs claiming. `receive` still reads new entries if a claim is refused
//! for memory (a server that rejects the flag, a script cache that cannot
//! load), as it does for DEADKEY.

use std::sync::OnceLock;

use redis::streams::StreamRangeReply;
use redis::{FromRedisValue, RedisResult, Script, Value};

/// The error code of the claim while the dead-letter key is not a stream.
pub const DEAD_KEY_ERROR: &str = "DEADKEY";

/// The first line of a script that runs even when Redis is out of memory
/// (see the module docs).
const ALLOW_OOM: &str = "#!lua flags=allow-oom\n";

/// The first line of a script that Redis refuses as a whole, before it
/// runs, when out of memory.
const DENY_OOM: &str = "#!lua\n";

/// Appends a dead letter to `dead` capped at about `maxlen` entries and
/// counts the entries the cap dropped in `counter`. Raises WRONGTYPE before
/// writing anything if `dead` is not a stream.
const DEAD_LETTER_FN: &str = r#"
local function dead_letter(dead, counter, maxlen, payload, reason, entry_id, service, attempt)
    local before = redis.call('XLEN', dead)
    redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', 'payload', payload, 'reason', reason,
        'entry_id', entry_id, 'service', service, 'attempt', attempt)
    local dropped = before + 1 - redis.call('XLEN', dead)
    if dropped > 0 then redis.call('INCRBY', counter, dropped) end
    return dropped
end
"#;

/// The server's clock in ms (TIME: scripts replicate their effects, so a
/// script may read it), and the heartbeat of consumer `name` in the set
/// `alive` refreshed to expire `ttl` ms from now; the set itself expires
/// once its last heartbeat would have (a deployment gone leaves nothing).
const HEARTBEAT_FN: &str = r#"
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function beat(alive, now, ttl, name)
    redis.call('ZADD', alive, now + ttl, name)
    if redis.call('PTTL', alive) < ttl then redis.call('PEXPIRE', alive, ttl) end
end
"#;

/// KEYS: stream, dead-letter stream, dead-trimmed counter, heartbeat set.
/// ARGV: group, consumer, min idle ms, start id, count, dead-letter cap,
/// service, reason for deleted entries, heartbeat TTL ms. Returns {next,
/// claimed entries, their counts, deleted ids, dead letters dropped by
/// the cap}.
///
/// First it refreshes the caller's own heartbeat (so a consumer is alive
/// before it can own an entry). Then the takeover of gone consumers: every
/// other consumer of the group with pending entries and no live heartbeat
/// (its process stopped refreshing it a TTL ago) has its pending entries
/// XCLAIMed whatever their idle time, up to `count` (an entry deleted
/// while pending is dead-lettered and acked instead, since XCLAIM would
/// drop it silently). Only then XAUTOCLAIM, with the visibility timeout,
/// for what is left of `count`: a live but slow consumer keeps its
/// entries for that long.
const CLAIM: &str = r#"
local now = now_ms()
beat(KEYS[4], now, tonumber(ARGV[9]), ARGV[2])
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('DEADKEY ' .. KEYS[2] .. ' holds a ' .. t .. ', not a stream')
end
local left = tonumber(ARGV[5])
local claimed = {}
local deleted = {}
local dropped = 0
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if ok then
    for _, c in ipairs(consumers) do
        local name, pending
        for i = 1, #c, 2 do
            if c[i] == 'name' then name = c[i + 1]
            elseif c[i] == 'pending' then pending = c[i + 1] end
        end
        local expiry = redis.call('ZSCORE', KEYS[4], name)
        if left > 0 and pending > 0 and name ~= ARGV[2]
            and not (expiry and tonumber(expiry) > now) then
            for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', left, name)) do
                local id = p[1]
                if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
                    dropped = dropped + dead_letter(KEYS[2], KEYS[3], ARGV[6], '', ARGV[8], id, ARGV[7], 0)
                    redis.call('XACK', KEYS[1], ARGV[1], id)
                    deleted[#deleted + 1] = id
                else
                    local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
                    claimed[#claimed + 1] = e[1]
                end
                left = left - 1
            end
        end
    end
end
local next = ARGV[4]
if left > 0 then
    local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', left)
    next = r[1]
    for _, e in ipairs(r[2]) do claimed[#claimed + 1] = e end
    for _, id in ipairs(r[3] or {}) do
        dropped = dropped + dead_letter(KEYS[2], KEYS[3], ARGV[6], '', ARGV[8], id, ARGV[7], 0)
        deleted[#deleted + 1] = id
    end
end
local counts = {}
for i, e in ipairs(claimed) do
    counts[i] = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)[1][4]
end
return {next, claimed, counts, deleted, dropped}
"#;

/// KEYS: a service's heartbeat set. ARGV: the TTL in ms, then consumer
/// names. Refreshes each name's heartbeat and drops the expired ones.
/// Returns how many it refreshed.
const HEARTBEAT: &str = r#"
local now = now_ms()
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do beat(KEYS[1], now, ttl, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return #ARGV - 1
"#;

/// KEYS: dead-letter stream, stream, dead-trimmed counter. ARGV: cap,
/// payload, reason, entry id, service, attempt, group. Returns the dead
/// letters dropped by the cap.
const DEAD_LETTER: &str = r#"
local dropped = dead_letter(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('XACK', KEYS[2], ARGV[7], ARGV[4])
return dropped
"#;

pub fn claim() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{ALLOW_OOM}{HEARTBEAT_FN}{DEAD_LETTER_FN}{CLAIM}")))
}

pub fn dead_letter() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{DENY_OOM}{DEAD_LETTER_FN}{DEAD_LETTER}")))
}

pub fn heartbeat() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{ALLOW_OOM}{HEARTBEAT_FN}{HEARTBEAT}")))
}

/// Whether Redis refused `e`'s command for want of memory (`maxmemory`
/// reached under `noeviction`).
pub fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// What the claim script answers.
#[derive(Debug)]
pub struct ClaimReply {
    /// Where the next claim starts.
    pub next: String,
    pub claimed: StreamRangeReply,
    /// The delivery count of each claimed entry, in the same order.
    pub counts: Vec<u64>,
    /// Entries deleted from the stream while pending, now dead letters.
    pub deleted: Vec<String>,
    pub dead_trimmed: u64,
}

impl FromRedisValue for ClaimReply {
    fn from_redis_value(v: &Value) -> RedisResult<Self> {
        let (next, claimed, counts, deleted, dead_trimmed) = FromRedisValue::from_redis_value(v)?;
        Ok(ClaimReply {
            next,
            claimed,
            counts,
            deleted,
            dead_trimmed,
        })
    }
}
