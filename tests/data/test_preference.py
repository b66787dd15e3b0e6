"""Preference records -> pairs of sequences, fitted to a row together, packed as units
(framework/data/preference.py and its uses in the data pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from framework.commands.prepare import prepare_run
from framework.config.schema import ConfigError, SourceConfig
from framework.data.cache import build_artifact
from framework.data.dataset import TokenizedDataset
from framework.data.formats import ErrorPolicy, RecordError
from framework.data.loader import RankBatches
from framework.data.pack import best_fit_decreasing
from framework.data.preference import (
    fitted_lengths,
    pair_fields,
    pair_lengths,
    render_pair,
    sequence_plan,
    to_pair,
)
from framework.data.sources import load_data
from tests.helpers import SHARED_DATA, TINY_RUN, compose_config, preference_records, write_jsonl

SOURCE = SourceConfig(path="-")
USER = {"role": "user", "content": "Name a colour."}


def _roles_and_weights(conversation) -> list[tuple[str, str, float]]:
    return [(m["role"], m["content"], m.get("weight", 1.0)) for m in conversation.messages]


def test_the_accepted_shapes_give_the_same_pair():
    sharegpt = {
        "conversations": [{"from": "human", "value": "Name a colour."}],
        "chosen": {"from": "gpt", "value": "Blue."},
        "rejected": {"from": "gpt", "value": "Seven."},
    }
    strings = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
    messages = {
        "prompt": [USER],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Seven."}],
    }
    implicit = {  # TRL's implicit prompt: two whole conversations
        "chosen": [USER, {"role": "assistant", "content": "Blue."}],
        "rejected": [USER, {"role": "assistant", "content": "Seven."}],
    }
    alpaca = {"instruction": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
    expected = (
        [("user", "Name a colour.", 0.0), ("assistant", "Blue.", 1.0)],
        [("user", "Name a colour.", 0.0), ("assistant", "Seven.", 1.0)],
    )
    for record in (sharegpt, strings, messages, implicit, alpaca):
        pair = to_pair(record, "f.jsonl:1", SOURCE)
        assert (_roles_and_weights(pair.chosen), _roles_and_weights(pair.rejected)) == expected


def test_earlier_assistant_turns_of_the_prompt_are_not_trained(tokenizer):
    record = {
        "system": "Be brief.",
        "prompt": [
            USER,
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "Another."},
        ],
        "chosen": "Green.",
        "rejected": "Four.",
    }
    pair = to_pair(record, "f.jsonl:1", SOURCE)
    assert pair.chosen.messages[0] == {"role": "system", "content": "Be brief."}
    rendered = render_pair(tokenizer, pair, "f.jsonl:1")
    for sequence, reply in ((rendered.chosen, "Green."), (rendered.rejected, "Four.")):
        trained = [t for t, w in zip(sequence.input_ids, sequence.weights, strict=True) if w > 0]
        assert tokenizer.decode(trained).strip().startswith(reply)
        assert "Red." not in tokenizer.decode(trained)
    # The two sequences share the prompt's tokens exactly.
    prompt = rendered.chosen.weights.index(1.0)
    assert rendered.chosen.input_ids[:prompt] == rendered.rejected.input_ids[:prompt]


@pytest.mark.parametrize(
    ("record", "reason", "says"),
    [
        ({"prompt": "Hi", "chosen": "Hello"}, "missing_field", "no `rejected`"),
        ({"prompt": "Hi", "chosen": "Same", "rejected": "Same"}, "same_replies", "same reply"),
        ({"prompt": "Hi", "chosen": 3, "rejected": "No"}, "non_string_content", "`chosen`"),
        ({"prompt": "Hi", "chosen": "", "rejected": "No"}, "empty_content", "empty"),
        (
            {"prompt": "Hi", "chosen": [{"role": "robot", "content": "x"}], "rejected": "No"},
            "unknown_role",
            "robot",
        ),
    ],
)
def test_bad_preference_records_name_the_line_and_the_reason(tmp_path, record, reason, says):
    path = write_jsonl(tmp_path / "pairs.jsonl", [*preference_records(3), record])
    data = compose_config([*TINY_RUN, "objective=dpo", f"data.path={path}"]).data
    with pytest.raises(RecordError) as raised:
        load_data(data, 0, ErrorPolicy("raise"), pairs=True)
    assert raised.value.reason == reason
    assert str(raised.value).startswith(f"{path}:4: ") and says in str(raised.value)
    policy = ErrorPolicy("skip")
    loaded = load_data(data, 0, policy, pairs=True)
    assert len(loaded.train) == 3 and policy.skipped == {"pairs": {reason: 1}}


def test_a_pair_is_cut_to_share_one_row():
    assert fitted_lengths(100, 40, 256) == (100, 40)  # fits: unchanged
    assert fitted_lengths(300, 40, 256) == (216, 40)  # the short one leaves the rest
    assert fitted_lengths(300, 400, 256) == (128, 128)  # both long: half each
    assert fitted_lengths(40, 300, 256) == (40, 216)


def test_pairs_are_packed_whole_and_their_fields_point_at_them(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_records(40))
    cfg = compose_config([*TINY_RUN, "objective=dpo", f"data.path={path}"])
    data = load_data(cfg.data, 0, ErrorPolicy("raise"), pairs=True)
    artifact = tmp_path / "artifact"
    build_artifact(artifact, data, tokenizer, cfg.data, ErrorPolicy("raise"), 0, pairs=True)
    dataset = TokenizedDataset.load(artifact, "train")
    assert len(dataset) == 80 and json.loads((artifact / "stats.json").read_text())["pairs"] == 40
    plan = sequence_plan(best_fit_decreasing(pair_lengths(dataset), 256, seed=0))
    rows = [plan.row(i) for i in range(len(plan))]
    for row in rows:  # chosen then rejected of each pair, side by side
        assert (row[0::2] % 2 == 0).all() and (row[1::2] == row[0::2] + 1).all()
    fields = pair_fields(rows[:3], dataset.offsets, 256)
    assert fields["pair_ids"].tolist() == [s // 2 for row in rows[:3] for s in row[0::2]]
    local = fields["sequence_index"]
    for number, sequence in enumerate(s for row in rows[:3] for s in row):
        assert (local == number).sum() == dataset.lengths()[sequence]
    batches = RankBatches(
        dataset, 256, True, 2, rank=0, world_size=1, seed=0, pad_id=0, pairs=True,
        reference=np.arange(80, dtype=np.float64).reshape(40, 2),
    )  # fmt: skip
    batch = next(iter(batches))
    assert batch["reference_logps"][:, 0].tolist() == (2 * batch["pair_ids"]).tolist()


def test_preference_objectives_need_preference_data(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.sources is empty"):
        compose_config([*TINY_RUN, "objective=dpo"])
    path = write_jsonl(tmp_path / "p.jsonl", preference_records(4))
    with pytest.raises(ConfigError, match=r"loss\.average"):
        compose_config(["objective=simpo", f"data.path={path}", "loss.average=example"])


def test_the_dpo_demo_recipe_reads_every_pair_and_counts_what_it_cuts(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    cfg = compose_config(
        [*TINY_RUN, "objective=dpo", "data=dpo_demo", "data.inspect=1",
         f"run.output_dir={out}", f"run.cache_dir={cache}"]
    )  # fmt: skip
    assert cfg.data.sources[0].path == str(SHARED_DATA / "dpo_en_demo.json")
    prepared = prepare_run(cfg)
    stats = prepared.stats["sources"]["dpo_demo"]
    assert stats["records"] == 300
    # Five pairs of the shared file are exact copies of earlier ones.
    assert stats["removed"] == {"duplicate": 5}
    assert stats["kept"] == 295 and stats["held_out"] == 30
    skipped = sum(stats["skipped"].values())
    pairs = prepared.stats["pairs"] + prepared.stats["eval_examples"] // 2
    assert pairs == 295 - skipped and stats["truncated"] > 0
    assert [item["where"].rsplit(" ", 1)[1] for item in prepared.inspected] == [
        "(chosen)",
        "(rejected)",
    ]
