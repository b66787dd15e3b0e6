"""The built-in instruction suite: see ARCHITECTURE.md."""
