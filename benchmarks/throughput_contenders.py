"""The contenders of `python benchmarks/throughput.py`, and how each one is metered.

Each contender takes the shared `Setup` and returns a `Run`: per optimizer step, the real
tokens, trained tokens, token slots and squared example lengths it fed the model, and when
the step ended. Each trains until it has fed the model `Setup.budget` real tokens: ours
(framework.train.step.train_step on a DeepSpeed engine), the Hugging Face Trainer and
TRL's SFTTrainer.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from common import free_port

from framework.config.schema import TrainConfig
from framework.data.cache import first_plan
from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches
from framework.data.pack import IGNORE_INDEX, example_bounds
from framework.data.sources import LoadedRecord
from framework.model.attention import DOCUMENT_SDPA
from framework.model.build import build_model
from framework.train.engine import build_engine, deepspeed_config
from framework.train.metrics import ModelShape, clock
from framework.train.objective import build_objective
from framework.train.step import train_step

PACKED_ROWS = 4  # micro batch of the packed contenders: rows of data.max_seq_len slots
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# What a launcher gives a rank (DeepSpeed reads LOCAL_RANK); MASTER_PORT is added.
_GROUP_ENV = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


@dataclass
class Setup:
    """What every contender shares: model config, tokenizer, data, device and budget."""

    cfg: TrainConfig
    source: str | None  # the pretrained model's resolved directory; None: the tiny Llama
    tokenizer: object
    artifact: Path
    data: TokenizedDataset
    records: list[LoadedRecord]  # the same conversations, for TRL
    device: torch.device
    precision: str
    budget: int  # real tokens each contender trains on
    padded_examples: int  # micro batch (examples) of the padded contenders
    workdir: Path


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


# --------------------------------------------------------------------------- ours


@contextlib.contextmanager
def one_rank_group(device: torch.device) -> Iterator[None]:
    """A one-rank process group in this process (as tests/helpers/ makes), with the
    environment a launcher gives a rank (DeepSpeed reads LOCAL_RANK) set only inside: the
    HF and TRL contenders must not see it, or accelerate wraps their model in DDP."""
    import torch.distributed as dist

    if not dist.is_initialized():
        _GROUP_ENV["MASTER_PORT"] = str(free_port())
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


def ours(setup: Setup, *, packing: bool, attention: str, loss_positions: str = "trained") -> Run:
    """framework.train.step.train_step on a DeepSpeed engine, batches from RankBatches."""
    run = Run(clock(setup.device), setup.device)
    gpu = setup.device.type == "cuda"
    cfg = copy.deepcopy(setup.cfg)
    cfg.data.packing = packing
    cfg.model.attention = attention
    cfg.loss.positions = loss_positions
    cfg.trainer.micro_batch_size = PACKED_ROWS if packing else setup.padded_examples
    objective = build_objective(cfg)
    with one_rank_group(setup.device):
        torch.manual_seed(cfg.trainer.seed)
        model = build_model(
            cfg.model, setup.tokenizer, DTYPES[setup.precision], attention, setup.source
        )
        ds_config = deepspeed_config(cfg, world_size=1, precision=setup.precision, gpu=gpu)
        engine = build_engine(model, cfg, ds_config=ds_config, device=setup.device)
        run.shape = ModelShape.of(engine.module)
        sampler = RankBatches(
            setup.data,
            max_seq_len=cfg.data.max_seq_len,
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
            train_step(engine, batches, 1, setup.device, objective=objective)
            run.step_done()
        engine.destroy()
    return run


def ours_packed(setup: Setup) -> Run:
    return ours(setup, packing=True, attention=DOCUMENT_SDPA)


def ours_packed_full_logits(setup: Setup) -> Run:
    return ours(setup, packing=True, attention=DOCUMENT_SDPA, loss_positions="all")


def ours_padded(setup: Setup) -> Run:
    return ours(setup, packing=False, attention=DOCUMENT_SDPA)


def ours_packed_dense_mask(setup: Setup) -> Run:
    return ours(setup, packing=True, attention="sdpa")


# --------------------------------------------------------------------------- HF and TRL


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
    model = build_model(setup.cfg.model, setup.tokenizer, torch.float32, "sdpa", setup.source)
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


def trl_sft(setup: Setup, *, packing: bool = True) -> Run:
    """TRL SFTTrainer on the same conversations, packing=True (best-fit decreasing,
    padding-free rows with position ids) or padding_free=True (each micro batch's examples
    concatenated into one row); the model attends per document (document_sdpa)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    run = Run(clock(setup.device), setup.device)
    mode, why = trl_loss_mode(setup.tokenizer)
    run.note = f"{mode} ({why})"
    dataset = trl_dataset(setup.records, mode)
    torch.manual_seed(setup.cfg.trainer.seed)
    model = build_model(
        setup.cfg.model, setup.tokenizer, torch.float32, DOCUMENT_SDPA, setup.source
    )
    run.shape = ModelShape.of(model)
    run.meter_forward(model)
    with tempfile.TemporaryDirectory(dir=setup.workdir) as out:
        micro_batch = PACKED_ROWS if packing else setup.padded_examples
        config = SFTConfig(
            **trainer_arguments(setup, Path(out), micro_batch),
            packing=packing,
            padding_free=not packing,
            # TRL refuses a max_length it would not enforce without packing.
            max_length=setup.cfg.data.max_seq_len if packing else None,
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


def trl_padding_free(setup: Setup) -> Run:
    return trl_sft(setup, packing=False)


def trl_data_note(dataset) -> str:
    """What TRL's own preparation made of the conversations (tokens, trained labels)."""
    import pyarrow.compute as pc

    table = dataset.data.table
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py()
    if "labels" not in table.column_names:
        return f"TRL's prepared data: {tokens:,} tokens"
    labels = pc.list_flatten(table.column("labels"))
    trained = pc.sum(pc.not_equal(labels, IGNORE_INDEX)).as_py()
    return f"TRL's prepared data: {tokens:,} tokens, {trained:,} with a label"
