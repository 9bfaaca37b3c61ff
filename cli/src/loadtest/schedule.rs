//! When requests start: the closed model (a fixed number of workers, each sending its next
//! request when the last one is answered) and the open model (a constant arrival rate, with
//! a cap on requests outstanding).
//!
//! Both take the request as a closure given the instant the request should have started, so
//! they know nothing of HTTP, and tests drive them on tokio's paused clock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// An open-model request that starts this long after its slot counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// What the scheduler itself saw (the requests' own outcomes are recorded by the closure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Open model: slots that found `max_in_flight` requests outstanding, so were not sent.
    pub dropped: u64,
    /// Open model: requests sent at least [`LATE_AFTER`] after their slot (the scheduler
    /// could not keep up; their latency counts from the slot).
    pub late: u64,
}

/// The `n`-th arrival's offset from the start at `rate` requests per second.
pub fn slot_offset(n: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate)
}

/// Arrivals at `rate` requests per second that fall inside `duration`: `ceil(rate × s)`.
pub fn slots_in(duration: Duration, rate: f64) -> u64 {
    let mut n = sluice::num::f64_to_u64((duration.as_secs_f64() * rate).ceil());
    // Guard the float rounding either way: the count is the first n whose slot is not inside.
    while n > 0 && slot_offset(n - 1, rate) >= duration {
        n -= 1;
    }
    while slot_offset(n, rate) < duration {
        n += 1;
    }
    n
}

/// Resolves once `stop` turns true; never if its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|&s| s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Closed model: `workers` loops, each sending one request at a time until `duration` has
/// passed (or `stop`); requests under way then are awaited.
pub async fn closed_loop<F, Fut>(
    workers: u32,
    duration: Duration,
    stop: watch::Receiver<bool>,
    send: F,
) -> Tally
where
    F: Fn(Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let send = Arc::new(send);
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let send = Arc::clone(&send);
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                let now = Instant::now();
                if now >= end || *stop.borrow() {
                    break;
                }
                send(now).await;
            }
        });
    }
    // A worker that panicked shows as a lost request in the summary.
    while tasks.join_next().await.is_some() {}
    Tally::default()
}

/// Open model: one request every `1/rate` s for `duration` (or until `stop`), each in its
/// own task, whatever the earlier ones are doing. A slot that finds `max_in_flight`
/// requests outstanding is dropped, not delayed. Requests under way at the end are awaited.
pub async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    max_in_flight: u32,
    mut stop: watch::Receiver<bool>,
    mut send: F,
) -> Tally
where
    F: FnMut(Instant) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight as usize));
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut tasks = JoinSet::new();
    for n in 0..slots_in(duration, rate) {
        let slot = start + slot_offset(n, rate);
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep_until(slot) => {}
        }
        // Reap finished tasks so the set holds only what is outstanding.
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tally.dropped += 1;
            continue;
        };
        if Instant::now().saturating_duration_since(slot) >= LATE_AFTER {
            tally.late += 1;
        }
        let request = send(slot);
        tasks.spawn(async move {
            request.await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    tally
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn never_stop() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    #[test]
    fn slots_cover_the_duration_exactly() {
        assert_eq!(slots_in(Duration::from_secs(2), 50.0), 100);
        assert_eq!(slots_in(Duration::from_secs(1), 3.0), 3);
        // 0, 0.4, 0.8 s are inside one second at 2.5/s.
        assert_eq!(slots_in(Duration::from_secs(1), 2.5), 3);
        assert_eq!(slots_in(Duration::from_millis(10), 1.0), 1);
        assert_eq!(slots_in(Duration::ZERO, 100.0), 0);
        // Awkward floats: 0.1 s at 30/s is slots 0, 1/30, 2/30 (3/30 = 0.1 is outside).
        assert_eq!(slots_in(Duration::from_millis(100), 30.0), 3);
        assert_eq!(slot_offset(3, 4.0), Duration::from_millis(750));
    }

    /// Records when each request started (relative to `t0`) and how many were outstanding.
    #[derive(Default)]
    struct Probe {
        starts_ms: Vec<u128>,
        in_flight: u32,
        max_in_flight: u32,
    }

    fn probe_sender(
        probe: &Arc<Mutex<Probe>>,
        t0: Instant,
        takes: Duration,
    ) -> impl Fn(Instant) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
    {
        let probe = Arc::clone(probe);
        move |slot| {
            let probe = Arc::clone(&probe);
            {
                let mut p = probe.lock().unwrap();
                p.starts_ms.push((slot - t0).as_millis());
            }
            Box::pin(async move {
                {
                    let mut p = probe.lock().unwrap();
                    p.in_flight += 1;
                    p.max_in_flight = p.max_in_flight.max(p.in_flight);
                }
                tokio::time::sleep(takes).await;
                probe.lock().unwrap().in_flight -= 1;
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_rate_when_answers_are_slow() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let t0 = Instant::now();
        let (_keep, stop) = never_stop();
        // 10/s for 1 s, each request taking 2.5 s: a closed loop would send far fewer.
        let send = probe_sender(&probe, t0, Duration::from_millis(2500));
        let tally = open_loop(10.0, Duration::from_secs(1), 100, stop, send).await;
        let p = probe.lock().unwrap();
        assert_eq!(tally, Tally::default());
        assert_eq!(p.starts_ms, (0..10).map(|i| i * 100).collect::<Vec<u128>>());
        assert_eq!(p.max_in_flight, 10);
        assert_eq!(p.in_flight, 0, "the loop waits for requests under way");
        // It returned when the last request (slot 0.9 s + 2.5 s) finished.
        assert_eq!(t0.elapsed(), Duration::from_millis(3400));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_drops_slots_over_the_in_flight_cap() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let t0 = Instant::now();
        let (_keep, stop) = never_stop();
        // 100/s for 1 s, each taking 45 ms, at most 2 outstanding: slots at 0 and 10 ms go,
        // 20..40 ms find both busy, 50 ms finds the first done — so 2 of every 5 are sent.
        let send = probe_sender(&probe, t0, Duration::from_millis(45));
        let tally = open_loop(100.0, Duration::from_secs(1), 2, stop, send).await;
        let p = probe.lock().unwrap();
        assert_eq!(p.max_in_flight, 2);
        assert_eq!(p.starts_ms.len() as u64 + tally.dropped, 100);
        assert_eq!(p.starts_ms.len(), 40);
        assert_eq!(&p.starts_ms[..4], &[0, 10, 50, 60]);
        assert_eq!(tally.late, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_stops_when_told() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let t0 = Instant::now();
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stop_tx.send(true).unwrap();
        });
        let send = probe_sender(&probe, t0, Duration::from_millis(1));
        open_loop(10.0, Duration::from_secs(10), 100, stop, send).await;
        // Slots at 0, 100 and 200 ms; none after the stop at 250 ms.
        assert_eq!(probe.lock().unwrap().starts_ms, vec![0, 100, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_the_next_request_when_the_last_is_answered() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let t0 = Instant::now();
        let (_keep, stop) = never_stop();
        // 4 workers, 100 ms per request, 1 s: 10 rounds of 4.
        let send = probe_sender(&probe, t0, Duration::from_millis(100));
        let tally = closed_loop(4, Duration::from_secs(1), stop, send).await;
        let p = probe.lock().unwrap();
        assert_eq!(tally, Tally::default());
        assert_eq!(p.starts_ms.len(), 40);
        assert_eq!(p.max_in_flight, 4);
        assert_eq!(p.starts_ms.iter().filter(|&&ms| ms == 900).count(), 4);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_load_falls_when_answers_slow_down() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let t0 = Instant::now();
        let (_keep, stop) = never_stop();
        let send = probe_sender(&probe, t0, Duration::from_millis(400));
        closed_loop(2, Duration::from_secs(1), stop, send).await;
        // Starts at 0, 400, 800 ms per worker; the last ones end at 1.2 s.
        assert_eq!(probe.lock().unwrap().starts_ms.len(), 6);
        assert_eq!(t0.elapsed(), Duration::from_millis(1200));
    }
}
