//! A request's usage event while the request is still running.
//!
//! The access-log middleware opens a ticket per request and fills it from the outcome; a
//! stream's metering adds its tokens and cost when the stream ends. Whoever lets go of the
//! ticket last sends the event: for JSON answers the middleware, as soon as the answer is
//! ready; for streams, after the last byte and the settled cost.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::event::UsageEvent;
use super::sink::UsageSink;

/// The event being filled in, and where it goes.
pub struct UsageTicket {
    sink: Arc<dyn UsageSink>,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    event: UsageEvent,
    /// Only armed tickets are sent (requests to model routes).
    armed: bool,
    ended: Option<Instant>,
}

impl std::fmt::Debug for UsageTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTicket")
            .field("request_id", &self.lock().event.request_id)
            .finish_non_exhaustive()
    }
}

impl UsageTicket {
    /// A ticket for a request that started now (`time_ms` on the gateway's clock).
    pub fn new(sink: Arc<dyn UsageSink>, event: UsageEvent) -> Self {
        Self {
            sink,
            started: Instant::now(),
            state: Mutex::new(State {
                event,
                armed: false,
                ended: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the event in and marks it to be sent.
    pub fn arm(&self, fill: impl FnOnce(&mut UsageEvent)) {
        let mut state = self.lock();
        fill(&mut state.event);
        state.armed = true;
    }

    /// Milliseconds since the request started.
    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// The response is complete (its last byte was handed over).
    pub fn end(&self) {
        self.lock().ended.get_or_insert_with(Instant::now);
    }

    /// A stream's final tokens and cost.
    pub fn stream_totals(&self, tokens_in: u64, tokens_out: u64, cost_nano_usd: u64) {
        let mut state = self.lock();
        state.event.tokens_in = tokens_in;
        state.event.tokens_out = tokens_out;
        state.event.cost_nano_usd = cost_nano_usd;
    }
}

impl Drop for UsageTicket {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if !state.armed {
            return;
        }
        let ended = state.ended.unwrap_or_else(Instant::now);
        // The ticket is going away: its event is handed over, not copied.
        let mut event = std::mem::take(&mut state.event);
        event.latency_ms = ended.duration_since(self.started).as_secs_f64() * 1000.0;
        self.sink.record(event);
    }
}
