"""The run directory on disk: see ARCHITECTURE.md."""
