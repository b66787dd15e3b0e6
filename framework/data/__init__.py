"""Records to packed, cached rows of tokens and loss weights: see ARCHITECTURE.md."""
