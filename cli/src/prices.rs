//! `sluice prices`: what each model costs, component by component, and where each figure
//! comes from — the config's `price`, or the built-in table (its entry, how the name matched
//! it, and the table's source and date). A model with no price is said to be refused under a
//! spending cap, which is what the gateway does with it.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};
use sluice::config::{Config, Listed, ModelConfig, Price, PriceOrigin, lookup, price_table};

/// Arguments of `sluice prices`.
#[derive(Args)]
pub struct PricesArgs {
    /// Model names to show (public names or aliases from the config, or any upstream name
    /// for the built-in table); without any, every configured model.
    models: Vec<String>,
    /// TOML config file; without one, the built-in offline config.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// One JSON array instead of text.
    #[arg(long)]
    json: bool,
}

/// One model's line-up: its name, where its price comes from, and the price.
struct Shown {
    name: String,
    /// `Some(i)` for `models[i]` of the config.
    configured: Option<usize>,
    origin: PriceOrigin,
    price: Option<Price>,
}

/// Runs the command.
pub fn run(args: &PricesArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(file) => Config::load(file).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let configured = |m: &ModelConfig, i: usize| Shown {
        name: m.name.clone(),
        configured: Some(i),
        origin: Config::price_origin(m),
        price: Config::price_of(m),
    };
    let shown: Vec<Shown> = if args.models.is_empty() {
        config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| configured(m, i))
            .collect()
    } else {
        args.models
            .iter()
            .map(|name| {
                let found = config
                    .models
                    .iter()
                    .enumerate()
                    .find(|(_, m)| &m.name == name || m.aliases.contains(name));
                match found {
                    Some((i, m)) => configured(m, i),
                    None => {
                        let listed = lookup(name);
                        Shown {
                            name: name.clone(),
                            configured: None,
                            origin: listed.map_or(PriceOrigin::Unpriced, PriceOrigin::Table),
                            price: listed.map(|l| l.entry.price),
                        }
                    }
                }
            })
            .collect()
    };
    if args.json {
        let all: Vec<Value> = shown.iter().map(to_json).collect();
        println!("{}", Value::Array(all));
    } else {
        for s in &shown {
            print!("{}", to_text(s));
        }
    }
    Ok(())
}

/// Each component's price, and for one the model does not list, what it is billed at.
fn components(p: &Price) -> Vec<(&'static str, f64, Option<&'static str>)> {
    let input = "not listed: billed as input";
    let output = "not listed: billed as output";
    let write = p.cache_write_per_mtok.unwrap_or(p.input_per_mtok);
    let mut out = vec![
        ("input_per_mtok", p.input_per_mtok, None),
        ("output_per_mtok", p.output_per_mtok, None),
        (
            "cached_input_per_mtok",
            p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
            p.cached_input_per_mtok.is_none().then_some(input),
        ),
        (
            "cache_write_per_mtok",
            write,
            p.cache_write_per_mtok.is_none().then_some(input),
        ),
        (
            "cache_write_1h_per_mtok",
            p.cache_write_1h_per_mtok.unwrap_or(write),
            p.cache_write_1h_per_mtok
                .is_none()
                .then_some("not listed: billed as a 5-minute write"),
        ),
        (
            "audio_input_per_mtok",
            p.audio_input_per_mtok.unwrap_or(p.input_per_mtok),
            p.audio_input_per_mtok.is_none().then_some(input),
        ),
        (
            "audio_output_per_mtok",
            p.audio_output_per_mtok.unwrap_or(p.output_per_mtok),
            p.audio_output_per_mtok.is_none().then_some(output),
        ),
    ];
    if let Some(t) = p.long_context {
        out.push(("long_context.input_per_mtok", t.input_per_mtok, None));
        out.push(("long_context.output_per_mtok", t.output_per_mtok, None));
        out.push((
            "long_context.cached_input_per_mtok",
            t.cached_input_per_mtok.unwrap_or(t.input_per_mtok),
            t.cached_input_per_mtok
                .is_none()
                .then_some("not listed: billed as long-context input"),
        ));
    }
    out
}

/// The table's source and date, as one phrase.
fn table_source() -> String {
    price_table().map_or_else(
        || "the built-in table (unreadable)".to_owned(),
        |t| format!("{}, as of {}", t.source, t.date),
    )
}

fn entry(l: &Listed) -> String {
    format!(
        "`{}` ({}, {})",
        l.entry.name,
        l.entry.provider,
        l.matched.as_str()
    )
}

/// Where the price comes from, as one line.
fn origin_text(s: &Shown) -> String {
    match &s.origin {
        PriceOrigin::Config => match s.configured {
            Some(i) => format!("config (models[{i}].price)"),
            None => "config".to_owned(),
        },
        PriceOrigin::Table(l) => format!("built-in table, entry {}; {}", entry(l), table_source()),
        PriceOrigin::Deployments(d) => {
            let list: Vec<String> = d
                .iter()
                .map(|(model, l)| format!("{model} → {}", entry(l)))
                .collect();
            format!(
                "built-in table, the dearest of its deployments' models ({}); {}",
                list.join(", "),
                table_source()
            )
        }
        PriceOrigin::Unpriced => String::new(),
    }
}

fn to_text(s: &Shown) -> String {
    let mut out = s.name.clone();
    if s.configured.is_none() {
        out.push_str(" (not in the config)");
    }
    out.push('\n');
    let Some(price) = &s.price else {
        out.push_str("  no price: refused under a spending cap (set `price` in its config)\n");
        return out;
    };
    out.push_str(&format!("  price from: {}\n", origin_text(s)));
    out.push_str("  USD per million tokens:\n");
    for (name, value, note) in components(price) {
        let note = note.map(|n| format!("  ({n})")).unwrap_or_default();
        out.push_str(&format!("    {name:<36} {value:>10}{note}\n"));
    }
    if let Some(t) = price.long_context {
        out.push_str(&format!(
            "    long_context applies to prompts above {} tokens\n",
            t.above_prompt_tokens
        ));
    }
    out
}

fn to_json(s: &Shown) -> Value {
    let listed = |l: &Listed| {
        json!({"entry": l.entry.name, "provider": l.entry.provider,
            "matched": format!("{:?}", l.matched).to_lowercase()})
    };
    let table = || price_table().map(|t| json!({"source": t.source, "date": t.date}));
    let origin = match &s.origin {
        PriceOrigin::Config => {
            json!({"kind": "config", "field": s.configured.map(|i| format!("models[{i}].price"))})
        }
        PriceOrigin::Table(l) => json!({"kind": "table", "table": table(), "listed": listed(l)}),
        PriceOrigin::Deployments(d) => json!({"kind": "deployments", "table": table(),
            "deployments": d.iter().map(|(m, l)| json!({"model": m, "listed": listed(l)})).collect::<Vec<_>>()}),
        PriceOrigin::Unpriced => json!({"kind": "none", "refused_under_cap": true}),
    };
    let price = s.price.as_ref().map(|p| {
        let mut prices = serde_json::Map::new();
        let mut defaulted = Vec::new();
        for (name, value, note) in components(p) {
            prices.insert(name.to_owned(), json!(value));
            if note.is_some() {
                defaulted.push(name);
            }
        }
        if let Some(t) = p.long_context {
            prices.insert(
                "long_context.above_prompt_tokens".into(),
                json!(t.above_prompt_tokens),
            );
        }
        json!({"usd_per_mtok": prices, "not_listed": defaulted})
    });
    json!({"model": s.name, "configured": s.configured.is_some(), "origin": origin, "price": price})
}
