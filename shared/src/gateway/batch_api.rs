//! The pipeline's stages for a job sent through a provider's Batch API: resolve (model, a
//! deployment whose provider has a batch API), admit (limits, and a reservation at the batch
//! price held until the job's window ends), and record (the cost at the batch price). Only
//! `call` is different: the request goes out in a batch (see [`crate::jobs::batch_api`]).
//!
//! Batched jobs do not use the response cache: the batch price is the saving they ask for,
//! and an answer hours old is not one to store or be served.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::catalog::Model;
use super::request::{self, InvalidRequest};
use super::{Caller, Gateway, GatewayError};
use crate::limits::{Ask, Grant, Refusal};
use crate::providers::batch_api::{Answers, BatchApi, Polled};
use crate::providers::{Endpoint, ProviderError, Usage};
use crate::store::{Settlement, StoreError};
use crate::tokens;

/// A job's request made ready for a provider batch.
pub struct Prepared {
    /// The public model.
    pub model: String,
    /// The deployment it goes to.
    pub deployment: String,
    /// The upstream model name.
    pub upstream_model: String,
    /// The request body as the provider's batch takes it.
    pub body: Value,
    /// What to reserve: the worst case at the batch price.
    pub ask: Ask,
}

/// Where a batched deployment is and its key (never leaves the gateway).
struct Target {
    api: BatchApi,
    key: Arc<str>,
}

impl Gateway {
    /// Resolves a job's request for a batch: `Ok(None)` when its model has no deployment
    /// whose provider has a batch API for this endpoint (it runs as an ordinary call).
    pub fn prepare_for_batch(
        &self,
        caller: &Caller,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<Option<Prepared>, GatewayError> {
        let request = request::parse(endpoint, body)?;
        let model = self
            .catalog
            .get(&request.model)
            .ok_or_else(|| GatewayError::UnknownModel(request.model.clone()))?;
        let Some((deployment, api)) = model.deployments.iter().find_map(|d| {
            BatchApi::of(&d.provider)
                .filter(|api| api.serves(endpoint))
                .map(|api| (d, api))
        }) else {
            return Ok(None);
        };
        let subject = caller.subject();
        let capped = self.limiter.budget_applies(&subject);
        let metered = capped || self.limiter.tokens_limited(&subject);
        if metered && let Some(field) = tokens::unbounded_input(&request) {
            return Err(InvalidRequest::Unbounded { field }.into());
        }
        if capped && !model.priced {
            return Err(GatewayError::Unpriced(model.name.clone()));
        }
        let prompt_bound = tokens::prompt_upper_bound(&request);
        let ceiling = model
            .max_output_tokens
            .unwrap_or(self.limiter.config().default_max_output_tokens);
        let output = tokens::output_upper_bound(&request, ceiling);
        let mut upstream = request.body.clone();
        upstream.insert(
            "model".into(),
            Value::String(deployment.upstream_model.clone()),
        );
        let explicit = ["max_tokens", "max_completion_tokens"]
            .iter()
            .any(|f| request.body.get(*f).is_some_and(|v| !v.is_null()));
        if endpoint == Endpoint::ChatCompletions && !explicit && metered {
            // The reservation assumed at most this many output tokens.
            upstream.insert("max_tokens".into(), Value::from(ceiling));
        }
        let body =
            api.request_body(endpoint, &upstream)
                .map_err(|error| GatewayError::Upstream {
                    deployment: deployment.id.clone(),
                    error,
                })?;
        Ok(Some(Prepared {
            model: model.name.clone(),
            deployment: deployment.id.clone(),
            upstream_model: deployment.upstream_model.clone(),
            body,
            ask: Ask {
                tokens: prompt_bound.saturating_add(output),
                cost_nano_usd: model
                    .price
                    .batch()
                    .worst_case_nano_usd(prompt_bound, output),
            },
        }))
    }

    /// Admits a batched job: its limits, and its reservation held until `hold_until_ms`.
    pub async fn admit_for_batch(
        &self,
        caller: &Caller,
        ask: Ask,
        hold_until_ms: u64,
    ) -> Result<Result<Grant, Refusal>, StoreError> {
        self.limiter
            .admit_until(&caller.subject(), ask, hold_until_ms)
            .await
    }

    /// A batched job's cost at its model's batch price, and the settlement of its grant (to
    /// be written with its result).
    pub fn batch_cost(
        &self,
        model: &str,
        grant: &Grant,
        usage: &Usage,
    ) -> (u64, Option<Settlement>) {
        let cost = self
            .catalog
            .get(model)
            .map_or(0, |m| m.price.batch().cost_nano_usd(usage));
        (cost, self.limiter.settlement(grant, usage.total(), cost))
    }

    /// The settlement that gives a grant back whole (the job was not answered by the batch).
    pub fn batch_release(&self, grant: &Grant) -> Option<Settlement> {
        self.limiter.settlement(grant, 0, 0)
    }

    /// Gives a grant back now (a batch that was never submitted).
    pub async fn release_grant(&self, grant: Grant) {
        self.settle(grant, 0, 0).await;
    }

    fn batch_target(&self, model: &str, deployment: &str) -> Result<Target, GatewayError> {
        let model: &Arc<Model> = self
            .catalog
            .get(model)
            .ok_or_else(|| GatewayError::UnknownModel(model.to_owned()))?;
        let d = model
            .deployments
            .iter()
            .find(|d| d.id == deployment)
            .ok_or_else(|| GatewayError::NoDeployment(model.name.clone()))?;
        let api = BatchApi::of(&d.provider).ok_or_else(|| GatewayError::Upstream {
            deployment: d.id.clone(),
            error: ProviderError::Malformed("the provider has no batch API".into()),
        })?;
        Ok(Target {
            api,
            key: d.api_key.expose(),
        })
    }

    fn batch_timeout(&self) -> Duration {
        // Uploads are larger than a request: at least a minute.
        self.upstream_timeout.max(Duration::from_secs(60))
    }

    /// Submits prepared requests (`custom_id`, body) as one upstream batch; its id.
    pub async fn submit_batch(
        &self,
        model: &str,
        deployment: &str,
        endpoint: Endpoint,
        requests: &[(String, Value)],
    ) -> Result<String, GatewayError> {
        let t = self.batch_target(model, deployment)?;
        t.api
            .submit(&self.http, &t.key, endpoint, requests, self.batch_timeout())
            .await
            .map_err(|error| GatewayError::Upstream {
                deployment: deployment.to_owned(),
                error,
            })
    }

    /// Polls an upstream batch.
    pub async fn poll_batch(
        &self,
        model: &str,
        deployment: &str,
        upstream_model: &str,
        endpoint: Endpoint,
        id: &str,
    ) -> Result<Polled, GatewayError> {
        let t = self.batch_target(model, deployment)?;
        t.api
            .poll(
                &self.http,
                &t.key,
                id,
                Answers {
                    model: upstream_model,
                    created_s: self.clock.now_ms() / 1000,
                },
                endpoint,
                self.batch_timeout(),
            )
            .await
            .map_err(|error| GatewayError::Upstream {
                deployment: deployment.to_owned(),
                error,
            })
    }

    /// Asks the provider to cancel an upstream batch.
    pub async fn cancel_batch(
        &self,
        model: &str,
        deployment: &str,
        id: &str,
    ) -> Result<(), GatewayError> {
        let t = self.batch_target(model, deployment)?;
        t.api
            .cancel(&self.http, &t.key, id, self.batch_timeout())
            .await
            .map_err(|error| GatewayError::Upstream {
                deployment: deployment.to_owned(),
                error,
            })
    }
}
