import json

import numpy as np
import pytest

from framework.commands.prepare import prepare_run
from framework.data import cache
from framework.data.dataset import TokenizedDataset
from framework.data.formats import Conversation, RecordError
from framework.data.parallel import LocalMapper
from framework.data.sources import LoadedRecord
from framework.run.files import STATS_FILE, artifact_path
from tests.helpers import compose_config


def _chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Say {i} twice."},
            {"role": "assistant", "content": f"{i} {i}"},
        ]
    }


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(_chat(i)) + "\n" for i in range(200)))
    return path


def _cfg(tmp_path, data_file, *overrides):
    return compose_config(
        [
            f"data.path={data_file}",
            f"run.output_dir={tmp_path / 'run'}",
            f"run.cache_dir={tmp_path / 'cache'}",
            "data.max_seq_len=128",
            "model.vocab_size=300",
            *overrides,
        ]
    )


def test_artifact_is_reused_and_rebuilt_when_an_input_changes(tmp_path, data_file):
    first = prepare_run(_cfg(tmp_path, data_file)).artifact
    built_at = (first / "stats.json").stat().st_mtime_ns
    assert prepare_run(_cfg(tmp_path, data_file)).artifact == first
    assert (first / "stats.json").stat().st_mtime_ns == built_at  # not rebuilt

    assert prepare_run(_cfg(tmp_path, data_file, "data.max_seq_len=64")).artifact != first
    assert prepare_run(_cfg(tmp_path, data_file, "data.train_on=all")).artifact != first
    with data_file.open("a") as f:
        f.write(json.dumps(_chat(999)) + "\n")
    changed = prepare_run(_cfg(tmp_path, data_file)).artifact
    assert changed != first
    assert TokenizedDataset.load(changed, "train").offsets.shape[0] == 202


def test_run_dir_points_at_the_artifact_and_holds_its_stats(tmp_path, data_file):
    prepared = prepare_run(_cfg(tmp_path, data_file, "data.eval_fraction=0.1"))
    run = tmp_path / "run"
    assert artifact_path(run) == prepared.artifact
    stats = json.loads((run / STATS_FILE).read_text())
    assert stats["examples"] == 180 and stats["eval_examples"] == 20
    assert 0 < stats["trained_fraction"] < 1
    assert stats["packing"]["rows"] >= stats["packing"]["lower_bound_rows"]
    plan = cache.first_plan(prepared.artifact)
    assert sorted(plan.example_ids.tolist()) == list(range(180))


def test_skipped_records_are_counted_by_reason(tmp_path, data_file):
    with data_file.open("a") as f:
        f.write("{broken\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")
    with pytest.raises(RecordError, match=r"chats\.jsonl:201: "):
        prepare_run(_cfg(tmp_path, data_file))
    stats = prepare_run(_cfg(tmp_path, data_file, "data.on_error=skip")).stats
    assert stats["sources"]["chats"]["skipped"] == {"invalid_json": 1, "turn_order": 1}
    assert stats["examples"] == 200


def test_overlong_examples_are_truncated_or_dropped_and_counted(tmp_path, data_file):
    long = {
        "messages": [
            {"role": "user", "content": "x " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    }
    with data_file.open("a") as f:
        f.write(json.dumps(long) + "\n")
    truncated = prepare_run(_cfg(tmp_path, data_file)).stats  # data.on_error=raise
    # Truncation cut the reply away: nothing left to train, so it is skipped and counted,
    # not fatal (the record is sound; tests/data/test_fit.py has the cases).
    assert truncated["sources"]["chats"]["truncated"] == 1
    assert truncated["sources"]["chats"]["skipped"] == {"no_target": 1}
    dropped = prepare_run(_cfg(tmp_path, data_file, "data.overlong=drop")).stats
    assert dropped["sources"]["chats"]["dropped_too_long"] == 1
    assert dropped["examples"] == 200


def test_parallel_rendering_equals_serial(tokenizer):
    records = [LoadedRecord("s", f"s:{i}", Conversation(_chat(i)["messages"])) for i in range(700)]
    serial = cache.render_all(records, tokenizer, "assistant", LocalMapper(1))
    parallel = cache.render_all(records, tokenizer, "assistant", LocalMapper(2))
    assert [r.input_ids for r in serial] == [r.input_ids for r in parallel]
    assert [r.weights for r in serial] == [r.weights for r in parallel]
    assert np.mean([len(r.input_ids) for r in serial]) > 5


def test_alpaca_demo_fills_2048_rows_to_99_percent(tmp_path):
    cfg = compose_config(
        [
            "data=alpaca_demo",
            "data.max_seq_len=2048",
            f"run.output_dir={tmp_path / 'run'}",
            f"run.cache_dir={tmp_path / 'cache'}",
        ]
    )
    stats = prepare_run(cfg).stats
    # The shared file holds 14 exact duplicates, which curation removes by default.
    assert stats["sources"]["alpaca_en_demo"]["removed"] == {"duplicate": 14}
    assert stats["examples"] == 999 - 14
    assert stats["packing"]["efficiency"] >= 0.99
