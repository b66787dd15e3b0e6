"""Preprocessing as Ray tasks gives what the local processes give: the same records kept
and removed, and the same artifact byte for byte (a local Ray of 2 CPUs)."""

from pathlib import Path

from framework.cluster.ray_preprocess import ray_mapper
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
