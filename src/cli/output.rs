//! Output helpers shared by the commands (placeholder).
