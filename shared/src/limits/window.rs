//! Sliding-window rate limiting (the "sliding window counter" approximation).
//!
//! Time is cut into fixed one-minute windows, each with a counter. The load over the last
//! minute is estimated as `previous × (1 − elapsed) + current`, where `elapsed` is the
//! fraction of the current window gone by. A request of `n` units (1 for requests per minute,
//! its tokens for tokens per minute) is admitted iff `previous × (1 − elapsed) + current + n
//! ≤ limit`. The previous window is closed, so that is a condition on the current counter
//! alone — `current + n ≤ limit − ⌈previous × (1 − elapsed)⌉` — which the store checks and
//! applies in one conditional write. Unlike a plain fixed window, a burst at the end of one
//! window still counts against the start of the next, so a boundary never lets 2× through.

/// Window length.
pub const WINDOW_MS: u64 = 60_000;

/// Where `now_ms` falls: the window index and the elapsed fraction of that window.
pub fn position(now_ms: u64) -> (u64, f64) {
    (
        now_ms / WINDOW_MS,
        (now_ms % WINDOW_MS) as f64 / WINDOW_MS as f64,
    )
}

/// The weight the previous window still carries.
fn carried(previous: i64, elapsed: f64) -> i64 {
    crate::num::f64_to_i64((previous.max(0) as f64 * (1.0 - elapsed)).ceil())
}

/// The most the current window's counter may hold after admitting a request.
pub fn ceiling(limit: u64, previous: i64, elapsed: f64) -> i64 {
    crate::num::to_i64(limit).saturating_sub(carried(previous, elapsed))
}

/// The estimated load over the last minute.
pub fn estimate(previous: i64, current: i64, elapsed: f64) -> i64 {
    carried(previous, elapsed) + current.max(0)
}

/// Seconds until a request of `n` units would be admitted, given the counters now.
pub fn retry_after_s(limit: u64, previous: i64, current: i64, n: u64, elapsed: f64) -> u64 {
    let (limit, previous, current, n) = (
        limit as f64,
        previous.max(0) as f64,
        current.max(0) as f64,
        n as f64,
    );
    let window_s = WINDOW_MS as f64 / 1000.0;
    let room_now = limit - current - n;
    let wait_s = if room_now >= 0.0 && previous > 0.0 {
        // Later in this window, once enough of the previous window has decayed away.
        let needed = 1.0 - room_now / previous;
        (needed - elapsed) * window_s
    } else {
        // In the next window, where this window becomes the previous one.
        let to_next = (1.0 - elapsed) * window_s;
        let needed = if current > 0.0 {
            (1.0 - (limit - n) / current).max(0.0)
        } else {
            0.0
        };
        to_next + needed * window_s
    };
    crate::num::f64_to_u64(wait_s.ceil()).clamp(1, 2 * WINDOW_MS / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_window_admits_exactly_the_limit() {
        let mut current = 0;
        let mut admitted = 0;
        for _ in 0..50 {
            if current < ceiling(10, 0, 0.3) {
                current += 1;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn a_burst_at_a_boundary_does_not_double_the_limit() {
        // 10 admitted at the very end of window 0; right after the boundary the previous
        // window still weighs ~10, so nothing more fits; halfway, half of it has decayed.
        assert_eq!(ceiling(10, 10, 0.0), 0);
        assert_eq!(ceiling(10, 10, 0.01), 0);
        assert_eq!(ceiling(10, 10, 0.5), 5);
        assert_eq!(ceiling(10, 10, 0.95), 9);
        assert_eq!(estimate(10, 3, 0.5), 8);
    }

    #[test]
    fn retry_after_points_to_when_the_request_fits() {
        // Full window, no history: wait for the next window plus a share of it.
        assert_eq!(retry_after_s(10, 0, 10, 1, 0.5), 30 + 6);
        // Room in this window once the previous one decays: 10*(1-f) + 5 + 1 <= 10 → f >= 0.6.
        assert_eq!(retry_after_s(10, 10, 5, 1, 0.5), 6);
        assert!(retry_after_s(10, 0, 0, 1, 0.0) >= 1);
    }
}
