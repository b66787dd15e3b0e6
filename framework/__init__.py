"""instruct-framework: distributed instruction tuning. The rooms: config/ (typed config),
data/ and suite/ (what is trained on), model/ (models and tokenizers), train/ (the worker
loop), eval/ (evaluation), cluster/ (Ray, signals, Slurm), and beside them prepare.py,
checkpoint.py, export.py, tracking.py, run_dir.py, chat.py and cli.py. ARCHITECTURE.md
follows a run through them."""
