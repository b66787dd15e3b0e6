"""What tests share: paths, small real configs and data, gloo process groups, training a
tiny run in-process, reading what a run logged, and comparing two runs. Test modules
import from here (fixtures live in conftest.py), never from each other."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import socket
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from framework.commands.compose import compose_train_config, register_schemas
from framework.config.schema import ModelConfig, TrainConfig
from framework.config.sections import LossConfig
from framework.data.dataset import TokenizedDataset
from framework.run.files import METRICS_FILE
from framework.suite.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
# A 2-layer Llama for tests that build models directly.
TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def cpu_loss(**fields) -> LossConfig:
    """A LossConfig as a CPU run composes it: the fields left null sized for a CPU."""
    return TrainConfig(loss=LossConfig(**fields)).loss


# Overrides for a training that takes seconds: the same 2-layer Llama, short rows, no wandb.
TINY_RUN = [
    "model=tiny_llama",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "data.max_seq_len=256",
    "trainer.micro_batch_size=2",
    # Evaluation at the end only, without the suite's answers: tests that need them ask.
    "eval.every=0",
    "eval.suite_per_family=0",
    "logger=none",
    # report.html costs seconds a run: the report tests ask for it.
    "run.report=false",
    # The exactness tests compare in fp32 (auto picks bf16 on CPUs with bf16 units); the
    # bf16 tests ask for it.
    "trainer.precision=fp32",
]
# A 6-step run on the suite with a checkpoint every 2 steps (resume and export tests).
RUN = [
    *TINY_RUN,
    "data.suite.train_examples=240",
    "trainer.max_steps=6",
    "checkpoint.every=2",
    "checkpoint.keep=10",
    "trainer.log_every=1",
    "trainer.warmup_steps=2",
]

# conftest's zero3_run: RUN under ZeRO-3 for 4 steps, the suite answered at the end.
ZERO3_RUN = ["parallelism=zero3", "trainer.max_steps=4", "eval.suite_per_family=1"]


def adapter_run(model_dir: Path, method: str, *more: str) -> list[str]:
    """Overrides for RUN with `method`'s adapter over the model at `model_dir`, at a rate
    at which the tiny model's loss falls within RUN's steps, without dropout (whose draws
    would make runs on other layouts differ)."""
    return [
        f"model.name_or_path={model_dir}",
        f"adapter={method}",
        "adapter.dropout=0",
        "trainer.lr=1e-2",
        *more,
    ]


register_schemas()


def compose_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose conf/train.yaml with overrides, as launch/train.py would, on the tiny model
    unless the overrides choose another (the real default model is for marked tests)."""
    overrides = list(overrides or [])
    if not any(o.startswith("model=") for o in overrides):
        overrides.insert(0, "model=tiny_llama")
    return compose_train_config(overrides)


def synthetic_data(vocab: int) -> TokenizedDataset:
    """Examples of uneven lengths with uneven numbers of trained tokens."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 48, size=60)
    tokens = rng.integers(3, vocab, size=lengths.sum()).astype(np.int32)
    weights = (rng.random(lengths.sum()) < rng.choice([0.2, 0.9], size=lengths.sum())).astype(
        np.float32
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDataset(tokens, weights, offsets)


def chat_prompt(tokenizer, question: str) -> dict[str, torch.Tensor]:
    """One user turn through `tokenizer`'s template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )


def suite_chats(tokenizer, count: int, seed: int = 5) -> TokenizedDataset:
    """`count` suite conversations of every family, rendered with `tokenizer`'s template."""
    from framework.data.formats import Conversation
    from framework.data.render import render
    from framework.suite.build import training_chats

    examples = [
        render(tokenizer, Conversation(r["messages"]), "assistant", f"demo[{i}]")
        for i, r in enumerate(training_chats(list(FAMILIES), count, seed=seed))
    ]
    return TokenizedDataset.from_examples([(e.input_ids, e.weights) for e in examples])


def preference_records(count: int, seed: int = 0) -> list[dict]:
    """`count` pairs of suite prompts: the reference answer chosen over another item's,
    alternately as TRL strings and as TRL message lists."""
    from framework.suite.build import eval_items

    families = ["reverse_word", "add", "uppercase", "sort_ascending"]
    items = eval_items(families, "train", -(-count // len(families)), seed)[:count]
    records = []
    for i, item in enumerate(items):
        wrong = items[(i + 7) % len(items)].reference
        wrong = wrong if wrong != item.reference else wrong + "!"
        if i % 2:
            records.append({"prompt": item.prompt[-1]["content"], "chosen": item.reference,
                            "rejected": wrong})  # fmt: skip
        else:
            reply = [{"role": "assistant", "content": item.reference}]
            rejected = [{"role": "assistant", "content": wrong}]
            records.append({"prompt": item.prompt, "chosen": reply, "rejected": rejected})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pair_dataset(tokenizer, count: int) -> TokenizedDataset:
    """`count` preference_records rendered with `tokenizer`: sequences 2i, 2i + 1."""
    from framework.config.schema import SourceConfig
    from framework.data.preference import render_pair, to_pair

    sequences = []
    for i, record in enumerate(preference_records(count)):
        rendered = render_pair(tokenizer, to_pair(record, f"p[{i}]", SourceConfig(path="-")), "-")
        sequences += [(r.input_ids, r.weights) for r in (rendered.chosen, rendered.rejected)]
    return TokenizedDataset.from_examples(sequences)


@torch.no_grad()
def alone(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(summed reply log-probs, reply tokens) [pairs, 2]: each sequence run by itself,
    every position's logits, log_softmax in float64."""
    found = []
    for index in range(len(dataset)):
        ids, weights = dataset.example(index)
        ids = torch.tensor(np.asarray(ids), dtype=torch.long)[None]
        logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
        trained = torch.from_numpy(np.asarray(weights[1:]) > 0)
        found.append((picked[trained].sum().item(), trained.sum().item()))
    found = np.array(found).reshape(-1, 2, 2)
    return found[..., 0], found[..., 1]


@functools.cache  # the knowledge families have ~200 templates each: compile them once
def template_pattern(template: str) -> re.Pattern:
    """A regex matching exactly the texts `template.format(...)` can produce."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(".+")
    return re.compile("".join(parts), re.DOTALL)


def matches_templates(text: str, family: str) -> bool:
    return any(template_pattern(t).fullmatch(text) for t in FAMILIES[family].templates)


# ------------------------------------------------------------------------------ gloo groups


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def join_group(rank: int, world: int, port: int) -> None:
    """Join a gloo group the way a launcher would, environment included (DeepSpeed reads it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def leave_group() -> None:
    """Leave together, so no rank tears down its gloo group while a peer still talks to it."""
    dist.barrier()
    dist.destroy_process_group()


# The ranks start from a fork server that imported the training stack once per test
# session: a fresh interpreter per rank spent 7-8 s importing torch, DeepSpeed,
# transformers and peft before its first line, and the suite spawns about 60 groups.
FORK_SERVER_PRELOAD = ["torch", "deepspeed", "transformers", "peft", "framework.train.loop"]
multiprocessing.set_forkserver_preload(FORK_SERVER_PRELOAD)


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, port, *args) in `world` processes and wait for all. Each rank
    sees this process's environment and working directory as they are now (the fork
    server kept those of its own start), and what it prints is printed here afterwards,
    rank by rank (where pytest's capture sees it)."""
    here = (dict(os.environ), os.getcwd())
    with tempfile.TemporaryDirectory(prefix="ranks-") as printed:
        try:
            mp.start_processes(
                _run_then_exit,
                args=(fn, world, free_port(), here, printed, *args),
                nprocs=world,
                join=True,
                start_method="forkserver",
            )
        finally:
            for rank in range(world):
                for stream, name in ((sys.stdout, "out"), (sys.stderr, "err")):
                    path = Path(printed, f"{rank}.{name}")
                    stream.write(path.read_text(errors="replace") if path.exists() else "")


def _run_then_exit(rank: int, fn, world: int, port: int, here, printed: str, *args) -> None:
    environment, cwd = here
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(cwd)
    for fd, name in ((1, "out"), (2, "err")):  # the fork server's are not the test's
        os.dup2(os.open(f"{printed}/{rank}.{name}", os.O_WRONLY | os.O_CREAT), fd)
    fn(rank, world, port, *args)
    # Skip the interpreter's teardown once fn has returned: there, rarely (1 exit in about
    # 230 here), a C++ destructor of torch or DeepSpeed aborted a rank ("terminate called
    # without an active exception", no Python frame left) after all its work was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_process_group() -> None:
    """A one-rank gloo group in this process, for collective code under test."""
    if not dist.is_initialized():
        join_group(0, 1, free_port())


# ------------------------------------------------------------------------------ runs


def train_rank(rank, world, port, cfg, report: Path | None = None, errors=()) -> None:
    """A training rank (of spawn). An error of type `errors` is written to report/rank<N>
    instead of raised, for the test to read once every rank has stopped."""
    from framework.train.loop import WorkerContext, train

    join_group(rank, world, port)
    try:
        train(cfg, WorkerContext(rank=rank, world_size=world, device=torch.device("cpu")))
    except errors as err:
        (report / f"rank{rank}").write_text(str(err))
    leave_group()


def run(out: Path, cache: Path, *overrides: str, world: int = 2) -> TrainConfig:
    """RUN (with `overrides`) prepared, then trained in `world` gloo processes."""
    from framework.commands.prepare import prepare_run

    cfg = compose_config([*RUN, f"run.output_dir={out}", f"run.cache_dir={cache}", *overrides])
    cfg = prepare_run(cfg).cfg
    spawn(train_rank, world, cfg)
    return cfg


def logged(output_dir: Path) -> list[dict]:
    """The step lines (those with a loss) a run wrote to metrics.jsonl so far."""
    path = Path(output_dir) / METRICS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return [m for m in map(json.loads, lines) if "loss" in m]


def losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in logged(output_dir)}


def weight_gaps(a: dict, b: dict) -> dict[str, float]:
    """Per tensor, |a - b| / |a| in norm."""
    return {name: ((w - b[name]).norm() / w.norm()).item() for name, w in a.items()}


def assert_same(a: dict, b: dict, weight_rtol: float = 1e-5):
    """Losses within 1e-5 relative; each weight tensor within `weight_rtol` of the other
    in norm (see weight_gaps: Adam turns float summation-order noise in near-zero
    gradients into element-wise noise, so elements are not compared one by one)."""
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    assert a["state"].keys() == b["state"].keys()
    for name, gap in weight_gaps(a["state"], b["state"]).items():
        assert gap < weight_rtol, f"{name}: relative difference {gap:.2e}"


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "hf" / "model.safetensors")


def assert_same_run(resumed: Path, straight: Path, steps: list[int], rtol: float):
    """Losses of `steps` within rtol; each final weight tensor within rtol elementwise."""
    got, want = losses(resumed), losses(straight)
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=rtol)
    a, b = weights(resumed), weights(straight)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * 1e-2)


def eval_command(*overrides: str, **env: str) -> subprocess.CompletedProcess:
    """launch/eval.py with `overrides`, no wandb, outside this process's process group
    (tiny_model's: lm-eval would join it), with `env` added."""
    group = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    return subprocess.run(
        [sys.executable, "launch/eval.py", *overrides, "logger.backend=none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in group} | env,
    )
