//! The `VoteBackend` of the Wasm producer.
//!
//! Where the Wasm call runs, behind a semaphore of `max_instances` slots:
//! - **wasmtime** ([`Handoff::OnWorker`]): on the request's own tokio worker, as a
//!   future ([`crate::runtime::VoteModule::invoke_async`]) that yields at every epoch
//!   tick (1 ms), so a looping module gives the worker back to its other connections
//!   (health checks included) every millisecond until its budget stops it; the CPU
//!   clock of each poll is added up, whichever worker runs it. No thread hand-off: the
//!   `block_in_place` this replaced handed the worker's tasks to another thread for
//!   every vote, and at saturation the host grew ~40 worker threads and ~2.7 context
//!   switches per vote (docs/architecture.md, Performance).
//! - **WasmEdge**, whose calls block: inside [`tokio::task::block_in_place`]
//!   ([`Handoff::InPlace`]), which first hands the worker's other tasks to another
//!   thread; the invoking thread's CPU clock decides whose fault a stop is. On a
//!   current-thread runtime, where `block_in_place` is not allowed, `spawn_blocking`
//!   ([`Handoff::BlockingPool`]). Both are kept to measure against.
//!
//! The request deadline cannot pass during the call: the wall limit fits inside it
//! ([`crate::Settings::validate`]). `urna_wasm_queue_duration_seconds` measures the
//! wait for a slot (and the hand-off, where there is one).
//!
//! Time bounds, so that a 503 always means "not written": the wait for a slot is bounded
//! by `URNA_WASM_SLOT_WAIT_MS` and the module's run by its wall limit
//! (`URNA_WASM_WALL_LIMIT_MS`); together with the Kafka delivery timeout they fit inside
//! the HTTP request deadline (checked at start, [`crate::Settings::validate`]). A vote
//! that did not get a slot in time, or was stopped without having had its CPU budget
//! ([`InvokeErrorKind::Starved`]), never reached `publish`: it gets 503 + Retry-After.
//! A module at fault (trap, budget burned, bad output) gets 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use urna_common::deadline::Deadline;
use urna_common::kafka::VotePublisher;
use urna_common::producer_http::{Accepted, CastError, VoteBackend};
use urna_common::stamp::Stamp;
use urna_vote::{FunctionName, IdempotencyKey};

use crate::functions::{Functions, Picked};
use crate::module_health::ModuleHealth;
use crate::runtime::{Invocation, InvokeError, InvokeErrorKind, ModuleOutput, decode_output};

pub struct WasmBackend {
    functions: Arc<Functions>,
    module_health: ModuleHealth,
    publisher: VotePublisher,
    slots: Arc<Semaphore>,
    slot_wait: Duration,
    handoff: Handoff,
}

/// Where an invocation runs (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// On the request's own worker where the runtime's calls yield (wasmtime); else as
    /// [`Handoff::InPlace`].
    #[default]
    OnWorker,
    /// `block_in_place` on a multi-thread runtime; `spawn_blocking` on a current-thread
    /// runtime (kept to measure against).
    InPlace,
    /// Always `spawn_blocking` and await it (kept to measure against).
    BlockingPool,
}

/// What one run of the module decided.
pub enum Decision {
    Accept {
        id: uuid::Uuid,
        record: urna_vote::VoteRecord,
        payload: Vec<u8>,
    },
    Reject {
        status: u16,
        body: Bytes,
    },
}

/// The answer to a failed invocation: the module's fault is a 500, the machine's a 503.
pub fn cast_error(e: &InvokeError) -> CastError {
    if e.kind.is_module_fault() {
        CastError::Internal(e.to_string())
    } else {
        CastError::Unavailable(e.to_string())
    }
}

impl WasmBackend {
    /// `max_instances` invocations at once; a request waits at most `slot_wait` for one.
    pub fn new(
        functions: Arc<Functions>,
        publisher: VotePublisher,
        max_instances: usize,
        slot_wait: Duration,
    ) -> Self {
        WasmBackend {
            functions,
            module_health: ModuleHealth::default(),
            publisher,
            slots: Arc::new(Semaphore::new(max_instances)),
            slot_wait,
            handoff: Handoff::default(),
        }
    }

    /// The same backend with another hand-off (for measurements).
    pub fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = handoff;
        self
    }

    /// Invocation slots free right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    /// A slot of `slots` (the host's, or `function`'s own when `own`) by `until`, else
    /// a 503, counted in the metric and in `version`'s outcomes.
    async fn slot(
        &self,
        slots: Arc<Semaphore>,
        until: tokio::time::Instant,
        function: &FunctionName,
        version: &str,
        own: bool,
    ) -> Result<OwnedSemaphorePermit, CastError> {
        match tokio::time::timeout_at(until, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(CastError::Internal("invocation slots closed".into())),
            Err(_) => {
                metrics::counter!("urna_wasm_invocations_total",
                    "runtime" => self.functions.runtime_name(), "outcome" => "no_slot",
                    "function" => function.to_string(), "version" => Functions::label(version))
                .increment(1);
                self.functions.note_outcome(function, version, "no_slot");
                let whose = if own {
                    format!("no invocation slot of function {function} (its max_instances)")
                } else {
                    "no Wasm invocation slot".to_owned()
                };
                Err(CastError::Unavailable(format!(
                    "{whose} became free within {} ms",
                    self.slot_wait.as_millis()
                )))
            }
        }
    }

    /// Runs `function`'s version for this vote on one body in a fresh instance (no
    /// Kafka): the Wasm half of `cast`, also used by the benchmark. `key` decides the
    /// canary split when there is one (else the vote's id does).
    pub async fn decide(
        &self,
        function: &FunctionName,
        key: Option<&IdempotencyKey>,
        body: Bytes,
        stamp: Stamp,
    ) -> Result<Decision, CastError> {
        // The version serving now; a change during this request does not affect it.
        let seed = key.map_or_else(
            || stamp.id.as_bytes().to_vec(),
            |k| k.as_str().as_bytes().to_vec(),
        );
        let Some(Picked { deployed, slots }) = self.functions.pick(function, &seed) else {
            return Err(CastError::UnknownFunction(format!(
                "no function {function} is deployed"
            )));
        };
        let queued = Instant::now();
        // One wait for both: the function's own slot (if it has a cap), then the host's.
        let wait_until = tokio::time::Instant::now() + self.slot_wait;
        let version = &deployed.fingerprint;
        let function_permit = match slots {
            Some(own) => Some(self.slot(own, wait_until, function, version, true).await?),
            None => None,
        };
        let host_permit = self
            .slot(self.slots.clone(), wait_until, function, version, false)
            .await?;
        let permit = (function_permit, host_permit);
        let generation = self.functions.generation();
        let version = deployed.fingerprint.clone();
        let version_label = Functions::label(&version);
        let function_label = function.to_string();
        let runtime = self.functions.runtime_name();
        let Stamp {
            id,
            accepted_at_micros: at,
        } = stamp;
        let on_worker = match self.handoff {
            Handoff::OnWorker => deployed.module.invoke_async(&body, id, at),
            Handoff::InPlace | Handoff::BlockingPool => None,
        };
        let invocation = if let Some(call) = on_worker {
            metrics::histogram!("urna_wasm_queue_duration_seconds")
                .record(queued.elapsed().as_secs_f64());
            let invocation = call.await;
            drop(permit);
            invocation
        } else {
            let (module, body) = (deployed.module.clone(), body.clone());
            let invoke = move || {
                let _permit = permit;
                metrics::histogram!("urna_wasm_queue_duration_seconds")
                    .record(queued.elapsed().as_secs_f64());
                module.invoke(&body, id, at)
            };
            let in_place = self.handoff != Handoff::BlockingPool
                && tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread;
            if in_place {
                tokio::task::block_in_place(invoke)
            } else {
                tokio::task::spawn_blocking(invoke).await.map_err(|e| {
                    CastError::Internal(format!("vote module invocation did not complete: {e}"))
                })?
            }
        };

        let Invocation {
            result,
            instantiate,
            run,
            cpu: _,
        } = invocation;
        let decoded = result.and_then(|out| decode_output(out, id, at));
        self.module_health.note(
            generation,
            decoded.as_ref().is_err_and(|e| e.kind.is_module_fault()),
        );
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
        metrics::counter!("urna_wasm_invocations_total", "runtime" => runtime, "outcome" => outcome,
            "function" => function_label, "version" => version_label)
        .increment(1);
        self.functions.note_outcome(function, &version, outcome);

        match decoded {
            Ok(ModuleOutput::Accepted(mut record, mut payload)) => {
                // Which module judged it is the host's to say: a field appended to the
                // encoded record is the same record with it set (protobuf's merge rule).
                prost::encoding::string::encode(10, &version, &mut payload);
                prost::encoding::string::encode(11, &function.to_string(), &mut payload);
                record.module_version = version;
                record.function = function.to_string();
                Ok(Decision::Accept {
                    id,
                    record,
                    payload,
                })
            }
            Ok(ModuleOutput::Rejected { status, body }) => Ok(Decision::Reject {
                status,
                body: Bytes::from(body),
            }),
            Err(e) => {
                if e.kind == InvokeErrorKind::Starved {
                    tracing::warn!(error = %e, "vote stopped without its CPU budget: machine busy");
                } else {
                    tracing::warn!(error = %e, "vote module failed this request");
                }
                Err(cast_error(&e))
            }
        }
    }
}

impl VoteBackend for WasmBackend {
    const SERVES_FUNCTIONS: bool = true;

    async fn cast(
        &self,
        function: FunctionName,
        body: Bytes,
        key: Option<IdempotencyKey>,
        stamp: Stamp,
        deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        match self.decide(&function, key.as_ref(), body, stamp).await? {
            Decision::Reject { status, body } => Err(CastError::Rejected { status, body }),
            Decision::Accept {
                id,
                mut record,
                mut payload,
            } => {
                // The key is the host's to add (the module never sees it); keyed by it,
                // a retry lands on its first attempt's partition. Unkeyed votes are keyed
                // by their id, which spreads them evenly.
                let partition_key: Vec<u8> = match key {
                    Some(key) => {
                        record.idempotency_key = key.into_string();
                        payload = record.encode_to_vec();
                        record.idempotency_key.as_bytes().to_vec()
                    }
                    None => id.as_bytes().to_vec(),
                };
                match self
                    .publisher
                    .publish(&partition_key, &payload, &deadline)
                    .await
                {
                    Ok(_) => Ok(Accepted {
                        id: id.hyphenated().to_string(),
                        function_version: Some(record.module_version),
                    }),
                    Err(e) => Err(CastError::from_publish_error(e)),
                }
            }
        }
    }

    async fn ready(&self) -> Result<(), String> {
        if !self.publisher.is_ready() {
            return Err("not ready: Kafka is unreachable".to_owned());
        }
        self.module_health.check(self.functions.generation())
    }

    fn alive(&self) -> Result<(), String> {
        self.publisher.liveness()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_starved_invocation_is_retryable() {
        for kind in [
            InvokeErrorKind::Trap,
            InvokeErrorKind::Deadline,
            InvokeErrorKind::Memory,
            InvokeErrorKind::BadOutput,
            InvokeErrorKind::InvalidRecord,
            InvokeErrorKind::Instantiate,
        ] {
            let e = InvokeError::new(kind, "x");
            assert!(matches!(cast_error(&e), CastError::Internal(_)), "{kind:?}");
        }
        let e = InvokeError::new(InvokeErrorKind::Starved, "x");
        assert!(matches!(cast_error(&e), CastError::Unavailable(_)));
    }
}
