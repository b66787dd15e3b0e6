"""One concern per module: Ray in training and job submission only, DeepSpeed only where
the engine is driven, and the data package free of both (and of Hydra)."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "framework"
ALLOWED = {
    "ray": {"ray_entry.py", "ray_jobs.py"},
    "deepspeed": {"engine.py", "checkpoint.py", "export.py", "loop.py"},
    "hydra": {"config.py"},
    "wandb": {"tracking.py"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_is_imported_only_where_allowed(library):
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if library in _imports(p)}
    assert users <= ALLOWED[library], f"{library} imported in {sorted(users - ALLOWED[library])}"
