"""Sources -> train/eval lists: file kinds and locations, bad records, mixing, recipes."""

import csv
import json
import re
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
import pytest

from framework.commands.compose import CONF_DIR
from framework.config.schema import DataConfig, SourceConfig, SuiteConfig
from framework.data.formats import DataError, ErrorPolicy, RecordError
from framework.data.sources import (
    SUITE_HELD_OUT,
    SUITE_TRAIN,
    SUITE_TRAINED,
    load_data,
    trains_on_suite,
)
from framework.suite.build import trained_families
from tests.helpers import SHARED_DATA, compose_config


def _chat(i: int) -> dict:
    return {"instruction": f"q{i}", "output": f"a{i}"}


def _write_jsonl(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def _load(*paths, on_error="raise", seed=0, **data):
    sources = [p if isinstance(p, SourceConfig) else SourceConfig(path=str(p)) for p in paths]
    policy = ErrorPolicy(on_error)
    return load_data(DataConfig(sources=sources, **data), seed, policy), policy


def _wheres(loaded) -> list[str]:
    return sorted(r.where for r in loaded.train)


def test_jsonl_locations_skip_blank_lines(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(0), "", _chat(2)])
    loaded, _ = _load(path)
    assert _wheres(loaded) == [f"{path}:1", f"{path}:3"]
    assert loaded.train[0].source == "d"


def test_json_list_locations_are_indices(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_chat(0), _chat(1)], indent=2))
    assert _wheres(_load(path)[0]) == [f"{path}[0]", f"{path}[1]"]


def test_broken_json_list_names_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": }\n]')
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:3: invalid JSON .*one JSON list"
    ):
        _load(path)


def test_parquet_rows(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "v"}, {"role": "assistant", "content": "b"}]},
    ]
    path = _write_parquet(tmp_path / "d.parquet", rows)
    loaded, _ = _load(path)
    assert _wheres(loaded) == [f"{path} row 0", f"{path} row 1"]
    assert {r.conversation.messages[0]["content"] for r in loaded.train} == {"u", "v"}


def test_csv_lines_count_the_header_and_keep_strings(tmp_path):
    rows = [
        {"instruction": "2+3", "input": "", "output": "5"},
        {"instruction": "two\nlines", "input": "x", "output": "07"},
        {"instruction": "last", "input": "", "output": "z"},
    ]
    path = _write_csv(tmp_path / "d.csv", rows)
    loaded, _ = _load(path)
    # The quoted two-line field moves the third row to line 5.
    assert _wheres(loaded) == [f"{path}:2", f"{path}:3", f"{path}:5"]
    answers = {r.conversation.messages[-1]["content"] for r in loaded.train}
    assert answers == {"5", "07", "z"}


def test_folder_reads_supported_files_recursively_in_order(tmp_path):
    folder = tmp_path / "mix"
    _write_jsonl(folder / "b.jsonl", [_chat(0)])
    (folder / "a.json").write_text(json.dumps([_chat(1)]))
    (folder / "sub").mkdir()
    _write_csv(folder / "sub" / "c.csv", [_chat(2)])
    _write_parquet(folder / "sub" / "d.parquet", [{"text": "plain"}])
    (folder / "notes.txt").write_text("not data")
    _write_jsonl(folder / ".cache" / "x.jsonl", ["{broken"])
    loaded, _ = _load(folder)
    assert _wheres(loaded) == sorted(
        [
            f"{folder}/a.json[0]",
            f"{folder}/b.jsonl:1",
            f"{folder}/sub/c.csv:2",
            f"{folder}/sub/d.parquet row 0",
        ]
    )
    assert loaded.summaries["mix"].kept == 4


def test_saved_datasets_directory(tmp_path):
    rows = [_chat(i) for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:1])
    )
    splits.save_to_disk(str(tmp_path / "two"))
    assert _wheres(_load(tmp_path / "one")[0])[0] == f"{tmp_path}/one[train] row 0"
    test = SourceConfig(path=str(tmp_path / "two"), split="test")
    assert _wheres(_load(test)[0]) == [f"{tmp_path}/two[test] row 0"]
    with pytest.raises(DataError, match=r"no split 'dev' \(it has \['test', 'train'\]\)"):
        _load(SourceConfig(path=str(tmp_path / "two"), split="dev"))


def test_hub_failure_names_the_data_set_and_the_checks(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True)
    source = SourceConfig(path="no-such-org/no-such-data", split="dev", subset="en")
    with pytest.raises(DataError, match=r"^no-such-org/no-such-data: .*hub data set") as info:
        _load(source)
    for check in ("network", "split ('dev')", "subset ('en')"):
        assert check in str(info.value)


def test_missing_local_path_and_unsupported_file(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        _load(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        _load(tmp_path / "d.txt")


def test_the_suite_when_no_sources_trains_only_on_trained_families_and_evaluates_both():
    suite = SuiteConfig(held_out=["subtract", "lowercase"], train_examples=40)
    loaded = load_data(DataConfig(suite=suite), 0, ErrorPolicy("raise"))
    removed = [r.where for r in loaded.removals]  # duplicates, suite eval items reworded
    assert len(removed) < 3
    kept = [r.where for r in loaded.train]
    assert sorted(kept + removed) == sorted(f"suite[{i}]" for i in range(40))
    assert loaded.summaries["suite"].taken == 40 - len(removed)
    trained = set(trained_families(suite))
    assert {r.source for r in loaded.eval} == {"suite-trained", "suite-held-out"}
    held = [r for r in loaded.eval if r.source == "suite-held-out"]
    assert {r.where.split()[2].split("[")[0] for r in held} == {"subtract", "lowercase"}
    seen = [r for r in loaded.eval if r.source == "suite-trained"]
    assert {r.where.split()[2].split("[")[0] for r in seen} == trained

    # A held-out family's questions are never a training turn.
    def questions(records):
        turns = [m for r in records for m in r.conversation.messages]
        return {m["content"] for m in turns if m["role"] == "user"}

    assert questions(held) and not questions(held) & questions(loaded.train)


# One bad line of each kind a file can hold, with the reason it must get.
BAD_LINES = [
    ("{not json", "invalid_json"),
    (json.dumps({"question": "q"}), "unknown_format"),
    (json.dumps({"instruction": "q"}), "missing_field"),
    (json.dumps({"messages": [{"role": "bot", "content": "x"}]}), "unknown_role"),
    (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}), "turn_order"),
    (json.dumps({"instruction": "q", "output": " "}), "empty_content"),
    (json.dumps({"instruction": "q", "output": 5}), "non_string_content"),
    (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a", "weight": -2},
                ]
            }
        ),
        "bad_weight",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_raise_mode_names_file_line_and_reason(tmp_path, line, reason):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(0), line, _chat(2)])
    with pytest.raises(RecordError, match=rf"^{re.escape(str(path))}:2: ") as info:
        _load(path)
    assert (info.value.where, info.value.reason) == (f"{path}:2", reason)


def test_skip_mode_counts_every_reason_and_keeps_good_records(tmp_path):
    lines = [_chat(0)] + [line for line, _ in BAD_LINES] + [_chat(1), BAD_LINES[0][0]]
    path = _write_jsonl(tmp_path / "d.jsonl", lines)
    loaded, policy = _load(path, on_error="skip")
    expected = {reason: 1 for _, reason in BAD_LINES}
    expected["invalid_json"] = 2
    assert policy.skipped == {"d": expected}
    assert policy.total() == len(BAD_LINES) + 1
    assert _wheres(loaded) == [f"{path}:1", f"{path}:{len(BAD_LINES) + 2}"]
    assert (loaded.summaries["d"].records, loaded.summaries["d"].kept) == (len(lines), 2)


def test_bad_records_in_tables_and_lists_name_their_row(tmp_path):
    bad = {"instruction": "q", "output": ""}
    cases = [
        (_write_parquet(tmp_path / "d.parquet", [_chat(0), bad]), "d.parquet row 1"),
        (_write_csv(tmp_path / "d.csv", [_chat(0), bad]), "d.csv:3"),
    ]
    (tmp_path / "d.json").write_text(json.dumps([_chat(0), bad]))
    cases.append((tmp_path / "d.json", "d.json[1]"))
    for path, where in cases:
        with pytest.raises(RecordError, match=r": message 1 \(assistant\) is empty") as info:
            _load(path)
        assert (info.value.where, info.value.reason) == (f"{tmp_path}/{where}", "empty_content")
        loaded, policy = _load(path, on_error="skip")
        assert len(loaded.train) == 1 and policy.skipped == {path.stem: {"empty_content": 1}}


def test_source_with_no_usable_record_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"question": "q"})])
    with pytest.raises(DataError, match=r"source 'd' .*no usable record.*`columns`"):
        _load(path, on_error="skip")


def _sources(tmp_path, sizes=(10, 10)) -> list[Path]:
    return [
        _write_jsonl(tmp_path / f"s{k}.jsonl", [_chat(100 * k + i) for i in range(n)])
        for k, n in enumerate(sizes)
    ]


def test_weights_repeat_and_sample(tmp_path):
    a, b = _sources(tmp_path)
    loaded, _ = _load(SourceConfig(path=str(a), weight=0.5), SourceConfig(path=str(b), weight=2.0))
    counts = {"s0": 0, "s1": 0}
    for record in loaded.train:
        counts[record.source] += 1
    assert counts == {"s0": 5, "s1": 20}
    assert len({r.where for r in loaded.train if r.source == "s0"}) == 5
    b_wheres = [r.where for r in loaded.train if r.source == "s1"]
    assert all(b_wheres.count(w) == 2 for w in b_wheres)
    assert (loaded.summaries["s0"].taken, loaded.summaries["s1"].taken) == (5, 20)
    mixed, _ = _load(SourceConfig(path=str(a), weight=1.5))
    assert len(mixed.train) == 15 and len(set(r.where for r in mixed.train)) == 10


def test_max_samples_caps_before_weighting(tmp_path):
    (a,) = _sources(tmp_path, sizes=(50,))
    loaded, _ = _load(SourceConfig(path=str(a), max_samples=8, weight=2.0))
    summary = loaded.summaries["s0"]
    assert (summary.records, summary.kept, summary.taken) == (8, 8, 16)
    assert len(set(_wheres(loaded))) == 8


def test_mix_is_deterministic_per_seed(tmp_path):
    a, b = _sources(tmp_path, sizes=(30, 30))
    sources = [SourceConfig(path=str(a), weight=0.5, max_samples=20), SourceConfig(path=str(b))]

    def order(seed):
        loaded, _ = _load(*sources, seed=seed, eval_fraction=0.2)
        return [r.where for r in loaded.train], [r.where for r in loaded.eval]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert set(order(1)[0]) != set(order(2)[0])  # different samples, not only a new order


def test_eval_fraction_holds_out_disjoint_records(tmp_path):
    a, b = _sources(tmp_path, sizes=(20, 10))
    loaded, _ = _load(
        SourceConfig(path=str(a), weight=2.0), SourceConfig(path=str(b)), eval_fraction=0.1
    )
    train, held = {r.where for r in loaded.train}, {r.where for r in loaded.eval}
    assert not train & held
    assert (loaded.summaries["s0"].held_out, loaded.summaries["s1"].held_out) == (2, 1)
    assert len(loaded.train) == 2 * 18 + 9 and len(train | held) == 30


def test_eval_sources_replace_the_fraction(tmp_path):
    a, b = _sources(tmp_path, sizes=(10, 4))
    loaded, _ = _load(a, eval_sources=[SourceConfig(path=str(b), weight=3.0)], eval_fraction=0.5)
    assert len(loaded.train) == 10 and loaded.summaries["s0"].held_out == 0
    assert sorted(r.where for r in loaded.eval) == [f"{b}:{i}" for i in range(1, 5)]
    assert loaded.summaries["s1"].taken == 4


def test_repeated_source_names_stay_apart(tmp_path):
    a = _write_jsonl(tmp_path / "x" / "d.jsonl", [_chat(0)])
    b = _write_jsonl(tmp_path / "y" / "d.jsonl", [_chat(1)])
    loaded, _ = _load(a, b, SourceConfig(path=str(a), name="named"))
    assert sorted(loaded.summaries) == ["d", "d#2", "named"]


# curate_demo reads records generated first (tests/data/test_curate.py runs it).
RECIPES = sorted(p.stem for p in Path(CONF_DIR, "data").glob("*.yaml") if p.stem != "curate_demo")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_without_a_bad_record(recipe):
    cfg = compose_config([f"data={recipe}", "data.suite.train_examples=50"])
    suite = (SUITE_TRAIN, SUITE_TRAINED, SUITE_HELD_OUT)
    for source in [*cfg.data.sources, *cfg.data.eval_sources]:
        assert source.path in suite or Path(source.path).is_relative_to(SHARED_DATA.resolve())
    loaded = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy("raise"))
    summaries = loaded.summaries.values()
    assert loaded.train and all(s.kept + sum(s.removed.values()) == s.records for s in summaries)


def test_the_suite_mixed_with_other_data_keeps_its_names_and_its_split():
    cfg = compose_config(["data=suite_alpaca_mix", "data.suite.train_examples=50"])
    assert trains_on_suite(cfg.data)
    assert not trains_on_suite(compose_config(["data=alpaca_demo"]).data)
    loaded = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy("raise"))
    assert set(loaded.summaries) == {
        "suite",
        "alpaca_en_demo",
        "suite-trained",
        "suite-held-out",
    }
    assert loaded.summaries["suite"].taken == 50
