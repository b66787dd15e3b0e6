"""Naming, converting, loading and exporting Hugging Face models: see ARCHITECTURE.md."""
