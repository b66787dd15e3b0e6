"""Data: records read from sources (sources.py, formats.py), rendered with exact loss masks
(render.py, templates.py), fitted to length (fit.py), packed (pack.py), cached as one
fingerprinted artifact (cache.py, dataset.py, stats.py) and served to the ranks (loader.py)."""
