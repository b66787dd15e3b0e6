"""Preprocessing as Ray tasks gives what the local processes give: the same records kept
and removed, and the same artifact byte for byte (a local Ray of 2 CPUs)."""

from pathlib import Path

import ray

from framework.cluster.ray_preprocess import AUTO_MIN_ITEMS, ray_mapper
from framework.commands.prepare import prepare_data
from framework.data.formats import ErrorPolicy
from framework.data.parallel import LocalMapper
from framework.data.sources import load_data
from tests.helpers import TINY_RUN, compose_config

NEAR = ["data.suite.train_examples=600", "data.curate.near=true", "data.curate.exact_prompt=true"]


def _loaded(cfg, mapper):
    loaded = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy("raise"), mapper=mapper)
    return [r.where for r in loaded.train], [r.as_dict() for r in loaded.removals]


def _files(artifact: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(artifact.iterdir())}


def test_ray_tasks_curate_and_build_the_same_artifact_as_local_processes(tmp_path):
    cfg = compose_config([*TINY_RUN, *NEAR])
    serial = _loaded(cfg, LocalMapper(1))
    assert serial[1], "the suite mix should have something to remove"
    assert _loaded(cfg, LocalMapper(2)) == serial
    with ray_mapper(None, num_cpus=2) as mapper:
        assert _loaded(cfg, mapper) == serial

    artifacts = {}
    for mode in ("local", "ray"):
        built = compose_config(
            [*TINY_RUN, *NEAR, f"data.preprocess={mode}", f"run.cache_dir={tmp_path / mode}"]
        )
        artifacts[mode] = prepare_data(built)[1]
    assert artifacts["local"].name == artifacts["ray"].name  # where it ran is not in the key
    local, ray = _files(artifacts["local"]), _files(artifacts["ray"])
    assert "removed.jsonl" in local and local.keys() == ray.keys()
    assert [name for name in local if local[name] != ray[name]] == []


def _lengths(part: list, shared: int) -> list:
    return [len(item) + shared for item in part]


def test_auto_maps_small_inputs_locally_without_connecting_to_ray():
    """data.preprocess=auto on a cluster: fewer than AUTO_MIN_ITEMS items never reach Ray
    (no connection is tried: the address is a closed port)."""
    items = ["ab", "c"] * 10
    assert len(items) < AUTO_MIN_ITEMS
    with ray_mapper("127.0.0.1:1", small=LocalMapper(1)) as mapper:
        assert mapper(_lengths, items, 1, "small") == [3, 2] * 10
    assert not ray.is_initialized()
