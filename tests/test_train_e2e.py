"""The real command: Hydra -> Ray Train (2 CPU workers) -> DeepSpeed, end to end."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.config.schema import DEFAULT_HELD_OUT
from framework.run.checkpoints import committed, read_progress, step_dir
from framework.run.files import LEASE_FILE
from framework.run.integrity import damage
from framework.suite.families import FAMILIES
from framework.train.stopping import EXIT_RESUMABLE
from tests.helpers import ROOT, SHARED_DATA, chat_prompt, logged
from tests.helpers.cluster import RayCluster

# 3 IFEval prompts shared over the 2 workers at each evaluation, 8 tokens each.
IFEVAL_SAMPLE = [
    "eval.ifeval_prompts=3",
    f"eval.ifeval_path={SHARED_DATA / 'ifeval' / 'input_data.jsonl'}",
    "eval.ifeval_max_new_tokens=8",
]
# One run's life (test_one_runs_life_on_two_workers): 30 steps, evaluated before training
# and every 20 steps, a checkpoint every 10.
LIFE = [
    "logger.mode=offline",
    "run.report=true",
    "trainer.max_steps=30",
    "trainer.log_every=1",
    "checkpoint.every=10",
    "trainer.warmup_steps=5",
    "eval.every=20",
    "eval.suite_per_family=2",
    *IFEVAL_SAMPLE,
    "data.suite.train_examples=600",
]


SECRET = "sentinel-secret-5f1c9e"


def _environment(cluster: RayCluster | None) -> dict[str, str]:
    """Joining the session's Ray `cluster` (else no cluster: the run stops before Ray).
    A key in the environment must reach no file of the run (offline mode keeps wandb
    local)."""
    env = cluster.driver_env() if cluster else dict(os.environ)
    if not cluster:
        env.pop("RAY_ADDRESS", None)
    return dict(env, PYTHONUNBUFFERED="1", WANDB_API_KEY=SECRET, HF_TOKEN=SECRET)


def _command(output_dir, overrides) -> list[str]:
    # The tiny model unless a test names another: the real default is tested apart. No
    # report.html (seconds a run) unless a test asks.
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_llama"]
    report = [] if any(o.startswith("run.report=") for o in overrides) else ["run.report=false"]
    return [sys.executable, "launch/train.py", *model, *report, f"run.output_dir={output_dir}",
            *overrides]  # fmt: skip


def train(
    output_dir, *overrides: str, cluster: RayCluster | None = None, timeout: int = 400
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(output_dir, overrides),
        cwd=ROOT,
        env=_environment(cluster),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_training(output_dir, log, *overrides: str, cluster: RayCluster) -> subprocess.Popen:
    return subprocess.Popen(
        _command(output_dir, overrides),
        cwd=ROOT,
        env=_environment(cluster),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _wait_for(condition, what: str, log, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} never came:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def wait_for_step(process: subprocess.Popen, output_dir, step: int, log) -> None:
    def reached() -> bool:
        assert process.poll() is None, f"the run ended early:\n{log.read_text()[-3000:]}"
        return any(m["step"] >= step for m in logged(output_dir))

    _wait_for(reached, f"step {step}", log, timeout_s=300)


def assert_no_secret(output_dir) -> None:
    leaking = [
        p for p in output_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert not leaking


def _ifeval_curves_hold(evaluation: dict) -> bool:
    prompt, inst = (evaluation[f"ifeval/{k}"] for k in ("prompt_strict", "inst_strict"))
    loose = (evaluation[f"ifeval/{k}"] for k in ("prompt_loose", "inst_loose"))
    return all(0 <= strict <= lax <= 1 for strict, lax in zip((prompt, inst), loose, strict=True))


def _assert_it_learned_evaluated_and_reported(out, text: str) -> None:
    """What a finished 30-step run of LIFE wrote: its evaluations (before training, every
    20 steps, at the end), answers, samples, metrics, summary, wandb files and report."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in lines if "loss" in m]
    evaluations = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evaluations] == [0, 20, 30]
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"]
    assert evaluations[-1]["eval_loss/suite-held-out"] > evaluations[-1]["eval_loss/suite-trained"]
    assert {"suite/trained/normalized", "suite/held_out/rouge_l", "suite/family/add"} <= set(
        evaluations[0]
    )
    assert all(_ifeval_curves_hold(evaluation) for evaluation in evaluations)
    answers = [json.loads(line) for line in (out / "suite_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 * len(FAMILIES) * 2  # every family's first 2 items, 3 times
    assert {a["group"] for a in answers if a["held_out"]} == set(DEFAULT_HELD_OUT)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0] * 3 + [20] * 3 + [30] * 3  # eval.samples=3
    assert all(s["reference"] for s in samples)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens_per_s",
            "packing_efficiency", "data_wait_s", "compute_s", "optimizer_s", "step_time_skew",
            "peak_memory_gb"} <= set(metrics[0])  # fmt: skip
    assert 0.9 < metrics[-1]["packing_efficiency"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["final_loss"] == metrics[-1]["loss"]
    assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]
    assert "zero_stage: 2" in (out / "config.yaml").read_text()
    assert list((out / "wandb").glob("offline-run-*"))
    # The driver's report of the whole run, the export included (tests/report/ reads one).
    assert f"report: {out / 'report.html'}" in text
    report = (out / "report.html").read_text()
    assert f"{out}: finished" in report and 'data-key="ifeval/prompt_strict"' in report


def _assert_the_export_answers(out) -> None:
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    model = AutoModelForCausalLM.from_pretrained(out / "hf")
    prompt = chat_prompt(tokenizer, "Reverse the word apple.")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :]).strip()


def _evaluate_the_export_and_the_checkpoint_alike(out):
    """launch/eval.py on the run's hf/ and on its newest checkpoint (the same weights)."""
    results = []
    for model in ("hf", "checkpoints"):
        result = subprocess.run(
            [
                sys.executable,
                "launch/eval.py",
                f"model={out / model}",
                "per_family=1",
                "max_new_tokens=16",
                "logger.mode=offline",
                f"cache_dir={out.parent / 'cache'}",  # the checkpoint's export goes here
            ],
            cwd=ROOT,
            env=_environment(None),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"the training run's {out / 'config.yaml'}" in result.stdout
        assert "mean: held_out" in result.stdout and "mean: trained" in result.stdout
        written = json.loads((out / f"{model}-eval" / "eval.json").read_text())
        assert len(written["answers"]) == len(FAMILIES)
        assert list((out / f"{model}-eval" / "wandb").glob("offline-run-*"))
        results.append(written)
    assert results[0]["summary"] == results[1]["summary"]
    assert results[0]["answers"] == results[1]["answers"]


LEASED = "is in use by another run"


def one_of_two_started_together(out, tmp_path, overrides, cluster) -> subprocess.Popen:
    """Two runs started at once on `out`: one refuses within seconds, with one line; the
    other, returned, runs (logging to tmp_path/train.log)."""
    logs = [tmp_path / "train.log", tmp_path / "twin.log"]
    both = [start_training(out, log, *overrides, cluster=cluster) for log in logs]
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in both):
        assert time.monotonic() < deadline, "neither run refused the other"
        time.sleep(0.1)
    refused = next(i for i, p in enumerate(both) if p.poll() is not None)
    assert both[refused].returncode == 1
    assert_refused(logs[refused].read_text(), out)
    survivor = both[1 - refused]
    if refused == 0:  # the survivor's log is the one the test reads on
        logs[1].replace(logs[0])
    return survivor


def refused_mid_run(out, log, overrides, cluster) -> None:
    began = time.monotonic()
    late = start_training(out, log, *overrides, cluster=cluster)
    assert late.wait(timeout=60) == 1
    assert time.monotonic() - began < 30  # imports and Hydra; no Ray, no data
    assert_refused(log.read_text(), out)


def assert_refused(text: str, out) -> None:
    assert f"error: run.output_dir={out} {LEASED} (pid " in text, text[-3000:]
    assert "Traceback" not in text


@pytest.mark.slow
def test_one_runs_life_on_two_workers(tmp_path, ray_cluster):
    """One run of LIFE through Ray (2 workers, ZeRO-2), from start to export. Two runs
    started together on its directory: one refuses. SIGTERM to the driver: checkpoint,
    exit 75. The same command resumes, a run started meanwhile refuses in seconds, and
    the run finishes with every step logged once and its lease given back. Then what it
    learned, evaluated, logged and reported, and its export answering through
    launch/eval.py (as its checkpoint does) and generate. (ZeRO-3 through Ray, to its
    export, with workers' hosts killed and cut off and Ray restarting them from the
    newest checkpoint, runs in tests/test_slurm_multi_node.py, on three hosts.)"""
    out, log = tmp_path / "run", tmp_path / "train.log"
    first = one_of_two_started_together(out, tmp_path, LIFE, ray_cluster)
    wait_for_step(first, out, 3, log)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == EXIT_RESUMABLE, log.read_text()[-3000:]
    assert "stopped early (stop requested (signal))" in log.read_text()
    stopped_at = read_progress(committed(out / "checkpoints")[-1])["step"]
    assert [m["step"] for m in logged(out)] == list(range(1, stopped_at + 1))

    # The session's Ray runs the workers (not children of the driver): the first run's
    # go with its job.
    _wait_for(lambda: not ray_cluster.train_workers(), "the first run's workers to end", log)
    second = start_training(out, log, *LIFE, cluster=ray_cluster)
    wait_for_step(second, out, stopped_at + 1, log)
    refused_mid_run(out, tmp_path / "late.log", LIFE, ray_cluster)
    assert second.wait(timeout=400) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"resuming from {step_dir(out / 'checkpoints', stopped_at)}" in text
    assert [m["step"] for m in logged(out)] == list(range(1, 31))
    assert (out / "hf" / "config.json").exists()
    assert [p.name for p in committed(out / "checkpoints")] == ["step_00000020", "step_00000030"]
    assert [damage(p) for p in committed(out / "checkpoints")] == [None, None]
    assert not (out / LEASE_FILE).exists()
    assert_no_secret(out)

    checks = [line for line in text.splitlines() if "self-check passed" in line]
    assert len(checks) == len(set(checks)), checks  # once per worker process (pid), not twice
    _assert_it_learned_evaluated_and_reported(out, text)
    _evaluate_the_export_and_the_checkpoint_alike(out)
    _assert_the_export_answers(out)


@pytest.mark.slow
def test_errors_on_the_cluster_are_one_line_on_the_console(tmp_path, ray_cluster):
    """A checkpoint directory that cannot be made (a file is in the way): the workers stop
    together with our error line; Ray's worker and controller tracebacks stay off the
    console, the full ones are in train.log. (More workers than the cluster's CPUs is
    refused in tests/cluster/test_ray_jobs.py, through the same driver; a run that
    diverges stops the same way, tests/train/test_non_finite.py.)"""
    blocked, out = tmp_path / "a-file", tmp_path / "run"
    blocked.write_text("")
    overrides = ["trainer.max_steps=2", "eval.every=0", "logger=none"]
    result = train(
        out, *overrides, f"run.checkpoint_dir={blocked}/checkpoints", cluster=ray_cluster
    )
    assert result.returncode == 1
    step = step_dir(blocked / "checkpoints", 2)
    assert f"error: checkpoint {step} could not be written (rank 0: " in result.stderr
    assert "Not a directory" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    log = (out / "train.log").read_text()
    assert "Traceback" in log and "framework.run.checkpoints.CheckpointError" in log


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.path=/no/such.jsonl"], "error: data.sources[0].path: no such file or folder"),
        (
            ["model.name_or_path=/no/such/model"],
            "error: model.name_or_path=/no/such/model: no such file or directory; give a preset",
        ),
        (["trainer.max_stepz=3"], "Key 'max_stepz' not in 'TrainerConfig'"),
        (
            ["data.suite.train_examples=10", "trainer.micro_batch_size=64"],
            "fewer than one micro batch for each of 2 workers at trainer.micro_batch_size=64",
        ),
    ],
)
def test_bad_input_stops_before_ray_with_one_message(tmp_path, overrides, message):
    result = train(tmp_path / "run", *overrides, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_record_is_named_by_file_and_line(tmp_path):
    data = tmp_path / "chats.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    data.write_text(
        good + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n"
    )
    result = train(tmp_path / "run", f"data.path={data}", timeout=120)
    assert result.returncode != 0
    assert f"error: {data}:2: message 0 has role 'bot'" in result.stderr


@pytest.mark.slow
def test_the_real_model_trains_exports_and_answers_through_eval_and_chat(
    tmp_path, real_model_cache, ray_cluster
):
    """SmolLM2-135M-Instruct (the default run's model) for 2 short steps through Ray and
    DeepSpeed ZeRO-2 on 2 workers; its export answers through launch/eval.py's code and the
    chat."""
    from framework.commands.chat import Conversation, load_model
    from framework.config.commands import ChatConfig, EvalConfig
    from framework.config.schema import LoggerConfig
    from framework.eval.job import run_eval

    cache, _ = real_model_cache
    out = tmp_path / "run"
    short = ["trainer.max_steps=2", "trainer.log_every=1", "data.max_seq_len=128"]
    short.append("trainer.micro_batch_size=1")
    quiet = ["eval.every=0", "eval.suite_per_family=0", "logger=none"]
    result = train(
        out, "model=smollm2_135m", f"run.cache_dir={cache}", "data.suite.train_examples=64",
        *short, *quiet, "run.report=true", cluster=ray_cluster, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "hyper-parameters (model=smollm2_135m" in result.stdout
    assert "trainer.lr=0.0002 " in result.stdout and "trainer.max_steps=2*" in result.stdout
    assert "converting" not in result.stdout  # the session's conversion is reused
    assert [m["step"] for m in logged(out)] == [1, 2]
    assert "name_or_path: smollm2_135m" in (out / "config.yaml").read_text()
    assert f"{out}: finished" in (out / "report.html").read_text()  # the driver's report

    evaluated = run_eval(
        EvalConfig(
            model=str(out / "hf"),
            split="validation",
            per_family=1,
            max_new_tokens=12,
            cache_dir=cache,
            out=str(tmp_path / "eval"),
            logger=LoggerConfig(backend="none"),
        )
    )
    assert len(evaluated["answers"]) == len(FAMILIES)
    assert {"held_out_knowledge", "held_out_twists", "trained"} <= set(evaluated["summary"])
    chat = ChatConfig(model=str(out / "hf"), max_new_tokens=12, cache_dir=cache)
    written = io.StringIO()
    reply = Conversation(*load_model(chat), chat).ask("What is the capital of France?", written)
    assert reply.strip() and written.getvalue().strip() == reply.strip()
