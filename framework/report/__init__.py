"""The HTML report of runs: see ARCHITECTURE.md."""
