//! Gemini end to end (being written).
