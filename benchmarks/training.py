"""Training throughput side by side: our loop, HF Trainer, TRL; Ray Train vs torchrun.

Our loop (packed, padded, packed with a dense block mask) against the Hugging Face Trainer
and TRL's SFTTrainer on the same model and data, then Ray Train against torchrun.

Run from the repository root:

    python benchmarks/training.py            # full: 3 measured rounds + a warm-up round
    python benchmarks/training.py --quick    # a smoke run of a minute or two

Prints two markdown tables with notes: throughput per contender on the same model, tokens
and data (1 process), and the per-step overhead of Ray Train over torchrun (2 workers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.attention import DOCUMENT_SDPA  # noqa: E402
from framework.config import TrainConfig  # noqa: E402
from framework.data.cache import first_plan  # noqa: E402
from framework.data.dataset import TokenizedDataset  # noqa: E402
from framework.data.formats import ErrorPolicy  # noqa: E402
from framework.data.loader import RankBatches  # noqa: E402
from framework.data.pack import IGNORE_INDEX, example_bounds  # noqa: E402
from framework.data.sources import LoadedRecord, load_data  # noqa: E402
from framework.engine import build_engine, deepspeed_config, resolve_precision  # noqa: E402
from framework.loop import train_step  # noqa: E402
from framework.metrics import ModelShape, clock, peak_flops  # noqa: E402
from framework.model import build_model  # noqa: E402
from framework.prepare import TOKENIZER_DIR, prepare_run  # noqa: E402

MAX_SEQ_LEN = 1024
PACKED_ROWS = 4  # micro batch of the packed contenders: rows of MAX_SEQ_LEN slots
SEED = 1234  # the trainer default; the artifact and every sampler use it
ZERO_STAGE = 2  # the repository default (parallelism=zero2)
THREADS = min(2, os.cpu_count() or 1)  # torch threads of the one process (table 1)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BASELINE = "ours, padded"
RAY, TORCHRUN = "Ray Train (launch/train.py)", "torchrun (benchmarks/torchrun_train.py)"
RAY_NO_DASHBOARD = "Ray Train, cluster.dashboard=false"
LAUNCHER_SLUGS = {
    TORCHRUN: "torchrun",
    RAY: "ray_train",
    RAY_NO_DASHBOARD: "ray_train_no_dashboard",
}
DATA_OVERRIDES = ["data=alpaca_demo", f"data.max_seq_len={MAX_SEQ_LEN}", "logger=none"]
FULL = {"tokens": 122_880, "rounds": 4, "launcher_steps": 30, "skip_steps": 5, "launcher_rounds": 3}
QUICK = {"tokens": 12_000, "rounds": 2, "launcher_steps": 6, "skip_steps": 2, "launcher_rounds": 1}


# --------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """What every contender shares: model config, tokenizer, data, device and budget."""

    cfg: TrainConfig
    tokenizer: object
    artifact: Path
    data: TokenizedDataset
    records: list[LoadedRecord]  # the same conversations, for TRL
    device: torch.device
    precision: str
    budget: int  # real tokens each contender trains on
    padded_examples: int  # micro batch (examples) of the padded contenders
    workdir: Path


def compose(overrides: list[str]) -> TrainConfig:
    """conf/train.yaml with overrides, as launch/train.py (and tests/conftest.py) compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from framework.config import from_hydra, register_schemas

    register_schemas()
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None)
    return from_hydra(hydra_compose(config_name="train", overrides=overrides))


@contextlib.contextmanager
def one_rank_group(device: torch.device) -> Iterator[None]:
    """A one-rank process group in this process (as tests/distributed.py makes), with the
    environment a launcher gives a rank (DeepSpeed reads LOCAL_RANK) set only inside: the
    HF and TRL contenders must not see it, or accelerate wraps their model in DDP."""
    import socket

    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            _GROUP_ENV["MASTER_PORT"] = str(s.getsockname()[1])
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{_GROUP_ENV['MASTER_PORT']}",
            rank=0,
            world_size=1,
        )
    saved = {key: os.environ.get(key) for key in _GROUP_ENV}
    os.environ.update(_GROUP_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_GROUP_ENV = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def make_setup(workdir: Path, budget: int) -> Setup:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = compose(
        [
            *DATA_OVERRIDES,
            f"run.output_dir={workdir / 'run'}",
            f"run.cache_dir={workdir / 'cache'}",
            "cluster.num_workers=1",
            f"parallelism.zero_stage={ZERO_STAGE}",
            f"trainer.micro_batch_size={PACKED_ROWS}",
            f"trainer.seed={SEED}",
        ]
    )
    prepared = prepare_run(cfg)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(cfg.run.output_dir) / TOKENIZER_DIR)
    data = TokenizedDataset.load(prepared.artifact, "train")
    records = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy(cfg.data.on_error)).train
    # Padded micro batches hold as many examples as a packed micro batch does on average,
    # so every contender's optimizer step sees about the same number of real tokens.
    plan = first_plan(prepared.artifact)
    tokens_per_row = data.lengths().sum() / len(plan)
    padded_examples = max(1, round(PACKED_ROWS * tokens_per_row / data.lengths().mean()))
    return Setup(
        cfg=cfg,
        tokenizer=tokenizer,
        artifact=prepared.artifact,
        data=data,
        records=records,
        device=device,
        precision=resolve_precision("auto", device),  # fp32 on CPU, bf16 on GPUs with it
        budget=budget,
        padded_examples=padded_examples,
        workdir=workdir,
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One contender's run: what each optimizer step fed the model, and when it ended."""

    started: float  # the start of the contender's set-up
    device: torch.device
    shape: ModelShape | None = None
    step_ends: list[float] = field(default_factory=list)
    steps: list[dict[str, int]] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def add(self, *, tokens: int, trained: int, slots: int, sum_sq: int) -> None:
        """One micro batch fed to the model."""
        for key, value in (
            ("tokens", tokens),
            ("trained", trained),
            ("slots", slots),
            ("sum_sq", sum_sq),
        ):
            self.pending[key] = self.pending.get(key, 0) + int(value)

    def step_done(self) -> None:
        self.step_ends.append(clock(self.device))
        self.steps.append(self.pending)
        self.pending = {}

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.steps)

    def metered(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Our sampler's batches, counted as train_step takes them."""
        for batch in batches:
            self.add(
                tokens=batch["num_tokens"].sum(),
                trained=(batch["loss_weights"][:, 1:] > 0).sum(),
                slots=batch["input_ids"].numel(),
                sum_sq=batch["sum_sq_lengths"].sum(),
            )
            yield batch

    def meter_forward(self, model: torch.nn.Module) -> None:
        """Count what a Trainer feeds `model` in each training forward."""

        def hook(module, args, kwargs):
            if module.training:
                self.add(**forward_counts(kwargs))

        model.register_forward_pre_hook(hook, with_kwargs=True)


def forward_counts(inputs: dict) -> dict[str, int]:
    """Real tokens, trained tokens, slots and sum of squared example lengths of one forward:
    padded rows (an attention mask, one example per row) or padding-free rows (position
    ids restarting at each example, no padding: TRL's packed collator)."""
    ids, labels = inputs["input_ids"], inputs.get("labels")
    trained = int((labels[:, 1:] != IGNORE_INDEX).sum()) if labels is not None else 0
    if inputs.get("attention_mask") is not None:
        per_row = inputs["attention_mask"].sum(dim=1).long()
        return {
            "tokens": int(per_row.sum()),
            "trained": trained,
            "slots": ids.numel(),
            "sum_sq": int((per_row**2).sum()),
        }
    lengths = [np.diff(b) for b in example_bounds(inputs["position_ids"])]
    return {
        "tokens": ids.numel(),
        "trained": trained,
        "slots": ids.numel(),
        "sum_sq": int(sum((n.astype(np.int64) ** 2).sum() for n in lengths)),
    }


def summary(run: Run, peak: float | None) -> dict[str, float]:
    """Throughput over steps 2..n (wall time from the end of step 1 to the end of step n),
    slot efficiency over every step, time to the end of step 1."""
    if len(run.steps) < 2:
        raise RuntimeError(f"only {len(run.steps)} step(s) ran: raise --tokens")
    seconds = run.step_ends[-1] - run.step_ends[0]
    measured = run.steps[1:]
    tokens = sum(s["tokens"] for s in measured)
    out = {
        "efficiency": sum(s["tokens"] for s in run.steps) / sum(s["slots"] for s in run.steps),
        "tokens_per_s": tokens / seconds,
        "trained_per_s": sum(s["trained"] for s in measured) / seconds,
        "first_step_s": run.step_ends[0] - run.started,
        "steps": len(run.steps),
        "tokens": run.tokens,
    }
    if peak and run.shape is not None:
        flops = run.shape.train_flops(tokens, sum(s["sum_sq"] for s in measured))
        out["mfu"] = flops / seconds / peak
    return out


# --------------------------------------------------------------------------- contenders


def ours(setup: Setup, *, packing: bool, attention: str) -> Run:
    """framework.loop.train_step on a DeepSpeed engine, batches from RankBatches."""
    run = Run(clock(setup.device), setup.device)
    gpu = setup.device.type == "cuda"
    cfg = copy.deepcopy(setup.cfg)
    cfg.data.packing = packing
    cfg.model.attention = attention
    cfg.trainer.micro_batch_size = PACKED_ROWS if packing else setup.padded_examples
    with one_rank_group(setup.device):
        torch.manual_seed(cfg.trainer.seed)
        model = build_model(cfg.model, setup.tokenizer, DTYPES[setup.precision], attention)
        ds_config = deepspeed_config(cfg, world_size=1, precision=setup.precision, gpu=gpu)
        engine = build_engine(model, cfg, ds_config=ds_config, gpu=gpu)
        run.shape = ModelShape.of(engine.module)
        sampler = RankBatches(
            setup.data,
            max_seq_len=MAX_SEQ_LEN,
            packing=packing,
            micro_batch_size=cfg.trainer.micro_batch_size,
            rank=0,
            world_size=1,
            seed=cfg.trainer.seed,
            pad_id=setup.tokenizer.pad_token_id,
            first_plan=first_plan(setup.artifact),
        )
        batches = run.metered(iter(sampler))
        while run.tokens < setup.budget:
            train_step(engine, batches, 1, setup.device)
            run.step_done()
        engine.destroy()
    return run


def ours_packed(setup: Setup) -> Run:
    return ours(setup, packing=True, attention=DOCUMENT_SDPA)


def ours_padded(setup: Setup) -> Run:
    return ours(setup, packing=False, attention=DOCUMENT_SDPA)


def ours_packed_dense_mask(setup: Setup) -> Run:
    return ours(setup, packing=True, attention="sdpa")


def trainer_arguments(setup: Setup, run_dir: Path, micro_batch: int) -> dict:
    """TrainingArguments shared by the HF and TRL contenders, matched to our trainer config
    (AdamW, lr, warmup + cosine, clipping, no weight decay, seed); no eval, logs or saves."""
    gpu = setup.device.type == "cuda"
    trainer = setup.cfg.trainer
    return {
        "output_dir": str(run_dir),
        "per_device_train_batch_size": micro_batch,
        "gradient_accumulation_steps": 1,
        "max_steps": 100_000,  # stopped by StopAtBudget
        "learning_rate": trainer.lr,
        "weight_decay": trainer.weight_decay,
        "max_grad_norm": trainer.max_grad_norm,
        "warmup_steps": trainer.warmup_steps,
        "lr_scheduler_type": "cosine",
        "optim": "adamw_torch_fused" if gpu else "adamw_torch",
        "bf16": setup.precision == "bf16",
        "use_cpu": not gpu,
        "seed": trainer.seed,
        "report_to": [],
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def stop_at_budget(run: Run, budget: int):
    """A TrainerCallback: mark each optimizer step's end, stop once the budget is trained."""
    from transformers import TrainerCallback

    class StopAtBudget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.step_done()
            if run.tokens >= budget:
                control.should_training_stop = True

    return StopAtBudget()


def hf_columns(data: TokenizedDataset) -> dict[str, list]:
    """Our artifact's examples as Trainer columns: labels are the tokens our loss mask
    trains (the first token of each example never is, as in our collator)."""
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(len(data)):
        ids, weights = data.example(i)
        labels = np.where(weights > 0, ids, IGNORE_INDEX)
        labels[0] = IGNORE_INDEX
        columns["input_ids"].append(ids.tolist())
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append(labels.tolist())
    return columns


def hf_trainer(setup: Setup) -> Run:
    """transformers.Trainer: random order (train_sampling_strategy="random", which replaced
    group_by_length=False in transformers 5), each batch padded to its longest example
    (DataCollatorForSeq2Seq), transformers' SDPA with the padding mask."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    run = Run(clock(setup.device), setup.device)
    dataset = Dataset.from_dict(hf_columns(setup.data))
    torch.manual_seed(setup.cfg.trainer.seed)
    model = build_model(setup.cfg.model, setup.tokenizer, torch.float32, "sdpa")
    run.shape = ModelShape.of(model)
    run.meter_forward(model)
    with tempfile.TemporaryDirectory(dir=setup.workdir) as out:
        args = trainer_arguments(setup, Path(out), setup.padded_examples)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**args, train_sampling_strategy="random"),
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(
                setup.tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX
            ),
            callbacks=[stop_at_budget(run, setup.budget)],
        )
        trainer.train()
    return run


def trl_loss_mode(tokenizer) -> tuple[str, str]:
    """TRL's own loss masking that works with our tokenizer's chat template: (mode, why)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return "assistant_only_loss", "the template has {% generation %} markers"
    try:
        get_training_chat_template(tokenizer)
    except ValueError as error:
        return "completion_only_loss", f"assistant_only_loss refused: {error}"
    return "assistant_only_loss", "TRL patches the template with generation markers"


def trl_dataset(records: list[LoadedRecord], mode: str):
    """The conversations as a `messages` data set, or, for completion-only loss, as
    conversational prompt / completion pairs (the completion is the last assistant reply)."""
    from datasets import Dataset

    chats = [
        [{"role": m["role"], "content": m["content"]} for m in r.conversation.messages]
        for r in records
    ]
    if mode == "completion_only_loss":
        return Dataset.from_dict(
            {"prompt": [c[:-1] for c in chats], "completion": [c[-1:] for c in chats]}
        )
    return Dataset.from_dict({"messages": chats})


def trl_sft(setup: Setup) -> Run:
    """TRL SFTTrainer, packing=True (best-fit decreasing, padding-free rows with position
    ids), on the same conversations; the model attends per document (document_sdpa)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    run = Run(clock(setup.device), setup.device)
    mode, why = trl_loss_mode(setup.tokenizer)
    run.note = f"{mode} ({why})"
    dataset = trl_dataset(setup.records, mode)
    torch.manual_seed(setup.cfg.trainer.seed)
    model = build_model(setup.cfg.model, setup.tokenizer, torch.float32, DOCUMENT_SDPA)
    run.shape = ModelShape.of(model)
    run.meter_forward(model)
    with tempfile.TemporaryDirectory(dir=setup.workdir) as out:
        config = SFTConfig(
            **trainer_arguments(setup, Path(out), PACKED_ROWS),
            packing=True,
            max_length=MAX_SEQ_LEN,
            **{mode: True},
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=copy.deepcopy(setup.tokenizer),
            callbacks=[stop_at_budget(run, setup.budget)],
        )
        trainer.train()
        run.note += "; " + trl_data_note(trainer.train_dataset)
    return run


def trl_data_note(dataset) -> str:
    """What TRL's own preparation made of the conversations (tokens, trained labels)."""
    import pyarrow.compute as pc

    table = dataset.data.table
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py()
    if "labels" not in table.column_names:
        return f"TRL's packed data: {tokens:,} tokens"
    labels = pc.list_flatten(table.column("labels"))
    trained = pc.sum(pc.not_equal(labels, IGNORE_INDEX)).as_py()
    return f"TRL's packed data: {tokens:,} tokens, {trained:,} with a label"


CONTENDERS: list[tuple[str, Callable[[Setup], Run]]] = [
    ("ours, packed", ours_packed),
    (BASELINE, ours_padded),
    ("ours, packed, dense block mask (sdpa)", ours_packed_dense_mask),
    ("HF Trainer, dynamic padding", hf_trainer),
    ("TRL SFTTrainer, packing=True", trl_sft),
]
PACKED = {"ours, packed", "ours, packed, dense block mask (sdpa)", "TRL SFTTrainer, packing=True"}


# --------------------------------------------------------------------------- driver


def interleaved(setup: Setup, rounds: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Rounds of A B C D E; the first (warm-up) round is dropped. Returns each contender's
    measured summaries and, for those that could not run, why."""
    peak = peak_flops(setup.device, None)
    results: dict[str, list[dict]] = {name: [] for name, _ in CONTENDERS}
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    for round_index in range(rounds):
        for name, contender in CONTENDERS:
            if name in failed:
                continue
            torch.set_num_threads(THREADS)  # accelerate may change it for a CPU run
            try:
                with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the tables
                    run = contender(setup)
                result = summary(run, peak)
            except Exception as error:  # a contender that cannot run becomes a row
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                print(f"  failed: {name}: {failed[name]}", file=sys.stderr, flush=True)
                continue
            finally:
                gc.collect()
            if run.note:
                notes[name] = run.note
            if round_index > 0:
                results[name].append(result)
            label = "warm-up" if round_index == 0 else f"round {round_index}"
            print(
                f"  {label}: {name}: {result['tokens_per_s']:,.0f} tokens/s, "
                f"{result['steps']} steps, first step {result['first_step_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return results, {**notes, **{k: f"not run: {v}" for k, v in failed.items()}}


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def throughput_table(results: dict[str, list[dict]], problems: dict[str, str]) -> list[str]:
    lines = [
        "| contender | slot efficiency | trained tokens/s | tokens/s | speed ratio | "
        "realisation factor | time to first step (s) | MFU |",
        "|" + " --- |" * 8,
    ]
    base = results.get(BASELINE) or []
    for name, _ in CONTENDERS:
        if not results[name]:
            lines.append(f"| {name} | {problems.get(name, 'no measured round')} | | | | | | |")
            continue
        rs = results[name]
        speed, eff = median(rs, "tokens_per_s"), median(rs, "efficiency")
        # Ratios within each round (the runs next to each other in time), then the median.
        pairs = list(zip(rs, base, strict=False))
        ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in pairs]
        realised = [
            r["tokens_per_s"] / b["tokens_per_s"] / (r["efficiency"] / b["efficiency"])
            for r, b in pairs
        ]
        ratio = f"{statistics.median(ratios):.3f}" if pairs else "n/a"
        realisation = f"{statistics.median(realised):.3f}" if pairs and name in PACKED else "—"
        mfu = f"{median(rs, 'mfu'):.1%}" if "mfu" in rs[0] else "n/a"
        lines.append(
            f"| {name} | {eff:.2%} | {median(rs, 'trained_per_s'):,.0f} | {speed:,.0f} "
            f"| {ratio} | {realisation} | {median(rs, 'first_step_s'):.2f} | {mfu} |"
        )
    return lines


# --------------------------------------------------------------------------- launchers


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_metrics_line(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and b"\n" in path.read_bytes()


def launch(commands: list[list[str]], run_dir: Path, log: Path) -> float:
    """Run `commands` one after the other from the repository root; returns the seconds from
    starting the first to the first complete line of `run_dir/metrics.jsonl` (polled every
    20 ms). Raises with the log's tail when a command fails."""
    started, first = time.perf_counter(), None
    with log.open("w") as out:
        for command in commands:
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            while process.poll() is None:
                if first is None and first_metrics_line(run_dir):
                    first = time.perf_counter() - started
                time.sleep(0.02)
            if process.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{tail}")
    if first is None:
        raise RuntimeError(f"no metrics line in {run_dir}")
    return first


def launcher_overrides(run_dir: Path, cache_dir: Path, steps: int, workers: int) -> list[str]:
    gpu = torch.cuda.is_available()
    return [
        *DATA_OVERRIDES,
        f"run.output_dir={run_dir}",
        f"run.cache_dir={cache_dir}",
        f"cluster.num_workers={workers}",
        f"cluster.use_gpu={str(gpu).lower()}",
        f"trainer.max_steps={steps}",
        "trainer.log_every=1",
    ]


def launcher_workers() -> list[int]:
    """Workers per launch: one per GPU (at most 2); on CPU both 2 (every core busy) and 1
    (a spare core for the launcher's own processes, as on a GPU node)."""
    if torch.cuda.is_available():
        return [min(2, torch.cuda.device_count())]
    return [2, 1]


def launcher_commands(
    workdir: Path, steps: int, workers: int, round_: int
) -> dict[str, tuple[list[list[str]], Path]]:
    """name -> (commands run one after the other, run directory of this round)."""
    python, cache = sys.executable, workdir / "cache"
    ray_dir = workdir / f"ray_train-{workers}w-{round_}"
    torchrun_dir = workdir / f"torchrun-{workers}w-{round_}"
    entry = "benchmarks/torchrun_train.py"  # commands run from the repository root
    ray = [python, "launch/train.py", *launcher_overrides(ray_dir, cache, steps, workers)]
    prepare = [python, entry, "--prepare", *launcher_overrides(torchrun_dir, cache, steps, workers)]
    torchrun_bin = Path(python).with_name("torchrun")
    torchrun = (
        [str(torchrun_bin)] if torchrun_bin.exists() else [python, "-m", "torch.distributed.run"]
    )
    torchrun += ["--standalone", f"--nproc_per_node={workers}"]
    return {
        TORCHRUN: ([prepare, [*torchrun, entry, str(torchrun_dir)]], torchrun_dir),
        RAY: ([ray], ray_dir),
    }


def measure_launch(commands: list[list[str]], run_dir: Path, skip: int) -> dict | str:
    """One launch: its medians over steps after `skip`, or why it failed."""
    try:
        first = launch(commands, run_dir, run_dir.with_suffix(".log"))
    except RuntimeError as error:
        print(f"  failed: {' '.join(commands[-1])}: {error}", file=sys.stderr, flush=True)
        return str(error).splitlines()[0]
    metrics = [m for m in read_metrics(run_dir) if m["step"] > skip]
    return {
        "step_time_s": statistics.median(m["step_time_s"] for m in metrics),
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in metrics),
        "mfu": statistics.median(m["mfu"] for m in metrics) if "mfu" in metrics[0] else None,
        "first_step_s": first,
    }


def overhead_table(
    workdir: Path, steps: int, skip: int, rounds: int
) -> tuple[list[str], list[str]]:
    """Table rows and the exact commands: for each worker count, the launchers in turn
    (torchrun first), `rounds` times; medians over rounds, Ray's overhead per round
    against that round's torchrun."""
    measured: dict[tuple[int, str], dict[int, dict]] = {}
    failed: dict[tuple[int, str], str] = {}
    shown: list[str] = []
    for workers in launcher_workers():
        for round_ in range(rounds):
            runs = launcher_commands(workdir, steps, workers, round_)
            for name, (commands, run_dir) in runs.items():
                if round_ == 0:
                    shown += [
                        " ".join(["python" if c[0] == sys.executable else Path(c[0]).name, *c[1:]])
                        for c in commands
                    ]
                result = measure_launch(commands, run_dir, skip)
                if isinstance(result, str):
                    failed[workers, name] = result
                    continue
                measured.setdefault((workers, name), {})[round_] = result
                print(
                    f"  {workers} worker(s), round {round_ + 1}/{rounds}: {name}: step "
                    f"{result['step_time_s']:.3f} s, first step after "
                    f"{result['first_step_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        "| workers | launcher | median step_time_s | tokens/s | Ray's overhead vs torchrun "
        "(per round) | time to first step (s) | MFU |",
        "|" + " --- |" * 7,
    ]
    for workers in launcher_workers():
        base = measured.get((workers, TORCHRUN), {})
        for name in (TORCHRUN, RAY):
            by_round = measured.get((workers, name), {})
            if not by_round:
                lines.append(f"| {workers} | {name} | not run: {failed.get((workers, name))} |||||")
                continue
            results = list(by_round.values())
            ratios = [
                r["step_time_s"] / base[i]["step_time_s"] - 1
                for i, r in by_round.items()
                if i in base
            ]
            overhead = (
                f"{statistics.median(ratios):+.2%} ({', '.join(f'{r:+.1%}' for r in ratios)})"
                if ratios and name == RAY
                else "—"
            )
            mfu = [r["mfu"] for r in results if r["mfu"] is not None]
            step_time = statistics.median(r["step_time_s"] for r in results)
            lines.append(
                f"| {workers} | {name} | {step_time:.3f} "
                f"| {statistics.median(r['tokens_per_s'] for r in results):,.0f} | {overhead} "
                f"| {statistics.median(r['first_step_s'] for r in results):.1f} "
                f"| {f'{statistics.median(mfu):.1%}' if mfu else 'n/a'} |"
            )
    return lines, shown


# --------------------------------------------------------------------------- report


def notes(setup: Setup, results, problems, rounds: int) -> list[str]:
    device = setup.device
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    measured = [len(rs) for rs in results.values() if rs]
    steps = {name: round(median(rs, "steps")) for name, rs in results.items() if rs}
    lines = [
        f"Device: {hardware}; precision {setup.precision}; one process, one-rank process group "
        f"for ours (DeepSpeed ZeRO stage {ZERO_STAGE}); Trainer/TRL without DeepSpeed. "
        f"Rounds: {rounds} interleaved (contenders in table order), the first dropped as "
        f"warm-up; medians over {min(measured, default=0)} measured round(s).",
        "- Model: framework.model.build_model(ModelConfig()) = the tiny Llama (4 layers, "
        "hidden 128), random init from the same seed for every contender. Data: "
        f"alpaca_en_demo.json (999 examples, {int(setup.data.lengths().sum()):,} tokens, "
        f"{int((setup.data.weights > 0).sum()):,} trained by our loss mask) "
        f"through prepare_run (data=alpaca_demo, data.max_seq_len={MAX_SEQ_LEN}, built-in "
        "BPE tokenizer, ChatML): the same token ids for every contender except TRL, which "
        "tokenizes the same conversations itself.",
        f"- Budget: every contender trains until it has fed the model {setup.budget:,} real "
        "(non-padding) tokens; the step that crosses the budget is the last (median steps per run: "
        + "; ".join(f"{name}: {n}" for name, n in steps.items())
        + "). Not the same examples: packed and padded orders differ.",
        f"- Micro batches (1 accumulation step): packed contenders (ours, TRL) {PACKED_ROWS} "
        f"rows of {MAX_SEQ_LEN} slots; padded ones (ours padded, HF) {setup.padded_examples} "
        f"examples = round({PACKED_ROWS} x real tokens per packed row / mean example length), "
        "so each optimizer step holds about the same real tokens.",
        "- slot efficiency = real tokens / token slots (input_ids.numel()) over every batch "
        "the contender fed the model. tokens/s = real tokens of steps 2..n / wall time from "
        "the end of step 1 to the end of step n (includes data loading and the optimizer); "
        "trained tokens/s counts positions with a label (labels[:, 1:] != -100).",
        "- speed ratio = tokens/s / tokens/s of ours, padded in the same round, median over "
        "rounds; realisation factor = speed ratio / slot-efficiency ratio, per round, "
        "median (how much of the packing gain becomes speed; target >= 0.95, packed rows "
        "only). Time to first step: from the start of the contender's "
        "set-up (model, engine or Trainer, data set / TRL's tokenization and packing) to the "
        "end of its first optimizer step; ours reads the prepared artifact (prepare_run ran "
        "once before the rounds) and skips loop.train's packing self-check.",
        "- ours: framework.loop.train_step over framework.data.loader.RankBatches, DeepSpeed "
        "engine from framework.engine. packed = best-fit decreasing rows, per-document SDPA "
        "(document_sdpa); padded = data.packing=false (length-grouped, padded to each batch's "
        "longest); dense block mask = packed rows with attention sdpa, where transformers "
        "builds a block-diagonal mask over each whole row from the restarting position ids.",
        "- HF Trainer: transformers.Trainer on our artifact's token ids (labels = our loss "
        "mask), DataCollatorForSeq2Seq padding to the longest example of each batch, random "
        "order (train_sampling_strategy='random', transformers 5's name for "
        "group_by_length=False), attention sdpa with the padding mask; TRL and HF: AdamW "
        "(torch), our lr, warmup, clipping and seed, a model built like ours (fp32 weights; "
        "bf16 autocast on GPUs), report_to=[], no eval, no logging, no saving.",
        "- TRL SFTTrainer: packing=True (bfd: best-fit decreasing, padding-free: each micro "
        "batch's rows concatenated into one sequence with restarting position ids), "
        f"max_length={MAX_SEQ_LEN}, attention document_sdpa (TRL recommends flash attention "
        "for padding-free batches; on CPU document_sdpa is the per-document equivalent, so "
        "it attends like ours, packed). TRL also computes entropy and token accuracy every "
        "step for its logs.",
    ]
    for name, text in problems.items():
        lines.append(f"- {name}: {text}")
    if device.type != "cuda":
        lines.append("- MFU: n/a on CPU (no known peak FLOP/s).")
    else:
        lines.append(
            "- MFU = framework.metrics.ModelShape.train_flops(real tokens, sum of squared "
            "example lengths) of steps 2..n / their wall time / the GPU's peak "
            "(framework.metrics.peak_flops), for every contender alike."
        )
    return lines


def overhead_notes(steps: int, skip: int, rounds: int, commands: list[str]) -> list[str]:
    return [
        f"The launchers in turn, {rounds} round(s) ({steps} steps each, torchrun first), "
        "a fresh run directory each time, the same config: data=alpaca_demo, "
        f"max_seq_len {MAX_SEQ_LEN}, 2 and 1 workers on CPU (1 per GPU on a GPU machine, at "
        "most 2) x "
        "micro batch 4 rows, ZeRO stage 2, one thread per worker (Ray sets OMP_NUM_THREADS "
        "= cluster.cpus_per_worker; the torchrun entry sets the same), logger=none.",
        f"- step_time_s: framework.loop.train_step's own time (max over ranks) from each run's "
        f"metrics.jsonl, median over steps {skip + 1}..{steps}; overhead = Ray's / torchrun's - 1 "
        "(target <= 2.5%).",
        "- time to first step: from starting the launcher's process (for torchrun, the driver "
        "step `--prepare`, then torchrun) to the first complete line of metrics.jsonl, polled "
        "every 20 ms; both include composing the config, prepare_run (the data artifact is "
        "already cached), process start-up, model + engine build and the packing self-check.",
        "- Commands (from the repository root):",
        *[f"  `{c}`" for c in commands],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    parser.add_argument("--tokens", type=int, help="real tokens per contender run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, the first is warm-up")
    parser.add_argument("--skip-launchers", action="store_true", help="no Ray/torchrun table")
    parser.add_argument("--launchers-only", action="store_true", help="only the Ray/torchrun table")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    budget, rounds = args.tokens or mode["tokens"], args.rounds or mode["rounds"]
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(ROOT)  # conf/data paths are relative to the repository root
    launcher_mode = (mode["launcher_steps"], mode["skip_steps"], mode["launcher_rounds"])
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        workdir = Path(tmp)
        if not args.launchers_only:
            setup = make_setup(workdir, budget)
            results, problems = interleaved(setup, rounds)
            print("\n".join(throughput_table(results, problems)))
            print()
            print("\n".join(notes(setup, results, problems, rounds)))
        if not args.skip_launchers:
            launchers, commands = overhead_table(workdir, *launcher_mode)
            print()
            print("\n".join(launchers))
            print()
            print("\n".join(overhead_notes(*launcher_mode, commands)))


if __name__ == "__main__":
    main()
