//! The bus's Lua scripts, each one atomic step on the server: the claim
//! (XAUTOCLAIM, the exact delivery count of every claimed entry, dead
//! letters for the entries deleted while pending) and the dead letter
//! (XADD, and only if it succeeded, XACK). Both count what the dead-letter
//! stream's `MAXLEN ~` cap drops in the dead-trimmed counter key.
//!
//! Atomic because each step's parts must not be separated: a claim whose
//! counts were read by a later command could be answered with another
//! entry's row (the bug this replaced: one XPENDING over the claimed range
//! filled by an entry the consumer already held), and a dead letter acked
//! although its XADD failed (MULTI/EXEC runs the XACK anyway) vanishes.

use std::sync::OnceLock;

use redis::streams::StreamRangeReply;
use redis::{FromRedisValue, RedisResult, Script, Value};

/// The error code of the claim while the dead-letter key is not a stream.
pub const DEAD_KEY_ERROR: &str = "DEADKEY";

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

/// KEYS: stream, dead-letter stream, dead-trimmed counter. ARGV: group,
/// consumer, min idle ms, start id, count, dead-letter cap, service,
/// reason for deleted entries. Returns {next, claimed entries, their
/// counts, deleted ids, dead letters dropped by the cap}.
const CLAIM: &str = r#"
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('DEADKEY ' .. KEYS[2] .. ' holds a ' .. t .. ', not a stream')
end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, e in ipairs(r[2]) do
    counts[i] = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)[1][4]
end
local deleted = r[3] or {}
local dropped = 0
for _, id in ipairs(deleted) do
    dropped = dropped + dead_letter(KEYS[2], KEYS[3], ARGV[6], '', ARGV[8], id, ARGV[7], 0)
end
return {r[1], r[2], counts, deleted, dropped}
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
    SCRIPT.get_or_init(|| Script::new(&format!("{DEAD_LETTER_FN}{CLAIM}")))
}

pub fn dead_letter() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{DEAD_LETTER_FN}{DEAD_LETTER}")))
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
