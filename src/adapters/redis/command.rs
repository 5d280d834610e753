//! The closed set of RedisBus's commands and scripts, for statement
//! coverage (`adapters::coverage`): [`RedisBus::command_counts`](super::RedisBus)
//! reads how often each ran.

use crate::adapters::coverage::Statement;

/// One command, pipeline or script of the bus port on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RedisCommand {
    /// A publish: the XADD pipelines of one `publish_batch` that sends
    /// anything (one per subscribing stream, sent at once), a single
    /// event's included.
    PublishPipeline,
    /// Of those, the pipelines that carry more than one event.
    PublishPipelineMultiEvent,
    /// XGROUP CREATE ... MKSTREAM (first use, and after NOGROUP).
    GroupCreate,
    /// The claim script (`scripts::claim`): XAUTOCLAIM, the counts, the
    /// dead letters of entries deleted while pending.
    ClaimScript,
    /// XREADGROUP of new entries.
    ReadGroup,
    /// XACK.
    Ack,
    /// The dead-letter script (`scripts::dead_letter`): XADD to the
    /// dead-letter stream, then XACK.
    DeadLetterScript,
    /// XTRIM MINID of acknowledged entries (`RedisBus::trim`).
    Trim,
}

impl Statement for RedisCommand {
    const ALL: &'static [RedisCommand] = &[
        RedisCommand::PublishPipeline,
        RedisCommand::PublishPipelineMultiEvent,
        RedisCommand::GroupCreate,
        RedisCommand::ClaimScript,
        RedisCommand::ReadGroup,
        RedisCommand::Ack,
        RedisCommand::DeadLetterScript,
        RedisCommand::Trim,
    ];

    fn name(self) -> &'static str {
        match self {
            RedisCommand::PublishPipeline => "xadd_pipeline",
            RedisCommand::PublishPipelineMultiEvent => "xadd_pipeline_multi_event",
            RedisCommand::GroupCreate => "xgroup_create",
            RedisCommand::ClaimScript => "claim_script",
            RedisCommand::ReadGroup => "xreadgroup",
            RedisCommand::Ack => "xack",
            RedisCommand::DeadLetterScript => "dead_letter_script",
            RedisCommand::Trim => "xtrim",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}
