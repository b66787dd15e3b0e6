"""The training loop of one worker, read top to bottom: engine and data (from the start or
a checkpoint), then steps with logging, evaluation, checkpoints and early stops, then the
export. Plain torch + DeepSpeed: it knows nothing of Ray or Hydra, and runs under any
launcher that set up torch.distributed (Ray Train, torchrun)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from framework.config.schema import TrainConfig
from framework.data.loader import run_batches
from framework.hf.engine_export import export_hf
from framework.hf.resolve import model_source
from framework.model.adapters import uses_adapter
from framework.run.checkpoints import needs_universal, resume_point
from framework.run.files import HF_DIR, TOKENIZER_DIR, artifact_path
from framework.tracking.tracker import Tracker
from framework.train import checkpoint
from framework.train.engine import build_training_engine
from framework.train.evaluation import TrainingEval, evaluate
from framework.train.metrics import peak_flops
from framework.train.objective import build_objective
from framework.train.reference import prepare_reference
from framework.train.rollouts import Rollouts, build_rollouts
from framework.train.selfcheck import checked_first_batch, checked_reference
from framework.train.step import guarded_step
from framework.train.stopping import StopCheck


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    # Called with the latest metrics after each checkpoint (Ray's report under Ray Train).
    report: Callable[[dict], None] = field(default=lambda metrics: None)
    # Unix time at which the job will be killed (a Slurm time limit), if known.
    deadline: float | None = None
    # objective=grpo with rollout.generator=actors: where the rounds are sampled
    # (framework/train/rollouts.py's Generator); None: by the learners themselves.
    generator: object | None = None


def train(cfg: TrainConfig, ctx: WorkerContext) -> dict[str, float]:
    """Train to `trainer.max_steps` from the newest checkpoint (or the start), saving
    checkpoints to `run.checkpoint_dir` and the model to `run.output_dir/hf`. Stops
    early, checkpointed, when asked to (see framework/train/stopping.py). Returns the
    last step's metrics, with `stopped` set to the reason when the run stopped early.
    The run's summary is written and its wandb run finished however the loop ends."""
    out = Path(cfg.run.output_dir)
    artifact = artifact_path(out)
    tokenizer = AutoTokenizer.from_pretrained(out / TOKENIZER_DIR)
    engine, zero3, sampler, progress, reference = _start_or_resume(cfg, ctx, tokenizer, artifact)
    start = progress.get("step", 0)
    objective = build_objective(cfg, reference.live if reference else None, sampler)
    batches = _checked(iter(sampler), cfg, engine, objective, reference, start=start, ctx=ctx)
    evaluation = TrainingEval.load(
        cfg, artifact, reference.logps.get("eval") if reference else None
    )
    where = {"rank": ctx.rank, "device": ctx.device}
    precision = "bf16" if engine.bfloat16_enabled() else "fp32"
    peak = peak_flops(ctx.device, cfg.trainer.peak_tflops, precision)
    stop = StopCheck(out, ctx.deadline, cfg.checkpoint.stop_before_deadline_s)
    totals = progress.get("totals")
    with Tracker(cfg, enabled=ctx.rank == 0, start_step=start, totals=totals) as tracker:

        def evaluate_and_log(step: int) -> None:
            scores = evaluate(
                engine, tokenizer, evaluation, cfg, world_size=ctx.world_size, **where
            )
            tracker.log_eval(step, *scores)

        if evaluation.enabled and cfg.eval.every and start == 0:  # untrained baseline
            evaluate_and_log(0)
        metrics: dict = {}
        skipped_in_a_row = 0
        for step in range(start + 1, cfg.trainer.max_steps + 1):
            began = time.monotonic()
            metrics = guarded_step(
                engine, batches, cfg, objective=objective, peak=peak, step=step,
                in_a_row=skipped_in_a_row, **where,
            )  # fmt: skip
            skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
            tracker.step(metrics)
            last = step == cfg.trainer.max_steps
            if logged := step % cfg.trainer.log_every == 0 or last or metrics["skipped"]:
                tracker.log(step, metrics)
            every = cfg.eval.every
            if evaluation.enabled and ((every and step % every == 0) or last):
                evaluate_and_log(step)
            stopped = stop.reason(ctx.rank, ctx.device)
            if step % cfg.checkpoint.every == 0 or last or stopped:
                checkpoint.save(
                    engine, cfg, step, sampler_state=sampler.state_dict(),
                    totals=tracker.totals, tokenizer=tokenizer, rank_state=_rank_state(sampler),
                )  # fmt: skip
                tracker.checkpointed()
                ctx.report({"step": step, **metrics})
            stop.observe(time.monotonic() - began)
            if stopped:
                tracker.stop(step, metrics, stopped, logged=logged)
                _announce_stop(stopped, step, ctx.rank)
                return {**metrics, "stopped": stopped}
        # Without ZeRO-3's build context, transformers builds whole models again (the export's).
        del zero3
        export_hf(
            engine.module,
            tokenizer,
            out / HF_DIR,
            zero_stage=cfg.parallelism.zero_stage,
            base=model_source(cfg),
        )
    return metrics


def _data_rank(cfg: TrainConfig, ctx: WorkerContext) -> dict[str, int]:
    """This worker's share of the data: under sequence parallelism a group's workers share
    their rows (framework/model/sequence_parallel.py), and the data is split over groups."""
    size = cfg.parallelism.sequence_parallel
    return {"rank": ctx.rank // size, "world_size": ctx.world_size // size}


def _rank_state(sampler) -> dict | None:
    # grpo's rollouts keep their current round per rank; the packed data needs nothing.
    return sampler.rank_state() if isinstance(sampler, Rollouts) else None


def _checked(batches, cfg: TrainConfig, engine, objective, reference, *, start: int, ctx):
    """`batches`, once the start-up self-checks passed on their first micro batch: packing
    (examples do not see each other), and for a fresh dpo / ipo run the reference (the
    policy starts equal to it)."""
    where = {"rank": ctx.rank, "device": ctx.device}
    if cfg.trainer.verify_packing and cfg.data.packing and start < cfg.trainer.max_steps:
        batches = checked_first_batch(engine, batches, cfg.loss, **where)
    if reference and cfg.objective.verify_reference and start == 0:
        batches = checked_reference(engine, batches, objective, **where)
    return batches


def _announce_stop(reason: str, step: int, rank: int) -> None:
    # The driver reads why from rank 0's summary.json (framework/run/files.py's stopped_early).
    if rank == 0:
        print(
            f"step {step}: {reason}; checkpoint saved, stopping. Run the same command again "
            "to resume.",
            flush=True,
        )


ZERO3_OTHER_LAYOUT_WARNING = (
    "warning: DeepSpeed restores a ZeRO-3 checkpoint on another number of ranks with exact "
    "weights but not an exact optimizer state (measured: weights 2e-3 apart two steps "
    "later, against 1e-8 under ZeRO-1/2); resume on the same number of ranks to continue "
    "exactly"
)


def _start_or_resume(cfg: TrainConfig, ctx: WorkerContext, tokenizer, artifact: Path):
    """Engine, its ZeRO-3 build context, sampler, progress and the reference (dpo, ipo):
    restored from the checkpoint to resume from (converted first when written by another
    number of ranks), if any. The reference is the engine as built, before any load."""
    resume_from = resume_point(cfg)
    universal = resume_from is not None and needs_universal(resume_from, ctx.world_size)
    if universal and ctx.rank == 0:
        print(f"converting {resume_from} to a universal checkpoint for {ctx.world_size} ranks")
        checkpoint.to_universal(resume_from)
        if cfg.parallelism.zero_stage == 3:
            print(ZERO3_OTHER_LAYOUT_WARNING, flush=True)
    dist.barrier()
    engine, zero3 = build_training_engine(
        cfg, tokenizer, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
        universal=universal,
    )  # fmt: skip
    where = {"rank": ctx.rank, "world": ctx.world_size, "device": ctx.device}
    if cfg.objective.online:
        sampler = build_rollouts(cfg, engine, tokenizer, artifact, generator=ctx.generator, **where)
    else:
        sampler = run_batches(artifact, cfg, **_data_rank(cfg, ctx), pad_id=tokenizer.pad_token_id)
    reference = None
    if cfg.objective.needs_reference:
        reference = prepare_reference(
            cfg, engine, tokenizer, artifact, rank=ctx.rank, world=ctx.world_size,
            device=ctx.device,
        )  # fmt: skip
        sampler.reference = reference.logps.get("train")
    progress = {}
    if resume_from is not None:
        progress = checkpoint.load(
            engine, resume_from, universal=universal, adapter=uses_adapter(cfg.adapter)
        )
        if isinstance(sampler, Rollouts):
            sampler.load_state_dict(progress["sampler"], progress["rank_state"])
        else:
            sampler.load_state_dict(progress["sampler"])
        if ctx.rank == 0:
            print(f"resuming from {resume_from} (step {progress['step']})", flush=True)
    return engine, zero3, sampler, progress, reference
