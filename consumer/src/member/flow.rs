//! Flow control while the sinks are down: pause the assignment, keep polling so the group
//! does not evict the member, and resume what is still assigned afterwards.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::Member;

impl Member {
    /// Pauses the whole current assignment. Called again when a message still arrives
    /// while paused (a partition assigned meanwhile), so the carried-over messages stay
    /// bounded by what one fetch can deliver per partition.
    pub(super) fn pause(&mut self) {
        metrics::gauge!("urna_consumer_paused").set(1.0);
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = self.consumer.pause(&assignment) {
                    tracing::warn!(error = %e, "pause failed");
                }
                self.paused = Some(assignment);
            }
            Err(e) => tracing::warn!(error = %e, "no assignment to pause"),
        }
    }

    pub(super) fn resume(&mut self) {
        if let Some(assignment) = self.paused.take() {
            metrics::gauge!("urna_consumer_paused").set(0.0);
            // Partitions revoked meanwhile are no longer ours; resume what still is.
            let owned = self.consumer.assignment().unwrap_or_default();
            let mut still = TopicPartitionList::new();
            for e in assignment.elements() {
                if owned.find_partition(e.topic(), e.partition()).is_some() {
                    still.add_partition(e.topic(), e.partition());
                }
            }
            if let Err(e) = self.consumer.resume(&still) {
                tracing::warn!(error = %e, "resume failed");
            }
        }
    }
}
