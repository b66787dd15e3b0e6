"""The OpenAI-compatible server and its conversation log: see ARCHITECTURE.md."""
