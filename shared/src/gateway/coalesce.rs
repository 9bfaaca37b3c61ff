//! Coalescing of identical misses (single-flight): when identical cacheable requests of one
//! tenant arrive together, only the first (the *leader*) calls the provider; the others
//! (*followers*) wait for its answer and are served it, `x-sluice-cache: coalesced`, billed and
//! admitted like a cache hit.
//!
//! This is the second half of the pipeline's "lookup" stage: after a cache miss,
//! [`Coalescer::join`] says whether this request leads (calls the provider, then hands its
//! answer over with [`Lead::land`]), is answered by another request's call, or goes alone.
//! Identity is the cache key, which holds the tenant: tenants never share a flight.
//!
//! Two levels:
//! - **Within a process**, a map from cache key to a `watch` channel: the process's first
//!   request of a key registers; the others subscribe and wait, at no store cost.
//! - **Across processes** (several `sluice serve` over one store, Lambda instances), that first
//!   request takes the key's in-flight marker with a conditional write: in the same write as
//!   its reservation when a limit applies (the admit stage,
//!   [`LimitStore::apply_leading`](crate::store::LimitStore::apply_leading): no write of its
//!   own, and a refused request leaves no marker), else on its own
//!   ([`CacheStore::flight_begin`](crate::store::CacheStore::flight_begin)). It is leased for 10 s
//!   and renewed every 3 s while the leader works (a call under 3 s costs no renewal; a dead
//!   leader's process is taken over within 10 s). If another process holds it, this request
//!   polls the store ([`CacheStore::flight_poll`](crate::store::CacheStore::flight_poll): the entry and the
//!   marker in one read) on behalf of every follower in its process, after 20 ms, then twice as
//!   long each time up to 500 ms, until the answer is stored (served), the marker is gone or
//!   its lease ran out (the leader failed or died: it takes over and calls the provider), or
//!   its wait is over (it calls the provider itself). So a process polls a key at most
//!   `5 + 2 × wait_s` times however many of its requests wait for it.
//!
//! A leader that stores its answer leaves its marker: the entry, newer than the marker, marks
//! it spent. A leader that fails, is cancelled, or cannot store its answer ends the marker and
//! tells its local followers, and one of them takes over (the others follow it): no follower
//! gets an error for having waited. Every wait is bounded by `cache.coalesce_wait_s` and by
//! the request's own deadline (held to the invocation's on Lambda); a store failure here only
//! ends coalescing for that request, never the request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::store::{CacheKey, CachedResponse, FlightBegin, FlightClaim, SharedStore};

/// How long a leader's in-flight marker holds without renewal: a leader whose process died is
/// taken over this long after its last renewal at most.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a leader still calling renews its marker's lease (so a call under this long
/// costs no renewal).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// First wait between two polls of another process's flight.
pub const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest wait between two polls.
pub const MAX_POLL: Duration = Duration::from_millis(500);

/// Where a process's flight of a key is.
#[derive(Debug, Clone)]
enum Outcome {
    Flying,
    Landed(CachedResponse),
    Failed,
}

/// This process's flights: cache digest → (the flight's id, its followers' channel).
type Flights = HashMap<[u8; 32], (u64, watch::Receiver<Outcome>)>;

/// What [`Coalescer::join`] decided for a request that missed the cache.
pub enum Joined {
    /// Call the provider, then [`Lead::land`] the answer (dropping it unlanded lets a
    /// follower take over).
    Lead(Lead),
    /// Another request's answer: serve it.
    Answer(CachedResponse),
    /// Waited as long as allowed: call the provider without leading anyone.
    Alone,
}

/// Single-flight of identical misses, in this process and across processes through the store.
pub struct Coalescer {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    wait: Duration,
    lease: Duration,
    renew_every: Duration,
    local: Mutex<Flights>,
    next_id: AtomicU64,
}

impl Coalescer {
    /// A coalescer whose followers wait at most `wait`.
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>, wait: Duration) -> Self {
        Self {
            store,
            clock,
            wait,
            lease: LEASE,
            renew_every: RENEW_EVERY,
            local: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// The same with another lease and renewal period (tests make them short).
    pub fn with_lease(mut self, lease: Duration, renew_every: Duration) -> Self {
        self.lease = lease;
        self.renew_every = renew_every;
        self
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Decides who calls the provider for `key` after a miss (within the process: a lead
    /// still has the store's marker to take, see [`Lead`]). `landed_ms` is the creation time
    /// of the (stale or too old) entry the lookup saw, 0 if none; `request_deadline` the
    /// request's own, which bounds the wait too.
    pub async fn join(
        self: &Arc<Self>,
        key: &CacheKey,
        landed_ms: u64,
        request_deadline: std::time::Instant,
    ) -> Joined {
        let waited = crate::invocation::deadline_within(self.wait).min(request_deadline);
        let deadline = Instant::from_std(waited);
        loop {
            match self.local_role(key) {
                Role::Follow(mut rx) => {
                    let waited = tokio::time::timeout_at(
                        deadline,
                        rx.wait_for(|o| !matches!(o, Outcome::Flying)),
                    )
                    .await;
                    match waited {
                        Err(_) => return Joined::Alone,
                        Ok(Ok(outcome)) => {
                            if let Outcome::Landed(entry) = &*outcome {
                                return Joined::Answer(entry.clone());
                            }
                            // The leader failed: take over, or follow whoever did.
                        }
                        // The leader is gone without a word (cancelled): likewise.
                        Ok(Err(_)) => {}
                    }
                }
                Role::Lead(slot) => {
                    // Across processes it leads once it holds the store's marker: taken with
                    // its reservation ([`Lead::claim`]), or on its own ([`Lead::begin`]).
                    return Joined::Lead(Lead {
                        slot,
                        marker: None,
                        claim: Some(Box::new(Pending {
                            claim: FlightClaim {
                                key: key.clone(),
                                token: crate::keys::random_alnum(20),
                                now_ms: 0,
                                lease_ms: self.lease_ms(),
                                landed_ms,
                            },
                            deadline,
                            delay: FIRST_POLL,
                        })),
                    });
                }
            }
        }
    }

    /// This process's flights of keys now (for tests: none is left behind).
    pub fn local_flights(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flights> {
        // A poisoned lock only means a panic elsewhere mid-update; the map itself is intact.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows this process's flight of `key`, or registers one.
    fn local_role(self: &Arc<Self>, key: &CacheKey) -> Role {
        let mut map = self.lock();
        if let Some((_, rx)) = map.get(&key.digest)
            && matches!(*rx.borrow(), Outcome::Flying)
            && rx.has_changed().is_ok()
        {
            return Role::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(Outcome::Flying);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.digest, (id, rx));
        Role::Lead(Slot {
            coalescer: Arc::clone(self),
            digest: key.digest,
            id,
            tx: Some(tx),
        })
    }
}

enum Role {
    Follow(watch::Receiver<Outcome>),
    Lead(Slot),
}

/// A process's flight of one key: its entry in the local map and the channel its followers
/// wait on. Dropped without an outcome, it tells them it failed.
struct Slot {
    coalescer: Arc<Coalescer>,
    digest: [u8; 32],
    id: u64,
    tx: Option<watch::Sender<Outcome>>,
}

impl Slot {
    fn finish(mut self, outcome: Outcome) {
        self.publish(outcome);
    }

    fn publish(&mut self, outcome: Outcome) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut map = self.coalescer.lock();
            if map.get(&self.digest).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.digest);
            }
        }
        // Followers may all have given up: nobody to tell is fine.
        let _ = tx.send(outcome);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.publish(Outcome::Failed);
    }
}

/// Renews a leader's marker for `lease_ms` every `every` until it is aborted (the lead ended)
/// or the marker is no longer its own.
async fn renew(
    store: SharedStore,
    clock: Arc<dyn Clock>,
    key: CacheKey,
    token: String,
    (lease_ms, every): (u64, Duration),
) {
    loop {
        tokio::time::sleep(every).await;
        match store
            .flight_renew(&key, &token, clock.now_ms(), lease_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            // The next renewal may succeed; if none does, a follower takes over: one more
            // provider call, never a wrong answer.
            Err(e) => tracing::warn!(error = %e, "could not renew an in-flight marker"),
        }
    }
}

/// The store's in-flight marker a leader holds, and the task renewing its lease.
struct Marker {
    store: SharedStore,
    key: CacheKey,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Marker {
    async fn end(self) {
        self.renewal.abort();
        if let Err(e) = self.store.flight_end(&self.key, &self.token).await {
            // Its lease ends it anyway; followers elsewhere wait until then at most.
            tracing::warn!(error = %e, "could not end an in-flight marker");
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        // A landed leader's marker stays (spent by its entry) but is renewed no more.
        self.renewal.abort();
    }
}

/// The right, and duty, to call the provider for a key and hand the answer to the requests
/// waiting for it. Within the process it is this request's from [`Coalescer::join`]; across
/// processes once it holds the store's in-flight marker, taken in the reservation's write
/// ([`Lead::claim`], [`Lead::claimed`]) or on its own ([`Lead::begin`]) — or never, when it
/// waited for another process's flight as long as allowed and calls alone. Dropped without
/// [`Lead::land`] (the call failed, the request was refused or cancelled), it ends its marker
/// and then tells its followers, so one of them takes over.
pub struct Lead {
    slot: Slot,
    marker: Option<Marker>,
    claim: Option<Box<Pending>>,
}

/// A lead's store marker not taken yet, and its waiting for other processes' flights so far.
struct Pending {
    /// The marker to take; `landed_ms` is the newest entry seen (a flight that began before
    /// it has landed), `now_ms` set at each attempt.
    claim: FlightClaim,
    /// Waiting for another process's flight ends here.
    deadline: Instant,
    /// Next wait between two polls.
    delay: Duration,
}

/// Where a lead's attempt to take the store's marker left it.
pub enum Across {
    /// Still leading: with the marker, with its claim to try again (the other flight ended),
    /// or without either (the wait is over: it calls alone).
    Lead(Lead),
    /// The other process's answer, fresh: serve it (this process's followers have it too).
    Answer(CachedResponse),
}

impl Lead {
    /// The store's marker to take with the reservation's write, as of now, unless taken
    /// already or given up (`None`).
    pub fn claim(&mut self) -> Option<&FlightClaim> {
        let now_ms = self.slot.coalescer.clock.now_ms();
        let pending = self.claim.as_mut()?;
        pending.claim.now_ms = now_ms;
        Some(&pending.claim)
    }

    /// The claim's marker was taken: it is renewed while this lead calls.
    pub fn claimed(&mut self) {
        let Some(pending) = self.claim.take() else {
            return;
        };
        let FlightClaim {
            key,
            token,
            lease_ms,
            ..
        } = pending.claim;
        let coalescer = &self.slot.coalescer;
        let renewal = tokio::spawn(renew(
            Arc::clone(&coalescer.store),
            Arc::clone(&coalescer.clock),
            key.clone(),
            token.clone(),
            (lease_ms, coalescer.renew_every),
        ));
        self.marker = Some(Marker {
            store: Arc::clone(&coalescer.store),
            key,
            token,
            renewal,
        });
    }

    /// Takes the store's marker with a write of its own (nothing else was to be written):
    /// leads, or follows another process's flight ([`Lead::follow`]) until it lands or ends.
    pub async fn begin(mut self, fresh: impl Fn(&CachedResponse, u64) -> bool) -> Across {
        loop {
            let store = Arc::clone(&self.slot.coalescer.store);
            let Some(claim) = self.claim() else {
                return Across::Lead(self);
            };
            let begun = store
                .flight_begin(
                    &claim.key,
                    &claim.token,
                    claim.now_ms,
                    claim.lease_ms,
                    claim.landed_ms,
                )
                .await;
            match begun {
                Ok(FlightBegin::Leading) => {
                    self.claimed();
                    return Across::Lead(self);
                }
                Ok(FlightBegin::Following(_)) => match self.follow(&fresh).await {
                    Across::Lead(lead) => self = lead,
                    answer => return answer,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "in-flight marker failed; calling the provider");
                    self.claim = None;
                    return Across::Lead(self);
                }
            }
        }
    }

    /// Another process's flight holds the marker: polls the store until its answer lands
    /// (served, to this process's followers too), or its flight ends (back as a lead with its
    /// claim, to try again), or the wait is over (back as a lead without one: call alone).
    /// `fresh` says whether an entry may answer.
    pub async fn follow(mut self, fresh: impl Fn(&CachedResponse, u64) -> bool) -> Across {
        let Some(pending) = self.claim.as_mut() else {
            return Across::Lead(self);
        };
        let coalescer = Arc::clone(&self.slot.coalescer);
        loop {
            tokio::time::sleep_until((Instant::now() + pending.delay).min(pending.deadline)).await;
            pending.delay = (pending.delay * 2).min(MAX_POLL);
            let now = coalescer.clock.now_ms();
            let poll = match coalescer.store.flight_poll(&pending.claim.key, now).await {
                Ok(poll) => poll,
                Err(e) => {
                    tracing::warn!(error = %e, "in-flight poll failed; calling the provider");
                    self.claim = None;
                    return Across::Lead(self);
                }
            };
            let landed = &mut pending.claim.landed_ms;
            if let Some(entry) = poll.entry {
                if fresh(&entry, now) {
                    self.slot.publish(Outcome::Landed(entry.clone()));
                    return Across::Answer(entry);
                }
                *landed = (*landed).max(entry.created_at_ms);
            }
            if Instant::now() >= pending.deadline {
                self.claim = None;
                return Across::Lead(self);
            }
            match poll.flight {
                Some(flight) if flight.started_at_ms > *landed => {}
                // Gone, run out, or spent: try to take over.
                _ => return Across::Lead(self),
            }
        }
    }

    /// Serves the answer to this process's followers now; the store's marker stays with the
    /// [`Landing`] until the entry is written.
    pub fn publish(mut self, entry: CachedResponse) -> Landing {
        let marker = self.marker.take();
        self.slot.publish(Outcome::Landed(entry));
        Landing { marker }
    }

    /// [`Lead::publish`], then [`Landing::stored`].
    pub async fn land(self, entry: CachedResponse, stored: bool) {
        self.publish(entry).stored(stored).await;
    }
}

/// A lead whose answer this process's followers have: what is left is the store's marker,
/// renewed until the entry is written.
pub struct Landing {
    marker: Option<Marker>,
}

impl Landing {
    /// `stored` says whether the entry is in the store, where other processes' followers find
    /// it (if not, the marker is ended so one of them calls the provider instead of waiting
    /// for an entry that will not come).
    pub async fn stored(self, stored: bool) {
        if let (Some(marker), false) = (self.marker, stored) {
            marker.end().await;
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let Some(marker) = self.marker.take() else {
            // No marker: the slot's own drop tells the followers.
            return;
        };
        // End the marker first, so that the follower taking over finds it gone. On Lambda this
        // is owed work the invocation awaits; without a runtime the slot's drop still tells.
        let slot = Slot {
            coalescer: Arc::clone(&self.slot.coalescer),
            digest: self.slot.digest,
            id: self.slot.id,
            tx: self.slot.tx.take(),
        };
        crate::invocation::after_response(async move {
            marker.end().await;
            slot.finish(Outcome::Failed);
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::sqlite::SqliteStore;

    const T0: u64 = 1_800_000_000_000;

    fn key() -> CacheKey {
        CacheKey {
            digest: [7; 32],
            tenant: "t1".into(),
        }
    }

    fn entry(body: &'static str) -> CachedResponse {
        CachedResponse {
            body: Bytes::from_static(body.as_bytes()),
            created_at_ms: T0 + 1,
            expires_at_ms: T0 + 60_000,
            purge_at_ms: T0 + 120_000,
        }
    }

    fn coalescer(store: &SharedStore, wait: Duration) -> Arc<Coalescer> {
        Arc::new(Coalescer::new(
            Arc::clone(store),
            Arc::new(ManualClock::new(T0)),
            wait,
        ))
    }

    fn fresh(e: &CachedResponse, now: u64) -> bool {
        now < e.expires_at_ms
    }

    /// Joins as a request without limits does: a lead takes the store's marker on its own.
    async fn join(c: &Arc<Coalescer>) -> Joined {
        let far = std::time::Instant::now() + Duration::from_secs(60);
        match c.join(&key(), 0, far).await {
            Joined::Lead(lead) => match lead.begin(fresh).await {
                Across::Lead(lead) => Joined::Lead(lead),
                Across::Answer(entry) => Joined::Answer(entry),
            },
            joined => joined,
        }
    }

    fn store() -> SharedStore {
        Arc::new(SqliteStore::open(":memory:").unwrap())
    }

    #[tokio::test]
    async fn followers_in_the_process_get_the_leaders_answer_without_a_store_call() {
        let store = store();
        let c = coalescer(&store, Duration::from_secs(5));
        let Joined::Lead(lead) = join(&c).await else {
            panic!("the first request leads")
        };
        let followers: Vec<_> = (0..5)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { join(&c).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        lead.land(entry("answer"), true).await;
        for f in followers {
            let Joined::Answer(got) = f.await.unwrap() else {
                panic!("a follower is answered")
            };
            assert_eq!(got.body, "answer");
        }
        assert_eq!(c.local_flights(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_ends_its_marker_and_one_follower_takes_over() {
        let store = store();
        let c = coalescer(&store, Duration::from_secs(5));
        let Joined::Lead(lead) = join(&c).await else {
            panic!("the first request leads")
        };
        let followers: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { join(&c).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The leader's request is dropped mid-call (its client went away).
        drop(lead);
        // One follower leads now, holding a marker of its own; the others wait for it.
        let mut next = None;
        let mut waiting = Vec::new();
        for mut f in followers {
            match tokio::time::timeout(Duration::from_millis(500), &mut f).await {
                Ok(Ok(Joined::Lead(l))) => {
                    assert!(next.is_none(), "one follower takes over");
                    next = Some(l);
                }
                Ok(_) => panic!("a follower may only take over"),
                Err(_) => waiting.push(f),
            }
        }
        let next = next.expect("a follower took over");
        assert_eq!(waiting.len(), 2);
        let poll = store.flight_poll(&key(), T0).await.unwrap();
        let token = next.marker.as_ref().map(|m| m.token.clone());
        assert!(token.is_some(), "with the store's marker");
        assert_eq!(poll.flight.map(|f| f.token), token);
        next.land(entry("second"), true).await;
        for f in waiting {
            let Joined::Answer(got) = f.await.unwrap() else {
                panic!("the rest get the new leader's answer")
            };
            assert_eq!(got.body, "second");
        }
        assert_eq!(c.local_flights(), 0);
    }

    #[tokio::test]
    async fn another_process_polls_until_the_answer_is_stored() {
        let store = store();
        let a = coalescer(&store, Duration::from_secs(5));
        let b = coalescer(&store, Duration::from_secs(5));
        let Joined::Lead(lead) = join(&a).await else {
            panic!("the first request leads")
        };
        let follower = tokio::spawn({
            let b = Arc::clone(&b);
            async move { join(&b).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!follower.is_finished(), "it waits for the answer");
        store.cache_put(&key(), &entry("stored")).await.unwrap();
        lead.land(entry("stored"), true).await;
        let Joined::Answer(got) = follower.await.unwrap() else {
            panic!("the other process is answered from the store")
        };
        assert_eq!(got.body, "stored");
    }

    #[tokio::test]
    async fn a_leader_working_past_its_lease_renews_it_and_is_not_taken_over() {
        let store = store();
        let short = |c: Coalescer| {
            Arc::new(c.with_lease(Duration::from_millis(300), Duration::from_millis(100)))
        };
        let clock = || Arc::new(crate::clock::SystemClock);
        let a = short(Coalescer::new(
            Arc::clone(&store),
            clock(),
            Duration::from_secs(5),
        ));
        let b = short(Coalescer::new(
            Arc::clone(&store),
            clock(),
            Duration::from_secs(5),
        ));
        let Joined::Lead(lead) = join(&a).await else {
            panic!("the first request leads")
        };
        let follower = tokio::spawn({
            let b = Arc::clone(&b);
            async move { join(&b).await }
        });
        // Three leases long: without renewal the other process would have taken over.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!follower.is_finished(), "the leader's renewed lease holds");
        let now = crate::clock::SystemClock.now_ms();
        let mut stored = entry("late but whole");
        stored.created_at_ms = now;
        stored.expires_at_ms = now + 60_000;
        stored.purge_at_ms = now + 120_000;
        store.cache_put(&key(), &stored).await.unwrap();
        lead.land(stored, true).await;
        let Joined::Answer(got) = follower.await.unwrap() else {
            panic!("the follower is answered, not made to call")
        };
        assert_eq!(got.body, "late but whole");
    }

    #[tokio::test]
    async fn an_answer_that_was_not_stored_ends_the_marker_for_other_processes() {
        let store = store();
        let a = coalescer(&store, Duration::from_secs(5));
        let b = coalescer(&store, Duration::from_secs(5));
        let Joined::Lead(lead) = join(&a).await else {
            panic!("the first request leads")
        };
        let follower = tokio::spawn({
            let b = Arc::clone(&b);
            async move { join(&b).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Too large to store, say: the other process must not wait for an entry.
        lead.land(entry("big"), false).await;
        let joined = tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(joined, Joined::Lead(_)),
            "it calls the provider itself"
        );
    }

    #[tokio::test]
    async fn a_lead_with_limits_takes_the_marker_in_its_reservation_and_another_follows_it() {
        use crate::store::{Applied, CounterField, Increment};
        let store = store();
        let a = coalescer(&store, Duration::from_secs(5));
        let b = coalescer(&store, Duration::from_secs(5));
        let far = std::time::Instant::now() + Duration::from_secs(60);
        let rpm = Increment {
            counter: "rate:key:k1:rpm:1".into(),
            field: CounterField::Count,
            delta: 1,
            at_most: Some(10),
            expires_at_ms: T0 + 120_000,
            guard: None,
        };
        let Joined::Lead(mut first) = a.join(&key(), 0, far).await else {
            panic!("the first request leads in its process")
        };
        let Joined::Lead(mut second) = b.join(&key(), 0, far).await else {
            panic!("and so does the first of another process")
        };
        // Nothing is in the store before the reservation's write.
        assert_eq!(store.flight_poll(&key(), T0).await.unwrap().flight, None);
        let claim = first
            .claim()
            .expect("a claim until the marker is taken")
            .clone();
        assert_eq!(
            store
                .apply_leading(std::slice::from_ref(&rpm), None, &claim)
                .await
                .unwrap(),
            Applied::Granted
        );
        first.claimed();
        assert!(first.claim().is_none(), "taken");
        let held = store.flight_poll(&key(), T0).await.unwrap().flight.unwrap();
        assert_eq!(held.token, claim.token);
        // The other process's reservation is refused by the marker, with nothing applied.
        let other = second.claim().unwrap().clone();
        assert_eq!(
            store
                .apply_leading(std::slice::from_ref(&rpm), None, &other)
                .await
                .unwrap(),
            Applied::InFlight(held)
        );
        let counted = store
            .read_counters(&[(rpm.counter.clone(), CounterField::Count)])
            .await
            .unwrap();
        assert_eq!(counted, vec![1]);
        let follower = tokio::spawn(second.follow(fresh));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!follower.is_finished(), "it waits for the answer");
        store.cache_put(&key(), &entry("stored")).await.unwrap();
        first.land(entry("stored"), true).await;
        let Across::Answer(got) = follower.await.unwrap() else {
            panic!("the other process is served the stored answer")
        };
        assert_eq!(got.body, "stored");
        assert_eq!((a.local_flights(), b.local_flights()), (0, 0));
    }
}
