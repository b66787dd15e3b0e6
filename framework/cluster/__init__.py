"""Ray: see ARCHITECTURE.md."""
