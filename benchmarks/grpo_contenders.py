"""The contenders of `python benchmarks/grpo_vs_trl.py`, and how each one is metered.

Each takes the shared `Setup` and returns a `Run`: per optimizer step, its seconds split
into generation, rewards, training and the rest, the completions it sampled (mean length,
truncated share) and their mean reward. Ours is launch/train.py (objective=grpo), read
back from its run's metrics.jsonl; TRL's is GRPOTrainer in this process, timed by a
subclass around its generation and reward methods and a callback at step boundaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import ROOT, progress

from framework.config.schema import TrainConfig
from framework.run.files import METRICS_FILE

# Torch threads of each side: all cores for ours on one worker and for TRL's one process,
# half each for ours on two workers (Ray gives a worker OMP_NUM_THREADS = its CPUs).
THREADS = os.cpu_count() or 1
# What each step records, the same keys for every contender.
STEP_KEYS = ("step_s", "generate_s", "reward_s", "train_s", "other_s")


@dataclass
class Budget:
    """What both sides train with: steps, group size, completions per step, length, lr."""

    steps: int
    group_size: int
    batch_completions: int
    max_new_tokens: int
    lr: float

    @property
    def prompts_per_step(self) -> int:
        return self.batch_completions // self.group_size


@dataclass
class Setup:
    """What every contender shares: our composed and prepared config (one worker), the
    resolved model directory, the run's tokenizer, the prepared prompts and the budget."""

    cfg: TrainConfig
    overrides: list[str]  # ours' command line, less output_dir and workers
    source: str  # the model directory both sides load (framework/hf/resolve.py)
    tokenizer_dir: Path  # the prepared run's tokenizer/ (its chat template rendered prompts)
    prompts: list  # framework.data.prompts.RLPrompt: messages, verifier, spec
    budget: Budget
    workdir: Path


@dataclass
class Run:
    """One contender's run: a dict per optimizer step, the wall time of the whole run
    (start-up included), and why it failed, if it did."""

    steps: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    command: str = ""
    error: str | None = None


# --------------------------------------------------------------------------- ours


def our_step(line: dict, completions: int) -> dict:
    """A metrics.jsonl step line in the common keys: generation and rewards as the round's
    slowest rank timed them, training = forward/backward + optimizer (compute_s +
    optimizer_s), other = the rest of step_time_s (packing the rollouts, waiting)."""
    train = line["compute_s"] + line["optimizer_s"]
    generate, reward = line["generate_s"], line["reward_s"]
    return {
        "step": line["step"],
        "step_s": line["step_time_s"],
        "generate_s": generate,
        "reward_s": reward,
        "train_s": train,
        "other_s": line["step_time_s"] - generate - reward - train,
        "completions": completions,
        "completion_tokens": line["completion_tokens"],
        "truncated": line["truncated"],
        "reward": line["reward"],
    }


def run_ours(setup: Setup, workers: int) -> Run:
    """launch/train.py on `workers` Ray workers, in a fresh run directory that shares the
    prepared cache (artifact and converted model); its step lines read back."""
    run_dir = setup.workdir / f"ours_{workers}w"
    command = [
        sys.executable,
        "launch/train.py",
        *setup.overrides,
        f"run.output_dir={run_dir}",
        f"cluster.num_workers={workers}",
        f"cluster.cpus_per_worker={max(1, THREADS // workers)}",
    ]
    shown = " ".join(["python", *command[1:]]).replace(str(setup.workdir), "$WORK")
    log = run_dir.with_suffix(".log")
    progress(f"ours, {workers} worker(s): {shown}")
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    run = Run(wall_s=time.perf_counter() - began, command=shown)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        progress(f"failed (exit {done.returncode}):\n" + "\n".join(tail))
        errors = [line for line in tail if "rror" in line and "HYDRA_FULL_ERROR" not in line]
        why = (errors or tail or [""])[-1].strip()
        run.error = f"exit {done.returncode}: {why}"[:200]
        return run
    path = run_dir / METRICS_FILE
    if not path.exists():
        run.error = f"no {METRICS_FILE} in its run directory"
        return run
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    completions = setup.budget.batch_completions
    run.steps = [our_step(line, completions) for line in lines if "generate_s" in line]
    return run


# --------------------------------------------------------------------------- TRL


def trl_dataset(setup: Setup):
    """The prepared prompts in ours' order (round k's prompts are step k's: TRL takes
    them in turn, unshuffled), as TRL's conversational `prompt` column with each one's
    verifier and spec beside it (the spec as JSON: Arrow would merge the kwargs dicts of
    different constraints into one struct, adding null keys the checkers would see)."""
    from datasets import Dataset

    from framework.train.rollout_batches import round_prompts

    budget, count = setup.budget, len(setup.prompts)
    rounds = [
        round_prompts(count, budget.prompts_per_step, k, setup.cfg.trainer.seed)
        for k in range(budget.steps)
    ]
    order = [setup.prompts[i] for picked in rounds for i in picked]
    return Dataset.from_dict(
        {
            "prompt": [[dict(m) for m in p.messages] for p in order],
            "verifier": [p.verifier for p in order],
            "spec": [json.dumps(p.spec) for p in order],
        }
    )


def verifier_reward(prompts, completions, verifier, spec, **kwargs) -> list[float]:
    """TRL's reward function: each completion's text (decoded without special tokens and
    stripped, as ours decodes it) scored by the verifier its prompt names, in process;
    one that raises gives 0, as ours' verifier pool does."""
    from framework.eval.verifiers import VERIFIERS

    rewards = []
    for completion, name, raw in zip(completions, verifier, spec, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        try:
            rewards.append(float(VERIFIERS[name](text.strip(), json.loads(raw))))
        except Exception:
            rewards.append(0.0)
    return rewards


class Meter:
    """Seconds spent in TRL's methods during the current optimizer step, and the step's
    completions; `done` closes the step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.pending: dict = {}
        self.began = 0.0

    def add(self, key: str, seconds: float) -> None:
        self.pending[key] = self.pending.get(key, 0.0) + seconds

    def sampled(self, completion_ids: list[list[int]], eos: list[int]) -> None:
        self.pending["completions"] = len(completion_ids)
        self.pending["completion_tokens"] = sum(map(len, completion_ids)) / len(completion_ids)
        ended = sum(bool(ids) and ids[-1] in eos for ids in completion_ids)
        self.pending["truncated"] = 1 - ended / len(completion_ids)

    def done(self, ended: float) -> None:
        """Training = the step's time outside _generate_and_score_completions (forward,
        backward, clipping, optimizer); other = inside it, outside sampling and rewards."""
        p, step_s = self.pending, ended - self.began
        rollout = p.get("rollout_s", 0.0)
        p["step_s"], p["train_s"] = step_s, step_s - rollout
        p["other_s"] = rollout - p.get("generate_s", 0.0) - p.get("reward_s", 0.0)
        p["step"] = len(self.steps) + 1
        self.steps.append(p)
        self.pending = {}


def timed_trainer(meter: Meter):
    """GRPOTrainer with its sampling (_generate: chat template, model.generate, decoding),
    rewards (_calculate_rewards) and whole rollout (_generate_and_score_completions)
    timed into `meter`, and a callback that marks each optimizer step's start and end."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    def timed(key: str, call):
        began = time.perf_counter()
        out = call()
        meter.add(key, time.perf_counter() - began)
        return out

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            generate = super()._generate
            out = timed("generate_s", lambda: generate(prompts))
            meter.sampled(out[1], list(self.eos_token_ids))
            return out

        def _calculate_rewards(self, *args, **kwargs):
            calculate = super()._calculate_rewards
            rewards = timed("reward_s", lambda: calculate(*args, **kwargs))
            meter.pending["reward"] = float(rewards.nansum(dim=1).mean())  # one function
            return rewards

        def _generate_and_score_completions(self, inputs):
            rollout = super()._generate_and_score_completions
            return timed("rollout_s", lambda: rollout(inputs))

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            meter.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            meter.done(time.perf_counter())

    return TimedGRPOTrainer, StepClock()


SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def trl_config(setup: Setup, out: Path):
    """GRPOConfig matched to ours: per step the same completions (one generation batch per
    optimizer step, split into our grad_accum_steps micro batches), group size, length,
    sampling at temperature 1 without top-k/top-p, lr schedule, clipping, seed; no KL
    (beta=0), one update per batch, rewards scaled per group as ours' objective says, and
    loss_type="dapo": the token mean over the global batch, ours' aggregation=token."""
    from trl import GRPOConfig

    cfg, budget = setup.cfg, setup.budget
    accum = cfg.trainer.grad_accum_steps
    return GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=budget.batch_completions // accum,
        gradient_accumulation_steps=accum,
        num_generations=budget.group_size,
        max_completion_length=budget.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=cfg.objective.kl_coef,
        loss_type={"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}[
            cfg.objective.aggregation
        ],
        num_iterations=cfg.objective.updates_per_batch,
        epsilon=cfg.objective.clip_low,
        epsilon_high=cfg.objective.clip_high,
        scale_rewards="group" if cfg.objective.scale_rewards else "none",
        max_steps=budget.steps,
        learning_rate=budget.lr,
        lr_scheduler_type=SCHEDULES[cfg.trainer.lr_schedule],
        warmup_steps=cfg.trainer.warmup_steps,
        weight_decay=cfg.trainer.weight_decay,
        max_grad_norm=cfg.trainer.max_grad_norm,
        optim="adamw_torch",
        use_cpu=True,
        bf16=False,
        seed=cfg.trainer.seed,
        shuffle_dataset=False,  # trl_dataset holds ours' order
        use_vllm=False,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_trl(setup: Setup) -> Run:
    """TRL's GRPOTrainer in this process (no Ray, no DeepSpeed), fp32, on the same model
    directory, tokenizer, prompts and verifiers; the wall time includes loading the model
    and building the trainer."""
    import tempfile

    import datasets
    from transformers import AutoTokenizer

    from framework.model.build import build_model

    datasets.disable_progress_bars()
    torch.set_num_threads(THREADS)
    began = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(setup.tokenizer_dir)
    model = build_model(setup.cfg.model, tokenizer, torch.float32, "sdpa", setup.source)
    meter = Meter()
    trainer_class, clock = timed_trainer(meter)
    with tempfile.TemporaryDirectory(dir=setup.workdir) as out:
        trainer = trainer_class(
            model=model,
            reward_funcs=[verifier_reward],
            args=trl_config(setup, Path(out)),
            train_dataset=trl_dataset(setup),
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    return Run(steps=meter.steps, wall_s=time.perf_counter() - began)
