"""DeepSpeed: the engine config generated from our typed config, and the engine itself,
built over the run's model (model/build.py), wrapped for training (model/adapters.py)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import deepspeed
import torch
from deepspeed.utils import groups as deepspeed_groups
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from framework.config.schema import TrainConfig
from framework.hf.resolve import model_source
from framework.model.adapters import prepare_for_training, quantization
from framework.model.attention import choose_attention
from framework.model.build import TORCH_DTYPES, build_model
from framework.model.precision import auto_precision, float32_matmul_precision
from framework.model.sequence_parallel import (
    SEQUENCE_PARALLEL,
    SequenceParallel,
    check_splittable,
    split_attention,
)

PRECISIONS = ("fp32", "bf16")


def resolve_precision(cfg: TrainConfig, device: torch.device, rank: int) -> tuple[str, str]:
    """Collective. (the run's precision, why): trainer.precision, or for `auto` what
    rank 0 finds this device does best (model/precision.py), the same on every rank."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision, "trainer.precision"
    choice, reason = auto_precision(device) if rank == 0 else ("fp32", "")
    if choice == "bf16" and cfg.parallelism.zero_stage == 0:
        choice = "fp32"
        reason += ", but ZeRO-0 would accumulate bf16 gradients in bf16"
    agreed = torch.tensor([PRECISIONS.index(choice)], device=device)
    torch.distributed.broadcast(agreed, src=0)
    return PRECISIONS[int(agreed.item())], f"auto: {reason}"


def deepspeed_config(
    cfg: TrainConfig, *, world_size: int, precision: str, gpu: bool, universal: bool = False
) -> dict:
    """The DeepSpeed JSON config for this run; `universal` loads a universal checkpoint
    (one written by another number of ranks, converted)."""
    zero: dict = {"stage": cfg.parallelism.zero_stage}
    if cfg.parallelism.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if cfg.parallelism.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    return {
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": cfg.trainer.grad_accum_steps,
        "train_batch_size": cfg.trainer.micro_batch_size
        * cfg.trainer.grad_accum_steps
        * world_size,
        "gradient_clipping": cfg.trainer.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        # bf16 weights, fp32 everything the update is made of: master weights (DeepSpeed's
        # default), gradients accumulated over micro batches and reduced over ranks.
        **({"data_types": {"grad_accum_dtype": "fp32"}} if precision == "bf16" else {}),
        "communication_data_type": "fp32",
        # Offloaded optimizer states may be stepped by torch's AdamW: on CPU it already runs
        # where offload would put it; on GPU it replaces DeepSpeedCPUAdam where that op
        # would have to compile first (see _optimizer).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "checkpoint": {"load_universal": universal},
    }


def _param_groups(model: PreTrainedModel, weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying norm gains and biases pulls them towards zero.
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # Under ZeRO-3 a built parameter is an empty placeholder; ds_shape is its shape.
            shape = getattr(param, "ds_shape", param.shape)
            (decay if len(shape) >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


CPU_ADAM = "deepspeed_cpu_adam"
TORCH_ADAMW = "torch_adamw"


def offload_optimizer_choice(
    *, gpu: bool, offload: bool, installed_ops: dict, built_for: str, accelerator: str
) -> tuple[str, str | None]:
    """(CPU_ADAM or TORCH_ADAMW, the start-up line when offloading on GPU, else None).
    DeepSpeedCPUAdam only where its op was built into the install for this accelerator:
    elsewhere OpBuilder.load JIT-compiles it in the first step's process (a C++ compiler,
    ninja, a build lock under ~/.cache/torch_extensions that a killed job leaves behind).
    torch's fused AdamW steps the offloaded fp32 CPU partitions without a build."""
    if not (gpu and offload):
        return TORCH_ADAMW, None
    if installed_ops.get("cpu_adam", False) and built_for == accelerator:
        return CPU_ADAM, "optimizer: DeepSpeedCPUAdam on the offloaded states (prebuilt op)"
    return TORCH_ADAMW, (
        "optimizer: torch AdamW (fused) on the offloaded states; DeepSpeedCPUAdam would "
        f"compile its op at the first step (this DeepSpeed has no cpu_adam built for "
        f"{accelerator}: reinstall with DS_BUILD_CPU_ADAM=1 for it)"
    )


def _installed_op_facts() -> dict:
    """The facts OpBuilder.load decides on (deepspeed/ops/op_builder/builder.py)."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    return {
        "installed_ops": installed_ops,
        "built_for": accelerator_name,
        "accelerator": get_accelerator()._name,
    }


def _optimizer(model: PreTrainedModel, cfg: TrainConfig, gpu: bool) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.trainer.weight_decay)
    offload = cfg.parallelism.offload_optimizer
    choice, line = offload_optimizer_choice(gpu=gpu, offload=offload, **_installed_op_facts())
    if line and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(line, flush=True)
    if choice == CPU_ADAM:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.trainer.lr, adamw_mode=True)
    # Fused also on CPU (torch >= 2.4): one pass over the offloaded partitions, ~6x the
    # for-loop AdamW here.
    return torch.optim.AdamW(groups, lr=cfg.trainer.lr, fused=gpu)


def join_deepspeed_comm(timeout_s: int) -> None:
    """Wrap the process group the launcher set up in DeepSpeed's communication layer, its
    collectives failing after `timeout_s` (cluster.collective_timeout_s) without a peer."""
    # On CPU DeepSpeed would JIT-compile a shared-memory all-reduce here: it needs a C++
    # toolchain, takes a minute, and a job killed while compiling leaves a build lock
    # that hangs every later start. Only inference_all_reduce uses it; training never does.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    timeout = timedelta(seconds=timeout_s)
    deepspeed.init_distributed(
        dist_backend=torch.distributed.get_backend(), dist_init_required=False, timeout=timeout
    )
    # ZeRO runs its collectives on a copy of the world group that DeepSpeed makes with
    # torch's default timeout (30 min on gloo): made here first, it has ours.
    if deepspeed_groups._WORLD_GROUP is None:
        world = range(torch.distributed.get_world_size())
        deepspeed_groups._WORLD_GROUP = torch.distributed.new_group(world, timeout=timeout)


def partitioned_init(ds_config: dict, collective_timeout_s: int):
    """Under ZeRO-3, an object to keep alive while (and after) the model is built: it
    makes transformers build and load the model already partitioned (deepspeed.zero.Init),
    so no worker ever holds a full copy. None for other stages."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    # zero.Init reads the world size from DeepSpeed's communication layer: wrap the
    # launcher's process group in it now rather than at deepspeed.initialize.
    join_deepspeed_comm(collective_timeout_s)

    return HfDeepSpeedConfig(ds_config)


_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Linear warmup over trainer.warmup_steps, then trainer.lr_schedule to max_steps."""
    return get_scheduler(
        _SCHEDULES[cfg.trainer.lr_schedule],
        optimizer,
        num_warmup_steps=cfg.trainer.warmup_steps,
        num_training_steps=cfg.trainer.max_steps,
    )


def deepspeed_device(device: torch.device) -> SimpleNamespace | None:
    """The `args` that make DeepSpeed train on `device`. Left alone, it takes the GPU
    numbered LOCAL_RANK, while Ray gives a worker with several GPUs its first one: the
    second worker of a node with 2 GPUs each trains on cuda:2, not cuda:1 (ray.train.torch
    get_device), and its model and data would sit on different GPUs."""
    if device.type != "cuda":
        return None
    return SimpleNamespace(device_rank=device.index)


def build_engine(
    model: PreTrainedModel, cfg: TrainConfig, *, ds_config: dict, device: torch.device
) -> deepspeed.DeepSpeedEngine:
    """A DeepSpeed engine over `model` on `device` with AdamW and warmup + cosine decay,
    joined to the process group that the launcher (Ray Train, torchrun) already set up."""
    join_deepspeed_comm(cfg.cluster.collective_timeout_s)
    engine, *_ = deepspeed.initialize(
        args=deepspeed_device(device),
        model=model,
        optimizer=_optimizer(model, cfg, device.type == "cuda"),
        # A factory: the schedule must drive the optimizer DeepSpeed wraps around ours.
        lr_scheduler=lambda optimizer: lr_schedule(optimizer, cfg),
        config=ds_config,
        dist_init_required=False,
    )
    return engine


def build_training_engine(
    cfg: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    universal: bool,
):
    """Collective. The DeepSpeed engine over the run's model (built from
    trainer.seed, wrapped for training), and the ZeRO-3 build context to keep alive while
    training (None for other stages); `universal` loads a universal checkpoint next."""
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.set_device(device)
    precision, why = resolve_precision(cfg, device, rank)
    attention, attention_why = choose_attention(
        cfg.model.attention, device_type=device.type, precision=precision
    )
    matmuls = float32_matmul_precision(device.type, precision)
    torch.set_float32_matmul_precision(matmuls)
    if rank == 0:
        print(
            f"attention: {attention} ({attention_why}); precision: {precision} ({why}); "
            f"fp32 matmuls: {matmuls}",
            flush=True,
        )
    ds_config = deepspeed_config(
        cfg, world_size=world_size, precision=precision, gpu=gpu, universal=universal
    )
    zero3 = partitioned_init(ds_config, cfg.cluster.collective_timeout_s)
    torch.manual_seed(cfg.trainer.seed)
    dtype = TORCH_DTYPES[precision]
    model = build_model(
        cfg.model,
        tokenizer,
        dtype,
        attention,
        source=model_source(cfg),
        quantization=quantization(cfg.adapter, dtype),
    )
    model = prepare_for_training(model, cfg.model, cfg.adapter)
    size = cfg.parallelism.sequence_parallel
    if size > 1:
        check_splittable(model.config, attention, size)
    engine = build_engine(model, cfg, ds_config=ds_config, device=device)
    if size > 1:  # the engine's forwards then take a slice of every row (sequence_parallel.py)
        split_attention(attention)
        group = SequenceParallel.join(size, cfg.cluster.collective_timeout_s)
        setattr(engine, SEQUENCE_PARALLEL, group)
    return engine, zero3
