"""Models and tokenizers: built or loaded for training, wrapped for training (adapters),
attention for packed rows, and saved directories loaded for inference."""
