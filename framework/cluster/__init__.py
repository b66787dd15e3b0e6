"""Launching and stopping on a cluster: Ray Train workers, Ray job submission (the only
place that imports Ray), signals and Slurm time limits."""
