"""Every module and repository path that a doc, config, script or comment names exists.

A dotted name (`framework.train.step.train_step`) resolves through its longest prefix that is
a module file or package folder; what remains must begin with a name that module's source
defines at top level (def, class, assignment or import). A path (`launch/train.py`,
`conf/model/`, `slurm/common.sh`) must exist in the repository. A text check, no imports."""

import re
from functools import cache
from pathlib import Path

from tests.helpers import ROOT

DOCS = ("README.md", "ARCHITECTURE.md", "tests/README.md", "Makefile", ".ci/run")
GLOBS = ("docs/**/*", "conf/**/*.yaml", "slurm/*", "benchmarks/**/*", "launch/*")
FOLDERS = ("framework", "launch", "benchmarks", "slurm", "conf", "tests")
TEXT = {".py", ".md", ".yaml", ".sh", ".sbatch", ""}
# A name is only a name of ours when nothing path- or URL-like comes before it: this skips
# https://..., /tmp/..., ../shared/..., outputs/..., $RUN_DIR/conf/... and my-framework.x.
BEFORE = r"(?<![\w./\-~$}])"
DOTTED = re.compile(BEFORE + r"(?:framework|launch|benchmarks|tests)(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(BEFORE + rf"(?:{'|'.join(FOLDERS)})/[\w./*-]*")
FILE_SUFFIXES = (".py", ".md", ".yaml", ".sh", ".json", ".jsonl", ".txt", ".toml")
# Names that look like ours but name something else on purpose, with why.
ALLOWED = {
    "benchmarks/results/gpu_check.md": "benchmarks/gpu_check.py writes it on a GPU machine",
}


def _scanned() -> list[Path]:
    files = {ROOT / d for d in DOCS} | {p for g in GLOBS for p in ROOT.glob(g)}
    files |= set((ROOT / "framework").rglob("*.py"))
    return sorted(p for p in files if p.is_file() and p.suffix in TEXT)


@cache
def _top_level_names(module: Path) -> frozenset[str]:
    source = module.read_text()
    defined = re.findall(r"^(?:async\s+def|def|class)\s+(\w+)", source, re.M)
    defined += re.findall(r"^(\w+)\s*(?::[^=\n]*)?=", source, re.M)
    for imported in re.findall(
        r"^(?:from\s+\S+\s+)?import\s+\(?([^)\n]*(?:\n[^)]*)?)", source, re.M
    ):
        defined += [n.split(" as ")[-1].strip() for n in imported.replace("\n", ",").split(",")]
    return frozenset(defined)


def _module(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _dotted_problem(name: str) -> str | None:
    parts = name.split(".")
    if parts[-1] in {s.lstrip(".") for s in FILE_SUFFIXES}:
        return None  # a file name such as framework.md, not a module
    for cut in range(len(parts), 0, -1):
        module = _module(parts[:cut])
        if module is not None:
            break
    rest = parts[cut:]
    if not rest or rest[0] in _top_level_names(module):
        return None
    where = ".".join(parts[:cut])
    return f"{name}: {where} has no module or top-level name {rest[0]!r}"


def _path_problem(path: str) -> str | None:
    path = path.rstrip(".")
    if path in ALLOWED:
        return None
    if any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists():
        return None
    return f"{path}: no such file or folder"


def _problems(path: Path) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        found += [f"{path.relative_to(ROOT)}:{number}: {p}" for p in _line_problems(line)]
    return found


def test_every_named_module_and_path_exists():
    problems = [p for path in _scanned() for p in _problems(path)]
    assert not problems, "stale names:\n" + "\n".join(problems)


def test_the_checker_catches_a_stale_name_and_passes_real_ones():
    lines = [
        "# framework.nope and framework.train.step.no_such_step and launch/nope.py",
        "# framework.train.step.train_step, framework.train.stopping.EXIT_RESUMABLE,",
        "# launch/train.py, conf/model/*.yaml, https://x/framework/nope.py, /tmp/conf/x.yaml",
    ]
    found = [p for line in lines for p in _line_problems(line)]
    assert found == [
        "framework.nope: framework has no module or top-level name 'nope'",
        "framework.train.step.no_such_step: framework.train.step has no module or "
        "top-level name 'no_such_step'",
        "launch/nope.py: no such file or folder",
    ]


def _line_problems(line: str) -> list[str]:
    found = [_dotted_problem(m) for m in DOTTED.findall(line)]
    return [p for p in found + [_path_problem(m) for m in PATH.findall(line)] if p]
