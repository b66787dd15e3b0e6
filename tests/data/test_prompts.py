"""RL prompts: records -> chats up to the reply with a verifier and its spec; constraints
attached by seed; bad records and contaminated prompts counted, never dropped silently."""

import json
import re
from pathlib import Path

import pytest

from framework.config.schema import ConfigError, DataConfig, SourceConfig
from framework.data.curate.references import file_texts
from framework.data.formats import DataError, ErrorPolicy, RecordError
from framework.data.prompts import RLPrompt, load_prompts, read_prompts, write_prompts
from framework.eval.verifiers import VERIFIERS, exact_answer_reward, ifeval_reward, suite_reward
from tests.helpers import SHARED_DATA, compose_config

IFEVAL = SHARED_DATA / "ifeval" / "input_data.jsonl"


def _alpaca(i: int) -> dict:
    return {"instruction": f"Write a short note about topic number {i}.", "output": f"Note {i}."}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _load(*sources: SourceConfig, on_error="raise", seed=0, contamination=(), **data):
    cfg = DataConfig(sources=list(sources), **data)
    policy = ErrorPolicy(on_error)
    return load_prompts(
        cfg, seed, verifiers=VERIFIERS, contamination=list(contamination), policy=policy
    )


def test_alpaca_instructions_get_constraints_the_ifeval_verifier_takes(tmp_path):
    path = _write(tmp_path / "alpaca.jsonl", [_alpaca(i) for i in range(20)])
    found = _load(SourceConfig(path=str(path), verifier="ifeval"), constraints_per_prompt=3)
    assert len(found.train) == 20 and not found.eval
    for prompt in found.train:
        [user] = prompt.messages  # the reply is dropped
        assert user["role"] == "user" and user["content"].startswith("Write a short note")
        assert prompt.verifier == "ifeval" and prompt.spec["prompt"] == user["content"]
        assert len(prompt.spec["instruction_id_list"]) == len(prompt.spec["kwargs"]) == 3
        assert 0.0 <= ifeval_reward("A short note.", prompt.spec) <= 1.0
        json.dumps(prompt.spec)
    counts = found.counts
    assert counts["records"] == counts["kept"] == 20 and counts["verifiers"] == {"ifeval": 20}
    assert counts["constraints"]["attached"] == 60 and counts["decontaminated"] == 0
    assert (counts["train"], counts["eval"]) == (20, 0)


def test_a_record_names_its_own_verifier_and_answer(tmp_path):
    records = [
        _alpaca(0),
        {"prompt": "What is 6 times 7?", "verifier": "exact_answer", "answer": "42"},
        {"messages": [{"role": "user", "content": "Upper-case: apple"}], "verifier": "suite",
         "spec": {"family": "uppercase", "reference": "APPLE"}},
    ]  # fmt: skip
    found = _load(
        SourceConfig(path=str(_write(tmp_path / "mixed.jsonl", records)), verifier="ifeval")
    )
    by_verifier = {p.verifier: p for p in found.train}
    answer, suite = by_verifier["exact_answer"], by_verifier["suite"]
    assert answer.messages == ({"role": "user", "content": "What is 6 times 7?"},)
    assert answer.spec == {"answer": "42"} and exact_answer_reward("It is 42.", answer.spec) == 1
    assert suite.spec == {"family": "uppercase", "reference": "APPLE"}
    assert suite_reward("APPLE", suite.spec) == 1.0
    assert found.counts["verifiers"] == {"exact_answer": 1, "ifeval": 1, "suite": 1}


def test_a_record_without_a_verifier_is_one_line_naming_the_record_and_the_key(tmp_path):
    path = _write(tmp_path / "alpaca.jsonl", [_alpaca(0), _alpaca(1)])
    with pytest.raises(RecordError) as err:
        _load(SourceConfig(path=str(path)))
    assert str(err.value) == (
        f"{path}:1: no verifier: set data.sources[0].verifier (one of exact_answer, ifeval, "
        'suite) or give the record a "verifier" field'
    )
    with pytest.raises(DataError, match=r"no usable prompt \(of 2 records, 0 decontaminated"):
        _load(SourceConfig(path=str(path)), on_error="skip")


def test_an_unknown_verifier_is_named_by_its_key_before_any_record_is_read(tmp_path):
    missing = SourceConfig(path=str(tmp_path / "not_read.jsonl"), verifier="regex")
    message = "data.sources[1].verifier='regex': no such verifier; give one of ['exact_answer',"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(SourceConfig(path=str(tmp_path / "a.jsonl")), missing)
    path = _write(tmp_path / "own.jsonl", [{**_alpaca(0), "verifier": "regex"}])
    with pytest.raises(RecordError, match=r"own.jsonl:1: \"verifier\"='regex': no such verifier"):
        _load(SourceConfig(path=str(path)))


def test_bad_records_are_skipped_and_counted_per_reason(tmp_path):
    records = [
        _alpaca(0),
        {"prompt": "What is 6 times 7?", "verifier": "exact_answer"},  # no answer
        {**_alpaca(2), "verifier": "suite", "spec": {"family": "nope", "reference": "x"}},
        {"instruction": 3, "output": "x"},
        {"text": "plain text has no turn to reply to"},
    ]
    path = _write(tmp_path / "bad.jsonl", records)
    found = _load(SourceConfig(path=str(path), verifier="ifeval"), on_error="skip")
    assert [p.where for p in found.train] == [f"{path}:1"]
    skipped = {"bad_spec": 2, "non_string_content": 1, "unknown_format": 1}
    assert found.counts["skipped"] == skipped and found.counts["records"] == 5
    assert found.counts["sources"]["bad"]["skipped"] == skipped
    assert found.counts["skipped_first"]["bad_spec"].startswith(f"{path}:2: no `answer` field")


def test_a_record_copying_an_ifeval_prompt_is_dropped_and_counted(tmp_path):
    ifeval = [json.loads(line)["prompt"] for line in IFEVAL.read_text().splitlines()]
    planted = {"instruction": f"Please help. {ifeval[7]}", "output": "..."}
    path = _write(tmp_path / "planted.jsonl", [_alpaca(0), planted, _alpaca(2)])
    found = _load(
        SourceConfig(path=str(path), verifier="ifeval"), contamination=file_texts([str(IFEVAL)])
    )
    assert [p.where for p in found.train] == [f"{path}:1", f"{path}:3"]
    assert found.counts["decontaminated"] == 1 and found.counts["kept"] == 2
    [shown] = found.counts["decontaminated_first"]
    assert shown == {"where": f"{path}:2", "overlaps": f"{IFEVAL}:8"}


def test_the_eval_split_and_the_constraints_depend_only_on_the_seed(tmp_path):
    path = _write(tmp_path / "alpaca.jsonl", [_alpaca(i) for i in range(40)])
    source = SourceConfig(path=str(path), verifier="ifeval")
    first, again = (_load(source, seed=1, eval_fraction=0.25) for _ in range(2))
    assert (first.train, first.eval) == (again.train, again.eval) and len(first.eval) == 10
    assert not {p.where for p in first.train} & {p.where for p in first.eval}
    other = _load(source, seed=2, eval_fraction=0.25)
    assert {p.where for p in other.eval} != {p.where for p in first.eval}
    # A record's constraints do not depend on the records around it, nor on the folder.
    moved = tmp_path / "moved"
    moved.mkdir()
    fewer = _write(moved / "alpaca.jsonl", [_alpaca(i) for i in range(3)])
    alone = _load(SourceConfig(path=str(fewer), verifier="ifeval"), seed=1)
    specs = {p.where.removeprefix(str(tmp_path)): p.spec for p in first.train + first.eval}
    for prompt in alone.train:
        assert specs[prompt.where.removeprefix(str(moved))] == prompt.spec


def test_multi_turn_records_keep_the_turns_before_the_last_reply(tmp_path):
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
             ("user", "Name a colour."), ("assistant", "Blue")]  # fmt: skip
    messages = [{"role": r, "content": c} for r, c in turns]
    sharegpt = [{"from": "human", "value": "Name a fruit."}]  # no reply at all
    path = _write(tmp_path / "chats.jsonl", [{"messages": messages}, {"conversations": sharegpt}])
    found = _load(SourceConfig(path=str(path), verifier="ifeval"), constraints_per_prompt=1)
    chat, fruit = sorted(found.train, key=lambda p: p.where)
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert chat.messages[:3] == tuple(messages[:3])
    assert chat.messages[3]["content"].startswith("Name a colour.\n\n")
    assert [m["role"] for m in fruit.messages] == ["user"]


def test_prompts_round_trip_through_a_file(tmp_path):
    path = _write(tmp_path / "alpaca.jsonl", [_alpaca(i) for i in range(5)])
    prompts = _load(SourceConfig(path=str(path), verifier="ifeval")).train
    prompts.append(RLPrompt(({"role": "user", "content": "2+2?"},), "exact_answer",
                            {"answer": "4"}, "x.jsonl:9"))  # fmt: skip
    write_prompts(tmp_path / "prompts.jsonl", prompts)
    assert read_prompts(tmp_path / "prompts.jsonl") == prompts
    (tmp_path / "broken.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:1: not an RL prompt"):
        read_prompts(tmp_path / "broken.jsonl")


def test_constraints_per_prompt_is_at_least_one():
    with pytest.raises(ConfigError, match=r"data.constraints_per_prompt=0 must be > 0"):
        compose_config(["data.constraints_per_prompt=0"])


def test_the_rl_demo_recipe_loads_every_alpaca_instruction_with_constraints():
    cfg = compose_config(["data=rl_demo"])
    contamination = file_texts(cfg.data.curate.decontaminate_files)
    found = load_prompts(
        cfg.data,
        cfg.trainer.seed,
        verifiers=VERIFIERS,
        contamination=contamination,
        policy=ErrorPolicy("raise"),
    )
    counts = found.counts
    assert (counts["records"], counts["kept"], counts["decontaminated"]) == (999, 999, 0)
    assert (len(found.train), len(found.eval)) == (949, 50)
    assert counts["constraints"]["attached"] == 2 * 999
