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

use super::cache::{self, CacheControl};
use super::lookup::Coalescing;
use super::request;
use super::resolve::Context;
use super::{Caller, Gateway, GatewayError, Reply, RequestOptions, Trace};
use crate::limits::Grant;
use crate::providers::{Endpoint, ProviderError, UpstreamResponse, Usage};
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
type Unanswered<'c> = (Vec<Pending<'c>>, GatewayError);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum InputKind {
    Text,
    Tokens,
}

/// A job admitted and waiting for its group's upstream call.
struct Pending<'c> {
    index: usize,
    ctx: Context<'c>,
    grant: Grant,
    inputs: Vec<Value>,
    trace: Trace,
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
        let mut outcomes: Vec<Option<BatchOutcome>> = (0..items.len()).map(|_| None).collect();
        // Every job through resolve, lookup and admit at once, each against its own key's and
        // tenant's limits; those answered there (a hit, a refusal, `on_limit`) are done.
        let prepared = join_all(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| self.prepare(index, item, timeout)),
        )
        .await;
        let mut groups: HashMap<Group, Vec<Pending<'_>>> = HashMap::new();
        for prepared in prepared {
            match prepared {
                Ok((group, pending)) => groups.entry(group).or_default().push(pending),
                Err((index, outcome)) => outcomes[index] = Some(outcome),
            }
        }
        let mut chunks: Vec<Vec<Pending<'_>>> = Vec::new();
        for pending in groups.into_values() {
            let mut chunk: Vec<Pending<'_>> = Vec::new();
            let mut count = 0;
            for p in pending {
                if count + p.inputs.len() > MAX_INPUTS_PER_CALL && !chunk.is_empty() {
                    chunks.push(std::mem::take(&mut chunk));
                    count = 0;
                }
                count += p.inputs.len();
                chunk.push(p);
            }
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
        // Chunks of different tenants and models are independent calls: send them together.
        let answered = join_all(chunks.into_iter().map(|chunk| self.answer_chunk(chunk))).await;
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

    /// One job through resolve, lookup and admit, as [`Gateway::handle`] runs them (stored
    /// answers admitted too, refusals to `on_limit`), except that it never waits for an
    /// identical request: identical jobs here go up in the same call. `Err` is the job's
    /// outcome when it needs no upstream call.
    async fn prepare<'c>(
        &self,
        index: usize,
        item: &'c BatchItem,
        timeout: Duration,
    ) -> Result<(Group, Pending<'c>), (usize, BatchOutcome)> {
        let mut trace = Trace::default();
        let request = match request::parse(Endpoint::Embeddings, &item.body) {
            Ok(request) => request,
            Err(e) => return Err((index, (Err(e.into()), trace))),
        };
        let options = RequestOptions {
            cache: item.cache_control,
            timeout: Some(timeout),
            // The processor writes each job's spend with its result.
            defer_settlement: true,
        };
        let mut ctx = match self.resolve(&item.caller, request, options, false, &mut trace) {
            Ok(ctx) => ctx,
            Err(e) => return Err((index, (Err(e), trace))),
        };
        if let Some(stored) = self.lookup(&mut ctx, Coalescing::Skip).await {
            let result = self.serve_stored(ctx, stored, &mut trace).await;
            return Err((index, (result, trace)));
        }
        let admitted = match self.admit(&ctx).await {
            Ok(Ok(admitted)) => admitted,
            Ok(Err(refusal)) => {
                let stale = ctx.stale.take();
                let result = self.over_limit(ctx, refusal, stale, &mut trace).await;
                return Err((index, (result, trace)));
            }
            Err(e) => return Err((index, (Err(e), trace))),
        };
        let (inputs, kind) = split_input(ctx.request.body.get("input").unwrap_or(&Value::Null));
        let mut params = ctx.request.body.clone();
        params.remove("input");
        let group = Group {
            tenant: item.caller.tenant.clone(),
            model: ctx.model.name.clone(),
            params: cache::canonical_json(&Value::Object(params)),
            kind,
        };
        let pending = Pending {
            index,
            ctx,
            grant: admitted.grant,
            inputs,
            trace,
        };
        Ok((group, pending))
    }

    /// Answers one chunk. When the provider refuses the combined call as invalid, each job
    /// is sent again on its own: one job's input must not fail, or be quoted in, another's.
    async fn answer_chunk(&self, chunk: Vec<Pending<'_>>) -> Vec<(usize, BatchOutcome)> {
        match self.send_chunk(chunk).await {
            Ok(answers) => answers,
            Err((chunk, error)) if chunk.len() > 1 && rejects_request(&error) => {
                tracing::info!(
                    jobs = chunk.len(),
                    "the provider refused a batched call as invalid; sending its jobs one by one"
                );
                let alone = join_all(chunk.into_iter().map(|p| async move {
                    match self.send_chunk(vec![p]).await {
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

    /// The same failure for every job of a chunk: their reservations are given back, and each
    /// job gets the ladder's last tiers (a stale answer) as a request of its own would.
    async fn fail_chunk(
        &self,
        chunk: Vec<Pending<'_>>,
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
            let result = self.last_resorts(p.ctx, clone_error(error), &mut p.trace);
            failed.push((p.index, (result, p.trace)));
        }
        failed
    }

    /// Stage 4 for a chunk: one upstream call, split back into one answer per job and each
    /// recorded; on failure the chunk comes back unsettled with the reason, for
    /// [`Gateway::answer_chunk`] to decide.
    async fn send_chunk<'c>(
        &self,
        chunk: Vec<Pending<'c>>,
    ) -> Result<Vec<(usize, BatchOutcome)>, Unanswered<'c>> {
        let Some(first) = chunk.first() else {
            return Ok(Vec::new());
        };
        let model = std::sync::Arc::clone(&first.ctx.model);
        // A lone request goes upstream as sent and its answer comes back byte for byte.
        let single = chunk.len() == 1;
        let mut body = first.ctx.request.body.clone();
        let all: Vec<Value> = chunk
            .iter()
            .flat_map(|p| p.inputs.iter().cloned())
            .collect();
        let total_inputs = all.len();
        if !single {
            body.insert("input".into(), Value::Array(all));
        }
        let tokens = chunk.iter().map(|p| estimate(&p.inputs)).sum();
        let deadline = chunk
            .iter()
            .map(|p| p.ctx.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        // The same routing as a single request: deployments in order, retries, fallbacks.
        let call = super::routing::Call {
            endpoint: Endpoint::Embeddings,
            body: &mut body,
            stream: false,
            tokens,
            output_ceiling: None,
            deadline,
        };
        let answered = self.call_providers(&model, call).await;
        let split = answered.and_then(|a| match a.response {
            UpstreamResponse::Complete { body, usage, .. } => {
                parse_embeddings(&body, total_inputs, usage)
                    .map(|parts| (body, parts, a.model.price, a.deployment.clone(), a.tier))
                    .map_err(|error| GatewayError::Upstream {
                        deployment: a.deployment.clone(),
                        error,
                    })
            }
            UpstreamResponse::Stream { .. } => Err(GatewayError::Upstream {
                deployment: a.deployment.clone(),
                error: ProviderError::Malformed("unexpected stream".into()),
            }),
        });
        let (raw, (data, upstream_model, usage), price, deployment, tier) = match split {
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
        let mut data = data.into_iter();
        let mut parts = Vec::with_capacity(chunk.len());
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
            parts.push((p, bytes, Usage::plain(share, 0)));
        }
        // Stage 5 for each job: its cache entry, and its spend as its reply's settlement
        // (recorded by the processor in the same write as the job's result).
        let recorded = join_all(parts.into_iter().map(|(p, bytes, usage)| async move {
            let reply = self
                .record_answer(p.ctx, p.grant, bytes, usage, price, tier)
                .await;
            (p.index, (Ok(reply), p.trace))
        }))
        .await;
        Ok(recorded)
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
