"""The sizes that depend on the device class: what null stands for in
trainer.micro_batch_size, loss.chunk_tokens and model.gradient_checkpointing
(applied by TrainConfig when it is built, printed at the start of a run)."""

from __future__ import annotations

# A GPU's micro batch in tokens, when trainer.micro_batch_size is null: what keeps a GPU's
# kernels busy while the activations of a 7-8B model with gradient checkpointing, and of
# a small one without, fit an 80 GB card.
GPU_MICRO_BATCH_TOKENS = 8192
# Rows this long or longer are trained with gradient checkpointing on GPUs by default.
GPU_CHECKPOINTING_ROW_TOKENS = 2048


def device_sizes(*, gpu: bool, max_seq_len: int) -> dict[str, int | bool]:
    """What null stands for in the fields sized by the device class. CPUs: the sizes the
    2-core CPU runs were measured with. GPUs: a micro batch of about
    GPU_MICRO_BATCH_TOKENS tokens; the LM head and its cross-entropy in chunks of 2,048
    positions (each chunk gathers a ZeRO-3 head once: 8x fewer gathers than 256);
    activations recomputed in backward for long rows."""
    if not gpu:
        return {
            "trainer.micro_batch_size": 4,
            "loss.chunk_tokens": 256,
            "model.gradient_checkpointing": False,
        }
    return {
        "trainer.micro_batch_size": max(1, GPU_MICRO_BATCH_TOKENS // max_seq_len),
        "loss.chunk_tokens": 2048,
        "model.gradient_checkpointing": max_seq_len >= GPU_CHECKPOINTING_ROW_TOKENS,
    }


def fill_device_sizes(cfg) -> list[str]:
    """Give the fields of `cfg` (a TrainConfig) left null the device class's sizes;
    returns them as key=value."""
    filled = []
    sizes = device_sizes(gpu=cfg.cluster.use_gpu, max_seq_len=cfg.data.max_seq_len)
    for key, value in sizes.items():
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) is None:
            setattr(getattr(cfg, section), name, value)
            filled.append(f"{key}={value}")
    return filled
