//! Anthropic (being written).

use super::{ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse};

/// The Anthropic API at a base URL.
#[derive(Debug, Clone)]
pub struct Anthropic {
    base_url: String,
}

impl Anthropic {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }
}

impl ProviderApi for Anthropic {
    async fn call(
        &self,
        _client: &reqwest::Client,
        _request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        Err(ProviderError::Connect(format!(
            "not yet: {}",
            self.base_url
        )))
    }
}
