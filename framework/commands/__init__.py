"""What each launch/ command does: see ARCHITECTURE.md."""
