//! `sluice`: run the gateway locally (`serve`), manage gateway keys (`keys`), check config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use sluice::api::{self, AppState};
use sluice::clock::{Clock, SystemClock};
use sluice::config::Config;
use sluice::keys::{self, BudgetPeriod, KeyLimits};
use sluice::store::SharedStore;
use sluice::store::sqlite::SqliteStore;
use tracing_subscriber::EnvFilter;

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
}

#[derive(Args)]
struct StoreArgs {
    /// SQLite database file (created if missing).
    #[arg(long, env = "SLUICE_DB", default_value = "./sluice.db")]
    db: String,
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
        Command::Serve(args) => serve(args).await,
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
                        "warning: model `{}` has no price and no built-in default; its cost is counted as 0",
                        m.name
                    );
                }
            }
            Ok(())
        }
    }
}

fn open_store(args: &StoreArgs) -> Result<SqliteStore, String> {
    SqliteStore::open(&args.db).map_err(|e| format!("cannot open database {}: {e}", args.db))
}

fn init_logging() {
    // One JSON object per line on stdout; `SLUICE_LOG` (or RUST_LOG syntax) sets the filter.
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    init_logging();
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let store: SharedStore = Arc::new(open_store(&args.store)?);
    let http =
        sluice::gateway::http_client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let admin_secret = match std::env::var("SLUICE_ADMIN_KEY") {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            let generated = format!("sk-sluice-admin-{}", keys::random_alnum(32));
            // Printed once to the terminal (not the log) so a first run is usable.
            eprintln!("No SLUICE_ADMIN_KEY set; admin key for this run: {generated}");
            generated
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::new(&config, store, http, clock, &admin_secret);
    let app = api::router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    tracing::info!(
        addr = %addr,
        db = %args.store.db,
        config = args.config.as_ref().map(|p| p.display().to_string()),
        "sluice listening"
    );
    eprintln!("Sluice listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("sluice stopped");
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
    use sluice::store::KeyStore;
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
            let db = open_store(&store)?;
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
            let db = open_store(&store)?;
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
            let db = open_store(&store)?;
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
