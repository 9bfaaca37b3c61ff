//! Prices (USD per million tokens, by component) and the built-in price table.
//!
//! A model's config `price` wins; without one, the table in `prices.toml` (a maintained list
//! with its source and date, embedded in the binary) prices it by name, alias or dated
//! snapshot ([`lookup`]). A model with neither has no price, and a budgeted request to it is
//! refused: an unknown price is never taken as free.

use std::sync::LazyLock;

use serde::Deserialize;

use crate::num::f64_to_u64;
use crate::providers::Usage;

/// Price of a model in USD per million tokens, by the components providers bill
/// differently. Only `input_per_mtok` and `output_per_mtok` are required; every other
/// component defaults to the price that is never an underestimate for it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per 1M input tokens.
    pub input_per_mtok: f64,
    /// USD per 1M output tokens (reasoning included).
    pub output_per_mtok: f64,
    /// Input read from the provider's prompt cache (OpenAI 0.1-0.5×, Anthropic 0.1×, Gemini
    /// 0.25× of input); default: the input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// Input written to the prompt cache for 5 minutes (Anthropic: 1.25× input); default:
    /// the input price.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
    /// Input written to the prompt cache for 1 hour (Anthropic: 2× input); default: the
    /// 5-minute write price.
    #[serde(default)]
    pub cache_write_1h_per_mtok: Option<f64>,
    /// Audio input; default: the input price.
    #[serde(default)]
    pub audio_input_per_mtok: Option<f64>,
    /// Audio output; default: the output price.
    #[serde(default)]
    pub audio_output_per_mtok: Option<f64>,
    /// Higher prices for a long prompt (Gemini 2.5 Pro above 200k tokens).
    #[serde(default)]
    pub long_context: Option<LongContext>,
    /// The share taken off every component when a request goes through the provider's Batch
    /// API (jobs with a `completion_window`); default [`DEFAULT_BATCH_DISCOUNT`]: OpenAI
    /// ("50% cost discount compared to synchronous APIs", platform.openai.com/docs/guides/batch)
    /// and Anthropic ("all usage is charged at 50% of the standard API prices",
    /// docs.anthropic.com/en/docs/build-with-claude/batch-processing) both halve.
    #[serde(default)]
    pub batch_discount: Option<f64>,
}

/// Batch APIs bill half the list price at OpenAI and at Anthropic.
pub const DEFAULT_BATCH_DISCOUNT: f64 = 0.5;

/// Prices that replace the base ones when a request's prompt is longer than a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// The prompt length (input tokens) above which these prices apply.
    pub above_prompt_tokens: u64,
    /// USD per 1M input tokens.
    pub input_per_mtok: f64,
    /// USD per 1M output tokens.
    pub output_per_mtok: f64,
    /// USD per 1M cached input tokens; default: this tier's input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// USD per 1M tokens × 1000 = nano-USD per token.
const NANOS_PER_USD_PER_MTOK: f64 = 1000.0;

impl Price {
    /// Only input and output prices.
    pub const fn flat(input_per_mtok: f64, output_per_mtok: f64) -> Self {
        Self {
            input_per_mtok,
            output_per_mtok,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            cache_write_1h_per_mtok: None,
            audio_input_per_mtok: None,
            audio_output_per_mtok: None,
            long_context: None,
            batch_discount: None,
        }
    }

    /// The price through the provider's Batch API: every component, the long-context tier
    /// included, less the batch discount.
    pub fn batch(&self) -> Self {
        let keep = 1.0 - self.batch_discount.unwrap_or(DEFAULT_BATCH_DISCOUNT);
        let scale = |v: Option<f64>| v.map(|p| p * keep);
        Self {
            input_per_mtok: self.input_per_mtok * keep,
            output_per_mtok: self.output_per_mtok * keep,
            cached_input_per_mtok: scale(self.cached_input_per_mtok),
            cache_write_per_mtok: scale(self.cache_write_per_mtok),
            cache_write_1h_per_mtok: scale(self.cache_write_1h_per_mtok),
            audio_input_per_mtok: scale(self.audio_input_per_mtok),
            audio_output_per_mtok: scale(self.audio_output_per_mtok),
            long_context: self.long_context.map(|t| LongContext {
                input_per_mtok: t.input_per_mtok * keep,
                output_per_mtok: t.output_per_mtok * keep,
                cached_input_per_mtok: t.cached_input_per_mtok.map(|p| p * keep),
                ..t
            }),
            // Already applied.
            batch_discount: Some(0.0),
        }
    }

    /// Free: what an unpriced model is billed (it is refused under a cap).
    pub const ZERO: Self = Self::flat(0.0, 0.0);

    /// The (input, cached input, output) prices for a prompt of `prompt_tokens`.
    fn tier(&self, prompt_tokens: u64) -> (f64, f64, f64) {
        match self.long_context {
            Some(t) if prompt_tokens > t.above_prompt_tokens => (
                t.input_per_mtok,
                t.cached_input_per_mtok.unwrap_or(t.input_per_mtok),
                t.output_per_mtok,
            ),
            _ => (
                self.input_per_mtok,
                self.cached_input_per_mtok.unwrap_or(self.input_per_mtok),
                self.output_per_mtok,
            ),
        }
    }

    fn write_5m(&self, input: f64) -> f64 {
        self.cache_write_per_mtok.unwrap_or(input)
    }

    fn write_1h(&self, input: f64) -> f64 {
        self.cache_write_1h_per_mtok.unwrap_or(self.write_5m(input))
    }

    /// Cost of a call in nano-USD (1e-9 USD): each component of `usage` at its price.
    /// Integer nanos keep ledgers exact under addition.
    pub fn cost_nano_usd(&self, usage: &Usage) -> u64 {
        let (input, cached, output) = self.tier(usage.prompt_tokens);
        let parts = [
            (usage.uncached_input(), input),
            (usage.cached_tokens, cached),
            (usage.cache_write_tokens, self.write_5m(input)),
            (usage.cache_write_1h_tokens, self.write_1h(input)),
            (
                usage.audio_input_tokens,
                self.audio_input_per_mtok.unwrap_or(input),
            ),
            (usage.text_output(), output),
            (
                usage.audio_output_tokens,
                self.audio_output_per_mtok.unwrap_or(output),
            ),
        ];
        let nanos: f64 = parts
            .iter()
            .map(|&(tokens, price)| tokens as f64 * price * NANOS_PER_USD_PER_MTOK)
            .sum();
        f64_to_u64(nanos.round())
    }

    /// The most a call with at most `prompt_tokens` in and `output_tokens` out can cost,
    /// rounded up: every input token at the dearest input component (a cache write, audio,
    /// or the long-context tier a prompt that long may reach; no cache discount assumed),
    /// every output token at the dearest output component. For reservations, which must
    /// never be smaller than the bill. Saturates: a huge `max_tokens` reserves the most
    /// there is, never wraps to 0.
    pub fn worst_case_nano_usd(&self, prompt_tokens: u64, output_tokens: u64) -> u64 {
        let (input, cached, output) = self.tier(prompt_tokens);
        let (base_input, base_cached, base_output) = self.tier(0);
        let input = [
            input,
            cached,
            base_input,
            base_cached,
            self.write_5m(input),
            self.write_1h(input),
            self.write_5m(base_input),
            self.write_1h(base_input),
            self.audio_input_per_mtok.unwrap_or(input),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let output = [
            output,
            base_output,
            self.audio_output_per_mtok.unwrap_or(output),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let nanos = prompt_tokens as f64 * input * NANOS_PER_USD_PER_MTOK
            + output_tokens as f64 * output * NANOS_PER_USD_PER_MTOK;
        f64_to_u64(nanos.ceil()).saturating_add(1)
    }

    /// Each component at the higher of the two prices: a price that never underestimates a
    /// call to either model (a public model served by deployments of different models).
    pub fn dearest(&self, other: &Self) -> Self {
        let (a, b) = (self, other);
        let either = |x: Option<f64>, y: Option<f64>, x_default: f64, y_default: f64| {
            (x.is_some() || y.is_some()).then(|| x.unwrap_or(x_default).max(y.unwrap_or(y_default)))
        };
        let input = a.input_per_mtok.max(b.input_per_mtok);
        let output = a.output_per_mtok.max(b.output_per_mtok);
        let long_context = match (a.long_context, b.long_context) {
            (None, None) => None,
            (x, y) => {
                let tier = |t: Option<LongContext>, p: &Self| {
                    t.unwrap_or(LongContext {
                        above_prompt_tokens: u64::MAX,
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                        cached_input_per_mtok: p.cached_input_per_mtok,
                    })
                };
                let (x, y) = (tier(x, a), tier(y, b));
                Some(LongContext {
                    above_prompt_tokens: x.above_prompt_tokens.min(y.above_prompt_tokens),
                    input_per_mtok: x.input_per_mtok.max(y.input_per_mtok).max(input),
                    output_per_mtok: x.output_per_mtok.max(y.output_per_mtok).max(output),
                    cached_input_per_mtok: either(
                        x.cached_input_per_mtok,
                        y.cached_input_per_mtok,
                        x.input_per_mtok,
                        y.input_per_mtok,
                    ),
                })
            }
        };
        Self {
            input_per_mtok: input,
            output_per_mtok: output,
            cached_input_per_mtok: either(
                a.cached_input_per_mtok,
                b.cached_input_per_mtok,
                a.input_per_mtok,
                b.input_per_mtok,
            ),
            cache_write_per_mtok: either(
                a.cache_write_per_mtok,
                b.cache_write_per_mtok,
                a.input_per_mtok,
                b.input_per_mtok,
            ),
            cache_write_1h_per_mtok: either(
                a.cache_write_1h_per_mtok,
                b.cache_write_1h_per_mtok,
                a.write_5m(a.input_per_mtok),
                b.write_5m(b.input_per_mtok),
            ),
            audio_input_per_mtok: either(
                a.audio_input_per_mtok,
                b.audio_input_per_mtok,
                a.input_per_mtok,
                b.input_per_mtok,
            ),
            audio_output_per_mtok: either(
                a.audio_output_per_mtok,
                b.audio_output_per_mtok,
                a.output_per_mtok,
                b.output_per_mtok,
            ),
            long_context,
            // The smaller discount never underestimates either.
            batch_discount: match (a.batch_discount, b.batch_discount) {
                (None, None) => None,
                (x, y) => Some(
                    x.unwrap_or(DEFAULT_BATCH_DISCOUNT)
                        .min(y.unwrap_or(DEFAULT_BATCH_DISCOUNT)),
                ),
            },
        }
    }

    /// Every price of the model with the field it came from, for validation.
    pub fn components(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
        ];
        for (name, v) in [
            ("cached_input_per_mtok", self.cached_input_per_mtok),
            ("cache_write_per_mtok", self.cache_write_per_mtok),
            ("cache_write_1h_per_mtok", self.cache_write_1h_per_mtok),
            ("audio_input_per_mtok", self.audio_input_per_mtok),
            ("audio_output_per_mtok", self.audio_output_per_mtok),
        ] {
            if let Some(v) = v {
                out.push((name, v));
            }
        }
        if let Some(t) = self.long_context {
            out.push(("long_context.input_per_mtok", t.input_per_mtok));
            out.push(("long_context.output_per_mtok", t.output_per_mtok));
            if let Some(v) = t.cached_input_per_mtok {
                out.push(("long_context.cached_input_per_mtok", v));
            }
        }
        out
    }
}

/// The built-in price table, `prices.toml` beside this file: a maintained list with its
/// source and date, parsed once on first use.
const TABLE_TOML: &str = include_str!("prices.toml");

/// The parsed table, or why it did not parse (a unit test keeps it parsing; should it ever
/// fail, every model is unpriced, which refuses budgeted requests rather than undercharging).
static TABLE: LazyLock<Result<PriceTable, String>> =
    LazyLock::new(|| toml::from_str(TABLE_TOML).map_err(|e| e.to_string()));

/// The built-in price table: where its figures come from and its entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Where the figures come from.
    pub source: String,
    /// When they were last checked (`YYYY-MM-DD`).
    pub date: String,
    /// One entry per model family.
    pub models: Vec<TableEntry>,
}

/// One model family's prices.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// The family's name (`gpt-4o-mini`, `claude-sonnet-4-5`).
    pub name: String,
    /// Who sells it: `openai`, `anthropic`, `gemini`.
    pub provider: String,
    /// Other names of the same model (`claude-sonnet-4-0`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its prices.
    pub price: Price,
}

/// How a model name found its table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The entry's own name.
    Name,
    /// One of the entry's aliases.
    Alias,
    /// A dated snapshot (or `-latest`, `-001`) of the entry's name or alias.
    Snapshot,
}

impl Matched {
    /// How it reads in `sluice prices`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "matched by name",
            Self::Alias => "matched by alias",
            Self::Snapshot => "matched as a snapshot",
        }
    }
}

/// A model name's entry in the built-in table.
#[derive(Debug, Clone, Copy)]
pub struct Listed {
    /// The entry.
    pub entry: &'static TableEntry,
    /// How the name matched it.
    pub matched: Matched,
}

/// The built-in table, `None` if it failed to parse (see [`TABLE`]).
pub fn price_table() -> Option<&'static PriceTable> {
    TABLE.as_ref().ok()
}

/// Whether `tag` is what providers append to a family's name for a pinned snapshot: a date
/// (`2024-08-06`, `20250929`), `latest`, or a version number (`0613`, `001`).
fn is_snapshot_tag(tag: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let dashed_date = || {
        let parts: Vec<&str> = tag.split('-').collect();
        matches!(parts.as_slice(), [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2
            && digits(y) && digits(m) && digits(d))
    };
    tag == "latest" || (digits(tag) && matches!(tag.len(), 3 | 4 | 8)) || dashed_date()
}

/// The table entry for a model name: its exact name or alias, else the family it is a
/// snapshot of — the longest name followed by `-` and a snapshot tag, so
/// `gpt-4o-mini-2024-07-18` is gpt-4o-mini and never gpt-4o. A leading `models/` (Gemini's
/// resource form) is ignored.
pub fn lookup(model: &str) -> Option<Listed> {
    let table = price_table()?;
    let model = model.strip_prefix("models/").unwrap_or(model);
    let names = |e: &'static TableEntry| {
        std::iter::once((e.name.as_str(), Matched::Name))
            .chain(e.aliases.iter().map(|a| (a.as_str(), Matched::Alias)))
    };
    if let Some(listed) = table.models.iter().find_map(|entry| {
        names(entry)
            .find(|(name, _)| *name == model)
            .map(|(_, matched)| Listed { entry, matched })
    }) {
        return Some(listed);
    }
    table
        .models
        .iter()
        .flat_map(|entry| names(entry).map(move |(name, _)| (entry, name)))
        .filter(|(_, name)| {
            model
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(is_snapshot_tag)
        })
        .max_by_key(|(_, name)| name.len())
        .map(|(entry, _)| Listed {
            entry,
            matched: Matched::Snapshot,
        })
}

/// The built-in price for a model name, if the table lists it or the family it is a
/// snapshot of. The one entry point for built-in prices ([`crate::config::Config::price_of`]).
pub fn default_price(model: &str) -> Option<Price> {
    lookup(model).map(|listed| listed.entry.price)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anthropic() -> Price {
        Price {
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
            cache_write_1h_per_mtok: Some(6.0),
            ..Price::flat(3.0, 15.0)
        }
    }

    #[test]
    fn batch_prices_are_half_by_default_and_never_discounted_twice() {
        let usage = Usage {
            cached_tokens: 200,
            cache_write_tokens: 100,
            ..Usage::plain(1_000, 500)
        };
        let full = anthropic().cost_nano_usd(&usage);
        let batch = anthropic().batch();
        assert_eq!(batch.cost_nano_usd(&usage), full / 2);
        assert_eq!(batch.batch().cost_nano_usd(&usage), full / 2);
        let quarter_off = Price {
            batch_discount: Some(0.25),
            ..anthropic()
        };
        assert_eq!(quarter_off.batch().cost_nano_usd(&usage), full * 3 / 4);
        // The reservation at the batch price still covers the batch bill.
        assert!(batch.worst_case_nano_usd(1_000, 500) >= batch.cost_nano_usd(&usage));
    }

    #[test]
    fn each_component_at_its_price() {
        let usage = Usage {
            prompt_tokens: 1_000_000 + 100_000 + 10_000 + 1_000,
            completion_tokens: 2_000,
            cached_tokens: 100_000,
            cache_write_tokens: 10_000,
            cache_write_1h_tokens: 1_000,
            reasoning_tokens: 500,
            ..Usage::default()
        };
        // 1M × $3 + 100k × $0.30 + 10k × $3.75 + 1k × $6 + 2k × $15 (reasoning is output).
        let usd = 3.0 + 0.03 + 0.0375 + 0.006 + 0.03;
        assert_eq!(
            anthropic().cost_nano_usd(&usage),
            (usd * 1e9_f64).round() as u64
        );
        assert_eq!(
            Price::flat(1.0, 2.0).cost_nano_usd(&Usage::plain(1000, 1000)),
            3_000_000
        );
    }

    #[test]
    fn the_worst_case_is_never_below_any_bill_of_that_size() {
        let price = Price {
            long_context: Some(LongContext {
                above_prompt_tokens: 200_000,
                input_per_mtok: 6.0,
                output_per_mtok: 22.5,
                cached_input_per_mtok: None,
            }),
            ..anthropic()
        };
        for prompt in [0, 1, 199_999, 200_000, 200_001, 1_000_000] {
            for split in [0, 1, 2, 3] {
                let part = prompt / 4 * split;
                let usage = Usage {
                    prompt_tokens: prompt,
                    completion_tokens: 1000,
                    cached_tokens: part,
                    cache_write_1h_tokens: prompt - part,
                    ..Usage::default()
                };
                assert!(price.cost_nano_usd(&usage) <= price.worst_case_nano_usd(prompt, 1000));
            }
        }
        assert_eq!(price.worst_case_nano_usd(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_table_parses_with_its_source_and_date() {
        let table = price_table().unwrap_or_else(|| panic!("{:?}", TABLE.as_ref().err()));
        assert!(table.source.contains("LiteLLM"));
        assert_eq!(table.date.len(), 10);
        assert!(table.models.len() >= 40);
        let mut names = std::collections::HashSet::new();
        for e in &table.models {
            for n in std::iter::once(&e.name).chain(&e.aliases) {
                assert!(names.insert(n.clone()), "{n} listed twice");
            }
            assert!(["openai", "anthropic", "gemini"].contains(&e.provider.as_str()));
            let p = e.price;
            for (field, v) in p.components() {
                assert!(v.is_finite() && v >= 0.0, "{}: {field}", e.name);
            }
            // A discount is a discount; a premium is a premium.
            assert!(
                p.cached_input_per_mtok.unwrap_or(0.0) <= p.input_per_mtok,
                "{}",
                e.name
            );
            assert!(p.cache_write_per_mtok.unwrap_or(f64::MAX) >= p.input_per_mtok);
            if let Some(t) = p.long_context {
                assert!(
                    t.input_per_mtok >= p.input_per_mtok && t.output_per_mtok >= p.output_per_mtok
                );
            }
        }
    }

    #[test]
    fn names_aliases_and_snapshots_find_their_family() {
        let found = |m: &str| lookup(m).map(|l| (l.entry.name.as_str(), l.matched));
        use Matched::*;
        for (model, entry, how) in [
            ("gpt-4o", "gpt-4o", Name),
            ("gpt-4o-2024-08-06", "gpt-4o", Snapshot),
            // A snapshot priced differently has its own entry.
            ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", Name),
            // The longest family wins: never gpt-4o for a gpt-4o-mini snapshot.
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", Snapshot),
            ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini", Snapshot),
            ("o3-mini-2025-01-31", "o3-mini", Snapshot),
            ("o4-mini-2025-04-16", "o4-mini", Snapshot),
            ("gpt-5-2025-08-07", "gpt-5", Snapshot),
            ("gpt-5-chat-latest", "gpt-5", Alias),
            ("codex-mini-latest", "codex-mini", Snapshot),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", Snapshot),
            ("claude-sonnet-4-20250514", "claude-sonnet-4", Snapshot),
            ("claude-sonnet-4-0", "claude-sonnet-4", Alias),
            ("claude-opus-4-1-20250805", "claude-opus-4-1", Snapshot),
            ("claude-3-5-haiku-latest", "claude-3-5-haiku", Snapshot),
            ("claude-3-haiku-20240307", "claude-3-haiku", Snapshot),
            ("gemini-2.0-flash-001", "gemini-2.0-flash", Snapshot),
            ("models/gemini-2.5-pro", "gemini-2.5-pro", Name),
            ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite", Name),
        ] {
            assert_eq!(found(model), Some((entry, how)), "{model}");
        }
        // Not a snapshot: previews, other products, and look-alikes are unpriced.
        for model in [
            "gpt-4o-realtime-preview",
            "gpt-4o-mini-tts",
            "gemini-2.5-flash-preview-05-20",
            "gpt-4o-x",
            "claude-opus-4-2",
            "gpt-test",
            "o3-pro",
            "my-finetune",
            "gpt-4o-2024-8-6",
            "",
        ] {
            assert_eq!(found(model), None, "{model}");
        }
        assert_eq!(
            default_price("gpt-4o-mini-2024-07-18").map(|p| p.input_per_mtok),
            Some(0.15)
        );
    }

    /// Reservations in the same units as bills: for every table entry, whatever mix of
    /// components a call of at most `prompt` in and `output` out is billed with (cache reads,
    /// 5-minute and 1-hour cache writes, audio both ways, reasoning, either side of a
    /// long-context threshold), the bill never exceeds the worst case reserved for it.
    #[test]
    fn no_bill_of_any_table_entry_exceeds_its_reservation() {
        let Some(table) = price_table() else {
            panic!("the table does not parse")
        };
        let prompts = [
            0, 1, 1_000, 127_999, 128_001, 199_999, 200_000, 200_001, 1_000_000,
        ];
        for e in &table.models {
            let p = e.price;
            for prompt in prompts {
                for output in [0, 1, 65_536] {
                    let worst = p.worst_case_nano_usd(prompt, output);
                    // Every split of the prompt into the components, in quarters.
                    for q in 0..=4u64 {
                        for (a, b, c, d) in [
                            (q, 0, 0, 0),
                            (0, q, 0, 0),
                            (0, 0, q, 0),
                            (0, 0, 0, q),
                            (q, 4 - q, 0, 0),
                            (0, q, 4 - q, 0),
                            (0, 0, q, 4 - q),
                        ] {
                            if a + b + c + d > 4 {
                                continue;
                            }
                            let usage = Usage {
                                prompt_tokens: prompt,
                                completion_tokens: output,
                                cached_tokens: prompt / 4 * a,
                                cache_write_tokens: prompt / 4 * b,
                                cache_write_1h_tokens: prompt / 4 * c,
                                audio_input_tokens: prompt / 4 * d,
                                reasoning_tokens: output / 2,
                                audio_output_tokens: output / 4 * q.min(4),
                            };
                            let bill = p.cost_nano_usd(&usage);
                            assert!(
                                bill <= worst,
                                "{}: {usage:?} billed {bill} > reserved {worst}",
                                e.name
                            );
                        }
                    }
                }
            }
        }
    }
}
