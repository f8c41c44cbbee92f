"""Logging helpers with the official SDK's import paths (`tilebox.workflows.observability.logging`)."""
