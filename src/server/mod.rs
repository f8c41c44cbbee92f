//! The orchestrator server (placeholder).
