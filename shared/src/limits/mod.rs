//! Rate limits and spending caps that hold under any concurrency and across processes.
//!
//! Every limit is a counter in the store, changed only by conditional writes, so it holds
//! however many processes or Lambdas share the store:
//!
//! - [`rate`]: requests and tokens per minute, per key and per tenant (sliding window, see
//!   [`window`]).
//! - [`budget`]: spend per UTC day or month, per key, per tenant and for the whole gateway.
//!   Before a provider call the worst case is reserved (prompt estimate × input price +
//!   `max_tokens` × output price); after it, the reservation is settled to the real cost.
//!
//! One request's checks at every level go to the store as one atomic write
//! ([`LimitStore::apply`]): all levels are charged or none is, so a request refused by its
//! tenant's cap leaves nothing behind on its key's counters. A reservation that is never
//! settled (a crashed request) expires after `limits.reservation_ttl_s` and is given back by
//! [`Limiter::release_expired`], which housekeeping runs ([`crate::housekeeping`]).

pub mod budget;
pub mod period;
pub mod rate;
mod report;
pub mod window;

pub use report::GatewayLevel;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::clock::Clock;
use crate::config::{Config, LimitsConfig, TenantConfig};
use crate::keys::{KeyLimits, random_id};
use crate::store::{
    Applied, CounterField, FlightClaim, Hold, Increment, LimitStore, Settlement, StoreError,
};

/// What [`Limiter::admit_leading`] did.
#[derive(Debug)]
pub enum Admission {
    /// Reserved; and whether the in-flight marker was taken with the reservation.
    Granted(Grant, Marker),
    /// A limit refused the request: nothing was written.
    Refused(Refusal),
    /// Another request's flight holds the marker: nothing was written (follow it).
    InFlight,
}

/// Whether an admission took the in-flight marker it was asked to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Taken in the reservation's write.
    Taken,
    /// Not taken: no claim, or no limit applied and nothing was written.
    Skipped,
}

/// An admission made without a claim as a grant or a refusal.
fn unclaimed(admission: Admission) -> Result<Result<Grant, Refusal>, StoreError> {
    match admission {
        Admission::Granted(grant, _) => Ok(Ok(grant)),
        Admission::Refused(refusal) => Ok(Err(refusal)),
        Admission::InFlight => Err(StoreError::backend(
            "an in-flight marker reported without a claim",
        )),
    }
}

/// Who a request is limited as.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The calling key's id.
    pub key_id: &'a str,
    /// The key's tenant.
    pub tenant: &'a str,
    /// The key's own limits.
    pub key_limits: &'a KeyLimits,
}

/// What a provider call may use, at worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Prompt estimate + output ceiling.
    pub tokens: u64,
    /// Worst-case cost in nano-USD.
    pub cost_nano_usd: u64,
}

/// Which kind of limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests or tokens per minute.
    Rate,
    /// A spending cap.
    Budget,
}

/// Whose limit it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// The calling key's own.
    Key,
    /// The key's tenant's, shared by all its keys.
    Tenant,
    /// The whole gateway's (`limits.global_budget_usd`).
    Gateway,
}

impl Level {
    /// The name in error messages, usage reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Tenant => "tenant",
            Self::Gateway => "gateway",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Rate or budget.
    pub kind: LimitKind,
    /// Whose limit refused.
    pub level: Level,
    /// What is limited, e.g. `requests per minute`.
    pub metric: String,
    /// The limit (requests, tokens, or nano-USD for budgets).
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Seconds until this request would be admitted.
    pub retry_after_s: u64,
    /// Seconds until the limit's window or period resets.
    pub reset_s: u64,
    /// What the request needed of this limit (requests, tokens, or nano-USD).
    pub asked: u64,
    /// The request needs more than the limit's whole capacity: waiting cannot help, so it
    /// is answered 400, not 429 with a `Retry-After`.
    pub impossible: bool,
    /// Parts the limit is split into (1 when it is not): a sharded limit's `limit` and
    /// `remaining` are one part's, and a request must fit one part.
    pub shards: u32,
    /// The whole limit, all parts together (equal to `limit` when not sharded).
    pub whole: u64,
}

/// An admitted request's reservation, to settle with the real usage. Serializable: a job
/// waiting for a provider batch keeps its grant in the batch's record until the batch ends.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    hold_id: Option<String>,
    tokens: Vec<Increment>,
    budgets: Vec<Increment>,
    reserved_tokens: u64,
    reserved_cost: u64,
    /// When the hold becomes abandoned and may be released by any process.
    hold_expires_at_ms: u64,
}

impl Grant {
    /// Whether nothing was reserved (no limit applied).
    pub fn is_empty(&self) -> bool {
        self.hold_id.is_none()
    }
}

/// What one planned increment stands for (to explain a refusal).
#[derive(Debug, Clone)]
struct Meta {
    kind: LimitKind,
    /// A tokens-per-minute counter (settled to real usage), as opposed to requests.
    tokens: bool,
    level: Level,
    metric: String,
    limit: u64,
    previous: i64,
    elapsed: f64,
    ends_at_ms: u64,
    /// How many shards the counter has (a refusal by a counter whose every shard was tried
    /// is final).
    shards: u32,
    /// The whole limit, every shard's share together.
    whole: u64,
}

/// A planned atomic charge across all levels.
#[derive(Default)]
struct Plan {
    increments: Vec<Increment>,
    meta: Vec<Meta>,
}

/// Checks and records limits for requests.
pub struct Limiter {
    store: Arc<dyn LimitStore>,
    clock: Arc<dyn Clock>,
    config: LimitsConfig,
    tenants: HashMap<String, TenantConfig>,
    /// Closed rate windows' final counts, so each is read once per process.
    previous: Mutex<(u64, HashMap<String, i64>)>,
    /// Budget counters seen recently, for the soft-threshold check.
    watched: Mutex<HashSet<(String, u64, Level)>>,
    /// When this process next checks soft thresholds.
    maintenance_due_ms: AtomicU64,
    /// Shards of a large tenant or gateway cap (`limits.budget_shards`, else the store's).
    budget_shards: u32,
}

/// How far another process's clock may run ahead of ours when it judges a hold abandoned.
const SETTLE_CLOCK_MARGIN_MS: u64 = 30_000;

/// Splits `total` over `shards` as evenly as integers allow; shard `s` gets its part.
pub(crate) fn share(total: u64, shards: u32, s: u32) -> u64 {
    let n = u64::from(shards.max(1));
    total / n + u64::from(u64::from(s) < total % n)
}

impl Limiter {
    /// A limiter over the store's counters.
    pub fn new(config: &Config, store: Arc<dyn LimitStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            config: config.limits.clone(),
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect(),
            previous: Mutex::new((0, HashMap::new())),
            watched: Mutex::new(HashSet::new()),
            maintenance_due_ms: AtomicU64::new(0),
            budget_shards: config
                .limits
                .budget_shards
                .unwrap_or_else(|| store.default_budget_shards())
                .clamp(1, 64),
            store,
        }
    }

    /// The configured limits of a tenant, if any.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.get(name)
    }

    /// The limits configuration.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Whether a tokens-per-minute limit applies to the subject's requests.
    pub fn tokens_limited(&self, subject: &Subject<'_>) -> bool {
        subject.key_limits.tpm.is_some()
            || self
                .tenants
                .get(subject.tenant)
                .is_some_and(|t| t.tpm.is_some())
    }

    /// The first limit whose whole capacity is less than what the request needs — one
    /// request, and for a provider call (`ask`) its worst-case tokens and cost — so that no
    /// amount of waiting could admit it. Reads nothing from the store.
    pub fn beyond_capacity(&self, subject: &Subject<'_>, ask: Option<Ask>) -> Option<Refusal> {
        let shards = self.config.counter_shards.max(1);
        let tenant = self.tenants.get(subject.tenant);
        let key = subject.key_limits;
        let mut checks: Vec<(LimitKind, Level, &'static str, u64, u64, u32)> = Vec::new();
        for (level, rpm, tpm) in [
            (Level::Key, key.rpm, key.tpm),
            (
                Level::Tenant,
                tenant.and_then(|t| t.rpm),
                tenant.and_then(|t| t.tpm),
            ),
        ] {
            if let Some(rpm) = rpm {
                let metric = rate::Metric::Requests.describe();
                checks.push((LimitKind::Rate, level, metric, u64::from(rpm), 1, shards));
            }
            if let (Some(tpm), Some(ask)) = (tpm, ask) {
                let metric = rate::Metric::Tokens.describe();
                checks.push((
                    LimitKind::Rate,
                    level,
                    metric,
                    u64::from(tpm),
                    ask.tokens,
                    shards,
                ));
            }
        }
        if let Some(ask) = ask {
            let caps = [
                (Level::Key, key.budget_usd.zip(key.budget_period)),
                (
                    Level::Tenant,
                    tenant.and_then(|t| t.budget_usd.zip(t.period)),
                ),
                (
                    Level::Gateway,
                    self.config
                        .global_budget_usd
                        .map(|usd| (usd, self.config.global_period)),
                ),
            ];
            for (level, cap) in caps {
                if let Some((usd, period)) = cap {
                    let metric = match period {
                        crate::keys::BudgetPeriod::Day => "spend per day",
                        crate::keys::BudgetPeriod::Month => "spend per month",
                    };
                    let nanos = budget::usd_to_nanos(usd);
                    let shards = self.budget_shards_of(level, nanos);
                    checks.push((
                        LimitKind::Budget,
                        level,
                        metric,
                        nanos,
                        ask.cost_nano_usd,
                        shards,
                    ));
                }
            }
        }
        // Shard 0 holds the largest share of a sharded limit; what exceeds it fits no shard.
        let (kind, level, metric, limit, asked, shards) = checks
            .into_iter()
            .find(|&(_, _, _, limit, asked, shards)| asked > share(limit, shards, 0))?;
        Some(Refusal {
            kind,
            level,
            metric: metric.to_owned(),
            limit: share(limit, shards, 0),
            remaining: 0,
            retry_after_s: 0,
            reset_s: 0,
            asked,
            impossible: true,
            shards,
            whole: limit,
        })
    }

    /// Admits a request that will call a provider: one more request and `ask.tokens` tokens
    /// per minute at key and tenant, and `ask.cost_nano_usd` reserved against every spending
    /// cap — all or nothing.
    pub async fn admit(
        &self,
        subject: &Subject<'_>,
        ask: Ask,
    ) -> Result<Result<Grant, Refusal>, StoreError> {
        unclaimed(self.admit_with(subject, Some(ask), None, None).await?)
    }

    /// Admits like [`Limiter::admit`] and takes `claim`'s in-flight marker, if any, in the
    /// same write ([`LimitStore::apply_leading`]): [`Admission::InFlight`], with nothing
    /// applied, when another request's flight holds it; [`Marker::Skipped`] when there is no
    /// claim or no limit applies (nothing to write, so the caller takes the marker on its own).
    pub async fn admit_leading(
        &self,
        subject: &Subject<'_>,
        ask: Ask,
        claim: Option<&FlightClaim>,
    ) -> Result<Admission, StoreError> {
        self.admit_with(subject, Some(ask), None, claim).await
    }

    /// Admits like [`Limiter::admit`], with a reservation held until `hold_until_ms` instead of
    /// `limits.reservation_ttl_s` from now: a job waiting for a provider batch holds its
    /// reservation until its window ends.
    pub async fn admit_until(
        &self,
        subject: &Subject<'_>,
        ask: Ask,
        hold_until_ms: u64,
    ) -> Result<Result<Grant, Refusal>, StoreError> {
        unclaimed(
            self.admit_with(subject, Some(ask), Some(hold_until_ms), None)
                .await?,
        )
    }

    /// Admits a request answered from the cache: it counts against requests per minute only.
    pub async fn admit_cached(
        &self,
        subject: &Subject<'_>,
    ) -> Result<Result<(), Refusal>, StoreError> {
        Ok(unclaimed(self.admit_with(subject, None, None, None).await?)?.map(|_| ()))
    }

    async fn admit_with(
        &self,
        subject: &Subject<'_>,
        ask: Option<Ask>,
        hold_until_ms: Option<u64>,
        claim: Option<&FlightClaim>,
    ) -> Result<Admission, StoreError> {
        if let Some(refusal) = self.beyond_capacity(subject, ask) {
            return Ok(Admission::Refused(refusal));
        }
        // Each counter of the plan has its own number of shards n; attempt a uses shard
        // (first + a) mod n of each, so consecutive attempts try every shard of every counter.
        let shards = self.most_shards(subject, ask);
        let first = if shards > 1 {
            rand::rng().random_range(0..shards)
        } else {
            0
        };
        let mut refusal = None;
        let mut stale_retries = 0;
        // With sharded counters each shard holds its share of every limit; a request refused
        // by one shard tries the others before it is refused.
        let mut attempt = 0;
        while attempt < shards {
            let shard = first + attempt;
            let now = self.clock.now_ms();
            let plan = self.plan(subject, ask, now, shard).await?;
            if plan.increments.is_empty() {
                return Ok(Admission::Granted(Grant::default(), Marker::Skipped));
            }
            let mut grant = Grant::default();
            if let Some(ask) = ask {
                grant.reserved_tokens = ask.tokens;
                grant.reserved_cost = ask.cost_nano_usd;
                for (inc, meta) in plan.increments.iter().zip(&plan.meta) {
                    match (meta.kind, meta.tokens) {
                        (LimitKind::Budget, _) => grant.budgets.push(inc.clone()),
                        (LimitKind::Rate, true) => grant.tokens.push(inc.clone()),
                        (LimitKind::Rate, false) => {}
                    }
                }
            }
            let undo: Vec<Increment> = grant
                .tokens
                .iter()
                .chain(&grant.budgets)
                .map(|inc| Increment {
                    delta: -inc.delta,
                    at_most: None,
                    guard: None,
                    ..inc.clone()
                })
                .collect();
            let hold = (!undo.is_empty()).then(|| Hold {
                id: random_id("hold_", 20),
                undo,
                expires_at_ms: hold_until_ms.unwrap_or_else(|| {
                    now.saturating_add(self.config.reservation_ttl_s.saturating_mul(1000))
                }),
            });
            grant.hold_id = hold.as_ref().map(|h| h.id.clone());
            grant.hold_expires_at_ms = hold.as_ref().map_or(0, |h| h.expires_at_ms);
            let applied = match claim {
                Some(claim) => {
                    self.store
                        .apply_leading(&plan.increments, hold.as_ref(), claim)
                        .await?
                }
                None => self.store.apply(&plan.increments, hold.as_ref()).await?,
            };
            match applied {
                Applied::Granted => {
                    self.watch(&plan);
                    let marker = if claim.is_some() {
                        Marker::Taken
                    } else {
                        Marker::Skipped
                    };
                    return Ok(Admission::Granted(grant, marker));
                }
                Applied::InFlight(_) => return Ok(Admission::InFlight),
                Applied::Refused { index, current } => {
                    let Some(meta) = plan.meta.get(index) else {
                        return Err(StoreError::backend("refusal names no increment"));
                    };
                    let delta = crate::num::to_u64(plan.increments[index].delta);
                    refusal = Some(explain(meta, current.unwrap_or(0), delta, now));
                    if meta.shards <= attempt + 1 {
                        // Every shard of the refusing counter has been tried.
                        break;
                    }
                }
                Applied::Stale { .. } if stale_retries < 5 => {
                    // The previous window grew after it was read: read it again, same shard.
                    stale_retries += 1;
                    self.forget_previous();
                    continue;
                }
                Applied::Stale { .. } => {
                    return Err(StoreError::backend(
                        "rate window kept changing under the check",
                    ));
                }
            }
            attempt += 1;
        }
        match refusal {
            Some(r) => Ok(Admission::Refused(r)),
            None => Ok(Admission::Granted(Grant::default(), Marker::Skipped)),
        }
    }

    /// The writes that settle a grant to the real usage, for a caller that records them
    /// together with its own result ([`crate::store::JobStore::finish_job`]); `None` when
    /// nothing was reserved.
    pub fn settlement(&self, grant: &Grant, tokens: u64, cost_nano_usd: u64) -> Option<Settlement> {
        let hold_id = grant.hold_id.clone()?;
        let settle = |reserved_back: bool| -> Vec<Increment> {
            let mut out = Vec::new();
            for inc in &grant.tokens {
                let delta = signed(tokens)
                    - if reserved_back {
                        signed(grant.reserved_tokens)
                    } else {
                        0
                    };
                out.push(Increment {
                    delta,
                    at_most: None,
                    ..inc.clone()
                });
            }
            for inc in &grant.budgets {
                let delta = signed(cost_nano_usd)
                    - if reserved_back {
                        signed(grant.reserved_cost)
                    } else {
                        0
                    };
                out.push(Increment {
                    delta,
                    at_most: None,
                    ..inc.clone()
                });
                out.push(Increment {
                    field: CounterField::Spent,
                    delta: signed(cost_nano_usd),
                    at_most: None,
                    guard: None,
                    ..inc.clone()
                });
            }
            out
        };
        Some(Settlement {
            hold_id,
            increments: settle(true),
            // Without the hold, only what was really used (a zero change is no write).
            unheld: settle(false).into_iter().filter(|i| i.delta != 0).collect(),
        })
    }

    /// Settles a grant to the real usage: gives back what was reserved beyond it and records
    /// the spend. Safe to call with an empty grant.
    pub async fn settle(
        &self,
        grant: Grant,
        tokens: u64,
        cost_nano_usd: u64,
    ) -> Result<(), StoreError> {
        let Some(settlement) = self.settlement(&grant, tokens, cost_nano_usd) else {
            return Ok(());
        };
        // A failed settle is retried: given up, it would leave the spend unrecorded (the
        // hold expires and the whole reservation is given back).
        let settled = crate::store::retrying("settling a reservation", |failures| {
            let settlement = &settlement;
            async move {
                let settled = self
                    .store
                    .settle(&settlement.hold_id, &settlement.increments)
                    .await?;
                // After a failed try, a hold gone well before anyone could have released it
                // as abandoned was deleted by that try, which landed with its answer lost:
                // recording the usage again would bill the request twice.
                Ok(settled
                    || (failures > 0
                        && self.clock.now_ms().saturating_add(SETTLE_CLOCK_MARGIN_MS)
                            < grant.hold_expires_at_ms))
            }
        })
        .await?;
        // Otherwise the reservation was already given back as abandoned (the request outlived
        // `reservation_ttl_s`): record what it really used on its own.
        if !settled && !settlement.unheld.is_empty() {
            self.store.apply(&settlement.unheld, None).await?;
        }
        Ok(())
    }

    /// Gives back reservations of requests that never settled (crashed). Returns how many.
    pub async fn release_expired(&self) -> Result<usize, StoreError> {
        let holds = self.store.expired_holds(self.clock.now_ms(), 100).await?;
        let mut released = 0;
        for hold in holds {
            if self.store.settle(&hold.id, &hold.undo).await? {
                released += 1;
            }
        }
        if released > 0 {
            tracing::warn!(target: "sluice::limits", released, "released reservations of requests that never finished");
        }
        Ok(released)
    }

    /// The plan of increments for one shard.
    async fn plan(
        &self,
        subject: &Subject<'_>,
        ask: Option<Ask>,
        now: u64,
        attempt: u32,
    ) -> Result<Plan, StoreError> {
        let shards = self.config.counter_shards.max(1);
        // Rate counters and a key's cap have `counter_shards`; see `budget_shards_of`.
        let shard = attempt % shards;
        let tenant = self.tenants.get(subject.tenant);
        let mut rates = Vec::new();
        for (level, rpm, tpm) in [
            (Level::Key, subject.key_limits.rpm, subject.key_limits.tpm),
            (
                Level::Tenant,
                tenant.and_then(|t| t.rpm),
                tenant.and_then(|t| t.tpm),
            ),
        ] {
            let tpm = tpm.zip(ask);
            if rpm.is_none() && tpm.is_none() {
                // No rate at this level: no scope to name (most keys, on every request).
                continue;
            }
            let scope = match level {
                Level::Key => format!("key:{}", subject.key_id),
                _ => format!("tenant:{}", subject.tenant),
            };
            if let Some(rpm) = rpm {
                rates.push(rate::RateCheck {
                    level,
                    scope: scope.clone(),
                    metric: rate::Metric::Requests,
                    limit: share(u64::from(rpm), shards, shard),
                    whole: u64::from(rpm),
                    amount: 1,
                });
            }
            if let Some((tpm, ask)) = tpm {
                rates.push(rate::RateCheck {
                    level,
                    scope,
                    metric: rate::Metric::Tokens,
                    limit: share(u64::from(tpm), shards, shard),
                    whole: u64::from(tpm),
                    amount: ask.tokens,
                });
            }
        }
        let mut plan = Plan::default();
        if !rates.is_empty() {
            let (w, elapsed) = window::position(now);
            let previous = self.previous_counts(&rates, w, shard).await?;
            for (check, prev) in rates.into_iter().zip(previous) {
                let (inc, ends) = rate::increment(&check, w, shard, prev, elapsed);
                plan.meta.push(Meta {
                    kind: LimitKind::Rate,
                    tokens: check.metric == rate::Metric::Tokens,
                    level: check.level,
                    metric: check.metric.describe().into(),
                    limit: check.limit,
                    previous: prev,
                    elapsed,
                    ends_at_ms: ends,
                    shards,
                    whole: check.whole,
                });
                plan.increments.push(inc);
            }
        }
        if let Some(ask) = ask {
            for (level, scope, usd, period) in self.caps(subject) {
                let whole = budget::usd_to_nanos(usd);
                let shards = self.budget_shards_of(level, whole);
                let shard = attempt % shards;
                let cap = share(whole, shards, shard);
                let (inc, ends) =
                    budget::reserve(&scope, period, cap, ask.cost_nano_usd, now, shard);
                plan.meta.push(Meta {
                    kind: LimitKind::Budget,
                    tokens: false,
                    level,
                    metric: format!("spend per {}", period.as_str()),
                    limit: cap,
                    previous: 0,
                    elapsed: 0.0,
                    ends_at_ms: ends,
                    shards,
                    whole,
                });
                plan.increments.push(inc);
            }
        }
        Ok(plan)
    }

    /// The most shards any counter of the subject's request has: how many attempts it takes
    /// to try every shard of each.
    fn most_shards(&self, subject: &Subject<'_>, ask: Option<Ask>) -> u32 {
        let keyed = self.config.counter_shards.max(1);
        if ask.is_none() {
            return keyed;
        }
        self.caps(subject)
            .iter()
            .map(|(level, _, usd, _)| self.budget_shards_of(*level, budget::usd_to_nanos(*usd)))
            .fold(keyed, u32::max)
    }

    fn forget_previous(&self) {
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clear();
    }

    /// The counts of the previous window for each check, read once per window per process
    /// (each use is guarded: if it grew since, the store says so and it is read again).
    async fn previous_counts(
        &self,
        checks: &[rate::RateCheck],
        w: u64,
        shard: u32,
    ) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<String> = checks
            .iter()
            .map(|c| rate::counter_id(&c.scope, c.metric, w.saturating_sub(1), shard))
            .collect();
        let missing: Vec<(String, CounterField)> = {
            let mut cache = self.previous.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 != w {
                *cache = (w, HashMap::new());
            }
            ids.iter()
                .filter(|id| !cache.1.contains_key(*id))
                .map(|id| (id.clone(), CounterField::Count))
                .collect()
        };
        if !missing.is_empty() {
            let values = self.store.read_counters(&missing).await?;
            let mut cache = self.previous.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 == w {
                for ((id, _), v) in missing.into_iter().zip(values) {
                    cache.1.insert(id, v);
                }
            }
        }
        let cache = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids
            .iter()
            .map(|id| cache.1.get(id).copied().unwrap_or(0))
            .collect())
    }
}

/// An amount as a counter delta. Amounts come from clients (`max_tokens` is any u64): one
/// over `i64::MAX` must stay the largest delta, not wrap to a negative one that would lower
/// the counter and let the request through.
fn signed(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

/// Turns a refused increment into what the client is told.
fn explain(meta: &Meta, current: i64, amount: u64, now: u64) -> Refusal {
    match meta.kind {
        LimitKind::Rate => {
            let retry =
                window::retry_after_s(meta.limit, meta.previous, current, amount, meta.elapsed);
            let used = window::estimate(meta.previous, current, meta.elapsed);
            Refusal {
                kind: LimitKind::Rate,
                level: meta.level,
                metric: meta.metric.clone(),
                limit: meta.limit,
                remaining: crate::num::to_u64(signed(meta.limit).saturating_sub(used)),
                retry_after_s: retry,
                reset_s: retry,
                asked: amount,
                impossible: false,
                shards: meta.shards,
                whole: meta.whole,
            }
        }
        LimitKind::Budget => {
            let reset = meta.ends_at_ms.saturating_sub(now).div_ceil(1000).max(1);
            Refusal {
                kind: LimitKind::Budget,
                level: meta.level,
                metric: meta.metric.clone(),
                limit: meta.limit,
                remaining: crate::num::to_u64(signed(meta.limit).saturating_sub(current)),
                retry_after_s: reset,
                reset_s: reset,
                asked: amount,
                impossible: false,
                shards: meta.shards,
                whole: meta.whole,
            }
        }
    }
}
