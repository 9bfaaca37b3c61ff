//! Default prices (USD per million tokens) for well-known models, used when a model's config
//! has no `price`. Figures are the providers' public list prices; override them in config.

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
}

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

const TABLE: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("o3-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("claude-3-5-haiku-latest", 0.80, 4.00),
    ("claude-3-5-sonnet-latest", 3.00, 15.00),
    ("claude-sonnet-4-0", 3.00, 15.00),
    ("claude-sonnet-4-5", 3.00, 15.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    ("claude-opus-4-1", 15.00, 75.00),
    ("gemini-1.5-flash", 0.075, 0.30),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-pro", 1.25, 10.00),
];

/// The built-in price for a model name, if it is a well-known one.
pub fn default_price(model: &str) -> Option<Price> {
    TABLE
        .iter()
        .find(|(name, _, _)| *name == model)
        .map(|&(_, input_per_mtok, output_per_mtok)| Price::flat(input_per_mtok, output_per_mtok))
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
}
