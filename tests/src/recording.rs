//! A usage sink that keeps a copy of every event before passing it on, so tests can compare
//! what the metrics API reports with the raw events.

use std::sync::{Arc, Mutex};

use sluice::metrics::{UsageEvent, UsageSink};

/// Records events and forwards them to `inner`.
pub struct RecordingSink {
    inner: Arc<dyn UsageSink>,
    events: Mutex<Vec<UsageEvent>>,
}

impl RecordingSink {
    /// Wraps a sink.
    pub fn new(inner: Arc<dyn UsageSink>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            events: Mutex::new(Vec::new()),
        })
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<UsageEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl UsageSink for RecordingSink {
    fn record(&self, event: UsageEvent) {
        self.events.lock().unwrap().push(event.clone());
        self.inner.record(event);
    }
}
