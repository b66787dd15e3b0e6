"""Where the model is wrapped for training, after it is built and before DeepSpeed's
engine takes it: adapters (LoRA, DoRA, QLoRA) go here, since they change which weights
train and must be in place before the optimizer sees the parameters. Today the one
method is full fine-tuning: every weight trains and nothing is wrapped."""

from __future__ import annotations

from transformers import PreTrainedModel

from framework.config.schema import ModelConfig


def prepare_for_training(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """The model as the engine will train it: with activation recomputation when
    model.gradient_checkpointing (non-reentrant: it needs no input that requires grad)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
