"""Knowledge families: questions whose answers a pretrained model already knows (from
pretraining, never from the suite's training data), asked for in a terse form. Held out by
default, they measure what instruction tuning transfers to a real model: a base model
answers "The capital of France is Paris, a city known for..." where the instruction asks
for one word, so its exact score is low even when it knows; a tuned one answers "Paris".

Each fact has one answer that the instruction's form admits (no synonyms to guess), so the
default checker (case, quotes and end punctuation ignored) is as strict as elsewhere. The
draws here are registered in families.py with TEMPLATES."""

from __future__ import annotations

import random
from collections.abc import Callable

from framework.suite.wording import MONTHS

Draw = tuple[dict[str, object], str]

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Russia": "Moscow",
    "China": "Beijing",
    "Egypt": "Cairo",
    "England": "London",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Thailand": "Bangkok",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Cuba": "Havana",
    "Canada": "Ottawa",
    "Hungary": "Budapest",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Argentina": "Buenos Aires",
    "South Korea": "Seoul",
    "the Netherlands": "Amsterdam",
}

# Pairs with one opposite each (no "big": small or little?), asked both ways.
_OPPOSITES = (
    ("hot", "cold"),
    ("up", "down"),
    ("yes", "no"),
    ("day", "night"),
    ("black", "white"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
    ("true", "false"),
    ("push", "pull"),
    ("buy", "sell"),
    ("always", "never"),
    ("top", "bottom"),
    ("boy", "girl"),
    ("king", "queen"),
    ("summer", "winter"),
    ("wet", "dry"),
    ("full", "empty"),
    ("early", "late"),
    ("win", "lose"),
    ("inside", "outside"),
    ("question", "answer"),
)
OPPOSITES = dict(_OPPOSITES) | {b: a for a, b in _OPPOSITES}

PLURALS = {
    "mouse": "mice",
    "child": "children",
    "foot": "feet",
    "tooth": "teeth",
    "man": "men",
    "woman": "women",
    "person": "people",
    "goose": "geese",
    "ox": "oxen",
    "knife": "knives",
    "leaf": "leaves",
    "wolf": "wolves",
    "city": "cities",
    "baby": "babies",
    "box": "boxes",
    "bus": "buses",
    "dish": "dishes",
    "cat": "cats",
    "dog": "dogs",
    "book": "books",
    "sheep": "sheep",
    "fish": "fish",
}

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_UNITS = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(n: int) -> str:
    """0-99 in English words, hyphenated as usual (seventy-two)."""
    if n < 10:
        return _UNITS[n]
    if n < 20:
        return _TEENS.split()[n - 10]
    tens, units = divmod(n, 10)
    return _TENS[tens] + (f"-{_UNITS[units]}" if units else "")


def _capital(rng: random.Random) -> Draw:
    country = rng.choice(sorted(CAPITALS))
    return {"country": country}, CAPITALS[country]


def _opposite(rng: random.Random) -> Draw:
    word = rng.choice(sorted(OPPOSITES))
    return {"word": word}, OPPOSITES[word]


def _plural(rng: random.Random) -> Draw:
    noun = rng.choice(sorted(PLURALS))
    return {"noun": noun}, PLURALS[noun]


def _calendar(rng: random.Random) -> Draw:
    names = rng.choice((DAYS, MONTHS))
    index = rng.randrange(len(names))
    unit = "day of the week" if names is DAYS else "month"
    if rng.random() < 0.5:
        return {"unit": unit, "which": "after", "name": names[index]}, names[
            (index + 1) % len(names)
        ]
    return {"unit": unit, "which": "before", "name": names[index]}, names[index - 1]


def _number_from_words(rng: random.Random) -> Draw:
    n = rng.randint(11, 99)
    return {"words": number_in_words(n)}, str(n)


# Each question, framed by an opening and a request for the bare answer (before or after
# it): many prompts per fact, so that validation and test (a hash of the prompt picks the
# split) hold enough distinct items.
QUESTIONS = {
    "capital_city": (
        "What is the capital of {country}?",
        "Name the capital city of {country}.",
        "Which city is the capital of {country}?",
        "What city is {country}'s capital?",
    ),
    "opposite_word": (
        "What is the opposite of {word}?",
        "Give the antonym of {word}.",
        'What word means the opposite of "{word}"?',
        "Name the opposite of the word {word}.",
    ),
    "plural_noun": (
        "What is the plural of {noun}?",
        "Write the plural form of {noun}.",
        'What is the plural of the noun "{noun}"?',
        "Give the plural of {noun}.",
    ),
    "calendar_order": (
        "Which {unit} comes {which} {name}?",
        "Name the {unit} that comes {which} {name}.",
        "What {unit} is just {which} {name}?",
        "Tell me the {unit} right {which} {name}.",
    ),
    "number_from_words": (
        "Write the number {words} in digits.",
        "Convert {words} to digits.",
        "What is {words} written as a number?",
        'How do you write "{words}" with digits?',
    ),
}
_OPENINGS = ("", "Question: ", "Quick question. ", "Please answer this. ")
TERSE = (
    "Answer with the answer only.",
    "Reply with just the answer, nothing else.",
    "Give only the answer.",
    "No explanation, just the answer.",
    "Be as brief as possible: the answer alone.",
    "Respond with the answer and nothing more.",
)


def framed(questions: tuple[str, ...]) -> tuple[str, ...]:
    """Every question with every opening, asking for the bare answer after it or before."""
    asked = [opening + question for question in questions for opening in _OPENINGS]
    return tuple(f"{q} {t}" for q in asked for t in TERSE) + tuple(
        f"{t} {q}" for q in asked for t in TERSE
    )


TEMPLATES = {name: framed(questions) for name, questions in QUESTIONS.items()}


def terse_question(
    name: str, draw: Callable[[random.Random], Draw]
) -> Callable[[random.Random], tuple[list[dict[str, str]], str]]:
    """A generator of one-turn chats: `draw`'s fact asked by one of the family's questions
    after an opening, with the request for the bare answer after it (or, a quarter of the
    time, before): always one of TEMPLATES[name]."""

    def generate(rng: random.Random) -> tuple[list[dict[str, str]], str]:
        fields, answer = draw(rng)
        question = rng.choice(_OPENINGS) + rng.choice(QUESTIONS[name]).format(**fields)
        terse = rng.choice(TERSE)
        text = f"{terse} {question}" if rng.random() < 0.25 else f"{question} {terse}"
        return [{"role": "user", "content": text}], answer

    return generate


# name -> (skill, draw). The order is the suite's.
DRAWS = {
    "capital_city": ("name a country's capital", _capital),
    "opposite_word": ("give a word's opposite", _opposite),
    "plural_noun": ("give a noun's plural", _plural),
    "calendar_order": ("name the day or month before or after another", _calendar),
    "number_from_words": ("write a number given in words as digits", _number_from_words),
}
