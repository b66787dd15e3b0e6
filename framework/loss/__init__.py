"""The loss building blocks of training and evaluation: see ARCHITECTURE.md."""
