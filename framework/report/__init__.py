"""The run report: one self-contained HTML page (inline SVG plots, no script, no network)
for one run directory or several side by side. runs.py reads a run directory, plots.py
draws, sections.py lays out each part, page.py puts the page together and writes it."""
