//! Whether the member's Kafka client works, from librdkafka's statistics (once a
//! second), and its replacement when it has not worked for `URNA_KAFKA_REBUILD_AFTER_MS`
//! (see `urna_common::kafka::stall`: librdkafka may leave a member out of its group for
//! good after a frozen broker, while nothing else looks wrong).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::statistics::Statistics;

use super::Member;

/// How often librdkafka reports statistics (lag metrics, the stall watch).
pub(super) const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// Working means: in the group (coordinator known, join state steady) and hearing from
/// at least one broker the cluster told it about within `rx_idle_max`. The bootstrap
/// address alone is not enough (a client left with only that is the one that never
/// recovers), and neither is an open connection: a frozen broker keeps its sockets
/// open, and requests to it time out only after `socket.timeout.ms` (60 s). A working
/// member hears from its brokers at least every heartbeat, and every
/// `fetch.wait.max.ms` while it fetches.
pub(super) fn in_steady_group(statistics: &Statistics, rx_idle_max: Duration) -> bool {
    let in_group = statistics
        .cgrp
        .as_ref()
        .is_some_and(|g| g.state == "up" && g.join_state == "steady");
    let rx_idle_max = i64::try_from(rx_idle_max.as_micros()).unwrap_or(i64::MAX);
    let hearing = statistics
        .brokers
        .values()
        .any(|b| b.source == "learned" && b.state == "UP" && (0..rx_idle_max).contains(&b.rxidle));
    in_group && hearing
}

impl Member {
    /// Called about once a second: updates readiness, and replaces the Kafka consumer
    /// when the stall watch says so.
    pub(super) fn watch_kafka(&mut self) -> anyhow::Result<()> {
        self.health.kafka_ok();
        if !self.health.kafka.take_rebuild() {
            return Ok(());
        }
        let stalled = self.health.kafka.stalled_for();
        tracing::error!(
            stalled_s = stalled.as_secs(),
            "not in a steady group with a live broker connection; rebuilding the Kafka consumer"
        );
        self.rebuild_consumer()?;
        metrics::counter!("urna_consumer_kafka_rebuilds_total").increment(1);
        Ok(())
    }

    /// A new consumer joins the group in place of the old one; partitions it is assigned
    /// start at the sinks' offsets as always, so records fetched but not applied by the
    /// old one are simply read again. The old one is closed on a thread of its own: its
    /// close waits for a coordinator that may never answer.
    fn rebuild_consumer(&mut self) -> anyhow::Result<()> {
        let fresh = super::consumer(&self.settings, self.sinks.clone(), self.health.clone())?;
        fresh.subscribe(&[&self.topic]).context("subscribe")?;
        // Partition references of the old consumer must go before it does.
        if self.paused.take().is_some() {
            metrics::gauge!("urna_consumer_paused").set(0.0);
        }
        self.carry.clear();
        // Kafka's commits only serve lag metrics; the new member commits its own.
        self.commits.take();
        let old = std::mem::replace(&mut self.consumer, fresh);
        std::thread::Builder::new()
            .name("urna-consumer-close".into())
            .spawn(move || drop(old))
            .context("closing the old Kafka consumer")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX_IDLE_MAX: Duration = Duration::from_secs(5);

    /// Brokers as (source, state, µs since the last receive).
    fn statistics(
        group_state: &str,
        join_state: &str,
        brokers: &[(&str, &str, i64)],
    ) -> Statistics {
        let brokers = brokers
            .iter()
            .enumerate()
            .map(|(i, (source, state, rxidle))| {
                let broker = rdkafka::statistics::Broker {
                    source: (*source).to_owned(),
                    state: (*state).to_owned(),
                    rxidle: *rxidle,
                    ..Default::default()
                };
                (format!("b{i}"), broker)
            })
            .collect();
        Statistics {
            brokers,
            cgrp: Some(rdkafka::statistics::ConsumerGroup {
                state: group_state.to_owned(),
                join_state: join_state.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_in_a_steady_group_hearing_from_a_learned_broker_works() {
        let s = statistics(
            "up",
            "steady",
            &[("configured", "UP", 10), ("learned", "UP", 400_000)],
        );
        assert!(in_steady_group(&s, RX_IDLE_MAX));
    }

    #[test]
    fn a_member_left_with_only_its_bootstrap_broker_does_not() {
        // What librdkafka #5301 leaves after a frozen broker: no learned broker at all.
        let s = statistics("wait-coord", "init", &[("configured", "UP", 10)]);
        assert!(!in_steady_group(&s, RX_IDLE_MAX));
        let s = statistics(
            "up",
            "steady",
            &[("configured", "UP", 10), ("learned", "DOWN", -1)],
        );
        assert!(!in_steady_group(&s, RX_IDLE_MAX));
    }

    #[test]
    fn a_member_whose_broker_went_silent_does_not() {
        // A frozen broker: the connection is UP, the group still steady, nothing arrives.
        let s = statistics("up", "steady", &[("learned", "UP", 6_000_000)]);
        assert!(!in_steady_group(&s, RX_IDLE_MAX));
        // A connection that has not received anything yet.
        let s = statistics("up", "steady", &[("learned", "UP", -1)]);
        assert!(!in_steady_group(&s, RX_IDLE_MAX));
    }

    #[test]
    fn a_member_between_rebalance_steps_or_without_a_coordinator_does_not() {
        for (state, join) in [
            ("up", "wait-join"),
            ("query-coord", "steady"),
            ("up", "init"),
        ] {
            let s = statistics(state, join, &[("learned", "UP", 10)]);
            assert!(!in_steady_group(&s, RX_IDLE_MAX), "{state}/{join}");
        }
        let mut no_group = statistics("up", "steady", &[("learned", "UP", 10)]);
        no_group.cgrp = None;
        assert!(!in_steady_group(&no_group, RX_IDLE_MAX));
    }
}
