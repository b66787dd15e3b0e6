"""Records -> conversations: every format, the mappings, and every kind of bad record."""

import json
import pickle

import pytest

from framework.config.schema import SourceConfig
from framework.data.formats import (
    REASONS,
    Conversation,
    ErrorPolicy,
    RecordError,
    to_conversation,
)
from tests.helpers import SHARED_DATA

AUTO = SourceConfig(path="x")


def _convert(record, **source) -> Conversation:
    return to_conversation(record, "f.jsonl:7", SourceConfig(path="x", **source))


def _roles(conversation: Conversation) -> list[str]:
    return [m["role"] for m in conversation.messages]


def test_alpaca_with_input_system_and_history():
    record = {
        "instruction": "Add.",
        "input": "2 3",
        "output": "5",
        "system": "S",
        "history": [["Hi", "Hello"]],
    }
    assert _convert(record).messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Add.\n\n2 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert _convert({"instruction": "Hi", "input": "", "output": "Yo", "system": ""}).messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ]


def test_sharegpt_roles_system_and_tools():
    tools = [{"name": "add", "parameters": {}}]
    record = {
        "system": "S",
        "tools": json.dumps(tools),
        "conversations": [
            {"from": "human", "value": "2+3?"},
            {"from": "function_call", "value": '{"name": "add"}'},
            {"from": "observation", "value": "5"},
            {"from": "gpt", "value": "It is 5."},
        ],
    }
    conversation = _convert(record)
    assert _roles(conversation) == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation.messages[2]["content"] == '{"name": "add"}'
    assert conversation.tools == tools
    assert _convert({**record, "tools": tools}).tools == tools


def test_sharegpt_items_under_messages_are_detected():
    record = {"messages": [{"from": "user", "value": "a"}, {"from": "assistant", "value": "b"}]}
    assert _roles(_convert(record)) == ["user", "assistant"]


@pytest.mark.parametrize("chosen", [{"from": "gpt", "value": "good"}, "good"])
def test_preference_pair_trains_on_the_chosen_reply(chosen):
    record = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": chosen,
        "rejected": {"from": "gpt", "value": "bad"},
    }
    assert _convert(record).messages[-1] == {"role": "assistant", "content": "good"}
    assert len(_convert(record).messages) == 2


def test_messages_with_weights_tool_calls_and_tools():
    calls = [{"type": "function", "function": {"name": "add", "arguments": "{}"}}]
    record = {
        "tools": [{"name": "add"}],
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": None, "tool_calls": calls, "weight": 0},
            {"role": "function", "content": "5"},
            {"role": "assistant", "content": "five", "weight": 1.5},
        ],
    }
    conversation = _convert(record)
    assert _roles(conversation) == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation.messages[2] == {
        "role": "assistant",
        "content": json.dumps(calls),
        "weight": 0.0,
    }
    assert conversation.messages[4]["weight"] == 1.5
    assert conversation.tools == [{"name": "add"}]


def test_prompt_completion_strings_and_lists():
    assert _convert({"prompt": "p", "completion": "c"}).messages == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "c"},
    ]
    record = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "p"}],
        "completion": [{"role": "assistant", "content": "c"}],
    }
    assert _roles(_convert(record)) == ["system", "user", "assistant"]


def test_text_record():
    assert _convert({"text": "plain"}) == Conversation(messages=[], text="plain")


def test_columns_rename_before_detection():
    record = {"question": "Q", "answer": "A", "instruction": "replaced"}
    columns = {"instruction": "question", "output": "answer"}
    assert _convert(record, columns=columns).messages == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    dialog = {"dialog": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert _roles(_convert(dialog, columns={"messages": "dialog"})) == ["user", "assistant"]


def test_roles_extend_and_override_the_built_in_maps():
    record = {"messages": [{"role": "customer", "content": "a"}, {"role": "agent", "content": "b"}]}
    roles = {"customer": "user", "agent": "assistant"}
    assert _roles(_convert(record, roles=roles)) == ["user", "assistant"]
    sharegpt = {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}
    assert _roles(_convert(sharegpt, roles={"bot": "assistant"})) == ["user", "assistant"]


def test_forced_format_overrides_detection():
    record = {"text": "t", "prompt": "p", "completion": "c"}
    assert _convert(record).text is None  # auto picks prompt_completion first
    assert _convert(record, format="text").text == "t"


def _turns(*roles):
    return {"messages": [{"role": role, "content": "x"} for role in roles]}


BAD = [
    ([1, 2], "unknown_format", "must be a JSON object"),
    ({"question": "q"}, "unknown_format", r"keys \['question'\].*columns:"),
    ({"messages": "hi"}, "unknown_format", "must be a list"),
    ({"instruction": "i"}, "missing_field", "alpaca record has no `output`"),
    ({"messages": [{"content": "x"}]}, "missing_field", "message 0 has no `role`"),
    ({"prompt": "p"}, "missing_field", "no `completion`"),
    (_turns("user", "robot"), "unknown_role", "message 1 has role 'robot'.*roles:"),
    (
        {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
        "unknown_role",
        "role 'bot'.*`roles: {bot: user}`",
    ),
    (_turns("user", "assistant", "system"), "turn_order", "message 2 .system. .*only come first"),
    (_turns("assistant", "user", "assistant"), "turn_order", "starts with a user message"),
    (_turns("user", "user", "assistant"), "turn_order", "after user comes assistant"),
    (_turns("user", "assistant", "assistant"), "turn_order", "after assistant comes user or tool"),
    (_turns("user", "assistant", "tool", "user"), "turn_order", "after tool comes tool or"),
    (_turns("user", "assistant", "user"), "turn_order", "must end with an assistant reply"),
    (_turns("system", "user"), "turn_order", "no assistant message"),
    ({"messages": []}, "turn_order", "no assistant message"),
    ({"instruction": "i", "output": "  "}, "empty_content", r"message 1 \(assistant\) is empty"),
    ({"text": " "}, "empty_content", "`text` is empty"),
    ({"messages": [{"role": "user", "content": None}]}, "empty_content", "has no content"),
    ({"instruction": "i", "output": 5}, "non_string_content", "`output` must be a string"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
        "non_string_content",
        "content must be a string, got list",
    ),
    ({"prompt": 3, "completion": "c"}, "non_string_content", "`prompt` must be a string or"),
    (
        {
            "messages": [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a", "weight": -1},
            ]
        },
        "bad_weight",
        "weight -1",
    ),
    (
        {"messages": [{"role": "user", "content": "u", "weight": "1"}]},
        "bad_weight",
        "weight '1'",
    ),
    (
        {
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            "tools": "[{broken",
        },
        "invalid_json",
        "`tools` is not valid JSON",
    ),
]


@pytest.mark.parametrize(("record", "reason", "detail"), BAD, ids=[b[1] for b in BAD])
def test_bad_records_raise_with_location_and_reason(record, reason, detail):
    with pytest.raises(RecordError, match=f"^f.jsonl:7: .*{detail}") as info:
        _convert(record)
    assert (info.value.where, info.value.reason) == ("f.jsonl:7", reason)


def test_forced_format_reports_the_missing_field():
    with pytest.raises(RecordError, match="alpaca record has no `output`") as info:
        _convert({"instruction": "i", "answer": "a"}, format="alpaca")
    assert info.value.reason == "missing_field"


def test_record_error_fields_and_pickling():
    err = RecordError("f.jsonl:3", "no_target", "no trained token within 512")
    assert str(err) == "f.jsonl:3: no trained token within 512"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.where, copy.reason, copy.detail, str(copy)) == (
        err.where,
        err.reason,
        err.detail,
        str(err),
    )
    with pytest.raises(ValueError, match="unknown reason"):
        RecordError("x", "no_such_reason", "d")
    assert "no_target" in REASONS


def test_error_policy_raise_and_skip():
    err = RecordError("f.jsonl:1", "empty_content", "empty")
    with pytest.raises(RecordError):
        ErrorPolicy("raise")(err, "f")
    policy = ErrorPolicy("skip")
    policy(err, "f")
    policy(err, "f")
    policy(RecordError("g.json[0]", "turn_order", "x"), "g")
    assert policy.skipped == {"f": {"empty_content": 2}, "g": {"turn_order": 1}}
    assert policy.total() == 3
    with pytest.raises(ValueError, match="on_error"):
        ErrorPolicy("ignore")


def _shared(name):
    return json.loads((SHARED_DATA / name).read_text())


@pytest.mark.parametrize(("name", "count"), [("alpaca_en_demo.json", 999), ("identity.json", 91)])
def test_real_alpaca_files(name, count):
    records = _shared(name)
    conversations = [to_conversation(r, f"{name}[{i}]", AUTO) for i, r in enumerate(records)]
    assert len(conversations) == count
    assert all(_roles(c) == ["user", "assistant"] for c in conversations)
    first = records[0]
    assert conversations[0].messages[1]["content"] == first["output"]
    for record, conversation in zip(records, conversations, strict=True):
        prompt = "\n\n".join(p for p in (record["instruction"], record["input"]) if p)
        assert conversation.messages[0]["content"] == prompt


def test_real_glaive_toolcall_file():
    records = _shared("glaive_toolcall_en_demo.json")
    conversations = [to_conversation(r, f"g[{i}]", AUTO) for i, r in enumerate(records)]
    assert len(conversations) == 300
    # `tools` is "[]" in 109 records: no tools there.
    assert sum(c.tools is None for c in conversations) == 109
    assert all(isinstance(c.tools[0], dict) for c in conversations if c.tools)
    index = next(
        i
        for i, r in enumerate(records)
        if [t["from"] for t in r["conversations"]][3:5] == ["function_call", "observation"]
    )
    turns, messages = records[index]["conversations"], conversations[index].messages
    assert messages[3] == {"role": "assistant", "content": turns[3]["value"]}
    assert messages[4] == {"role": "tool", "content": turns[4]["value"]}
    assert conversations[index].tools == json.loads(records[index]["tools"])


def test_real_dpo_file_appends_the_chosen_reply():
    records = _shared("dpo_en_demo.json")
    conversations = [to_conversation(r, f"d[{i}]", AUTO) for i, r in enumerate(records)]
    assert len(conversations) == 300
    for record, conversation in zip(records, conversations, strict=True):
        assert len(conversation.messages) == len(record["conversations"]) + 1
        assert conversation.messages[-1] == {
            "role": "assistant",
            "content": record["chosen"]["value"],
        }
    assert any(c.messages[0]["role"] == "system" for c in conversations)
