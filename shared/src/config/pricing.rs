//! Which price a configured model is billed at: its own `price`, else the built-in table's
//! entry for its name, else the dearest of its deployments' upstream models ([`PriceOrigin`]
//! says which, for `sluice prices`).

use super::{Config, ConfigError, Listed, ModelConfig, Price, default_price, invalid, lookup};

/// Where a model's price comes from ([`Config::price_origin`]).
#[derive(Debug, Clone)]
pub enum PriceOrigin {
    /// Its own `price` in config.
    Config,
    /// The built-in table's entry for its public name.
    Table(Listed),
    /// The dearest of its deployments' upstream models, each in the built-in table.
    Deployments(Vec<(String, Listed)>),
    /// Nowhere: a request under a spending cap is refused.
    Unpriced,
}

impl Config {
    /// Where [`Config::price_of`] finds a model's price, for `sluice prices`.
    pub fn price_origin(model: &ModelConfig) -> PriceOrigin {
        if model.price.is_some() {
            return PriceOrigin::Config;
        }
        if let Some(listed) = lookup(&model.name) {
            return PriceOrigin::Table(listed);
        }
        let deployments: Option<Vec<(String, Listed)>> = model
            .deployments
            .iter()
            .map(|d| lookup(&d.model).map(|l| (d.model.clone(), l)))
            .collect();
        match deployments {
            Some(d) if !d.is_empty() => PriceOrigin::Deployments(d),
            _ => PriceOrigin::Unpriced,
        }
    }

    /// The price of a model: its own `price`, else the built-in table's for its public name,
    /// else the highest of its deployments' upstream models (input and output each), so a
    /// reservation covers whichever deployment answers. `None` when neither gives one, or
    /// when a deployment's upstream model has no built-in price.
    pub fn price_of(model: &ModelConfig) -> Option<Price> {
        if let Some(price) = model.price.or_else(|| default_price(&model.name)) {
            return Some(price);
        }
        let mut prices = model.deployments.iter().map(|d| default_price(&d.model));
        let first = prices.next()??;
        prices.try_fold(first, |dearest, p| Some(dearest.dearest(&p?)))
    }

    /// Money needs a price: with a gateway or tenant cap, every model can be billed to a cap,
    /// and a model priced at a silent zero would never be held by it.
    pub(super) fn validate_capped_models_are_priced(
        &self,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let cap = self
            .limits
            .global_budget_usd
            .map(|_| "limits.global_budget_usd".to_owned());
        let cap = cap.or_else(|| {
            self.tenants
                .iter()
                .position(|t| t.budget_usd.is_some())
                .map(|j| format!("tenants[{j}].budget_usd"))
        });
        if let Some(cap) = cap
            && let Some(i) = self.models.iter().position(|m| Self::price_of(m).is_none())
        {
            return Err(invalid(
                origin,
                format!("models[{i}].price"),
                format!(
                    "required: `{cap}` caps spending, and `{}` is not in the built-in price \
                     table (by its name or every deployment's model)",
                    self.models[i].name
                ),
            ));
        }
        Ok(())
    }
}
