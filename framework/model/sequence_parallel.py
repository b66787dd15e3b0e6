"""Sequence parallelism (Ulysses): the N workers of a sequence-parallel group share every
packed row, each taking a contiguous slice of its positions through the whole model.
Attention alone needs every position: DeepSpeed's UlyssesSPAttentionHF trades the slice of
positions for a slice of the heads by an all-to-all, so that each worker attends over the
whole row with 1/N of the heads, then trades back. A document may cross a slice boundary:
attention finds the documents from the whole row's positions.

Groups are consecutive ranks ([0, N), [N, 2N), ...), and data parallelism is over the
groups: a group's workers are handed the same rows (`data_rank`), and each slices them
itself. Position t predicts label t + 1, so a slice's last position predicts the next
slice's first label: every worker has the whole row's labels. A row is padded to a multiple
of N for the slicing: untrained padding, a document of its own.

Each worker computes the token losses of its slice, and the group gathers them (`whole`),
so every worker ends with the whole rows' losses, as without sequence parallelism, and
every objective, normalisation and check downstream is unchanged. In backward the gather
sums the group's N identical gradients of each slice; the global weight, summed over every
rank, counts each row N times as well (framework/loss/token.py), so the two cancel and the
gradient is exact. ZeRO and the gradient reduction span every rank, as without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
from deepspeed.sequence.layer import _dim_zero_all_to_all, register_all_to_all_group
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from framework.config.checks import check_split_heads
from framework.config.schema import ConfigError

# The forward's keyword argument that carries the group to the attention function: present,
# attention runs across the group; absent (generation), on the worker's own.
SEQUENCE_PARALLEL = "sequence_parallel"


@dataclass
class SequenceParallel:
    size: int
    rank: int  # within the group
    group: dist.ProcessGroup
    # DeepSpeed's attention, one per (rows, heads, key-value heads, head size).
    _attention: dict[tuple, UlyssesSPAttentionHF] = field(default_factory=dict, repr=False)

    @classmethod
    def join(cls, size: int, timeout_s: int) -> SequenceParallel:
        """Collective: every rank makes every group (torch requires it), and joins its own."""
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = None
        for first in range(0, world, size):
            group = dist.new_group(
                list(range(first, first + size)), timeout=timedelta(seconds=timeout_s)
            )
            if first <= rank < first + size:
                mine = group
        register_all_to_all_group(mine)  # the all-to-all finds its group by name
        return cls(size, rank % size, mine)

    def _slice(self, tensor: torch.Tensor, value: int) -> torch.Tensor:
        """This worker's slice along dim 1 of `tensor` padded with `value` to a multiple of
        the group's size."""
        padded = F.pad(tensor, (0, -tensor.shape[1] % self.size), value=value)
        chunk = padded.shape[1] // self.size
        return padded[:, self.rank * chunk : (self.rank + 1) * chunk]

    def padded_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The rows' positions with the padding's: a document of its own, from 0."""
        pad = -positions.shape[1] % self.size
        padding = torch.arange(pad, device=positions.device).expand(len(positions), pad)
        return torch.cat([positions, padding], dim=1)

    def tokens(self, ids: torch.Tensor, padded_positions: torch.Tensor):
        """(this worker's slice of the input ids, of the positions)."""
        return self._slice(ids, 0), self._slice(padded_positions, 0)

    def targets(self, labels: torch.Tensor, ignore: int) -> torch.Tensor:
        """The labels this worker's positions predict: `labels` shifted by one (the last
        position predicts nothing), sliced as the tokens are."""
        return self._slice(F.pad(labels[:, 1:], (0, 1), value=ignore), ignore)

    def whole(self, losses: torch.Tensor, length: int) -> torch.Tensor:
        """Collective, differentiable: the group's slices of per-position losses laid end to
        end, the padding cut ([rows, length]). Each worker sends every worker a copy of its
        slice (the all-to-all Ulysses uses): in backward each slice gets the sum of the
        group's gradients (gloo has no reduce-scatter for a gather's backward)."""
        copies = losses.unsqueeze(0).expand(self.size, *losses.shape)
        gathered = _dim_zero_all_to_all(self.group, copies)  # [size, rows, slice]
        return gathered.transpose(0, 1).reshape(len(losses), -1)[:, :length]

    def attention(self, core, module, query, key, value, *args, **kwargs):
        """`core` attention over the group's whole rows, from this worker's slice of the
        queries, keys and values ([rows, heads, slice, head size])."""
        shape = (query.shape[0], query.shape[1], key.shape[1], query.shape[3])
        if shape not in self._attention:
            rows, heads, kv_heads, head_size = shape
            self._attention[shape] = UlyssesSPAttentionHF(
                core, rows, heads, head_size, kv_heads, num_hidden_layers=1,
                process_group=self.group, seq_length_is_variable=True,
            )  # fmt: skip
        # With fewer key-value heads than workers DeepSpeed replicates them and rewrites
        # the module's num_key_value_groups, which an unsplit forward (generation) reads.
        groups = getattr(module, "num_key_value_groups", None)
        try:  # A mask would be the slice's; the core attention finds the documents itself.
            return self._attention[shape](module, query, key, value, None, *args, **kwargs)
        finally:
            if groups is not None:
                module.num_key_value_groups = groups


def sequence_parallel(model: torch.nn.Module) -> SequenceParallel | None:
    """The group of a training engine that splits its rows (build_training_engine), if any."""
    return getattr(model, SEQUENCE_PARALLEL, None)


def check_splittable(config, implementation: str, size: int) -> None:
    """Raise ConfigError unless a group of `size` can split the attention of a model of
    `config` (a transformers config) run with `implementation`."""
    key = f"parallelism.sequence_parallel={size}"
    if implementation not in ("document_sdpa", "flash_attention_2"):
        raise ConfigError(
            f"{key} cannot split {implementation} attention (it would let packed documents "
            "see each other): install flash-attn (GPU, bf16), or set model.attention="
            "document_sdpa"
        )
    text = config.get_text_config()
    check_split_heads(text.num_attention_heads, text.num_key_value_heads, size)


def split_attention(implementation: str) -> None:
    """Make the attention registered as `implementation` run across the group of any
    forward given SEQUENCE_PARALLEL (once per process). It replaces the registered function
    rather than adding a name: transformers chooses masks and kernels by that name."""
    core = ALL_ATTENTION_FUNCTIONS[implementation]
    if getattr(core, "splits", False):
        return

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        sp = kwargs.pop(SEQUENCE_PARALLEL, None)
        if sp is None:
            return core(module, query, key, value, attention_mask, *args, **kwargs)
        return sp.attention(core, module, query, key, value, *args, **kwargs)

    attention.splits = True
    ALL_ATTENTION_FUNCTIONS[implementation] = attention
