"""Completions sampled from the policy's own distribution (temperature 1, no top-k or
top-p) with the log-probability the sampler gave each token: online RL's rollouts, whose
sampling log-probs are the old policy's in the importance ratio."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, PreTrainedModel

from framework.eval.generate import (
    calls_everywhere,
    in_segments,
    left_padded,
    preallocated_cache,
)


@dataclass
class Completion:
    tokens: list[int]  # up to and including the stop token, when it ended
    logps: list[float]  # the sampler's log-probability of each token
    entropy: float  # the sampling distributions' summed entropy over the tokens
    ended: bool  # False: cut at the token budget (truncated)


class _SamplerLogps(LogitsProcessor):
    """Keeps each step's log-softmax until the next step shows which token was sampled
    from it. At temperature 1 with no top-k / top-p no warper changes the scores, so these
    are the distributions the tokens were drawn from."""

    def __init__(self):
        self.previous: torch.Tensor | None = None
        self.logps: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.take(input_ids)
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        self.entropies.append(-(self.previous.exp() * self.previous).sum(-1))
        return scores

    def take(self, input_ids: torch.Tensor) -> None:
        if self.previous is not None:
            self.logps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
            self.previous = None


# New tokens per generate call; then completions that have ended leave the batch.
# Measured on SmolLM2-135M, fp32, 2 cores, 32 completions of up to 128 tokens (rl_demo's
# prompts): 22.0-24.0 s in one call, 19.5-20.9 s in calls of 32 tokens, 18.6 s of 16.
SEGMENT = 16


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompts: list[list[int]],
    *,
    stop: list[int],
    pad: int,
    max_new_tokens: int,
    batch_size: int,
    synced: bool = False,
    segment: int = SEGMENT,
) -> list[Completion]:
    """One sampled completion per prompt (token ids, as rendered for generation), in
    order, `batch_size` prompts per batch, decoded in `segment`-token calls between which
    ended completions leave the batch. The caller seeds torch's generator. `synced`
    (ZeRO-3): every rank makes the same number of whole calls, running until all end."""
    recorders: list[_SamplerLogps] = []

    def generate(**kwargs) -> torch.Tensor:
        recorders.append(_SamplerLogps())
        output = model.generate(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=stop,
            pad_token_id=pad, use_cache=True, logits_processor=[recorders[-1]],
            synced_gpus=synced, **kwargs,
        )  # fmt: skip
        recorders[-1].take(output)
        return output

    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    calls = calls_everywhere(len(batches), model.device) if synced else len(batches)
    segment = max_new_tokens if synced else segment
    completions: list[Completion] = []
    for call in range(calls):
        rows = batches[call] if call < len(batches) else [[pad]]  # keeps ranks in step
        input_ids, mask = left_padded(rows, pad, model.device)
        cache = preallocated_cache(model, input_ids.shape[1] + max_new_tokens)
        pieces = [_Piece() for _ in rows]
        for live, new in in_segments(
            generate, input_ids, mask, cache, stop, max_new_tokens, segment
        ):
            _extend(pieces, live, new, recorders[-1], stop)
        if call < len(batches):
            completions += [piece.completion() for piece in pieces]
    return completions


@dataclass
class _Piece:
    """A completion as its segments arrive."""

    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    entropy: float = 0.0
    ended: bool = False

    def completion(self) -> Completion:
        return Completion(self.tokens, self.logps, self.entropy, self.ended)


def _extend(pieces, live, new, recorder: _SamplerLogps, stop: list[int]) -> None:
    """Each live row's tokens of one call, up to and including its first stop token."""
    logps = torch.stack(recorder.logps, dim=1).tolist()
    entropies = torch.stack(recorder.entropies, dim=1)
    for slot, (row, tokens) in enumerate(zip(live, new, strict=True)):
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        size = len(tokens) if end is None else end + 1
        piece = pieces[row]
        piece.tokens += tokens[:size]
        piece.logps += logps[slot][:size]
        piece.entropy += float(entropies[slot, :size].sum())
        piece.ended = end is not None


def seeded_completions(
    model: PreTrainedModel, prompts: list[list[int]], *, seed: int, **settings
) -> list[Completion]:
    """sample_completions from a generator seeded by `seed`, leaving torch's own as it
    was: the same completions wherever the same weights sample them (the learner itself,
    or a generation actor)."""
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return sample_completions(model, prompts, **settings)
