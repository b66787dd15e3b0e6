"""Building models and tokenizers; adapters; attention: see ARCHITECTURE.md."""
