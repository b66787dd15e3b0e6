"""The eval split (held-out examples of the training data): exactly normalised loss and
perplexity, overall and per data source, and greedy generations next to their
references, on any number of ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.dataset import TokenizedDataset
from framework.data.pack import collate_rows
from framework.loss.token import TokenLosses


@dataclass
class EvalSet:
    dataset: TokenizedDataset
    source_ids: np.ndarray  # index into source_names, per example
    source_names: list[str]

    @classmethod
    def load(cls, artifact: str | Path, source_names: list[str]) -> EvalSet | None:
        """The artifact's eval split, or None when it has no examples."""
        dataset = TokenizedDataset.load(artifact, "eval")
        if len(dataset) == 0:
            return None
        return cls(dataset, np.load(Path(artifact) / "eval_source.npy"), source_names)


def rank_chunks(lengths: np.ndarray, micro_batch_size: int, rank: int, world: int) -> list:
    """This rank's micro batches of example indices (one example per row, similar lengths
    together). Every rank gets the same number, padded with empty ones, because ZeRO-3
    runs collectives inside every forward."""
    order = np.argsort(lengths, kind="stable")
    mine = order[rank::world]
    count = math.ceil(math.ceil(len(lengths) / world) / micro_batch_size)
    chunks = [mine[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(count)]
    return chunks


@torch.no_grad()
def eval_loss(
    token_losses: TokenLosses,
    evalset: EvalSet,
    *,
    micro_batch_size: int,
    rank: int,
    world: int,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Collective. Weighted token loss summed over every eval example on every rank,
    divided by the summed weights: the same number whatever the number of ranks."""
    data = evalset.dataset
    sums = torch.zeros(len(evalset.source_names), 2, dtype=torch.float64, device=device)
    for chunk in rank_chunks(data.lengths(), micro_batch_size, rank, world):
        # A rank out of examples still runs a forward (on example 0, weighted 0).
        rows = [np.array([i]) for i in chunk] or [np.array([0])]
        batch = {
            k: v.to(device)
            for k, v in collate_rows(
                data.tokens, data.weights, data.offsets, rows, None, pad_id
            ).items()
        }
        weights = batch["loss_weights"][:, 1:].double()
        losses = token_losses(batch["input_ids"], batch["position_ids"], batch["labels"])
        for row, index in enumerate(chunk):
            source = int(evalset.source_ids[index])
            sums[source, 0] += (losses[row].double() * weights[row]).sum()
            sums[source, 1] += weights[row].sum()
    dist.all_reduce(sums)
    total = sums.sum(dim=0)
    loss = (total[0] / total[1].clamp_min(1e-12)).item()
    metrics = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
    if len(evalset.source_names) > 1:
        for name, (summed, weight) in zip(evalset.source_names, sums.tolist(), strict=True):
            if weight > 0:
                metrics[f"eval_loss/{name}"] = summed / weight
    return metrics


def _last_reply(tokens: np.ndarray, weights: np.ndarray) -> tuple[int, int]:
    """[start, end) of the last run of trained tokens."""
    trained = np.flatnonzero(weights > 0)
    end = int(trained[-1]) + 1
    gaps = np.flatnonzero(np.diff(trained) > 1)
    start = int(trained[gaps[-1] + 1]) if len(gaps) else int(trained[0])
    return start, end


@torch.no_grad()
def greedy_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evalset: EvalSet,
    *,
    count: int,
    max_new_tokens: int,
    synced: bool,
    device: torch.device,
    every: int = 1,
) -> list[dict[str, str]]:
    """Collective when `synced` (ZeRO-3). The first `count` eval examples (every `every`th:
    2 for preference pairs, whose chosen sequences are the even ones): their prompt up to
    the last reply, the reference reply and the model's greedy reply."""
    samples = []
    for index in range(0, min(count * every, len(evalset.dataset)), every):
        tokens, weights = evalset.dataset.example(index)
        start, end = _last_reply(np.asarray(tokens), np.asarray(weights))
        # A copy: the dataset's arrays are read-only views, which torch warns about.
        prompt = torch.from_numpy(np.array(tokens[:start], dtype=np.int64)).to(device)[None]
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            synced_gpus=synced,
            pad_token_id=tokenizer.pad_token_id,
        )
        samples.append(
            {
                "prompt": tokenizer.decode(prompt[0]),
                "reference": tokenizer.decode(tokens[start:end]),
                "generated": tokenizer.decode(output[0, prompt.shape[1] :]),
            }
        )
    return samples
