"""Typed configuration: the schemas (schema.py), their checks (checks.py), Hydra composition
(compose.py, the only module that imports Hydra) and a run's saved config.yaml (saved.py)."""
