"""Splits, items and training chats: deterministic, disjoint splits, only the chosen
families trained on, and a clear error when a family cannot supply what is asked."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from framework.config.schema import DEFAULT_HELD_OUT
from framework.suite import build
from framework.suite.build import (
    SPLITS,
    SYSTEM_PROMPTS,
    Item,
    check_family_names,
    eval_items,
    family_items,
    split_of,
    tagged_training_chats,
    training_chats,
)
from framework.suite.checkers import normalized_equal
from framework.suite.families import FAMILIES, Family
from tests.helpers import ROOT, matches_templates

TRAINED = [name for name in FAMILIES if name not in DEFAULT_HELD_OUT]


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _user_turns(prompt: list[dict[str, str]]) -> tuple[str, ...]:
    return tuple(m["content"] for m in prompt if m["role"] == "user")


def _tasks(messages: list[dict[str, str]], names: tuple[str, ...]) -> list[list[dict]]:
    """The chat cut into its tasks (each task's turns up to and including its reply)."""
    turns = {name: len(_user_turns(FAMILIES[name].generate(random.Random(0))[0])) for name in names}
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    tasks = []
    for name in names:
        end = 2 * turns[name]  # user turns, each followed by an assistant turn
        tasks.append(rest[:end])
        rest = rest[end:]
    assert not rest
    return tasks


def test_split_of_is_stable_and_roughly_ten_ten_eighty():
    assert split_of([_user("What is 2 + 2?")]) == split_of([_user("What is 2 + 2?")])
    rng = random.Random(0)
    counts = Counter(split_of(FAMILIES["add"].generate(rng)[0]) for _ in range(4000))
    assert 0.08 < counts["test"] / 4000 < 0.12
    assert 0.08 < counts["validation"] / 4000 < 0.12


def test_split_of_hashes_user_turns_only_and_all_of_them():
    rng = random.Random(0)
    changed = 0
    for _ in range(100):
        prompt, _ = FAMILIES["recall"].generate(rng)
        with_system = [{"role": "system", "content": "Be brief."}, *prompt]
        other_ack = [prompt[0], {"role": "assistant", "content": "Sure thing."}, prompt[2]]
        assert split_of(with_system) == split_of(prompt) == split_of(other_ack)
        other_first = [_user(prompt[0]["content"] + "!"), *prompt[1:]]
        changed += split_of(other_first) != split_of(prompt)
    assert changed > 5  # the first user turn counts too


def test_family_items_are_deterministic_and_depend_on_the_seed():
    first = family_items("add", "test", 20, seed=1)
    assert first == family_items("add", "test", 20, seed=1)
    assert first != family_items("add", "test", 20, seed=2)
    assert all(isinstance(item, Item) and item.family == "add" for item in first)


def test_family_items_prefix_property():
    for name in ("recall", "json_field", "parity"):
        longer = family_items(name, "validation", 25, seed=3)
        assert family_items(name, "validation", 9, seed=3) == longer[:9]
        assert family_items(name, "validation", 0, seed=3) == []


@pytest.mark.parametrize("name", list(FAMILIES))
def test_splits_are_disjoint_and_agree_with_split_of(name):
    prompts = {}
    for split, count in zip(SPLITS, (200, 30, 30), strict=True):
        items = family_items(name, split, count, seed=0)
        turns = [_user_turns(item.prompt) for item in items]
        assert len(set(turns)) == count
        assert all(split_of(item.prompt) == split for item in items)
        prompts[split] = set(turns)
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]


def test_family_items_raise_when_the_split_cannot_supply_the_count(monkeypatch):
    texts = [f"Say {word}." for word in ("one", "two", "three", "four", "five")]
    tiny = Family(
        "tiny",
        "say a word",
        lambda rng: ([_user(rng.choice(texts))], "ok"),
        normalized_equal,
        ("Say {word}.",),
    )
    monkeypatch.setitem(build.FAMILIES, "tiny", tiny)
    found = sum(split_of([_user(text)]) == "train" for text in texts)
    assert len(family_items("tiny", "train", found, seed=0)) == found
    with pytest.raises(ValueError, match=rf"'tiny'.* only {found} distinct train items of 6"):
        family_items("tiny", "train", 6, seed=0)


def test_unknown_names_and_splits_are_rejected():
    with pytest.raises(ValueError, match=r"^families: unknown task family \['nope'\]; known: "):
        check_family_names(["add", "nope"], "families")
    with pytest.raises(ValueError, match=r"^suite.held_out: unknown task families \['a', 'b'\]"):
        check_family_names(["a", "b"], "suite.held_out")
    check_family_names(list(FAMILIES), "families")
    with pytest.raises(ValueError, match="nope"):
        family_items("nope", "test", 1, seed=0)
    with pytest.raises(ValueError, match="split"):
        family_items("add", "dev", 1, seed=0)
    with pytest.raises(ValueError, match="nope"):
        eval_items(["add", "nope"], "test", 1, seed=0)
    with pytest.raises(ValueError, match="nope"):
        training_chats(["nope"], 1, seed=0)
    with pytest.raises(ValueError, match="families"):
        training_chats([], 1, seed=0)


def test_eval_items_are_family_items_of_each_family_in_order():
    names = ["recall", "add", "uppercase"]
    items = eval_items(names, "validation", 4, seed=5)
    assert [item.family for item in items] == [n for n in names for _ in range(4)]
    expected = [i for n in names for i in family_items(n, "validation", 4, seed=5)]
    assert items == expected


def test_item_record_appends_the_reference_without_sharing_dicts():
    item = family_items("recall", "test", 1, seed=0)[0]
    record = item.record()
    assert record["messages"][:-1] == item.prompt
    assert record["messages"][-1] == {"role": "assistant", "content": item.reference}
    record["messages"][0]["content"] = "changed"
    assert item.prompt[0]["content"] != "changed"


def test_training_chats_are_deterministic_and_depend_on_the_seed():
    chats = training_chats(TRAINED, 50, seed=1)
    assert chats == training_chats(TRAINED, 50, seed=1)
    assert chats != training_chats(TRAINED, 50, seed=2)
    assert chats[:20] == training_chats(TRAINED, 20, seed=1)


def test_training_chats_use_only_the_given_families_and_train_prompts():
    tagged = tagged_training_chats(TRAINED, 600, seed=0)
    assert [record for record, _ in tagged] == training_chats(TRAINED, 600, seed=0)
    used = Counter()
    for record, names in tagged:
        assert set(names) <= set(TRAINED)
        used.update(names)
        for task, name in zip(_tasks(record["messages"], names), names, strict=True):
            assert [m["role"] for m in task][-2:] == ["user", "assistant"]
            prompt, reply = task[:-1], task[-1]["content"]
            assert split_of(prompt) == "train"
            assert FAMILIES[name].check(reply, reply)
            # Independent of the tags: the user turns read as that family's templates and
            # as no held-out family's.
            for text in _user_turns(prompt):
                assert matches_templates(text, name), (name, text)
                assert not any(matches_templates(text, held) for held in DEFAULT_HELD_OUT)
    assert set(used) == set(TRAINED)  # drawn uniformly: every family shows up
    assert min(used.values()) > 0.4 * max(used.values())


def test_training_chats_of_one_family_answer_only_its_tasks():
    for record in training_chats(["parity"], 100, seed=0, multi_turn=0.5):
        replies = {m["content"] for m in record["messages"] if m["role"] == "assistant"}
        assert replies <= {"even", "odd"}


def test_training_chats_mix_multi_turn_and_system_prompts():
    tagged = tagged_training_chats(TRAINED, 1000, seed=4, multi_turn=0.3)
    tasks = Counter(len(names) for _, names in tagged)
    assert set(tasks) == {1, 2, 3}
    assert 0.25 < (tasks[2] + tasks[3]) / 1000 < 0.35
    firsts = [record["messages"][0] for record, _ in tagged]
    systems = [first["content"] for first in firsts if first["role"] == "system"]
    assert 0.2 < len(systems) / 1000 < 0.3
    assert set(systems) <= set(SYSTEM_PROMPTS)
    for record, _ in tagged:
        roles = [m["role"] for m in record["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
    single = tagged_training_chats(TRAINED, 200, seed=4, multi_turn=0.0)
    assert all(len(names) == 1 for _, names in single)


def test_training_chats_reject_a_bad_multi_turn_fraction():
    with pytest.raises(ValueError, match="multi_turn"):
        training_chats(TRAINED, 1, seed=0, multi_turn=1.5)


_DIGEST = """
import hashlib, json
from framework.suite.build import eval_items, training_chats
from framework.suite.families import FAMILIES
items = [i.record() for i in eval_items(list(FAMILIES), "test", 5, seed=9)]
chats = training_chats(list(FAMILIES), 200, seed=9)
print(hashlib.sha256(json.dumps([items, chats]).encode()).hexdigest())
"""


def test_generation_is_identical_across_processes_and_hash_seeds():
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _DIGEST], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1
