"""Generation actors (objective=grpo, rollout.generator=actors): Ray actors of their own
that sample the rounds while the learners hold only what training needs. Before each
round rank 0 sends them the policy's weights through Ray's object store: the whole model
the first time, then only the weights that train (an adapter's alone under LoRA),
gathered once under ZeRO-3 however many actors there are. Each rank asks actor
rank % rollout.generators for its share, seeded as the learners seed themselves, so in
fp32 the actors' rounds are the colocated rounds."""

from __future__ import annotations

import time

import ray
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.config.schema import TrainConfig
from framework.eval.sampling import Completion, seeded_completions
from framework.hf.engine_export import gather_state_dict
from framework.hf.resolve import model_source
from framework.model.adapters import uses_adapter, with_adapter
from framework.model.attention import choose_attention
from framework.model.build import TORCH_DTYPES, model_config


class GenerationActor:
    """One generator: the run's architecture, built on the first weights it receives in
    their precision, sampling with seeded_completions."""

    def __init__(self, cfg: TrainConfig, tokenizer_dir: str, device: str):
        torch.set_num_threads(max(1, cfg.rollout.cpus_per_generator))
        self.cfg, self.tokenizer_dir, self.device = cfg, tokenizer_dir, torch.device(device)
        self.model = None

    def load(self, state: dict[str, torch.Tensor], precision: str) -> None:
        if self.model is None:
            self.model = self._build(precision)
            missing = {n for n, _ in self.model.named_parameters()} - state.keys()
            if missing:
                raise RuntimeError(f"the first weights sent lack {sorted(missing)[:3]}")
        unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"weights of another model were sent: {unexpected[:3]}")

    def _build(self, precision: str):
        """The learner's model as built from config (random weights, all replaced by the
        first load), its attention chosen as the learner chose it, in eval mode."""
        cfg = self.cfg
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        attention, _ = choose_attention(
            cfg.model.attention, device_type=self.device.type, precision=precision
        )
        config = model_config(cfg.model, tokenizer, attention, source=model_source(cfg))
        model = AutoModelForCausalLM.from_config(
            config, dtype=TORCH_DTYPES[precision], trust_remote_code=cfg.model.trust_remote_code
        )
        if uses_adapter(cfg.adapter):
            model = with_adapter(model, cfg.adapter)
        return model.to(self.device).eval()

    def sample(self, prompts: list[list[int]], seed: int, settings: dict) -> list[Completion]:
        return seeded_completions(self.model, prompts, seed=seed, **settings)


def start_generators(cfg: TrainConfig, tokenizer_dir: str) -> list:
    """rollout.generators actors, each reserving rollout.cpus_per_generator CPUs and, where
    cluster.use_gpu, a GPU (Ray narrows CUDA_VISIBLE_DEVICES to it)."""
    gpus = 1 if cfg.cluster.use_gpu else 0
    actor = ray.remote(GenerationActor).options(
        num_cpus=cfg.rollout.cpus_per_generator, num_gpus=gpus
    )
    device = "cuda" if gpus else "cpu"
    return [actor.remote(cfg, tokenizer_dir, device) for _ in range(cfg.rollout.generators)]


class ActorGenerator:
    """A learner rank's side of the actors (framework/train/rollouts.py's Generator)."""

    def __init__(self, actors: list, rank: int):
        self.actors, self.rank = actors, rank
        self.sent_all = False

    def sync(self, module, zero_stage: int) -> dict[str, float]:
        """Collective: rank 0 sends the weights to every actor and waits until each has
        loaded them; the others wait for rank 0."""
        began = time.monotonic()
        state = gather_state_dict(module, zero_stage, trainable_only=self.sent_all)
        size = sum(t.numel() * t.element_size() for t in state.values())
        if self.rank == 0:
            precision = "bf16" if next(module.parameters()).dtype == torch.bfloat16 else "fp32"
            shared = ray.put(state)
            ray.get([actor.load.remote(shared, precision) for actor in self.actors])
        dist.barrier()
        self.sent_all = True
        return {"weight_sync_s": time.monotonic() - began, "weight_sync_mb": size / 1e6}

    def sample(self, prompts: list[list[int]], *, seed: int, settings: dict) -> list[Completion]:
        actor = self.actors[self.rank % len(self.actors)]
        return ray.get(actor.sample.remote(prompts, seed, settings))
