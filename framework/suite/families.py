"""Task families: generators of short instructions with exact answers, and their checkers.

Every family draws its instance from a `random.Random` only (never from set order or the
clock), so the same generator state always gives the same chat. Prompts stay short and
answers are a few tokens in one regular format, since the model trained on them is tiny.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from framework.suite import knowledge
from framework.suite.checkers import (
    exact_equal,
    format_equal,
    int_list_equal,
    normalized_equal,
    word_list_equal,
)
from framework.suite.wording import (
    ACKS,
    CATEGORIES,
    MONTHS,
    NAMES,
    ORDINALS,
    TEMPLATES,
    VOWELS,
    WORDS,
)

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Family:
    """One task: `generate` draws (chat up to the scored user turn, reference reply);
    `check(prediction, reference)` accepts the reference and rejects wrong answers, and
    never raises. `templates` are the paraphrased instruction templates it draws from."""

    name: str
    skill: str
    generate: Callable[[random.Random], tuple[list[Message], str]]
    check: Callable[[str, str], bool]
    templates: tuple[str, ...] = ()


# -------------------------------------------------------------------- the registry

Fields = dict[str, object]
FAMILIES: dict[str, Family] = {}  # filled below, in definition order


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def _family(
    name: str, skill: str, templates: tuple[str, ...], check: Callable[[str, str], bool]
) -> Callable[[Callable], Callable]:
    """Register a family whose generator (the decorated function) builds the chat itself."""

    def register(generate: Callable[[random.Random], tuple[list[Message], str]]) -> Callable:
        FAMILIES[name] = Family(name, skill, generate, check, templates)
        return generate

    return register


def _single(
    name: str, skill: str, check: Callable[[str, str], bool] = normalized_equal
) -> Callable[[Callable], Callable]:
    """Register a one-turn family: one of TEMPLATES[name], filled with the fields the
    decorated `draw(rng)` returns along with the answer."""
    templates = TEMPLATES[name]

    def register(draw: Callable[[random.Random], tuple[Fields, str]]) -> Callable:
        def generate(rng: random.Random) -> tuple[list[Message], str]:
            template = rng.choice(templates)
            fields, answer = draw(rng)
            return [_user(template.format(**fields))], answer

        _family(name, skill, templates, check)(generate)
        return draw

    return register


def _maybe_quoted(rng: random.Random, word: str) -> str:
    # Quoted and bare spellings double the prompts of one-word families.
    return rng.choice((word, f'"{word}"'))


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _listed(values: Sequence[object]) -> str:
    return ", ".join(map(str, values))


# ------------------------------------------------------------------------ text families


def _one_word(answer: Callable[[str], str]) -> Callable[[random.Random], tuple[Fields, str]]:
    """A draw of one word, shown bare or quoted, answered by `answer(word)`."""

    def draw(rng: random.Random) -> tuple[Fields, str]:
        word = rng.choice(WORDS)
        return {"word": _maybe_quoted(rng, word)}, answer(word)

    return draw


_single("reverse_word", "reverse a word")(_one_word(lambda word: word[::-1]))


@_single("uppercase", "write text in capital letters", exact_equal)
def _uppercase(rng: random.Random) -> tuple[Fields, str]:
    text = " ".join(_words(rng, 2, 3))
    return {"text": text}, text.upper()


@_single("lowercase", "write text in small letters", exact_equal)
def _lowercase(rng: random.Random) -> tuple[Fields, str]:
    words = _words(rng, 2, 3)
    shown = " ".join(rng.choice((str.upper, str.title))(word) for word in words)
    return {"text": shown}, " ".join(words)


@_single("title_case", "capitalize each word", exact_equal)
def _title_case(rng: random.Random) -> tuple[Fields, str]:
    text = " ".join(_words(rng, 2, 3))
    return {"text": text}, text.title()


# ---------------------------------------------------------------------- number families


@_single("add", "add two numbers")
def _add(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"a": a, "b": b}, str(a + b)


@_single("subtract", "subtract two numbers")
def _subtract(rng: random.Random) -> tuple[Fields, str]:
    a = rng.randint(0, 99)
    b = rng.randint(0, a)  # never negative: a variant of addition, not of signed numbers
    return {"a": a, "b": b}, str(a - b)


@_single("multiply", "multiply two small numbers")
def _multiply(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return {"a": a, "b": b}, str(a * b)


@_single("larger_number", "pick the larger of two numbers")
def _larger_number(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.sample(range(100), 2)
    return {"a": a, "b": b}, str(max(a, b))


@_single("parity", "tell whether a number is even or odd")
def _parity(rng: random.Random) -> tuple[Fields, str]:
    n = rng.randint(0, 999)
    return {"n": n}, "odd" if n % 2 else "even"


def _number_list(answer: Callable[[list[int]], str]) -> Callable[[random.Random], tuple]:
    """A draw of 3-6 distinct numbers under 100, answered by `answer(numbers)`."""

    def draw(rng: random.Random) -> tuple[Fields, str]:
        numbers = rng.sample(range(100), rng.randint(3, 6))
        return {"numbers": _listed(numbers)}, answer(numbers)

    return draw


_single("sort_ascending", "sort numbers from smallest to largest", int_list_equal)(
    _number_list(lambda numbers: _listed(sorted(numbers)))
)
_single("sort_descending", "sort numbers from largest to smallest", int_list_equal)(
    _number_list(lambda numbers: _listed(sorted(numbers, reverse=True)))
)
_single("smallest_number", "find the smallest number in a list")(
    _number_list(lambda numbers: str(min(numbers)))
)


# ------------------------------------------------------------- letter and word families


@_single("count_letter", "count a letter in a word")
def _count_letter(rng: random.Random) -> tuple[Fields, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(word)  # by occurrence, so repeated letters (counts > 1) are common
    return {"word": word, "letter": letter}, str(word.count(letter))


@_single("count_words", "count the words of a text")
def _count_words(rng: random.Random) -> tuple[Fields, str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
    return {"text": " ".join(words)}, str(len(words))


@_single("first_letters", "join the first letters of words")
def _first_letters(rng: random.Random) -> tuple[Fields, str]:
    words = _words(rng, 3, 5)
    return {"text": " ".join(words)}, "".join(word[0] for word in words)


@_single("last_letters", "join the last letters of words")
def _last_letters(rng: random.Random) -> tuple[Fields, str]:
    words = _words(rng, 3, 5)
    return {"text": " ".join(words)}, "".join(word[-1] for word in words)


@_single("nth_word", "find the word at a position")
def _nth_word(rng: random.Random) -> tuple[Fields, str]:
    words = _words(rng, 4, 7)
    index = rng.randrange(len(words))
    fields = {"text": " ".join(words), "ordinal": ORDINALS[index], "n": index + 1}
    return fields, words[index]


# ------------------------------------------------------------ structured data families

_JSON_VALUES: dict[str, Callable[[random.Random], object]] = {
    "name": lambda rng: rng.choice(NAMES),
    "color": lambda rng: rng.choice(CATEGORIES["color"]),
    "animal": lambda rng: rng.choice(CATEGORIES["animal"]),
    "fruit": lambda rng: rng.choice(CATEGORIES["fruit"]),
    "age": lambda rng: rng.randint(1, 90),
    "year": lambda rng: rng.randint(1990, 2030),
    "score": lambda rng: rng.randint(0, 100),
}


@_single("json_field", "read a field of a JSON object")
def _json_field(rng: random.Random) -> tuple[Fields, str]:
    keys = rng.sample(list(_JSON_VALUES), rng.randint(2, 3))
    record = {key: _JSON_VALUES[key](rng) for key in keys}
    key = rng.choice(keys)
    return {"key": key, "obj": json.dumps(record)}, str(record[key])


_FIRST_DAY = datetime.date(1990, 1, 1).toordinal()
_LAST_DAY = datetime.date(2030, 12, 31).toordinal()


@_single("date_format", "rewrite an ISO date with the month name")
def _date_format(rng: random.Random) -> tuple[Fields, str]:
    date = datetime.date.fromordinal(rng.randint(_FIRST_DAY, _LAST_DAY))
    # Month names from a fixed list: strftime("%B") follows the locale.
    return {"iso": date.isoformat()}, f"{MONTHS[date.month - 1]} {date.day}, {date.year}"


@_single("odd_one_out", "find the word from another category")
def _odd_one_out(rng: random.Random) -> tuple[Fields, str]:
    main, other = rng.sample(sorted(CATEGORIES), 2)
    odd = rng.choice(CATEGORIES[other])
    words = [*rng.sample(CATEGORIES[main], 3), odd]
    rng.shuffle(words)
    return {"words": _listed(words)}, odd


_single("multi_step", "reverse a word, then capitalize it", exact_equal)(
    _one_word(lambda word: word[::-1].upper())
)


_FORMATTEMPLATES = (
    '{question} Answer in JSON as {{"answer": ...}}.',
    'Reply only with JSON like {{"answer": ...}}. {question}',
    "{question} Put the answer in square brackets.",
    "Answer inside square brackets, like [x]. {question}",
)


def _simple_question(rng: random.Random) -> tuple[str, int | str]:
    """A question of a trained skill, with its answer as a JSON-ready value."""
    word, a, b = rng.choice(WORDS), rng.randint(0, 20), rng.randint(0, 20)
    return rng.choice(
        (
            (f"What is {a} + {b}?", a + b),
            (f"How many letters are in the word {word}?", len(word)),
            (f"What is the first letter of {word}?", word[0]),
            (f"Is {a} even or odd?", "odd" if a % 2 else "even"),
        )
    )


@_family("answer_format", "answer in a requested format", _FORMATTEMPLATES, format_equal)
def _answer_format(rng: random.Random) -> tuple[list[Message], str]:
    template = rng.choice(_FORMATTEMPLATES)
    question, value = _simple_question(rng)
    # The template names the format: {"answer": value} as JSON, or [value].
    reference = json.dumps({"answer": value}) if "JSON" in template else f"[{value}]"
    return [_user(template.format(question=question))], reference


# ---------------------------------------------------------- more letter and word families


@_single("remove_vowels", "remove the vowels")
def _remove_vowels(rng: random.Random) -> tuple[Fields, str]:
    text = " ".join(_words(rng, 1, 2))
    return {"text": text}, "".join(c for c in text if c not in VOWELS)


@_single("repeat_word", "repeat a word n times")
def _repeat_word(rng: random.Random) -> tuple[Fields, str]:
    word, times = rng.choice(WORDS), rng.randint(2, 5)
    return {"word": word, "n": times}, " ".join([word] * times)


_single("spell_out", "spell a word with dashes")(_one_word("-".join))


@_single("contains_letter", "tell whether a word contains a letter")
def _contains_letter(rng: random.Random) -> tuple[Fields, str]:
    word = rng.choice(WORDS)
    inside = rng.random() < 0.5  # balanced yes / no
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if (c in word) == inside]
    return {"word": word, "letter": rng.choice(letters)}, "yes" if inside else "no"


@_single("alphabetical", "sort words alphabetically", word_list_equal)
def _alphabetical(rng: random.Random) -> tuple[Fields, str]:
    words = _words(rng, 3, 5)
    return {"words": _listed(words)}, _listed(sorted(words))


# ------------------------------------------------------------------ multi-turn: recall

_RECALL_STORE = (
    "Remember the {kind} {value}.",
    "Please memorize this {kind}: {value}.",
    "Keep this {kind} in mind: {value}.",
)
_RECALL_ASK = (
    "What {kind} did I ask you to remember?",
    "Tell me the {kind} I gave you.",
    "Repeat the {kind} from before.",
)
_RECALL_ADD = ("What is my number plus {k}?", "Add {k} to the number I gave you.")


@_family(
    "recall",
    "remember a value across turns",
    _RECALL_STORE + _RECALL_ASK + _RECALL_ADD,
    normalized_equal,
)
def _recall(rng: random.Random) -> tuple[list[Message], str]:
    """Two turns: a word or number to remember (acknowledged), then a request for it,
    possibly transformed (number plus k)."""
    kind = rng.choice(("word", "number"))
    value = rng.choice(WORDS) if kind == "word" else str(rng.randint(0, 99))
    store = rng.choice(_RECALL_STORE).format(kind=kind, value=value)
    if kind == "number" and rng.random() < 0.5:
        k = rng.randint(1, 9)
        ask, answer = rng.choice(_RECALL_ADD).format(k=k), str(int(value) + k)
    else:
        ask, answer = rng.choice(_RECALL_ASK).format(kind=kind), value
    chat = [_user(store), {"role": "assistant", "content": rng.choice(ACKS)}, _user(ask)]
    return chat, answer


# ------------------------------------------------------ knowledge families (held out)

for _name, (_skill, _draw) in knowledge.DRAWS.items():
    _family(_name, _skill, knowledge.TEMPLATES[_name], normalized_equal)(
        knowledge.terse_question(_name, _draw)
    )
