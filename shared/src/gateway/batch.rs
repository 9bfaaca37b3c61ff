//! Micro-batching of embedding requests: queued embedding jobs of the same tenant for the same
//! model and parameters go upstream as one request with an input array, and the answer is
//! split back.
//!
//! Each job keeps its own cache lookup and store (by its own tenant), its own slice of the
//! `data` array (re-indexed from 0) and its own usage: the provider's total prompt tokens are
//! apportioned by each job's estimated share, so the per-job costs add up to exactly what the
//! upstream call cost. Each job's spend comes back as its reply's settlement, which the
//! processor writes together with the job's result.
//!
//! **Isolation.** Tenants are never batched together: a provider's error about one input would
//! otherwise fail, and be stored in, another tenant's job. Within a tenant, a batched call the
//! provider refuses as invalid (a 4xx whose reason is passed to the client, e.g. one input over
//! the model's context length) is sent again job by job, so only the job at fault fails, with
//! the provider's reason about its own input alone. Other failures (5xx, timeouts) fail the
//! whole chunk with Sluice's own message, which quotes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::cache::{self, CacheControl, CacheStatus};
use super::request::{self, ParsedRequest};
use super::{Caller, Gateway, GatewayError, Reply, ReplyBody, Trace};
use crate::limits::Grant;
use crate::providers::{Endpoint, ProviderError, UpstreamResponse, Usage};
use crate::store::{CacheKey, CachedResponse};
use crate::tokens;

/// Most inputs sent in one upstream embeddings request (OpenAI's limit).
const MAX_INPUTS_PER_CALL: usize = 2048;

/// One embeddings request to answer as part of a batch.
pub struct BatchItem {
    /// Who submitted it.
    pub caller: Caller,
    /// The request body.
    pub body: Bytes,
    /// Its cache directives.
    pub cache_control: CacheControl,
}

/// The answer to one [`BatchItem`] and what it was routed to.
pub type BatchOutcome = (Result<Reply, GatewayError>, Trace);

/// What may share one upstream call: the same tenant, model, parameters and kind of input.
#[derive(PartialEq, Eq, Hash)]
struct Group {
    tenant: String,
    model: String,
    params: Vec<u8>,
    kind: InputKind,
}

/// A chunk the provider did not answer, with the reason, its jobs not yet settled.
type Unanswered = (Vec<Pending>, GatewayError);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum InputKind {
    Text,
    Tokens,
}

struct Pending {
    index: usize,
    request: ParsedRequest,
    key: Option<CacheKey>,
    looked_up: bool,
    store: bool,
    ttl_s: u64,
    inputs: Vec<Value>,
    trace: Trace,
    grant: Grant,
}

/// The input as a list of items (a single string or token list is one item).
fn split_input(input: &Value) -> (Vec<Value>, InputKind) {
    match input {
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            (vec![input.clone()], InputKind::Tokens)
        }
        Value::Array(items) if items.iter().all(Value::is_array) => {
            (items.clone(), InputKind::Tokens)
        }
        Value::Array(items) => (items.clone(), InputKind::Text),
        other => (vec![other.clone()], InputKind::Text),
    }
}

impl Gateway {
    /// Answers many embeddings requests with as few upstream calls as possible; each upstream
    /// call has up to `timeout` (held to the current invocation's deadline).
    pub async fn handle_embeddings_batch(
        &self,
        items: Vec<BatchItem>,
        timeout: Duration,
    ) -> Vec<BatchOutcome> {
        let deadline = crate::invocation::deadline_within(timeout);
        let mut outcomes: Vec<Option<BatchOutcome>> = (0..items.len()).map(|_| None).collect();
        let mut groups: HashMap<Group, Vec<Pending>> = HashMap::new();
        let now = self.clock.now_ms();
        for (index, item) in items.iter().enumerate() {
            let mut trace = Trace::default();
            let request = match request::parse(Endpoint::Embeddings, &item.body) {
                Ok(r) => r,
                Err(e) => {
                    outcomes[index] = Some((Err(e.into()), trace));
                    continue;
                }
            };
            let Some(model) = self.catalog.get(&request.model).cloned() else {
                let e = GatewayError::UnknownModel(request.model.clone());
                outcomes[index] = Some((Err(e), trace));
                continue;
            };
            trace.model = Some(model.name.clone());
            let policy = self.cache_policy(&model, item.cache_control);
            let key = (policy.lookup || policy.store).then(|| {
                cache::cache_key(
                    &item.caller.tenant,
                    Endpoint::Embeddings,
                    &model.name,
                    &request.body,
                )
            });
            if let (true, Some(key)) = (policy.lookup, &key) {
                match self.cache.get(key, now).await {
                    Ok(Some(entry)) if policy.is_fresh(&entry, now) => {
                        let reply = Reply {
                            body: ReplyBody::Json(entry.body),
                            cache: CacheStatus::Hit,
                            usage: Usage::default(),
                            cost_nano_usd: 0,
                            fallback: None,
                            settlement: None,
                        };
                        outcomes[index] = Some((Ok(reply), trace));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cache lookup failed; calling provider"),
                }
            }
            // Each job is admitted against its own key's and tenant's limits.
            let ask = match self.ask(&model, &request, &item.caller.subject()) {
                Ok((ask, _)) => ask,
                Err(e) => {
                    outcomes[index] = Some((Err(e), trace));
                    continue;
                }
            };
            let grant = match self.limiter.admit(&item.caller.subject(), ask).await {
                Ok(Ok(grant)) => grant,
                Ok(Err(refusal)) => {
                    outcomes[index] = Some((Err(GatewayError::Limited(refusal)), trace));
                    continue;
                }
                Err(e) => {
                    outcomes[index] = Some((Err(e.into()), trace));
                    continue;
                }
            };
            let (inputs, kind) = split_input(request.body.get("input").unwrap_or(&Value::Null));
            let mut params = request.body.clone();
            params.remove("input");
            let group = Group {
                tenant: item.caller.tenant.clone(),
                model: model.name.clone(),
                params: cache::canonical_json(&Value::Object(params)),
                kind,
            };
            groups.entry(group).or_default().push(Pending {
                index,
                request,
                key,
                looked_up: policy.lookup,
                store: policy.store,
                ttl_s: policy.ttl_s,
                inputs,
                trace,
                grant,
            });
        }
        let mut chunks: Vec<(String, Vec<Pending>)> = Vec::new();
        for (group, pending) in groups {
            let mut chunk: Vec<Pending> = Vec::new();
            let mut count = 0;
            for p in pending {
                if count + p.inputs.len() > MAX_INPUTS_PER_CALL && !chunk.is_empty() {
                    chunks.push((group.model.clone(), std::mem::take(&mut chunk)));
                    count = 0;
                }
                count += p.inputs.len();
                chunk.push(p);
            }
            if !chunk.is_empty() {
                chunks.push((group.model, chunk));
            }
        }
        // Chunks of different tenants and models are independent calls: send them together.
        let answered = join_all(
            chunks
                .iter_mut()
                .map(|(model, chunk)| self.answer_chunk(model, std::mem::take(chunk), deadline)),
        )
        .await;
        for (index, outcome) in answered.into_iter().flatten() {
            outcomes[index] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    let e = ProviderError::Malformed("batch item left unanswered".into());
                    (
                        Err(GatewayError::Upstream {
                            deployment: String::new(),
                            error: e,
                        }),
                        Trace::default(),
                    )
                })
            })
            .collect()
    }

    /// Answers one chunk. When the provider refuses the combined call as invalid, each job
    /// is sent again on its own: one job's input must not fail, or be quoted in, another's.
    async fn answer_chunk(
        &self,
        model_name: &str,
        chunk: Vec<Pending>,
        deadline: Instant,
    ) -> Vec<(usize, BatchOutcome)> {
        match self.send_chunk(model_name, chunk, deadline).await {
            Ok(answers) => answers,
            Err((chunk, error)) if chunk.len() > 1 && rejects_request(&error) => {
                tracing::info!(
                    jobs = chunk.len(),
                    "the provider refused a batched call as invalid; sending its jobs one by one"
                );
                let alone = join_all(chunk.into_iter().map(|p| async move {
                    match self.send_chunk(model_name, vec![p], deadline).await {
                        Ok(answers) => answers,
                        Err((chunk, error)) => self.fail_chunk(chunk, &error).await,
                    }
                }))
                .await;
                alone.into_iter().flatten().collect()
            }
            Err((chunk, error)) => self.fail_chunk(chunk, &error).await,
        }
    }

    /// The same failure for every job of a chunk; their reservations are given back.
    async fn fail_chunk(
        &self,
        chunk: Vec<Pending>,
        error: &GatewayError,
    ) -> Vec<(usize, BatchOutcome)> {
        let deployment = match error {
            GatewayError::Upstream { deployment, .. } if !deployment.is_empty() => {
                Some(deployment.clone())
            }
            _ => None,
        };
        let mut failed = Vec::with_capacity(chunk.len());
        for mut p in chunk {
            self.settle(p.grant, 0, 0).await;
            p.trace.deployment = deployment.clone();
            failed.push((p.index, (Err(clone_error(error)), p.trace)));
        }
        failed
    }

    /// One upstream call for the chunk, split back into one answer per job; on failure the
    /// chunk comes back unsettled with the reason, for [`Gateway::answer_chunk`] to decide.
    async fn send_chunk(
        &self,
        model_name: &str,
        chunk: Vec<Pending>,
        deadline: Instant,
    ) -> Result<Vec<(usize, BatchOutcome)>, Unanswered> {
        let Some(model) = self.catalog.get(model_name).cloned() else {
            return Err((chunk, GatewayError::UnknownModel(model_name.to_owned())));
        };
        // A lone request goes upstream as sent and its answer comes back byte for byte.
        let single = chunk.len() == 1;
        let mut body = chunk[0].request.body.clone();
        let all: Vec<Value> = chunk
            .iter()
            .flat_map(|p| p.inputs.iter().cloned())
            .collect();
        let total_inputs = all.len();
        if !single {
            body.insert("input".into(), Value::Array(all));
        }
        let tokens = chunk.iter().map(|p| estimate(&p.inputs)).sum();
        // The same routing as a single request: deployments in order, retries, fallbacks.
        let call = super::routing::Call {
            endpoint: Endpoint::Embeddings,
            body: &body,
            stream: false,
            tokens,
            output_ceiling: None,
            deadline,
        };
        let answered = self.call_providers(&model, call).await;
        let deployment = answered
            .as_ref()
            .map(|a| a.deployment.clone())
            .unwrap_or_default();
        let split = answered.and_then(|a| {
            let price = a.model.price;
            match a.response {
                UpstreamResponse::Complete { body, usage, .. } => {
                    parse_embeddings(&body, total_inputs, usage)
                        .map(|parts| (body, parts, price))
                        .map_err(|error| GatewayError::Upstream {
                            deployment: a.deployment.clone(),
                            error,
                        })
                }
                UpstreamResponse::Stream { .. } => Err(GatewayError::Upstream {
                    deployment: a.deployment.clone(),
                    error: ProviderError::Malformed("unexpected stream".into()),
                }),
            }
        });
        let (raw, (data, upstream_model, usage), price) = match split {
            Ok(parts) => parts,
            Err(error) => return Err((chunk, error)),
        };
        let total_tokens = usage.map_or_else(
            || chunk.iter().map(|p| estimate(&p.inputs)).sum(),
            |u| u.prompt_tokens,
        );
        let shares = apportion(
            total_tokens,
            &chunk
                .iter()
                .map(|p| estimate(&p.inputs))
                .collect::<Vec<_>>(),
        );
        let now = self.clock.now_ms();
        let mut data = data.into_iter();
        let mut answers = Vec::with_capacity(chunk.len());
        for (mut p, share) in chunk.into_iter().zip(shares) {
            p.trace.deployment = Some(deployment.clone());
            let mine: Vec<Value> = data
                .by_ref()
                .take(p.inputs.len())
                .enumerate()
                .map(|(i, mut d)| {
                    d["index"] = json!(i);
                    d
                })
                .collect();
            let bytes = if single {
                raw.clone()
            } else {
                let answer = json!({
                    "object": "list",
                    "data": mine,
                    "model": upstream_model,
                    "usage": {"prompt_tokens": share, "total_tokens": share},
                });
                Bytes::from(answer.to_string())
            };
            if let (true, Some(key)) = (p.store, &p.key)
                && bytes.len() <= self.cache_config.max_entry_bytes
            {
                let expires_at_ms = now.saturating_add(p.ttl_s.saturating_mul(1000));
                let entry = CachedResponse {
                    body: bytes.clone(),
                    created_at_ms: now,
                    expires_at_ms,
                    purge_at_ms: expires_at_ms
                        .saturating_add(self.cache_config.stale_keep_s.saturating_mul(1000)),
                };
                if let Err(e) = self.cache.put(key, &entry).await {
                    tracing::warn!(error = %e, "cache store failed; answer not cached");
                }
            }
            let usage = Usage::plain(share, 0);
            // Recorded by the processor in the same write as the job's result.
            let settlement = self
                .limiter
                .settlement(&p.grant, share, price.cost_nano_usd(&usage));
            let reply = Reply {
                body: ReplyBody::Json(bytes),
                cache: if p.looked_up {
                    CacheStatus::Miss
                } else {
                    CacheStatus::Bypass
                },
                usage,
                cost_nano_usd: price.cost_nano_usd(&usage),
                fallback: None,
                settlement,
            };
            answers.push((p.index, (Ok(reply), p.trace)));
        }
        Ok(answers)
    }
}

/// Whether the provider refused a call as the request's own fault.
fn rejects_request(e: &GatewayError) -> bool {
    matches!(e, GatewayError::Upstream { error, .. } if error.rejects_request())
}

/// The same failure for every job of a failed batch.
fn clone_error(e: &GatewayError) -> GatewayError {
    match e {
        GatewayError::Upstream { deployment, error } => GatewayError::Upstream {
            deployment: deployment.clone(),
            error: error.clone(),
        },
        GatewayError::NoDeployment(m) => GatewayError::NoDeployment(m.clone()),
        GatewayError::UnknownModel(m) => GatewayError::UnknownModel(m.clone()),
        GatewayError::Limited(r) => GatewayError::Limited(r.clone()),
        GatewayError::Invalid(i) => GatewayError::Invalid(i.clone()),
        GatewayError::Store(s) => GatewayError::Store(s.clone()),
        GatewayError::AllUnavailable => GatewayError::AllUnavailable,
        GatewayError::Unpriced(m) => GatewayError::Unpriced(m.clone()),
    }
}

fn estimate(inputs: &[Value]) -> u64 {
    inputs
        .iter()
        .map(tokens::estimate_value)
        .sum::<u64>()
        .max(1)
}

/// Splits `total` in proportion to `weights`; the parts add up to `total` exactly.
fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum::<u64>().max(1);
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|w| crate::num::u128_to_u64(u128::from(total) * u128::from(*w) / u128::from(sum)))
        .collect();
    let given: u64 = parts.iter().sum();
    if let Some(last) = parts.last_mut() {
        *last += total - given;
    }
    parts
}

/// The `data` items ordered by `index`, the model name, and the usage.
fn parse_embeddings(
    body: &Bytes,
    expected: usize,
    usage: Option<Usage>,
) -> Result<(Vec<Value>, Value, Option<Usage>), ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ProviderError::Malformed("embeddings body is not JSON".into()))?;
    let mut data = v
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ProviderError::Malformed("no `data` array".into()))?;
    if data.len() != expected {
        return Err(ProviderError::Malformed(format!(
            "{} embeddings for {expected} inputs",
            data.len()
        )));
    }
    data.sort_by_key(|d| d.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX));
    Ok((data, v.get("model").cloned().unwrap_or(Value::Null), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportioned_parts_add_up() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![3, 3, 4]);
        assert_eq!(apportion(0, &[5, 1]), vec![0, 0]);
        assert_eq!(apportion(7, &[2, 5]), vec![2, 5]);
        let parts = apportion(1_000_003, &[3, 17, 80, 1]);
        assert_eq!(parts.iter().sum::<u64>(), 1_000_003);
    }

    #[test]
    fn inputs_split_into_items() {
        assert_eq!(split_input(&json!("a")).0.len(), 1);
        assert_eq!(split_input(&json!(["a", "b"])).0.len(), 2);
        assert!(split_input(&json!([1, 2, 3])).1 == InputKind::Tokens);
        assert_eq!(split_input(&json!([1, 2, 3])).0.len(), 1);
        assert_eq!(split_input(&json!([[1], [2]])).0.len(), 2);
    }
}
