"""Typed config and the checks that need nothing above it: see ARCHITECTURE.md."""
