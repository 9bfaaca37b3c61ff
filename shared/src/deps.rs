//! What a process builds once at start-up and lends to handlers and workers: the store, the
//! job queue, the pooled HTTP client and the clock (style: build clients once, lend them out).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::jobs::Jobs;
use crate::jobs::callback::CallbackSender;
use crate::jobs::processor::Processor;
use crate::metrics::{Discard, UsageSink};
use crate::queue::JobQueue;
use crate::store::{SharedStore, StoreError};

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error("cannot build an HTTP client: {0}")]
    Http(#[from] std::io::Error),
    /// The webhook callbacks' HTTP client could not be built.
    #[error("cannot build the callbacks' HTTP client: {0}")]
    CallbackClient(#[from] reqwest::Error),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A required setting is missing.
    #[error("{0}")]
    Missing(String),
    /// The config could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A secret could not be read at start-up.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The function's timeouts and the config disagree.
    #[error("timeouts disagree: {0}")]
    Timeouts(String),
}

/// Shared dependencies.
#[derive(Clone)]
pub struct Deps {
    /// Keys, cache and jobs.
    pub store: SharedStore,
    /// Where accepted jobs wait.
    pub queue: Arc<dyn JobQueue>,
    /// The one pooled client for providers.
    pub http: crate::providers::HttpClient,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Where usage events go.
    pub usage: Arc<dyn UsageSink>,
    /// This process's Prometheus metrics, when it serves `/metrics`.
    #[cfg(feature = "prometheus")]
    pub prometheus: Option<Arc<crate::metrics::prometheus::Prometheus>>,
}

/// The parts built from config on top of [`Deps`], shared by the HTTP app and the workers.
pub struct Services {
    /// The request pipeline.
    pub gateway: Arc<Gateway>,
    /// Job submission and lookup.
    pub jobs: Jobs,
    /// Job execution.
    pub processor: Arc<Processor>,
    /// Finds jobs left behind and reservations never settled.
    pub housekeeper: Arc<crate::housekeeping::Housekeeper>,
    /// Packs jobs that can wait into provider batches and polls them (when
    /// `[jobs.batch_api]` is enabled).
    pub batcher: Option<Arc<crate::jobs::batch_api::Batcher>>,
}

impl Services {
    /// Builds the gateway, the jobs service and the processor.
    pub fn build(config: &Config, deps: &Deps) -> Result<Self, StartError> {
        let gateway = Arc::new(Gateway::new(
            config,
            Arc::clone(&deps.store),
            deps.http.clone(),
            Arc::clone(&deps.clock),
        ));
        let callbacks = Arc::new(CallbackSender::new(
            config.jobs.callback_secret.clone(),
            config.jobs.allow_private_callbacks,
            Duration::from_secs_f64(config.jobs.callback_timeout_s),
        )?);
        let jobs = Jobs::new(
            Arc::clone(&deps.store),
            Arc::clone(&deps.queue),
            Arc::clone(&callbacks),
            Arc::clone(&deps.clock),
            &config.jobs,
        );
        let processor = Arc::new(
            Processor::new(
                Arc::clone(&gateway),
                Arc::clone(&deps.store),
                Arc::clone(&callbacks),
                Arc::clone(&deps.clock),
                config.jobs.lease_s.saturating_mul(1000),
                Arc::clone(&deps.usage),
            )
            .with_batch_api(config.jobs.batch_api.enabled),
        );
        let batcher = config.jobs.batch_api.enabled.then(|| {
            Arc::new(crate::jobs::batch_api::Batcher::new(
                Arc::clone(&gateway),
                Arc::clone(&deps.store),
                Arc::clone(&deps.queue),
                Arc::clone(&processor),
                Arc::clone(&deps.clock),
                &config.jobs.batch_api,
            ))
        });
        let housekeeper = Arc::new(crate::housekeeping::Housekeeper::new(
            Arc::clone(&deps.store),
            Arc::clone(&deps.queue),
            Arc::clone(gateway.limiter()),
            callbacks,
            Arc::clone(&deps.clock),
            &config.jobs,
        ));
        Ok(Self {
            gateway,
            jobs,
            processor,
            housekeeper,
            batcher,
        })
    }
}

impl Deps {
    /// Dependencies from their parts; usage events are dropped until a sink is set (see
    /// [`Deps::with_local_metrics`]).
    pub fn new(
        store: SharedStore,
        queue: Arc<dyn JobQueue>,
        http: crate::providers::HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            queue,
            http,
            clock,
            usage: Arc::new(Discard),
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
    }

    /// SQLite store and queue in one file, for `sluice serve` and tests.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(db: &str, config: &Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let store = crate::store::sqlite::SqliteStore::open(db)?;
        let queue = crate::queue::sqlite::SqliteQueue::new(
            store.clone(),
            Arc::clone(&clock),
            Duration::from_secs(config.jobs.visibility_timeout_s),
            config.jobs.max_receive_count,
        );
        Ok(Self::new(
            Arc::new(store),
            Arc::new(queue),
            crate::providers::HttpClient::new()?,
            clock,
        ))
    }

    /// Sends usage events through an in-process channel to an aggregator task that stores
    /// their rollups in this store (as `sluice serve` does), and to this process's
    /// Prometheus metrics. Needs a tokio runtime.
    pub fn with_local_metrics(mut self, config: &crate::config::MetricsConfig) -> Self {
        let (sink, events) = crate::metrics::sink::channel(config.max_pending_events);
        let store: Arc<dyn crate::store::MetricsStore> = Arc::clone(&self.store) as _;
        tokio::spawn(crate::metrics::sink::aggregate_loop(
            events,
            store,
            Duration::from_millis(config.flush_every_ms),
        ));
        self.usage = sink;
        #[cfg(feature = "prometheus")]
        {
            let prometheus = Arc::new(crate::metrics::prometheus::Prometheus::default());
            self.usage = Arc::new(crate::metrics::prometheus::Fanout(vec![
                Arc::clone(&prometheus) as _,
                Arc::clone(&self.usage),
            ]));
            self.prometheus = Some(prometheus);
        }
        self
    }

    /// At a Lambda function's start: its timeout (`SLUICE_FUNCTION_TIMEOUT_S`, set beside
    /// `Timeout` in the template) and, for the processor, the jobs queue's visibility timeout
    /// checked against the config ([`crate::invocation::check_timeouts`]). Without
    /// `SLUICE_FUNCTION_TIMEOUT_S` there is nothing to check against.
    pub async fn check_function_timeouts(
        &self,
        role: crate::invocation::Role,
        config: &Config,
    ) -> Result<(), StartError> {
        use crate::invocation::{
            FunctionTimeouts, Role, check_timeouts, function_timeout_from_env,
        };
        let Some(function) = function_timeout_from_env().map_err(StartError::Timeouts)? else {
            return Ok(());
        };
        let queue_visibility = match role {
            Role::Processor => Some(self.queue.visibility_timeout().await.map_err(|e| {
                StartError::Timeouts(format!(
                    "cannot read the jobs queue's visibility timeout: {e}"
                ))
            })?),
            Role::IngestBuffered | Role::IngestStreamed => None,
        };
        let timeouts = FunctionTimeouts {
            function,
            queue_visibility,
        };
        check_timeouts(role, timeouts, config).map_err(StartError::Timeouts)
    }

    /// The AWS SDK's settings from the environment (`AWS_*`, including `AWS_ENDPOINT_URL`),
    /// loaded once per function and shared by its clients.
    #[cfg(feature = "aws")]
    pub async fn aws_sdk_config() -> aws_config::SdkConfig {
        aws_config::load_from_env().await
    }

    /// DynamoDB and SQS from the environment (`AWS_*`, `SLUICE_*_TABLE`,
    /// `SLUICE_JOBS_QUEUE_URL`), as on Lambda.
    #[cfg(feature = "aws")]
    pub async fn aws_from_env(config: &Config) -> Result<Self, StartError> {
        Self::aws_from_env_with(&Self::aws_sdk_config().await, config)
    }

    /// [`Deps::aws_from_env`] with SDK settings already loaded (a function that read its
    /// secrets with them).
    #[cfg(feature = "aws")]
    pub fn aws_from_env_with(
        sdk: &aws_config::SdkConfig,
        config: &Config,
    ) -> Result<Self, StartError> {
        let queue_url = std::env::var("SLUICE_JOBS_QUEUE_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StartError::Missing("SLUICE_JOBS_QUEUE_URL is not set".into()))?;
        let store = crate::store::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            crate::store::dynamodb::Tables::from_env(),
        );
        let queue = crate::queue::sqs::SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            queue_url,
            std::env::var("SLUICE_JOBS_DLQ_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            Duration::from_secs(config.jobs.visibility_timeout_s),
        );
        // Usage events go to the usage queue in batches, when one is configured; each Lambda
        // invocation sends what it buffered before it ends (no timer: a frozen environment
        // runs none).
        let usage: Arc<dyn UsageSink> = match std::env::var("SLUICE_USAGE_QUEUE_URL") {
            Ok(url) if !url.is_empty() => {
                crate::metrics::sqs::SqsUsageSink::new(aws_sdk_sqs::Client::new(sdk), url)
            }
            _ => {
                tracing::warn!("SLUICE_USAGE_QUEUE_URL is not set; usage events are not recorded");
                Arc::new(Discard)
            }
        };
        let mut deps = Self::new(
            Arc::new(store),
            Arc::new(queue),
            crate::providers::HttpClient::new()?,
            Arc::new(crate::clock::SystemClock),
        );
        deps.usage = usage;
        Ok(deps)
    }
}
