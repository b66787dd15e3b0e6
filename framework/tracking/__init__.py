"""A run's metrics: metrics.jsonl, wandb, the progress bar: see ARCHITECTURE.md."""
