//! The `VoteBackend` of the Wasm producer.
//!
//! Where the Wasm call runs: on tokio's **blocking pool** (`spawn_blocking`), behind a
//! semaphore of `max_instances` slots. Reasons:
//! - an invocation is CPU-bound and may run until its deadline (a looping module); on
//!   an async worker it would stall every other connection of that worker (2 workers
//!   on this machine) for that long, health checks included;
//! - wasmtime-wasi's synchronous WASI calls (e.g. a panic message on stderr) enter
//!   tokio with `block_on`, which panics on an async worker and is fine on the blocking
//!   pool;
//! - the semaphore keeps the number of threads and pool slots bounded; the hand-off
//!   costs a few microseconds, measured by `urna_wasm_queue_duration_seconds`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;
use urna_common::kafka::{PublishError, VotePublisher};
use urna_common::producer_http::{Accepted, CastError, VoteBackend};

use crate::modules::ModuleSlot;
use crate::runtime::{Invocation, ModuleOutput, decode_output};

pub struct WasmBackend {
    modules: Arc<ModuleSlot>,
    publisher: VotePublisher,
    slots: Arc<Semaphore>,
}

/// What one run of the module decided.
pub enum Decision {
    Accept { id: uuid::Uuid, payload: Vec<u8> },
    Reject { status: u16, body: Bytes },
}

impl WasmBackend {
    pub fn new(modules: Arc<ModuleSlot>, publisher: VotePublisher, max_instances: usize) -> Self {
        WasmBackend {
            modules,
            publisher,
            slots: Arc::new(Semaphore::new(max_instances)),
        }
    }

    /// Runs the module on one body in a fresh instance (no Kafka): the Wasm half of
    /// `cast`, also used by the benchmark.
    pub async fn decide(&self, body: Bytes) -> Result<Decision, CastError> {
        let queued = Instant::now();
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CastError::Internal("invocation slots closed".into()))?;
        // The module serving now; a reload during this request does not affect it.
        let deployed = self.modules.current();
        let runtime = self.modules.runtime_name();
        let id = urna_common::stamp::new_vote_id();
        let at = urna_common::stamp::now_micros();
        let invocation = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            metrics::histogram!("urna_wasm_queue_duration_seconds")
                .record(queued.elapsed().as_secs_f64());
            deployed.module.invoke(&body, id, at)
        })
        .await
        .map_err(|e| {
            CastError::Internal(format!("vote module invocation did not complete: {e}"))
        })?;

        let Invocation {
            result,
            instantiate,
            run,
        } = invocation;
        let decoded = result.and_then(|out| decode_output(out, id, at));
        let outcome = match &decoded {
            Ok(ModuleOutput::Accepted(..)) => "accepted",
            Ok(ModuleOutput::Rejected { .. }) => "rejected",
            Err(e) => e.kind.label(),
        };
        let instantiate_outcome = if run.is_zero() && decoded.is_err() {
            outcome
        } else {
            "ok"
        };
        metrics::histogram!("urna_wasm_instantiate_duration_seconds",
            "runtime" => runtime, "outcome" => instantiate_outcome)
        .record(instantiate.as_secs_f64());
        if !(run.is_zero() && decoded.is_err()) {
            metrics::histogram!("urna_wasm_run_duration_seconds",
                "runtime" => runtime, "outcome" => outcome)
            .record(run.as_secs_f64());
        }
        metrics::counter!("urna_wasm_invocations_total", "runtime" => runtime, "outcome" => outcome)
            .increment(1);

        match decoded {
            Ok(ModuleOutput::Accepted(_, payload)) => Ok(Decision::Accept { id, payload }),
            Ok(ModuleOutput::Rejected { status, body }) => Ok(Decision::Reject {
                status,
                body: Bytes::from(body),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "vote module failed this request");
                Err(CastError::Internal(e.to_string()))
            }
        }
    }
}

impl VoteBackend for WasmBackend {
    async fn cast(&self, body: Bytes) -> Result<Accepted, CastError> {
        match self.decide(body).await? {
            Decision::Reject { status, body } => Err(CastError::Rejected { status, body }),
            Decision::Accept { id, payload } => {
                // Keyed by the vote id: records spread evenly over the partitions.
                match self.publisher.publish(id.as_bytes(), &payload).await {
                    Ok(_) => Ok(Accepted {
                        id: id.hyphenated().to_string(),
                    }),
                    Err(PublishError::Unavailable(reason)) => Err(CastError::Unavailable(reason)),
                    Err(PublishError::QueueFull) => {
                        Err(CastError::Overloaded("Kafka producer queue is full".into()))
                    }
                }
            }
        }
    }

    async fn ready(&self) -> bool {
        self.publisher.is_ready()
    }
}
