//! Default prices (USD per million tokens) for well-known models, used when a model's config
//! has no `price`. Figures are the providers' public list prices; override them in config.

use super::Price;

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
        .map(|&(_, input_per_mtok, output_per_mtok)| Price {
            input_per_mtok,
            output_per_mtok,
        })
}
