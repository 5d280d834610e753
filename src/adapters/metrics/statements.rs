//! `saga_store_statements_total` and `saga_bus_commands_total`: the
//! statement coverage counters of the process's PgStore and RedisBus
//! (`adapters::coverage`), read at scrape time. The adapters own the
//! counters (shared by their clones), so the metrics keep no copy.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use std::collections::BTreeMap;

use super::GaugeSources;

/// See the module docs.
#[derive(Clone)]
pub(super) struct StatementCollector(pub GaugeSources);

impl std::fmt::Debug for StatementCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatementCollector")
    }
}

/// One counter family: `name{label=...}` per entry of `counts`.
fn encode_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    counts: BTreeMap<&'static str, u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in counts {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StatementCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(pg) = &self.0.postgres {
            encode_family(
                &mut encoder,
                "saga_store_statements",
                "Statements of the store port sent to PostgreSQL by this process, by statement",
                "statement",
                pg.statement_counts(),
            )?;
        }
        if let Some(redis) = &self.0.redis {
            encode_family(
                &mut encoder,
                "saga_bus_commands",
                "Commands, pipelines and scripts of the bus port sent to Redis by this process, by command",
                "command",
                redis.command_counts(),
            )?;
        }
        Ok(())
    }
}
