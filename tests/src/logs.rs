//! Log lines captured in memory, for tests that check what was (and was not) logged.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// Everything the subscriber writing here wrote; clones share the lines.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// `subscriber` (writing to a clone of this) as this thread's default until the guard
    /// drops.
    pub fn set_default(
        subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    ) -> DefaultGuard {
        let guard = tracing::subscriber::set_default(subscriber);
        Self::refresh();
        guard
    }

    /// Recomputes which log call sites are enabled. Other tests' threads, without this
    /// thread's subscriber, register call sites concurrently and may cache them as disabled
    /// (tracing-core recomputes interest per call site without a lock against new
    /// subscribers); a line missing for that reason would fail a check of the lines.
    pub fn refresh() {
        tracing::callsite::rebuild_interest_cache();
    }

    /// The lines so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
