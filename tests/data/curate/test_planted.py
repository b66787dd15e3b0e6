"""The curate_demo recipe on its planted mixture: every planted removal found with its
reason, the counts in data_stats.json and the prepare summary, `show` examples with
what they match, and curation settings in the artifact's fingerprint."""

import json

from framework.commands.prepare import prepare_run
from framework.data import cache
from framework.data.curate.planted import main as plant
from framework.data.stats import format_stats
from framework.model.tokenizer import train_bpe
from framework.run.files import STATS_FILE
from tests.helpers import TINY_RUN, compose_config


def _curate_demo(tmp_path, *overrides):
    cfg = compose_config(
        [*TINY_RUN, "data=curate_demo", f"run.output_dir={tmp_path / 'run'}",
         f"run.cache_dir={tmp_path / 'cache'}", *overrides]
    )  # fmt: skip
    cfg.data.sources[1].path = str(tmp_path / "planted" / "planted.jsonl")
    return cfg


def test_the_planted_counts_come_out_as_planted(tmp_path):
    plant(str(tmp_path / "planted"))
    expected = json.loads((tmp_path / "planted" / "expected.json").read_text())
    prepared = prepare_run(_curate_demo(tmp_path, "data.curate.show=2"))
    sources = json.loads((tmp_path / "run" / STATS_FILE).read_text())["sources"]
    assert sources["planted"]["removed"] == expected
    assert sources["planted"]["kept"] == 20  # the rewrites below the near threshold
    assert sources["alpaca_en_demo"]["removed"] == {"duplicate": 14}  # the file's own
    assert prepared.stats["curation"]["removed"] == sum(expected.values()) + 14
    summary = format_stats(prepared.stats)
    assert "removed near_duplicate: 40" in summary and "curation (exact, near," in summary

    shown = prepared.removed
    assert {r["reason"] for r in shown} == set(expected) and len(shown) == 2 * len(expected)
    for removal in shown:
        assert removal["where"] and removal["text"]
        if removal["reason"] in ("duplicate", "near_duplicate"):
            assert removal["match"].startswith("alpaca_en_demo ")
        if removal["reason"] == "contaminated":
            assert removal["match"].startswith(("suite test", "../shared/data/ifeval"))
    assert len(cache.removed_records(prepared.artifact)) == prepared.stats["curation"]["removed"]


def test_curation_settings_are_part_of_the_fingerprint_and_show_is_not(tmp_path):
    plant(str(tmp_path / "planted"))

    tokenizer = train_bpe(["a small corpus for a tokenizer"], 300)

    def key(*overrides):
        return cache.digest(
            cache.artifact_identity(_curate_demo(tmp_path, *overrides).data, tokenizer, 0)
        )

    base = key()
    assert key("data.curate.show=5") == base and key("data.preprocess=ray") == base
    for changed in ("data.curate.near=false", "data.curate.near_threshold=0.7",
                    "data.curate.decontaminate_ngram=8", "data.curate.enabled=false"):  # fmt: skip
        assert key(changed) != base, changed
    (tmp_path / "more.jsonl").write_text('{"q": "a held-out question of ours"}\n')
    assert key(f"data.curate.decontaminate_files=[{tmp_path / 'more.jsonl'}]") != base
