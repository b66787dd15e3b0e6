"""Curation: duplicates, contamination and low-quality records found before rendering,
each removal counted by source and reason and written down (framework/data/curate/stage.py)."""
