"""The layout stays the architecture: framework/'s folders in one order, none importing a
folder after it, nothing loose beside them; each heavy library imported in one room only;
test modules share helpers through tests/helpers/ alone; and no module or function grows
past what a reader takes in at once."""

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "framework"
# framework/'s folders, bottom to top: each imports only itself and folders before it, late
# imports inside functions included (ARCHITECTURE.md gives the reason for each place).
ORDER = [
    "config", "run", "suite", "data", "model", "loss", "hf", "report", "tracking", "eval",
    "serve", "train", "cluster", "commands",
]  # fmt: skip
# library -> the folders (ending in /) and modules of framework/ that may import it
ALLOWED = {
    "ray": {"cluster/"},
    "deepspeed": {
        "train/",
        "hf/engine_export.py",
        "hf/checkpoint_export.py",
        "model/sequence_parallel.py",  # DeepSpeed's Ulysses attention
    },
    "hydra": {"commands/compose.py"},
    "wandb": {"tracking/"},
    "peft": {"model/adapters.py", "hf/adapter_export.py"},
    # The HTTP server and its framework: transformers' serving pieces run on them.
    "fastapi": {"serve/"},
    "starlette": {"serve/"},
    "uvicorn": {"serve/"},
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 70
CODE = sorted(
    p
    for folder in ("framework", "launch", "benchmarks", "tests")
    for p in (ROOT / folder).rglob("*.py")
)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _framework_imports(path: Path) -> set[str]:
    """The framework modules `path` imports anywhere in it (`from framework import x`: x)."""
    names = {name for name in _imports(path) if name.startswith("framework.")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "framework" and node.level == 0:
            names |= {f"framework.{alias.name}" for alias in node.names}
    return names


def test_framework_holds_the_ordered_folders_and_nothing_loose():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules at the top of framework/, outside any folder: {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ORDER), (
        f"folders missing from ORDER: {sorted(folders - set(ORDER))}; "
        f"in ORDER but not in framework/: {sorted(set(ORDER) - folders)}"
    )


def test_no_import_runs_up_the_order():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) < 2:
            continue  # framework/__init__.py
        place = ORDER.index(relative.parts[0])
        for module in sorted(_framework_imports(path)):
            folder = module.split(".")[1]
            if folder in ORDER and ORDER.index(folder) > place:
                upward.append(f"{relative}: {module}")
    assert not upward, "imports that run up ORDER (tests/test_layering.py):\n" + "\n".join(upward)


def _allowed(relative: str, places: set[str]) -> bool:
    return any(relative.startswith(p) if p.endswith("/") else relative == p for p in places)


def _is_helpers(module: str) -> bool:
    return module == "tests.helpers" or module.startswith("tests.helpers.")


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_is_imported_only_where_allowed(library):
    users = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == library for name in _imports(p))
    }
    wrong = sorted(u for u in users if not _allowed(u, ALLOWED[library]))
    assert not wrong, f"{library} imported in {wrong}"


def test_test_modules_share_helpers_only_through_tests_helpers():
    for path in (ROOT / "tests").rglob("*.py"):
        others = {n for n in _imports(path) if n.startswith("tests.") and not _is_helpers(n)}
        assert not others, f"{path.relative_to(ROOT)} imports {sorted(others)}"


def test_no_module_or_function_is_too_long():
    too_long = []
    for path in CODE:
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert not too_long, too_long
