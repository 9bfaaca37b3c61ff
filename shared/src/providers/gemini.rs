//! Gemini (being written).

use super::{ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse};

/// The Gemini API at a base URL.
#[derive(Debug, Clone)]
pub struct Gemini {
    base_url: String,
}

impl Gemini {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }
}

impl ProviderApi for Gemini {
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
