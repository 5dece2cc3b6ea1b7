//! One event stream's way to its client: a queue bounded in events *and* bytes, a client
//! that stops reading is dropped instead of pinning memory, and every stream ends after
//! its lifetime (the browser's `EventSource` reconnects by itself; the log stream resumes
//! exactly with `Last-Event-ID`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events a stream may have waiting for its client.
const QUEUE_EVENTS: usize = 4;
/// Bytes of event data a stream may have waiting (a log chunk is up to ~600 KB).
pub const QUEUE_BYTES: usize = 1 << 20;
/// A client that takes nothing for this long while its queue is full is dropped.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// The sending side of one stream.
pub struct StreamTx {
    tx: mpsc::Sender<(Event, usize)>,
    queued: Arc<AtomicUsize>,
    ends_at: Instant,
}

/// A stream of `lifetime`: its sender and the SSE response that drains it.
pub fn open(lifetime: Duration) -> (StreamTx, Response) {
    let (tx, rx) = mpsc::channel::<(Event, usize)>(QUEUE_EVENTS);
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = queued.clone();
    let events = futures::stream::unfold(rx, move |mut rx| {
        let drained = drained.clone();
        async move {
            let (event, size) = rx.recv().await?;
            drained.fetch_sub(size, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(event), rx))
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies (nginx) must pass events through as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    let sender = StreamTx {
        tx,
        queued,
        ends_at: Instant::now() + lifetime,
    };
    (sender, response)
}

/// An event named `name` with `value` as JSON data, and its size.
pub fn data_event(name: &str, value: &impl Serialize) -> (Event, usize) {
    match serde_json::to_string(value) {
        Ok(data) => {
            let size = data.len();
            (Event::default().event(name).data(data), size)
        }
        Err(_) => (Event::default().event(name).data("null"), 4),
    }
}

impl StreamTx {
    /// Queues `event`; false when the stream is over: the client went away, its
    /// lifetime ended, or it has not taken anything for [`STALLED_AFTER`] with its queue
    /// full (of events or of bytes). The caller then stops.
    pub async fn send(&self, (event, size): (Event, usize)) -> bool {
        if Instant::now() >= self.ends_at {
            return false;
        }
        let stalled_at = Instant::now() + STALLED_AFTER;
        // Over the byte budget: wait for the client to take some (one event alone may
        // be bigger than the budget; it goes when the queue is empty).
        while self.queued.load(Ordering::Relaxed) > 0
            && self.queued.load(Ordering::Relaxed) + size > QUEUE_BYTES
        {
            if self.tx.is_closed() || Instant::now() >= stalled_at.min(self.ends_at) {
                return self.dropped(size);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.queued.fetch_add(size, Ordering::Relaxed);
        let deadline = stalled_at.min(self.ends_at);
        match tokio::time::timeout_at(deadline, self.tx.send((event, size))).await {
            Ok(Ok(())) => true,
            _ => {
                self.queued.fetch_sub(size, Ordering::Relaxed);
                self.dropped(size)
            }
        }
    }

    fn dropped(&self, size: usize) -> bool {
        if !self.tx.is_closed() && Instant::now() < self.ends_at {
            tracing::info!(
                queued = self.queued.load(Ordering::Relaxed),
                next = size,
                "an event stream's client stopped reading; dropping it"
            );
            metrics::counter!("urna_api_streams_dropped_total", "reason" => "not_reading")
                .increment(1);
        }
        false
    }

    /// Resolves when the client has gone away or the stream's lifetime is over.
    pub async fn over(&self) {
        tokio::select! {
            () = self.tx.closed() => {}
            () = tokio::time::sleep_until(self.ends_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never reads: the queue takes events up to its byte budget, then
    /// the stream is dropped after STALLED_AFTER, never holding more than the budget.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped_and_its_queue_stays_bounded() {
        let (tx, _response) = open(Duration::from_secs(3600));
        let big = "x".repeat(400 * 1024);
        let started = Instant::now();
        let mut sent = 0;
        while tx.send(data_event("logs", &big)).await {
            sent += 1;
            assert!(tx.queued.load(Ordering::Relaxed) <= QUEUE_BYTES);
        }
        assert_eq!(sent, 2, "two 400-KiB events fit in 1 MiB, a third does not");
        assert_eq!(started.elapsed(), STALLED_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_over_at_the_end_of_its_lifetime() {
        let (tx, _response) = open(Duration::from_secs(5));
        let started = Instant::now();
        tx.over().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(!tx.send(data_event("results", &1)).await);
    }
}
