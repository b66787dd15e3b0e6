"""Anything that scores a model: see ARCHITECTURE.md."""
