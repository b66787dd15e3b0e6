"""The worker side of training (no Ray, no Hydra): see ARCHITECTURE.md."""
