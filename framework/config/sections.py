"""The sections of a training run's config beside `trainer` (config/schema.py's
TrainConfig holds them): how the loss is taken, what is evaluated during training, when
checkpoints are written and how a run resumes from them, what a step minimises
(`objective`) and, for online RL, how completions are sampled (`rollout`). Their
defaults are the only ones.

RENAMED_KEYS maps the keys these sections took out of `trainer` to their new names: an old
key in a command line or a YAML file stops the run naming its new key (config/compose.py),
and a run directory's config.yaml saved before the split loads on the new keys
(config/saved.py)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass
class LossConfig:
    """How token losses are computed (every objective) and averaged into a step's loss
    (sft: the preference objectives average over pairs)."""

    # token: the step's loss is the mean over every trained token of the global batch.
    # example: each example's mean token loss, averaged over the examples of the global
    # batch (short replies weigh as much as long ones).
    average: str = "token"
    # trained: the LM head and the cross-entropy run only where a label is trained,
    # chunk_tokens positions at a time, recomputed in backward (no logits of the
    # whole micro batch); all: logits at every position, as the model's forward gives.
    positions: str = "trained"
    chunk_tokens: int | None = None  # null: sized for the device (device_sizes)


@dataclass
class EvalDuringTrainingConfig:
    """Evaluation inside the training loop, on every rank (launch/eval.py evaluates a
    finished model on its own config)."""

    # Evaluate on the eval split (data.eval_fraction / data.eval_sources) every this many
    # steps and at the end; 0: at the end only. Greedy replies for `samples` prompts, of
    # up to `max_new_tokens` tokens (and the suite's answers).
    every: int = 50
    samples: int = 3
    max_new_tokens: int = 64
    # At each evaluation (and before the first step when every > 0): greedy answers
    # to this many validation items of every suite family, scored per family and for
    # trained vs held-out families (suite/* metrics); 0 turns it off.
    suite_per_family: int = 4
    # At each evaluation: greedy replies to a fixed sample of this many IFEval prompts
    # (ifeval_path: its JSONL; null: the hub's google/IFEval, fetched by the driver),
    # shared over the workers and judged by the official checkers (ifeval/* metrics).
    # 0: off (replies of up to ifeval_max_new_tokens: an hour on a CPU).
    ifeval_prompts: int = 0
    ifeval_path: str | None = None
    ifeval_max_new_tokens: int = 1280
    # Prompts generated together in one batch.
    batch_size: int = 32


@dataclass
class CheckpointConfig:
    """When a run checkpoints into run.checkpoint_dir, and what it resumes from."""

    # Checkpoint every this many steps and at the end; keep the newest `keep`.
    every: int = 100
    keep: int = 2
    # auto: continue from the newest complete checkpoint in run.checkpoint_dir, if any;
    # never: start afresh (refused while run.checkpoint_dir holds checkpoints);
    # or the path of one checkpoint (a step_* directory).
    resume: str = "auto"
    # The checkpoint's data, tokenizer or template changed: stop (naming it) or continue.
    resume_on_changed_data: str = "stop"
    # Under Slurm, checkpoint and stop this long before the job's time limit (more when
    # a step plus a save has been seen to take longer).
    stop_before_deadline_s: float = 300.0


# Preference objectives and whether each needs a reference model's log-probabilities.
PREFERENCE_OBJECTIVES = {"dpo": True, "ipo": True, "simpo": False, "orpo": False}


@dataclass
class ObjectiveConfig:
    # What a training step minimises: sft, the weighted token cross-entropy of the trained
    # tokens, normalised as loss.average says (framework/loss/token.py); or a
    # preference loss over chosen / rejected pairs, the mean over the global batch's pairs
    # (framework/loss/preference.py; the README's table gives each formula):
    # dpo (sigmoid), ipo, simpo (length-normalised, no reference), orpo (SFT plus an odds
    # ratio, no reference); or grpo, online RL on sampled completions scored by
    # verifiers (framework/loss/policy_gradient.py; rollout.* samples them).
    name: str = "sft"
    # dpo, ipo, simpo: the strength of the preference (IPO's tau); orpo: see orpo_lambda.
    beta: float = 0.1
    # dpo, simpo: the share of pairs assumed mislabelled (conservative DPO).
    label_smoothing: float = 0.0
    # simpo: the target reward margin gamma.
    simpo_gamma: float = 0.5
    # orpo: the weight of the odds-ratio term beside the chosen replies' NLL.
    orpo_lambda: float = 0.1
    # dpo, ipo: the reference's log-probabilities, computed once before training by the
    # workers and cached in the data artifact (precomputed), or by a reference model
    # held beside the policy during training (live: for comparison). The reference is
    # the starting model; with adapters, the base with the adapters disabled.
    reference: str = "precomputed"
    # dpo, ipo: before the first step, check that the policy's log-probs equal the
    # reference's (so the loss is its zero-margin value, ln 2 for dpo, and the rewards 0)
    # on the first micro batch, and stop if not.
    verify_reference: bool = True
    # grpo: each completion's advantage is its reward minus its group's mean (mean: GRPO)
    # or minus the mean of the others (leave_one_out: RLOO), divided by the group's
    # standard deviation when scale_rewards (Dr. GRPO: false).
    baseline: str = "mean"
    scale_rewards: bool = True
    # grpo: the importance ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's
    # clip-higher raises clip_high to 0.28).
    clip_low: float = 0.2
    clip_high: float = 0.2
    # grpo: the weight of the k3 KL to the starting model (0: no reference, as in TRL).
    kl_coef: float = 0.0
    # grpo: token, the mean over the global batch's completion tokens (DAPO); sequence,
    # each completion's token mean averaged over completions (GRPO); constant, the token
    # sum over completions x rollout.max_new_tokens (Dr. GRPO).
    aggregation: str = "token"
    # grpo: optimizer steps on each generation batch (mu), against its sampling log-probs.
    updates_per_batch: int = 1
    # grpo: groups whose rewards are all equal teach nothing: leave them out of the loss
    # (DAPO, without resampling). Counted either way.
    drop_uniform_groups: bool = False

    @property
    def online(self) -> bool:
        """Whether the objective trains on completions sampled during training (grpo)."""
        return self.name == "grpo"

    @property
    def pairs(self) -> bool:
        """Whether the objective trains on preference pairs."""
        return self.name in PREFERENCE_OBJECTIVES

    @property
    def needs_reference(self) -> bool:
        return PREFERENCE_OBJECTIVES.get(self.name, False)


@dataclass
class RolloutConfig:
    """objective=grpo: how completions are sampled and rewarded (framework/train/rollouts.py).
    Sampling is at temperature 1 with no top-k or top-p: the policy's own distribution, so
    the sampling log-probs are the policy's and the importance ratio starts at 1."""

    # Completions sampled per prompt (G), compared within their group; at least 2.
    group_size: int = 8
    # Completions of one generation batch over all ranks: a multiple of group_size, with
    # at least one group per rank (each rank samples whole groups).
    batch_completions: int = 32
    # A completion that has not ended after this many tokens is cut (counted: truncated).
    max_new_tokens: int = 128
    # Completions per generate call on a rank: a rank's whole share in one call where it
    # fits (measured on SmolLM2-135M, fp32, 2 cores: 32 completions in one call 18.4 s,
    # in two calls of 16 25.0 s; transformers' own generate 18.2 s).
    generate_batch: int = 64
    # Where completions are sampled: colocated, by the learners with their own weights
    # (no weight transfer; under ZeRO-3 every rank generates in step); actors, by
    # rollout.generators Ray actors of their own (framework/cluster/ray_generation.py),
    # sent the policy's weights before each round: the whole model once, then only the
    # trainable weights (an adapter's alone under LoRA), gathered once under ZeRO-3.
    generator: str = "colocated"
    # generator=actors: how many, and the CPUs each reserves (0: none, it shares the
    # node's with the learners, which wait while it samples); each takes a GPU where
    # cluster.use_gpu. Rank r samples on actor r % generators.
    generators: int = 1
    cpus_per_generator: int = 1
    # Each verifier call's time limit; a slower one is stopped and its reward is 0.
    verifier_timeout_s: float = 10.0
    # The old policy's log-probs in the importance ratio: learner, recomputed by the
    # learners before the first update on a batch (one forward pass more; the ratio then
    # starts at 1 in any precision); sampler, the sampler's own (exact in fp32 only).
    old_logps: str = "learner"
    # The learner's and the sampler's log-probs of the sampled tokens differ by precision
    # alone (measured mean gap: about 1e-6 nats in fp32, 0.04 in bf16 on a CPU): stop the
    # run when the mean gap of a batch exceeds this, a sign of a real fault. Logged always.
    max_logp_gap: float = 0.1


# Keys that left `trainer` for the sections above: old key -> new key.
RENAMED_KEYS = {
    "trainer.eval_every": "eval.every",
    "trainer.eval_samples": "eval.samples",
    "trainer.eval_max_new_tokens": "eval.max_new_tokens",
    "trainer.eval_suite_per_family": "eval.suite_per_family",
    "trainer.eval_ifeval_prompts": "eval.ifeval_prompts",
    "trainer.eval_ifeval_path": "eval.ifeval_path",
    "trainer.eval_ifeval_max_new_tokens": "eval.ifeval_max_new_tokens",
    "trainer.eval_batch_size": "eval.batch_size",
    "trainer.save_every": "checkpoint.every",
    "trainer.keep_checkpoints": "checkpoint.keep",
    "trainer.resume": "checkpoint.resume",
    "trainer.resume_on_changed_data": "checkpoint.resume_on_changed_data",
    "trainer.stop_before_deadline_s": "checkpoint.stop_before_deadline_s",
    "trainer.loss_average": "loss.average",
    "trainer.loss_positions": "loss.positions",
    "trainer.loss_chunk_tokens": "loss.chunk_tokens",
}


def move_renamed_keys(saved: DictConfig) -> None:
    """Move the old keys a config.yaml written before the split holds to their new names,
    in place."""
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        if name in saved.get(section, {}):
            OmegaConf.update(saved, new, saved[section].pop(name), force_add=True)
