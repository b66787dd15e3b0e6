"""The built-in instruction set: small tasks with exact answers, generated from a seed.

It lets the default run train with no download. Conversations are single-turn or chain
two or three tasks in one multi-turn chat; some carry a system prompt.
"""

from __future__ import annotations

import random

_WORDS = (
    "apple river stone cloud tiger maple orbit pixel candle harbor violet ember canyon "
    "falcon meadow copper lantern willow quartz saddle thunder garden mirror rocket"
).split()

_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a precise assistant. Answer briefly.",
)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    return rng.choice(("Reverse the word {}.", "Spell {} backwards.")).format(word), word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(_WORDS, 2))
    return f"Write in capital letters: {words}", words.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return rng.choice(("What is {} + {}?", "Add {} and {}.")).format(a, b), str(a + b)


def _sort(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(100), rng.randint(3, 6))
    shown = ", ".join(map(str, numbers))
    return f"Sort these numbers from smallest to largest: {shown}", ", ".join(
        map(str, sorted(numbers))
    )


def _count(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    letter = rng.choice(word)
    return f"How many times does the letter {letter} appear in {word}?", str(word.count(letter))


def _first_letters(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, 4)
    return "Give the first letter of each word: " + " ".join(words), "".join(w[0] for w in words)


TASKS = (_reverse, _uppercase, _add, _sort, _count, _first_letters)


def demo_conversations(num: int, seed: int) -> list[dict]:
    """`num` records in the `messages` format, identical for the same seed."""
    rng = random.Random(seed)
    records = []
    for _ in range(num):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        for _turn in range(rng.choice((1, 1, 2, 3))):
            prompt, answer = rng.choice(TASKS)(rng)
            messages.append({"role": "user", "content": prompt})
            messages.append({"role": "assistant", "content": answer})
        records.append({"messages": messages})
    return records
