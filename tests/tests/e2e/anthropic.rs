//! Anthropic end to end (being written).
