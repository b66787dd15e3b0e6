"""Splits, evaluation items and training chats of the suite.

A prompt's split is a stable hash of its user turns, so a prompt lands in the same split
whatever seed, count or family list drew it: nothing scored in validation or test is ever
trained on. Everything here is deterministic for its arguments.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from framework.config.schema import ConfigError, SuiteConfig
from framework.suite.families import FAMILIES, Message

SPLITS = ("train", "validation", "test")
# Percent of the hash space: [0, 10) test, [10, 20) validation, the rest train.
_TEST_PERCENT, _VALIDATION_PERCENT = 10, 10
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a precise assistant. Answer briefly.",
    "Answer with the result only.",
)
_SYSTEM_FRACTION = 0.25
# Draws allowed per training task to land in the train split (~80% of draws do).
_TRAIN_DRAWS = 1000


@dataclass(frozen=True)
class Item:
    """One scored task: the chat given to the model and the reference of its last turn."""

    family: str
    prompt: list[Message]
    reference: str

    def record(self) -> dict:
        """{"messages": prompt + the reference as the assistant reply} (fresh dicts)."""
        reply = {"role": "assistant", "content": self.reference}
        return {"messages": [dict(message) for message in self.prompt] + [reply]}


def user_text(prompt: list[Message]) -> str:
    return "\n".join(m["content"] for m in prompt if m["role"] == "user")


def split_of(prompt: list[Message]) -> str:
    """The prompt's split: test (~10%), validation (~10%) or train, from a SHA-256 of its
    user turns (system and assistant turns ignored), the same in every process (unlike
    hash())."""
    digest = hashlib.sha256(user_text(prompt).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < _TEST_PERCENT:
        return "test"
    return "validation" if bucket < _TEST_PERCENT + _VALIDATION_PERCENT else "train"


def check_family_names(names: Sequence[str], key: str) -> None:
    """Raise ValueError naming `key`, the unknown names and the known ones, if any of
    `names` is not a family."""
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        noun = "family" if len(unknown) == 1 else "families"
        raise ValueError(f"{key}: unknown task {noun} {unknown}; known: {list(FAMILIES)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def family_items(family: str, split: str, count: int, seed: int) -> list[Item]:
    """`count` items of `family` whose prompts are distinct (by user turns) and all in
    `split`, drawn in sequence from random.Random(f"{seed}/{family}/{split}"): the same
    for the same arguments, and the first k of count=n are count=k. Raises ValueError
    (family, split, how many found) when 200*count + 1000 draws do not supply them."""
    check_family_names([family], "family")
    _check_split(split)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    generate = FAMILIES[family].generate
    rng = random.Random(f"{seed}/{family}/{split}")
    items: list[Item] = []
    seen: set[str] = set()
    draws_left = 200 * count + 1000
    while len(items) < count:
        if draws_left == 0:
            raise ValueError(
                f"family {family!r} supplied only {len(items)} distinct {split} items of {count}"
            )
        draws_left -= 1
        prompt, reference = generate(rng)
        key = user_text(prompt)
        if key not in seen and split_of(prompt) == split:
            seen.add(key)
            items.append(Item(family, prompt, reference))
    return items


def eval_items(families: Sequence[str], split: str, per_family: int, seed: int) -> list[Item]:
    """`per_family` items of each family, family by family in the given order
    (`family_items` of each, so the same items whatever the other families)."""
    check_family_names(families, "families")
    return [item for name in families for item in family_items(name, split, per_family, seed)]


def _train_item(family: str, rng: random.Random) -> Item:
    """One item of `family` whose prompt is in the train split."""
    for _ in range(_TRAIN_DRAWS):
        prompt, reference = FAMILIES[family].generate(rng)
        if split_of(prompt) == "train":
            return Item(family, prompt, reference)
    raise ValueError(f"family {family!r} drew no train prompt in {_TRAIN_DRAWS} draws")


def tagged_training_chats(
    families: Sequence[str], count: int, seed: int, multi_turn: float = 0.3
) -> list[tuple[dict, tuple[str, ...]]]:
    """`training_chats` with, for each record, the families of its tasks in order."""
    check_family_names(families, "families")
    if not families:
        raise ValueError("families: no task family to train on")
    if not 0.0 <= multi_turn <= 1.0:
        raise ValueError(f"multi_turn must be in [0, 1], got {multi_turn}")
    rng = random.Random(f"{seed}/training_chats")
    chats = []
    for _ in range(count):
        messages: list[Message] = []
        if rng.random() < _SYSTEM_FRACTION:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        tasks = rng.choice((2, 3)) if rng.random() < multi_turn else 1
        names = tuple(rng.choice(families) for _ in range(tasks))
        for name in names:
            messages += _train_item(name, rng).record()["messages"]
        chats.append(({"messages": messages}, names))
    return chats


def training_chats(
    families: Sequence[str], count: int, seed: int, multi_turn: float = 0.3
) -> list[dict]:
    """`count` records {"messages": [...]} from `families` only, each scored turn's prompt
    in the train split. A fraction `multi_turn` chain 2-3 tasks (every turn of each task,
    replies included, one after another); ~25% open with a system prompt from
    SYSTEM_PROMPTS. Families are drawn uniformly; deterministic for the arguments."""
    return [record for record, _ in tagged_training_chats(families, count, seed, multi_turn)]


# ------------------------------------------------------------------------------ selection


def check_suite(suite: SuiteConfig, key: str) -> None:
    """Raise ConfigError naming the suite key that cannot work."""
    for name in ("held_out", "train_families"):
        try:
            check_family_names(getattr(suite, name), f"{key}.{name}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    both = sorted(set(suite.held_out) & set(suite.train_families))
    if both:
        raise ConfigError(
            f"{key}.train_families and {key}.held_out both name {both}: a held-out family "
            "is never trained on; remove it from one of them"
        )
    if not trained_families(suite):
        raise ConfigError(f"{key}.held_out holds every family: nothing is left to train on")
    if suite.train_examples <= 0:
        raise ConfigError(f"{key}.train_examples={suite.train_examples} must be > 0")
    if not 0.0 <= suite.multi_turn <= 1.0:
        raise ConfigError(f"{key}.multi_turn={suite.multi_turn} must be in [0, 1]")


def trained_families(suite: SuiteConfig) -> list[str]:
    """The families training chats are drawn from, in the suite's order."""
    chosen = suite.train_families or [f for f in FAMILIES if f not in suite.held_out]
    return [f for f in FAMILIES if f in chosen and f not in suite.held_out]
