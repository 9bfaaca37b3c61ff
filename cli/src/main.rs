//! `sluice`: run the gateway locally (`serve`), manage gateway keys (`keys`), check config,
//! show prices (`prices`), find a request's log lines (`logs`), offer load to a gateway
//! (`loadtest`).

// Tests may cast freely; the code they test may not (see `sluice::num`).
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation
    )
)]

/// jemalloc, not glibc's malloc: less CPU per request under concurrency (cli/Cargo.toml).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod loadtest;
mod prices;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use sluice::api::{self, AppState};
use sluice::clock::{Clock, SystemClock};
use sluice::config::Config;
use sluice::keys::{self, BudgetPeriod, KeyLimits};
use sluice::server::Limits;
use std::time::Duration;

use sluice::deps::{Deps, Services};
use sluice::queue::JobQueue;
use sluice::queue::sqlite::SqliteQueue;
use sluice::queue::sqs::SqsQueue;
use sluice::store::SharedStore;
use sluice::store::dynamodb::{DynamoStore, Tables};
use sluice::store::sqlite::SqliteStore;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: an AI API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (API, cache, providers) as one local process.
    Serve(ServeArgs),
    /// Create, list and revoke gateway keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print every log line of one request from a log file written by `serve --log-file`.
    Logs(LogsArgs),
    /// Show what each configured model (or each named one) costs by component, and where
    /// each price comes from: the config, or the built-in table (with its source and date).
    Prices(prices::PricesArgs),
    /// Send chat completions at a fixed concurrency or arrival rate and report throughput,
    /// latency percentiles, errors and cache hits.
    Loadtest(loadtest::LoadtestArgs),
    /// Development helpers for DynamoDB and SQS (e.g. against moto).
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Create the tables and the jobs queue (+ dead-letter queue) and print the environment
    /// the Lambda functions and `serve --store dynamodb --queue sqs` read them from.
    Init {
        /// Names are `<prefix>-keys`, `<prefix>-cache`, `<prefix>-jobs`, queue `<prefix>-jobs`.
        #[arg(long, default_value = "sluice")]
        prefix: String,
        /// Visibility timeout of the jobs queue, seconds.
        #[arg(long, default_value_t = 360)]
        visibility_timeout_s: u64,
        /// Deliveries before a message moves to the dead-letter queue.
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// Where keys, cache entries and jobs live.
    #[arg(long, env = "SLUICE_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// SQLite database file (created if missing).
    #[arg(long, env = "SLUICE_DB", default_value = "./sluice.db")]
    db: String,
    /// DynamoDB tables are `<prefix>-keys`, `<prefix>-cache`, `<prefix>-jobs`; without it,
    /// SLUICE_KEYS_TABLE / SLUICE_CACHE_TABLE / SLUICE_JOBS_TABLE (default `sluice-*`).
    #[arg(long, env = "SLUICE_TABLE_PREFIX")]
    table_prefix: Option<String>,
    /// Create missing DynamoDB tables (and, with `--queue sqs` and no URL, the SQS queues):
    /// for development against moto; on AWS the SAM template creates them.
    #[arg(long)]
    create_aws_resources: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// The embedded SQLite file (`--db`).
    Sqlite,
    /// DynamoDB (`AWS_*` environment, `AWS_ENDPOINT_URL` for moto).
    Dynamodb,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QueueKind {
    /// A durable table in the SQLite file (`--db`).
    Sqlite,
    /// SQS (`--queue-url`).
    Sqs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TOML config file; without one, the built-in offline `mock` provider is used.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Where accepted async jobs wait for the workers.
    #[arg(long, env = "SLUICE_QUEUE", value_enum, default_value_t = QueueKind::Sqlite)]
    queue: QueueKind,
    /// SQS queue URL for `--queue sqs`.
    #[arg(long, env = "SLUICE_JOBS_QUEUE_URL")]
    queue_url: Option<String>,
    /// Also append every log line to this file (created with its directories, never
    /// truncated); `sluice logs` reads it.
    #[arg(long, env = "SLUICE_LOG_FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Args)]
struct LogsArgs {
    /// The request's id: its `x-request-id` response header.
    #[arg(long)]
    request_id: String,
    /// The log file `serve --log-file` writes.
    #[arg(long, env = "SLUICE_LOG_FILE")]
    log_file: PathBuf,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once (alone on stdout, or in the JSON with --json).
    Create {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Optional label.
        #[arg(long)]
        name: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// Spending cap in USD per --period.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Period of the spending cap (UTC).
        #[arg(long, value_parser = ["day", "month"])]
        period: Option<String>,
        /// Print the key as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id, e.g. key_AbC…
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate a config file; the error names the field at fault.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Dynamodb => "dynamodb",
        }
    }
}

impl QueueKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Sqs => "sqs",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Aws {
            command:
                AwsCommand::Init {
                    prefix,
                    visibility_timeout_s,
                    max_receive_count,
                },
        } => {
            let sdk = aws_config::load_from_env().await;
            let tables = Tables::with_prefix(&prefix);
            DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), tables.clone())
                .create_tables()
                .await
                .map_err(|e| format!("cannot create tables: {e}"))?;
            let queue = SqsQueue::create(
                aws_sdk_sqs::Client::new(&sdk),
                &format!("{prefix}-jobs"),
                Duration::from_secs(visibility_timeout_s),
                max_receive_count,
            )
            .await
            .map_err(|e| format!("cannot create the queue: {e}"))?;
            // The usage queue: events are small and many; five deliveries, then its DLQ.
            let usage = SqsQueue::create(
                aws_sdk_sqs::Client::new(&sdk),
                &format!("{prefix}-usage"),
                Duration::from_secs(visibility_timeout_s),
                5,
            )
            .await
            .map_err(|e| format!("cannot create the usage queue: {e}"))?;
            println!("export SLUICE_KEYS_TABLE={}", tables.keys);
            println!("export SLUICE_CACHE_TABLE={}", tables.cache);
            println!("export SLUICE_JOBS_TABLE={}", tables.jobs);
            println!("export SLUICE_LIMITS_TABLE={}", tables.limits);
            println!("export SLUICE_METRICS_TABLE={}", tables.metrics);
            println!("export SLUICE_JOBS_QUEUE_URL={}", queue.url());
            if let Some(dlq) = queue.dead_letter_url() {
                println!("export SLUICE_JOBS_DLQ_URL={dlq}");
            }
            println!("export SLUICE_USAGE_QUEUE_URL={}", usage.url());
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Logs(args) => logs(&args),
        Command::Prices(args) => prices::run(&args),
        Command::Loadtest(args) => loadtest::run(args).await,
        Command::Keys { command } => keys_command(command).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(&file).map_err(|e| e.to_string())?;
            println!(
                "{}: ok ({} providers, {} models)",
                file.display(),
                config.providers.len(),
                config.models.len()
            );
            for m in &config.models {
                if Config::price_of(m).is_none() {
                    println!(
                        "warning: model `{}` has no price and is not in the built-in table; a request to it under a spending cap is refused",
                        m.name
                    );
                }
            }
            Ok(())
        }
    }
}

fn open_sqlite(args: &StoreArgs) -> Result<SqliteStore, String> {
    SqliteStore::open(&args.db).map_err(|e| format!("cannot open database {}: {e}", args.db))
}

async fn open_store(args: &StoreArgs) -> Result<SharedStore, String> {
    match args.store {
        StoreKind::Sqlite => Ok(Arc::new(open_sqlite(args)?)),
        StoreKind::Dynamodb => {
            let sdk = aws_config::load_from_env().await;
            let tables = match &args.table_prefix {
                Some(prefix) => Tables::with_prefix(prefix),
                None => Tables::from_env(),
            };
            let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), tables);
            if args.create_aws_resources {
                store
                    .create_tables()
                    .await
                    .map_err(|e| format!("cannot create DynamoDB tables: {e}"))?;
            }
            Ok(Arc::new(store))
        }
    }
}

/// The jobs queue `serve` uses; a SQLite one in `sqlite`, the database the store opened, when
/// there is one.
async fn open_queue(
    args: &ServeArgs,
    config: &Config,
    clock: Arc<dyn Clock>,
    sqlite: Option<SqliteStore>,
) -> Result<Arc<dyn JobQueue>, String> {
    let visibility = Duration::from_secs(config.jobs.visibility_timeout_s);
    match args.queue {
        QueueKind::Sqlite => Ok(Arc::new(SqliteQueue::new(
            match sqlite {
                Some(db) => db,
                None => open_sqlite(&args.store)?,
            },
            clock,
            visibility,
            config.jobs.max_receive_count,
        ))),
        QueueKind::Sqs => {
            let client = aws_sdk_sqs::Client::new(&aws_config::load_from_env().await);
            match &args.queue_url {
                Some(url) => Ok(Arc::new(SqsQueue::new(
                    client,
                    url.clone(),
                    std::env::var("SLUICE_JOBS_DLQ_URL").ok(),
                    visibility,
                ))),
                None if args.store.create_aws_resources => {
                    let name = format!(
                        "{}-jobs",
                        args.store.table_prefix.as_deref().unwrap_or("sluice")
                    );
                    let queue =
                        SqsQueue::create(client, &name, visibility, config.jobs.max_receive_count)
                            .await
                            .map_err(|e| format!("cannot create the SQS queue: {e}"))?;
                    Ok(Arc::new(queue))
                }
                None => Err("--queue sqs needs --queue-url (or SLUICE_JOBS_QUEUE_URL)".into()),
            }
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    match &args.log_file {
        Some(path) => sluice::logging::init_with_file(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?,
        None => sluice::logging::init(),
    }
    // The connection cap is held to what this limit allows (`server::connections_allowed_by`).
    let fd_limit = raise_fd_limit();
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The SQLite file is opened once when the store and the queue both live in it: one writer
    // thread and one checkpointer for the file, not two of each contending for its write lock
    // and each syncing the same WAL.
    let sqlite = if args.store.store == StoreKind::Sqlite || args.queue == QueueKind::Sqlite {
        Some(open_sqlite(&args.store)?)
    } else {
        None
    };
    let store: SharedStore = match (&sqlite, args.store.store) {
        (Some(db), StoreKind::Sqlite) => Arc::new(db.clone()),
        _ => open_store(&args.store).await?,
    };
    let deps = Deps::new(
        store,
        open_queue(&args, &config, Arc::clone(&clock), sqlite).await?,
        sluice::providers::HttpClient::new()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
        clock,
    )
    .with_local_metrics(&config.metrics);
    let services = Services::build(&config, &deps).map_err(|e| e.to_string())?;
    let admin_secret = match std::env::var("SLUICE_ADMIN_KEY") {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            let generated = keys::random_id("sk-sluice-admin-", 32);
            // Printed once to the terminal (not the log) so a first run is usable.
            eprintln!("No SLUICE_ADMIN_KEY set; admin key for this run: {generated}");
            generated
        }
    };
    let state = AppState::new(&config, &deps, &services, &admin_secret);
    let app = api::router(Arc::new(state));
    let batch_window = Duration::from_millis(config.jobs.batch_window_ms);
    for _ in 0..config.jobs.workers {
        tokio::spawn(sluice::jobs::worker::run(
            Arc::clone(&services.processor),
            Arc::clone(&deps.queue),
            batch_window,
        ));
    }
    // On AWS one scheduled function does this; here every process does (its writes are
    // conditional, so processes sharing a store may all run it).
    tokio::spawn(sluice::housekeeping::run_every(
        Arc::clone(&services.housekeeper),
        Duration::from_secs(config.server.housekeeping_every_s),
    ));
    // Jobs that can wait: packed into provider batches and polled (on AWS: the processor's
    // schedule). One pass per slot across processes (a once-only marker in the store).
    if let Some(batcher) = &services.batcher {
        tokio::spawn(sluice::jobs::batch_api::run_every(
            Arc::clone(batcher),
            Duration::from_secs(config.jobs.batch_api.poll_every_s),
        ));
    }
    let listener = sluice::server::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    tracing::info!(
        addr = %addr,
        store = args.store.store.name(),
        queue = args.queue.name(),
        workers = config.jobs.workers,
        config = args.config.as_ref().map(|p| p.display().to_string()),
        "sluice listening"
    );
    let limits = match fd_limit {
        Some(fds) => Limits::from_config(&config.server).within_fd_limit(fds),
        None => Limits::from_config(&config.server),
    };
    tracing::info!(
        fd_limit,
        max_connections = limits.max_connections,
        header_read_timeout_s = limits.header_read.as_secs_f64(),
        body_read_timeout_s = limits.body_read.as_secs_f64(),
        idle_timeout_s = limits.idle.as_secs_f64(),
        "connection limits"
    );
    if limits.max_connections < config.server.max_connections {
        tracing::warn!(
            fd_limit,
            max_connections = limits.max_connections,
            configured = config.server.max_connections,
            "server.max_connections lowered to what the file descriptor limit allows"
        );
    }
    if config.server.metrics_token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "/metrics is open to anyone who reaches this address (gateway-wide request counts \
             and spend); set server.metrics_token to require a bearer token"
        );
    }
    eprintln!("Sluice listening on http://{addr}");
    sluice::server::serve(listener, app, limits, shutdown_signal()).await;
    tracing::info!("sluice stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (a hostile client's idle sockets
/// must not be what runs the process out of descriptors) and returns the limit now in force.
fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open file limit");
            None
        }
    }
}

/// `sluice logs`: the request's lines as they are in the file; an error when there are none.
fn logs(args: &LogsArgs) -> Result<(), String> {
    let path = args.log_file.display();
    let file = std::fs::File::open(&args.log_file)
        .map_err(|e| format!("cannot read log file {path}: {e}"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let found = sluice::logging::copy_request_lines(
        std::io::BufReader::new(file),
        &args.request_id,
        &mut out,
    )
    .and_then(|found| std::io::Write::flush(&mut out).map(|()| found))
    .map_err(|e| format!("cannot search log file {path}: {e}"))?;
    if found == 0 {
        return Err(format!(
            "no log line has request_id {} in {path}",
            args.request_id
        ));
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn keys_command(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create {
            tenant,
            name,
            rpm,
            tpm,
            budget_usd,
            period,
            json,
            store,
        } => {
            let limits = KeyLimits {
                rpm,
                tpm,
                budget_usd,
                budget_period: period.as_deref().and_then(BudgetPeriod::parse),
            };
            let new = keys::generate(&tenant, name, limits, SystemClock.now_ms())
                .map_err(|e| e.to_string())?;
            let db = open_store(&store).await?;
            db.insert_key(&new.record)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                let mut view = api::key_json(&new.record);
                view["key"] = serde_json::Value::String(new.secret);
                println!("{view}");
            } else {
                eprintln!(
                    "Created {} for tenant {}. The key is shown once; store it now:",
                    new.record.id, new.record.tenant
                );
                println!("{}", new.secret);
            }
            Ok(())
        }
        KeysCommand::List { json, store } => {
            let db = open_store(&store).await?;
            let keys = db.list_keys().await.map_err(|e| e.to_string())?;
            if json {
                let data: Vec<_> = keys.iter().map(api::key_json).collect();
                println!("{}", serde_json::Value::Array(data));
            } else {
                println!(
                    "{:<22} {:<16} {:<18} {:<8} {:>6} {:>8} {:>10} {:<6}",
                    "ID", "TENANT", "HINT", "STATUS", "RPM", "TPM", "BUDGET$", "PERIOD"
                );
                for k in keys {
                    let dash = || "-".to_owned();
                    println!(
                        "{:<22} {:<16} {:<18} {:<8} {:>6} {:>8} {:>10} {:<6}",
                        k.id,
                        k.tenant,
                        k.hint,
                        if k.revoked_at_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        k.limits.rpm.map_or_else(dash, |v| v.to_string()),
                        k.limits.tpm.map_or_else(dash, |v| v.to_string()),
                        k.limits.budget_usd.map_or_else(dash, |v| v.to_string()),
                        k.limits
                            .budget_period
                            .map_or_else(dash, |p| p.as_str().to_owned()),
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { id, store } => {
            let db = open_store(&store).await?;
            if db
                .revoke_key(&id, SystemClock.now_ms())
                .await
                .map_err(|e| e.to_string())?
            {
                println!("revoked {id}");
                Ok(())
            } else {
                Err(format!("no active key with id {id}"))
            }
        }
    }
}
