"""Completions sampled from the policy's own distribution (temperature 1, no top-k or
top-p) with the log-probability the sampler gave each token: online RL's rollouts, whose
sampling log-probs are the old policy's in the importance ratio."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, PreTrainedModel

from framework.eval.generate import calls_everywhere, left_padded, preallocated_cache


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
) -> list[Completion]:
    """One sampled completion per prompt (token ids, as rendered for generation), in
    order, `batch_size` prompts per generate call. The caller seeds torch's generator.
    `synced` (ZeRO-3): every rank makes the same number of calls, running until all end."""
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=stop, pad_token_id=pad, use_cache=True,
    )  # fmt: skip
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    calls = calls_everywhere(len(batches), model.device) if synced else len(batches)
    completions: list[Completion] = []
    for call in range(calls):
        rows = batches[call] if call < len(batches) else [[pad]]  # keeps ranks in step
        input_ids, mask = left_padded(rows, pad, model.device)
        recorder = _SamplerLogps()
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=[recorder],
            cache=preallocated_cache(model, input_ids.shape[1] + max_new_tokens),
            synced_gpus=synced,
        )
        recorder.take(output)
        if call < len(batches):
            completions += _cut(output[:, input_ids.shape[1] :], recorder, stop)
    return completions


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


def _cut(new: torch.Tensor, recorder: _SamplerLogps, stop: list[int]) -> list[Completion]:
    """Each row's tokens up to and including its first stop token."""
    logps = torch.stack(recorder.logps, dim=1).tolist()
    entropies = torch.stack(recorder.entropies, dim=1)
    cut = []
    for row, tokens in enumerate(new.tolist()):
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        size = len(tokens) if end is None else end + 1
        entropy = float(entropies[row, :size].sum())
        cut.append(Completion(tokens[:size], logps[row][:size], entropy, end is not None))
    return cut
