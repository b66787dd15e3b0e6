import json

import pytest

from framework.data.formats import DataError, read_records, to_messages


def _jsonl(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_alpaca_record_becomes_chat():
    record = {"instruction": "Add.", "input": "2 3", "output": "5", "system": "S"}
    assert to_messages(record, "x") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Add.\n\n2 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_jsonl_locations_are_file_and_line(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"a": 1}), "", json.dumps({"b": 2})])
    assert [where for where, _ in read_records(path)] == [f"{path}:1", f"{path}:3"]


def test_json_list_locations_are_indices(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"a": 1}, {"b": 2}]))
    assert [where for where, _ in read_records(str(path))] == [f"{path}[0]", f"{path}[1]"]


def test_invalid_json_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"a": 1}), "{not json"])
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        list(read_records(path))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"text": "hi"}, "unknown record format"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
        ({"messages": [{"role": "user", "content": "  "}]}, "empty or non-string"),
        ({"messages": [{"role": "user", "content": 3}]}, "empty or non-string"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_records_give_location_and_reason(record, reason):
    with pytest.raises(DataError, match=f"f.jsonl:7: .*{reason}"):
        to_messages(record, "f.jsonl:7")
