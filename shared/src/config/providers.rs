//! `[[providers]]`: each upstream provider's wire protocol, base URL and API keys.

use serde::Deserialize;

use super::Secret;

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
