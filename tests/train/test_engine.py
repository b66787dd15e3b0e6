import pytest
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param
from transformers import AutoTokenizer

from framework.config.schema import TrainConfig
from framework.model.build import build_model
from framework.train import engine as engine_module
from framework.train.engine import (
    _param_groups,
    build_engine,
    deepspeed_config,
    lr_schedule,
    partitioned_init,
    resolve_precision,
)
from tests.helpers import TINY, join_group, leave_group, single_process_group, spawn


def _partition_sizes(rank, world, port, tok_dir, out_file):
    join_group(rank, world, port)
    cfg = TrainConfig(model=TINY)
    cfg.parallelism.zero_stage = 3
    cfg.cluster.collective_timeout_s = 123
    ds_config = deepspeed_config(cfg, world_size=world, precision="fp32", gpu=False)
    keep_alive = partitioned_init(ds_config, cfg.cluster.collective_timeout_s)
    model = build_model(TINY, AutoTokenizer.from_pretrained(tok_dir), torch.float32)
    # Built partitioned: no rank ever held the full weights.
    held_at_build = sum(p.ds_tensor.numel() for p in model.parameters())
    engine = build_engine(model, cfg, ds_config=ds_config, device=torch.device("cpu"))
    held = torch.tensor(
        [held_at_build, sum(p.ds_tensor.numel() for p in engine.module.parameters())]
    )
    total = sum(p.ds_numel for p in engine.module.parameters())
    group = engine.optimizer.dp_process_group._get_backend(torch.device("cpu"))
    timeout_s = group.options._timeout.total_seconds()
    gathered = [torch.zeros(2, dtype=torch.long) for _ in range(world)]
    dist.all_gather(gathered, held)
    if rank == 0:
        torch.save(
            {"held": torch.stack(gathered), "total": total, "timeout_s": timeout_s}, out_file
        )
    del keep_alive
    leave_group()


def test_zero3_two_workers_each_hold_about_half_the_parameters(tmp_path, tokenizer):
    """...and ZeRO's collectives fail after cluster.collective_timeout_s without a peer
    (DeepSpeed's own copy of the world group would wait torch's 30 minutes)."""
    tokenizer.save_pretrained(tmp_path / "tok")
    spawn(_partition_sizes, 2, str(tmp_path / "tok"), str(tmp_path / "out.pt"))
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["timeout_s"] == 123
    for built, trained in result["held"].tolist():
        assert built == trained
        assert 0.45 < trained / result["total"] < 0.55


def test_weight_decay_skips_norms_and_biases():
    cfg = TrainConfig(model=TINY)
    cfg.trainer.weight_decay = 0.1

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    decay, no_decay = _param_groups(Tiny(), 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert decay["weight_decay"] == 0.1


@pytest.mark.parametrize(
    ("schedule", "after_warmup"),
    [("cosine", [1.0, 0.5, 0.0]), ("linear", [1.0, 0.5, 0.0]), ("constant", [1.0, 1.0, 1.0])],
)
def test_schedule_warms_up_then_follows_the_config(schedule, after_warmup):
    cfg = TrainConfig()
    cfg.trainer.lr, cfg.trainer.warmup_steps, cfg.trainer.max_steps = 1.0, 4, 12
    cfg.trainer.lr_schedule = schedule
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, cfg)
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert [lrs[4], lrs[8], lrs[12]] == pytest.approx(after_warmup, abs=1e-9)


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_bf16_keeps_fp32_master_weights_and_accumulates_gradients_in_fp32(tokenizer, zero_stage):
    single_process_group()
    cfg = TrainConfig(model=TINY)
    cfg.trainer.micro_batch_size, cfg.trainer.grad_accum_steps = 2, 2
    cfg.parallelism.zero_stage = zero_stage
    ds_config = deepspeed_config(cfg, world_size=1, precision="bf16", gpu=False)
    keep_alive = partitioned_init(ds_config, cfg.cluster.collective_timeout_s)
    model = build_model(TINY, tokenizer, torch.bfloat16)
    engine = build_engine(model, cfg, ds_config=ds_config, device=torch.device("cpu"))
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.communication_data_type == torch.float32
    for param in engine.module.parameters():
        assert param.dtype == torch.bfloat16
        assert safe_get_full_fp32_param(param).dtype == torch.float32
    del keep_alive


def test_auto_precision_is_the_same_on_every_rank_and_never_bf16_under_zero0(monkeypatch):
    single_process_group()
    monkeypatch.setattr(engine_module, "auto_precision", lambda device: ("bf16", "stand-in"))
    cfg = TrainConfig(model=TINY)
    assert resolve_precision(cfg, torch.device("cpu"), rank=0) == ("bf16", "auto: stand-in")
    cfg.parallelism.zero_stage = 0
    precision, why = resolve_precision(cfg, torch.device("cpu"), rank=0)
    assert precision == "fp32" and "ZeRO-0" in why
    cfg.trainer.precision = "fp32"
    assert resolve_precision(cfg, torch.device("cpu"), rank=0) == ("fp32", "trainer.precision")


def test_deepspeed_trains_on_the_gpu_ray_gives_the_worker():
    """Ray gives the second worker of a node with 2 GPUs per worker cuda:2 (its first GPU);
    DeepSpeed, left to LOCAL_RANK, would take cuda:1."""
    assert engine_module.deepspeed_device(torch.device("cuda", 2)).device_rank == 2
    assert engine_module.deepspeed_device(torch.device("cpu")) is None


CUDA_FACTS = {"built_for": "cuda", "accelerator": "cuda"}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        # A PyPI install builds no op (DS_BUILD_CPU_ADAM unset): load would JIT-compile it.
        ({"installed_ops": {"cpu_adam": False}} | CUDA_FACTS, engine_module.TORCH_ADAMW),
        ({"installed_ops": {"cpu_adam": True}} | CUDA_FACTS, engine_module.CPU_ADAM),
        # Built, but for another accelerator: OpBuilder.load compiles it again.
        (
            {"installed_ops": {"cpu_adam": True}, "built_for": "cpu", "accelerator": "cuda"},
            engine_module.TORCH_ADAMW,
        ),
    ],
)
def test_offloading_on_gpu_uses_deepspeed_cpu_adam_only_where_it_is_prebuilt(facts, expected):
    choice, line = engine_module.offload_optimizer_choice(gpu=True, offload=True, **facts)
    assert choice == expected
    assert ("compile" in line) == (expected == engine_module.TORCH_ADAMW)
    for gpu, offload in ((False, True), (True, False)):
        quiet = engine_module.offload_optimizer_choice(gpu=gpu, offload=offload, **facts)
        assert quiet == (engine_module.TORCH_ADAMW, None)


def test_offloaded_optimizer_on_gpu_needs_no_build_here(capsys):
    # This install has no prebuilt cpu_adam: the GPU path must not reach DeepSpeedCPUAdam.
    cfg = TrainConfig(model=TINY)
    cfg.parallelism.offload_optimizer = True
    model = torch.nn.Linear(4, 4)
    optimizer = engine_module._optimizer(model, cfg, gpu=True)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    assert "torch AdamW (fused) on the offloaded states" in capsys.readouterr().out
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # fused AdamW on CPU tensors, as on ZeRO-Offload's CPU partitions
