//! The test clock: Pub/Sub durations (emulated) scaled to the real durations we wait.

use std::time::Duration;

/// Converts emulated durations to real ones. Pub/Sub's values (10 s ack deadlines, 600 s
/// backoff) stay what clients see; only how long the emulator actually waits is scaled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Real seconds per emulated second; 1.0 outside tests.
    scale: f64,
}

impl Clock {
    pub(crate) fn new(scale: f64) -> Self {
        Self { scale }
    }

    /// How long to really wait for `emulated`.
    pub(crate) fn real(&self, emulated: Duration) -> Duration {
        if self.scale == 1.0 { emulated } else { emulated.mul_f64(self.scale) }
    }

    /// How long to really wait for `secs` emulated seconds.
    pub(crate) fn real_secs(&self, secs: u64) -> Duration {
        self.real(Duration::from_secs(secs))
    }
}
