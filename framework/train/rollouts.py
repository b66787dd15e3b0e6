"""Online RL's batches (objective=grpo): each round, this rank's share of the prompts is
sampled rollout.group_size times by the policy itself (colocated generation), scored by
the prompts' verifiers, given group-normalised advantages, and packed into
trainer.grad_accum_steps micro batches that the next objective.updates_per_batch
optimizer steps train on. A round's micro batches hold, beside the packed tokens, each
completion token's sampling log-prob (the old policy's), its advantage and weight, and the
micro batch's share of the step's normaliser (framework/loss/policy_gradient.py).

Rounds are reproducible: round r's prompts follow from trainer.seed alone and its samples
from a generator seeded by (seed, r, rank). A checkpoint inside a round keeps the round's
micro batches (rank_state), so a resumed run trains on exactly the completions it would
have."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from framework.config.schema import ConfigError, TrainConfig
from framework.data.pack import IGNORE_INDEX
from framework.data.prompt_artifact import prompts_file
from framework.data.prompts import RLPrompt, read_prompts
from framework.data.templates import stop_token_ids
from framework.eval.sampling import SEGMENT, Completion, seeded_completions
from framework.eval.verifiers import VerifierPool
from framework.loss.policy_gradient import (
    check_logp_gap,
    group_advantages,
    uniform_groups,
)
from framework.loss.token import TokenLosses, token_loss_fn
from framework.model.adapters import uses_adapter
from framework.train.reference import evaluating, frozen_copy, reference_losses
from framework.train.rollout_batches import pack_completions, round_metrics, round_prompts


class Generator(Protocol):
    """Where a round's completions are sampled (rollout.generator)."""

    def sync(self, module, zero_stage: int) -> dict[str, float]:
        """Collective: the policy's current weights to the sampler. Returns
        weight_sync_s and weight_sync_mb (this rank's part)."""

    def sample(self, prompts: list[list[int]], *, seed: int, settings: dict) -> list[Completion]:
        """One completion per prompt, sampled by seeded_completions(seed, **settings)."""


class ColocatedGenerator:
    """The learner samples with its own weights: nothing to send. Under ZeRO-3 every
    forward is a collective, so the ranks generate in step (`synced`)."""

    def __init__(self, module, synced: bool):
        self.module, self.synced = module, synced

    def sync(self, module, zero_stage: int) -> dict[str, float]:
        return {"weight_sync_s": 0.0, "weight_sync_mb": 0.0}

    def sample(self, prompts: list[list[int]], *, seed: int, settings: dict) -> list[Completion]:
        with evaluating(self.module):
            return seeded_completions(
                self.module, prompts, seed=seed, synced=self.synced, **settings
            )


class Rollouts:
    """This rank's micro batches, round after round, as an endless iterator."""

    def __init__(
        self,
        cfg: TrainConfig,
        engine,
        tokenizer,
        prompts: list[RLPrompt],
        *,
        rank: int,
        world: int,
        device: torch.device,
        generator: Generator,
        reference: TokenLosses | None = None,
    ):
        self.cfg, self.engine, self.rank, self.world, self.device = cfg, engine, rank, world, device
        self.generator, self.reference = generator, reference
        self.prompts, self.prompt_ids = _fitting(cfg, tokenizer, prompts, rank)
        self.decode = tokenizer.decode
        self.stop = stop_token_ids(tokenizer, engine.module.generation_config.eos_token_id)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop[0]
        self.verifiers = sorted({p.verifier for p in prompts})
        self.pool = VerifierPool(cfg.rollout.verifier_timeout_s)
        self.round = 0  # rounds generated
        self.used = 0  # micro batches of the current round handed out
        self.batches: list[dict[str, torch.Tensor]] = []
        self.metrics: dict[str, float] = {}

    @property
    def per_round(self) -> int:
        return self.cfg.trainer.grad_accum_steps * self.cfg.objective.updates_per_batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if not self.batches or self.used == self.per_round:
                self.batches, self.metrics = self._new_round()
                self.round, self.used = self.round + 1, 0
            accum = self.cfg.trainer.grad_accum_steps
            batch = dict(self.batches[self.used % accum])
            batch["fresh"] = torch.tensor(float(self.used < accum))  # the first update
            self.used += 1
            yield batch

    # --------------------------------------------------------------- state for checkpoints

    def state_dict(self) -> dict[str, int]:
        return {"round": self.round, "used": self.used}

    def rank_state(self) -> dict:
        """The current round's micro batches and metrics (this rank's), for a resume inside
        the round."""
        return {"batches": self.batches, "metrics": self.metrics}

    def load_state_dict(self, state: dict[str, int], rank_state: dict | None) -> None:
        self.round, self.used = int(state["round"]), int(state["used"])
        if rank_state is not None:
            self.batches, self.metrics = rank_state["batches"], rank_state["metrics"]
        elif 0 < self.used < self.per_round:
            if self.rank == 0:
                print(
                    f"resuming on another number of ranks: the rest of round {self.round} is "
                    "skipped and the next round is sampled (not an exact continuation)",
                    flush=True,
                )
            self.used = self.per_round

    # --------------------------------------------------------------------------- a round

    def _mine(self) -> list[int]:
        rollout = self.cfg.rollout
        groups = rollout.batch_completions // rollout.group_size
        picked = round_prompts(len(self.prompts), groups, self.round, self.cfg.trainer.seed)
        return picked[self.rank :: self.world]

    def _new_round(self) -> tuple[list[dict[str, torch.Tensor]], dict[str, float]]:
        rollout = self.cfg.rollout
        mine = [i for i in self._mine() for _ in range(rollout.group_size)]
        sent = self.generator.sync(self.engine.module, self.cfg.parallelism.zero_stage)
        began = time.monotonic()
        completions = self._sample([self.prompt_ids[i] for i in mine])
        generated = time.monotonic()
        rewards, failures = self._rewards(mine, completions)
        advantages = group_advantages(
            rewards,
            rollout.group_size,
            baseline=self.cfg.objective.baseline,
            scale=self.cfg.objective.scale_rewards,
        )
        uniform = uniform_groups(rewards, rollout.group_size)
        kept = ~uniform.repeat_interleave(rollout.group_size)
        if not self.cfg.objective.drop_uniform_groups:
            kept = torch.ones_like(kept)
        batches = pack_completions(
            [self.prompt_ids[i] for i in mine], completions, advantages, kept,
            accum=self.cfg.trainer.grad_accum_steps, max_seq_len=self.cfg.data.max_seq_len,
            aggregation=self.cfg.objective.aggregation,
            max_new_tokens=rollout.max_new_tokens, pad=self.pad, seed=self.round,
        )  # fmt: skip
        scored = time.monotonic()
        gaps = self._old_and_reference_logps(batches)
        times = {
            **sent,
            "generate_s": generated - began,
            "reward_s": scored - generated,
            "logps_s": time.monotonic() - scored,
        }
        metrics = self._metrics(mine, completions, rewards, failures, uniform, times)
        return batches, metrics | gaps

    def _sample(self, prompts: list[list[int]]) -> list[Completion]:
        """One completion per prompt by the generator, seeded by (seed, round, rank). The
        settings are the run's, whichever generator samples: under ZeRO-3 the learners
        decode each batch in one call, in step, and the actors do too, so that both
        draw the same random numbers."""
        seeds = np.random.SeedSequence([self.cfg.trainer.seed, self.round, self.rank])
        max_new_tokens = self.cfg.rollout.max_new_tokens
        settings = {
            "stop": self.stop,
            "pad": self.pad,
            "max_new_tokens": max_new_tokens,
            "batch_size": self.cfg.rollout.generate_batch,
            "segment": max_new_tokens if self.cfg.parallelism.zero_stage == 3 else SEGMENT,
        }
        return self.generator.sample(
            prompts, seed=int(seeds.generate_state(1)[0]), settings=settings
        )

    def _old_and_reference_logps(self, batches: list[dict]) -> dict[str, float]:
        """rollout.old_logps=learner: the learner's log-probs replace the sampler's, and
        their gaps' sum, count and maximum are returned; kl_coef: the reference's."""
        gaps = {}
        if self.cfg.rollout.old_logps == "learner":
            found = [self._with_learner_logps(batch) for batch in batches]
            gaps = {
                "gap_sum": sum(g[0] for g in found),
                "gap_tokens": sum(g[1] for g in found),
                "gap_max": max(g[2] for g in found),
            }
        if self.reference is not None:
            for batch in batches:
                batch["reference_logps"] = _forward_logps(self.reference, batch, self.device)
        return gaps

    def _with_learner_logps(self, batch: dict[str, torch.Tensor]) -> tuple[float, int, float]:
        """The learner's log-probs of the sampled tokens, before any update on them (no
        gradient), in place of the sampler's as the old policy's. Returns the sum, count
        and maximum of their absolute gaps to the sampler's."""
        losses = token_loss_fn(self.engine, self.cfg.loss)
        with torch.no_grad():
            learner = _forward_logps(losses, batch, self.device)
        trained = batch["labels"] != IGNORE_INDEX
        gap = (learner - batch["old_logps"]).abs()[trained]
        batch["old_logps"] = learner
        return float(gap.sum()), int(gap.numel()), float(gap.max()) if gap.numel() else 0.0

    def _rewards(self, mine: list[int], completions: list[Completion]):
        items = []
        for index, completion in zip(mine, completions, strict=True):
            prompt = self.prompts[index]
            text = self.decode(completion.tokens, skip_special_tokens=True).strip()
            items.append((prompt.verifier, text, prompt.spec))
        scored = self.pool.score(items)
        rewards = torch.tensor([r.value for r in scored], dtype=torch.float64)
        for (_, text, _), reward in zip(items, scored, strict=True):
            if reward.failure and self.rank == 0:
                print(f"verifier failed ({reward.failure}) on {text[:60]!r}: reward 0", flush=True)
        return rewards, [r.failure for r in scored]

    def _metrics(self, mine, completions, rewards, failures, uniform, times) -> dict[str, float]:
        """Sums and counts of this rank's round (summed over ranks in reduced_metrics)."""
        sums = {
            "completions": len(completions),
            "reward_sum": float(rewards.sum()),
            "reward_sq_sum": float((rewards**2).sum()),
            "completion_tokens": sum(len(c.tokens) for c in completions),
            "completion_tokens_max": max(len(c.tokens) for c in completions),
            "truncated": sum(not c.ended for c in completions),
            "entropy_sum": sum(c.entropy for c in completions),
            "groups": len(uniform),
            "uniform_groups": int(uniform.sum()),
            "verifier_errors": sum(f is not None and f != "timeout" for f in failures),
            "verifier_timeouts": sum(f == "timeout" for f in failures),
            **times,
        }
        for name in self.verifiers:
            picked = [j for j, i in enumerate(mine) if self.prompts[i].verifier == name]
            sums[f"reward_sum/{name}"] = float(rewards[picked].sum()) if picked else 0.0
            sums[f"count/{name}"] = len(picked)
        return sums

    def reduced_metrics(self) -> dict[str, float]:
        """Collective: the current round's metrics over every rank."""
        keys = sorted(self.metrics)
        values = torch.tensor([float(self.metrics[k]) for k in keys], dtype=torch.float64)
        summed = values.clone().to(self.device)
        dist.all_reduce(summed)
        peak = values.clone().to(self.device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        total = dict(zip(keys, summed.tolist(), strict=True))
        most = dict(zip(keys, peak.tolist(), strict=True))
        metrics = round_metrics(total, most, self.verifiers)
        if "logp_gap" in metrics:
            check_logp_gap(metrics["logp_gap"], self.cfg.rollout.max_logp_gap)
        return metrics


def build_rollouts(
    cfg: TrainConfig, engine, tokenizer, artifact, *, rank, world, device, generator=None
):
    """The run's rollouts over the artifact's training prompts, sampled by `generator`
    (None: colocated); with objective.kl_coef, the reference is the starting model (a
    frozen copy, or the adapters disabled)."""
    reference = None
    if cfg.objective.kl_coef:
        frozen = None if uses_adapter(cfg.adapter) else frozen_copy(cfg, engine, tokenizer, device)
        reference = reference_losses(cfg, engine, frozen)
    prompts = read_prompts(prompts_file(artifact, "train"))
    if generator is None:
        generator = ColocatedGenerator(engine.module, synced=cfg.parallelism.zero_stage == 3)
    return Rollouts(
        cfg, engine, tokenizer, prompts, rank=rank, world=world, device=device,
        generator=generator, reference=reference,
    )  # fmt: skip


def _forward_logps(losses: TokenLosses, batch: dict, device: torch.device) -> torch.Tensor:
    """Each token's log-prob under `losses`' model, at the token's position (0 on the
    first), on the CPU."""
    ids, positions, labels = (batch[k].to(device) for k in ("input_ids", "position_ids", "labels"))
    full = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
    full[:, 1:] = -losses(ids, positions, labels).float().cpu()
    return full


def _fitting(cfg: TrainConfig, tokenizer, prompts: list[RLPrompt], rank: int):
    """The prompts, and their rendered token ids, that leave rollout.max_new_tokens of
    data.max_seq_len for a completion; the others are counted and left out."""
    room = cfg.data.max_seq_len - cfg.rollout.max_new_tokens
    rendered = [(p, prompt_ids(tokenizer, p.messages)) for p in prompts]
    kept = [(p, ids) for p, ids in rendered if len(ids) <= room]
    if not kept:
        raise ConfigError(
            f"no prompt fits in data.max_seq_len={cfg.data.max_seq_len} with "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} left for its completion: "
            "raise data.max_seq_len"
        )
    if len(kept) < len(prompts) and rank == 0:
        print(
            f"{len(prompts) - len(kept)} of {len(prompts)} prompts are longer than {room} "
            "tokens (data.max_seq_len - rollout.max_new_tokens) and are left out",
            flush=True,
        )
    return [p for p, _ in kept], [ids for _, ids in kept]


def prompt_ids(tokenizer, messages) -> list[int]:
    """A prompt's token ids as rendered for generation (the chat template's reply turn open)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    # The template already wrote any BOS; the tokenizer must not add another.
    return tokenizer(text, add_special_tokens=False)["input_ids"]
