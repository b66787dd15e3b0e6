"""The documentation site builds with `mkdocs build --strict`, and strictness has teeth: a
broken link or a page left out of the navigation fails the build. The configuration
reference it generates lists every key of the training config, the benchmarks' results
pages are in it, and the README stays a front door."""

import dataclasses
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from framework.config.schema import TrainConfig
from tests.helpers import ROOT

README_MAX_LINES = 300


def _build(docs: Path, out: Path) -> subprocess.CompletedProcess:
    """mkdocs.yml as it is, building `docs` into `out`."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    config_file = out.parent / f"{out.name}.yml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file)]
    return subprocess.run(
        [*command, "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    built = _build(ROOT / "docs", out)
    assert built.returncode == 0, built.stderr
    return out


def _keys(cls: type, prefix: str) -> list[str]:
    """Every key under `cls`, as the reference names them (`data.sources[].path`)."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        (item,) = typing.get_args(hint) if typing.get_origin(hint) is list else (None,)
        if dataclasses.is_dataclass(hint):
            keys += _keys(hint, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(item):
            keys += [f"{prefix}{name}", *_keys(item, f"{prefix}{name}[].")]
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_the_configuration_reference_lists_every_key_of_the_training_config(site):
    page = (site / "configuration" / "index.html").read_text()
    keys = _keys(TrainConfig, "")
    assert len(keys) > 100
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert not missing, f"keys missing from the generated reference: {missing}"


def test_every_results_page_is_in_the_site_and_its_navigation(site):
    pages = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    assert pages
    home = (site / "index.html").read_text()
    for page in pages:
        assert (site / "results" / page.stem / "index.html").is_file(), page.name
        assert f'href="results/{page.stem}/"' in home, f"{page.name} is not in the navigation"


@pytest.mark.parametrize(
    ("defect", "warning"),
    [
        ("broken_link", "contains a link 'no_such_page.md'"),
        ("page_not_in_nav", 'not included in the "nav" configuration'),
    ],
)
def test_the_strict_build_fails_on_a_planted_defect(tmp_path, defect, warning):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    if defect == "broken_link":
        with (docs / "data.md").open("a") as page:
            page.write("\nSee [the missing page](no_such_page.md).\n")
    else:
        (docs / "orphan.md").write_text("# A page nobody listed\n")
    built = _build(docs, tmp_path / "site")
    assert built.returncode != 0
    assert warning in built.stderr, built.stderr


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
