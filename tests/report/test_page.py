"""The run report: a real short run's report.html (written by training at a checkpoint)
opens in headless Chromium with no console error, draws its plots, and shows the figures
metrics.jsonl holds; several runs on one page; partial runs; the clear error for a
directory that is not a run. Chromium is Debian's (chromium, chromium-driver): installed
here when missing, with root and apt-get; without them the browser test skips, except
under CI=true, where it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.image
import pytest

from framework.report.page import write_report
from framework.report.sections import number
from framework.run.files import METRICS_FILE, REPORT_FILE, STOP_FILE, SUITE_ANSWERS_FILE
from tests.helpers import ROOT, preference_records, run, write_jsonl

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]  # fmt: skip
# The parts a run with evaluations has, each with at least one plot.
SECTIONS = ["Final figures", "Setup", "Training", "Instruction suite", "Data", "Performance"]


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def _last(out: Path, key: str):
    """`key`'s last value in metrics.jsonl: training lines first, then evaluations."""
    lines = _lines(out)
    for chosen in ([m for m in lines if "loss" in m], [m for m in lines if "loss" not in m]):
        values = [m[key] for m in chosen if key in m]
        if values:
            return values[-1]
    raise AssertionError(f"{key} is not in metrics.jsonl")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium under selenium, its console log kept."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _install_chromium() -> None:
    missing = None if os.geteuid() == 0 and shutil.which("apt-get") else "root and apt-get"
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"installing Chromium needs {missing}: under CI=true the test must run")
    if missing:
        pytest.skip(f"installing Chromium needs {missing}")
    command = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_real_runs_report_renders_in_chromium_with_the_logged_figures(
    evaluated_run, browser, tmp_path
):
    from selenium.webdriver.common.by import By

    assert (evaluated_run / REPORT_FILE).is_file()  # drawn by training, at a checkpoint
    redrawn = subprocess.run(
        [sys.executable, "launch/report.py", str(evaluated_run)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert redrawn.stdout.strip() == str(evaluated_run / REPORT_FILE)
    browser.get((evaluated_run / REPORT_FILE).as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert all(section in headings for section in SECTIONS), headings
    plots = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(plots) >= 10
    for svg in plots:  # drawn: a size on the page and lines or shapes inside
        assert svg.size["width"] > 100 and svg.size["height"] > 100
        assert svg.find_elements(By.CSS_SELECTOR, "path, use")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[1] == 1400 and pixels.std() > 0.05  # not a blank page
    figures = browser.find_elements(By.CSS_SELECTOR, "[data-key]")
    keys = {f.get_attribute("data-key") for f in figures}
    assert {"loss", "eval_loss", "suite/trained/normalized", "tokens_per_s"} <= keys
    for figure in figures:
        key = figure.get_attribute("data-key")
        want = 6 if key == "step" else _last(evaluated_run, key)
        assert float(figure.get_attribute("data-value")) == want, key
        assert figure.text == number(want), key


def test_answers_and_every_family_are_shown_at_the_last_evaluation(evaluated_run, tmp_path):
    # Drawn here: training's last drawing may have been skipped (one drawing at a time),
    # and the driver's final one is launch/train.py's (the test above redraws it).
    html = write_report([evaluated_run], tmp_path / "report.html").read_text()
    answers = [
        json.loads(line) for line in (evaluated_run / SUITE_ANSWERS_FILE).read_text().splitlines()
    ]
    assert {a["step"] for a in answers} == {0, 2, 4, 6}
    assert "answers at step 6, worst families first" in html
    first = next(a for a in answers if a["step"] == 6)
    assert first["reference"].replace("&", "&amp;").replace("<", "&lt;") in html
    for key in _lines(evaluated_run)[-1]:
        if key.startswith("suite/family/"):
            assert key.removeprefix("suite/family/") in html, key


def test_a_preference_runs_report_shows_its_rewards(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(60))
    out = tmp_path / "dpo"
    run(out, tmp_path / "cache", "objective=dpo", f"data.path={pairs}", "data.eval_fraction=0.1",
        "trainer.max_steps=2", world=1)  # fmt: skip
    page = write_report([out]).read_text()
    assert "<h2>Preference tuning</h2>" in page and "eval reward margin" in page
    for key in ("rewards/accuracy", "eval_rewards/accuracy"):
        assert f'data-key="{key}" data-value="{_last(out, key)!r}"' in page
    assert "dpo (beta 0.1)" in page and "preference pairs" in page


def test_several_runs_overlay_their_curves_and_share_one_table(evaluated_run, tmp_path):
    other = tmp_path / "longer-warmup"
    shutil.copytree(evaluated_run, other, ignore=shutil.ignore_patterns("checkpoints", "hf"))
    page = write_report([evaluated_run, other], tmp_path / "both.html").read_text()
    loss_plot = page[page.index("training loss") :].split("</svg>")[0]
    assert "run" in loss_plot and "longer-warmup" in loss_plot  # one legend entry each
    assert page.count('data-key="loss"') == 2


def test_a_run_still_going_stopped_early_or_not_evaluated_gives_what_exists(
    evaluated_run, tmp_path
):
    partial = tmp_path / "partial"
    shutil.copytree(evaluated_run, partial, ignore=shutil.ignore_patterns("checkpoints", "hf"))
    lines = (partial / METRICS_FILE).read_text().splitlines()
    steps = [line for line in lines if '"loss"' in line][:3]
    # Three steps, no evaluation, and a fourth line being written as the report reads it.
    (partial / METRICS_FILE).write_text("\n".join(steps) + '\n{"step": 4, "lo')
    (partial / SUITE_ANSWERS_FILE).unlink()
    with _leased_by_another_process(partial):
        page = write_report([partial]).read_text()
    assert "running (step 3 of 6)" in page
    assert "could not read metrics.jsonl:4" in page
    assert "Instruction suite" not in page and "Training" in page
    (partial / STOP_FILE).write_text("SIGTERM\n")
    page = write_report([partial]).read_text()
    assert "stopped early at step 3: SIGTERM" in page
    (partial / STOP_FILE).unlink()
    page = write_report([partial]).read_text()
    assert "ended at step 3 of 6, before the export; newest checkpoint step_00000006" in page
    (partial / METRICS_FILE).unlink()
    page = write_report([partial]).read_text()
    assert "Setup" in page and "Data" in page and "Training" not in page


@contextmanager
def _leased_by_another_process(path: Path) -> Iterator[None]:
    """`path`'s lease held by a live process other than this one (as a training driver)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from framework.run.lease import RunLease; "
         f"lease = RunLease({str(path)!r}, 60).acquire(); print('held', flush=True); "
         "time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_a_directory_that_is_not_a_run_is_one_clear_error(tmp_path, what):
    path = tmp_path / "not-a-run"
    if what == "empty":
        path.mkdir()
    result = subprocess.run(
        [sys.executable, "launch/report.py", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    reason = "does not exist" if what == "missing" else "has no config.yaml"
    assert (
        result.stderr == f"error: {path} is not a run directory: it {reason}. Give the "
        "run.output_dir of a launch/train.py run (it holds config.yaml and metrics.jsonl)\n"
    )
    assert not (tmp_path / REPORT_FILE).exists()
