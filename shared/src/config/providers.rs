//! `[[providers]]`: each upstream provider's wire protocol, base URL and API keys.

use std::collections::HashSet;

use serde::Deserialize;

use super::{ConfigError, Secret, invalid};

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI, or any OpenAI-compatible base URL (Azure OpenAI, vLLM, Ollama, …).
    Openai,
    /// Anthropic's Messages API (`base_url` defaults to `https://api.anthropic.com/v1`).
    Anthropic,
    /// Google Gemini's `generateContent` API (`base_url` defaults to
    /// `https://generativelanguage.googleapis.com/v1beta`).
    Gemini,
    /// The built-in offline provider for demos and tests.
    Mock,
}

impl ProviderKind {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Mock => "mock",
        }
    }
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name that deployments refer to.
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// One or more API keys; each becomes its own deployment for load balancing.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
}

impl ProviderConfig {
    /// The configured base URL, or the provider's public one (none for `openai`, which is
    /// as often a self-hosted compatible server as OpenAI itself).
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref().or(match self.kind {
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Openai | ProviderKind::Mock => None,
        })
    }
}

impl ProviderConfig {
    /// Checks each provider and that names are unique; answers the names, which deployments
    /// refer to.
    pub(super) fn validate_all<'a>(
        providers: &'a [Self],
        origin: &str,
    ) -> Result<HashSet<&'a str>, ConfigError> {
        let mut names = HashSet::new();
        for (i, p) in providers.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(invalid(
                    origin,
                    format!("providers[{i}].name"),
                    "must not be empty",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!("providers[{i}].name"),
                    format!("duplicate provider name `{}`", p.name),
                ));
            }
            p.validate(i, origin)?;
        }
        Ok(names)
    }

    /// Checks provider `i`: a real provider needs an http(s) base URL and a non-empty key.
    fn validate(&self, i: usize, origin: &str) -> Result<(), ConfigError> {
        if self.kind == ProviderKind::Mock {
            return Ok(());
        }
        let at = |f: &str| format!("providers[{i}].{f}");
        let kind = self.kind.name();
        let Some(url) = self.base_url() else {
            return Err(invalid(
                origin,
                at("base_url"),
                format!("is required for kind = \"{kind}\""),
            ));
        };
        if url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .is_none()
        {
            return Err(invalid(
                origin,
                at("base_url"),
                format!("`{url}` is not an http(s) URL"),
            ));
        }
        if self.api_keys.is_empty() {
            return Err(invalid(
                origin,
                at("api_keys"),
                format!("needs at least one key for kind = \"{kind}\""),
            ));
        }
        if let Some(k) = self
            .api_keys
            .iter()
            .position(|k| k.expose().trim().is_empty())
        {
            return Err(invalid(
                origin,
                format!("providers[{i}].api_keys[{k}]"),
                "is empty",
            ));
        }
        Ok(())
    }
}
