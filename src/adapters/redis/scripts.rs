//! The bus's Lua scripts, each one atomic step on the server: the claim
//! (the caller's heartbeat, the takeover of gone consumers' entries,
//! XAUTOCLAIM, the exact delivery count of every claimed entry, dead
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
/// reason for deleted entries, heartbeat key prefix (the consumer's name
/// completes a key), heartbeat TTL ms. Returns {next, claimed entries,
/// their counts, deleted ids, dead letters dropped by the cap}.
///
/// First it refreshes the caller's own heartbeat (so a consumer is alive
/// before it can own an entry). Then the takeover of gone consumers: every
/// other consumer of the group with pending entries and no heartbeat key
/// (its process stopped refreshing it a TTL ago) has its pending entries
/// XCLAIMed whatever their idle time, up to `count` (an entry deleted
/// while pending is dead-lettered and acked instead, since XCLAIM would
/// drop it silently). Only then XAUTOCLAIM, with the visibility timeout,
/// for what is left of `count`: a live but slow consumer keeps its
/// entries for that long.
const CLAIM: &str = r#"
redis.call('SET', ARGV[9] .. ARGV[2], '1', 'PX', ARGV[10])
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
        if left > 0 and pending > 0 and name ~= ARGV[2]
            and redis.call('EXISTS', ARGV[9] .. name) == 0 then
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
