"""IFEval-style verifiable constraints attached to our own instructions, for online RL.

Each kind is keyed by the IFEval instruction id whose official checker (lm-eval's
instructions.py, run by eval/verifiers.py's "ifeval" verifier) judges it. A maker draws
the constraint's parameters and says it in our own words: these prompts are trained on
and IFEval is evaluated on, so no sentence copies IFEval's templates (tests hold that no
sentence shares a 13-word n-gram with any IFEval prompt). The kwargs are exactly those the
checker's build_description takes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import combinations

Maker = Callable[[random.Random], tuple[str, dict]]

LOWERCASE = "change_case:english_lowercase"
CAPITAL = "change_case:english_capital"
NO_COMMA = "punctuation:no_comma"
TITLE = "detectable_format:title"
BULLETS = "detectable_format:number_bullet_lists"
HIGHLIGHTS = "detectable_format:number_highlighted_sections"
JSON = "detectable_format:json_format"
WORDS = "length_constraints:number_words"
SENTENCES = "length_constraints:number_sentences"
PARAGRAPHS = "length_constraints:number_paragraphs"
QUOTATION = "startend:quotation"
END = "startend:end_checker"
POSTSCRIPT = "detectable_content:postscript"
PLACEHOLDERS = "detectable_content:number_placeholders"
KEYWORDS = "keywords:existence"
LETTERS = "keywords:letter_frequency"

# Plain words, so that the checker's regular-expression search finds them as written.
_KEYWORDS = (
    "river", "lantern", "harvest", "compass", "garden", "signal", "mirror", "journey",
    "balance", "window", "pattern", "bridge", "anchor", "meadow", "circuit", "orbit",
    "canvas", "ladder", "thunder", "puzzle", "marble", "echo", "forest", "copper",
)  # fmt: skip
_END_PHRASES = (
    "That is all.",
    "Hope this helps!",
    "Thanks for reading.",
    "End of answer.",
    "Let me know what you think.",
)
# "at least" with common letters, "less than" with rare ones: both can be met.
_COMMON_LETTERS, _RARE_LETTERS = "eatonrsi", "qzxjkv"


def _pick(rng: random.Random, *sentences: str) -> str:
    return rng.choice(sentences)


def _lowercase(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        "Write the reply in English using lowercase letters only, with no capitals anywhere.",
        "Keep every word of your English reply in lowercase; do not use capital letters.",
    ), {}


def _capital(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        "Write the reply in English using capital letters only.",
        "Reply in English, typing every letter in upper case.",
    ), {}


def _no_comma(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        "Do not use a single comma anywhere in your reply.",
        "Avoid commas completely: the reply must contain none.",
    ), {}


def _title(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        "Start with a title enclosed in double angle brackets, like <<My Title>>.",
        "Give the reply a title and write it between << and >>.",
    ), {}


def _bullets(rng: random.Random) -> tuple[str, dict]:
    n = rng.randint(2, 5)
    return _pick(
        rng,
        f'Format the reply as exactly {n} bullet points, each on its own line starting with "* ".',
        f"Answer in exactly {n} markdown bullet points (lines that begin with an asterisk "
        "and a space) and no other list items.",
    ), {"num_bullets": n}


def _highlights(rng: random.Random) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    return _pick(
        rng,
        f"Emphasise at least {n} parts of the reply by wrapping each one in single "
        "asterisks, like *this part*.",
        f"Use markdown italics (*like this*) to mark {n} or more passages of the reply.",
    ), {"num_highlights": n}


def _json(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        "Format the entire reply as valid JSON; a ```json code fence around it is allowed.",
        "The whole reply must be one valid JSON value and nothing else.",
    ), {}


def _words(rng: random.Random) -> tuple[str, dict]:
    if rng.random() < 0.5:
        n = rng.choice((60, 80, 100, 120, 150, 200))
        sentence = _pick(
            rng, f"Keep the reply shorter than {n} words.", f"Use fewer than {n} words."
        )
        return sentence, {"num_words": n, "relation": "less than"}
    n = rng.choice((20, 40, 60, 80, 100))
    sentence = _pick(rng, f"Write no fewer than {n} words.", f"Make the reply {n} words or longer.")
    return sentence, {"num_words": n, "relation": "at least"}


def _sentences(rng: random.Random) -> tuple[str, dict]:
    if rng.random() < 0.5:
        n = rng.randint(3, 8)
        sentence = _pick(rng, f"Use fewer than {n} sentences.", f"Say it in under {n} sentences.")
        return sentence, {"num_sentences": n, "relation": "less than"}
    n = rng.randint(2, 6)
    sentence = _pick(rng, f"Write {n} or more full sentences.", f"Use no fewer than {n} sentences.")
    return sentence, {"num_sentences": n, "relation": "at least"}


def _paragraphs(rng: random.Random) -> tuple[str, dict]:
    n = rng.randint(2, 4)
    return _pick(
        rng,
        f"Split the reply into exactly {n} paragraphs, with a line holding only *** between "
        "one paragraph and the next.",
        f"Write {n} paragraphs, no more and no fewer, and separate them with a *** line.",
    ), {"num_paragraphs": n}


def _quotation(rng: random.Random) -> tuple[str, dict]:
    return _pick(
        rng,
        'Enclose the entire reply in double quotes, so that it begins and ends with ".',
        "Put the whole reply between a pair of double quotation marks.",
    ), {}


def _end(rng: random.Random) -> tuple[str, dict]:
    phrase = rng.choice(_END_PHRASES)
    return _pick(
        rng,
        f'End your reply with the exact words "{phrase}" and write nothing after them.',
        f'The last words of the reply must be "{phrase}", with nothing following.',
    ), {"end_phrase": phrase}


def _postscript(rng: random.Random) -> tuple[str, dict]:
    marker = rng.choice(("P.S.", "P.P.S"))
    return _pick(
        rng,
        f'After the main reply, add a short note that begins with "{marker}".',
        f'Close with an afterthought on its own line, starting with "{marker}".',
    ), {"postscript_marker": marker}


def _placeholders(rng: random.Random) -> tuple[str, dict]:
    n = rng.randint(1, 3)
    return _pick(
        rng,
        f"Leave at least {n} blanks for the reader to fill in, written in square brackets "
        "such as [date].",
        f"Include {n} or more fill-in fields in square brackets, for example [name].",
    ), {"num_placeholders": n}


def _keywords(rng: random.Random) -> tuple[str, dict]:
    first, second = sorted(rng.sample(_KEYWORDS, 2))
    return _pick(
        rng,
        f'Mention the words "{first}" and "{second}" somewhere in the reply.',
        f'The reply has to use both "{first}" and "{second}".',
    ), {"keywords": [first, second]}


def _letters(rng: random.Random) -> tuple[str, dict]:
    if rng.random() < 0.5:
        letter, n = rng.choice(_COMMON_LETTERS), rng.randint(5, 15)
        sentence = f'The letter "{letter}" must occur at least {n} times in the reply.'
        return sentence, {"letter": letter, "let_frequency": n, "let_relation": "at least"}
    letter, n = rng.choice(_RARE_LETTERS), rng.randint(2, 5)
    sentence = f'Use the letter "{letter}" fewer than {n} times in the whole reply.'
    return sentence, {"letter": letter, "let_frequency": n, "let_relation": "less than"}


MAKERS: dict[str, Maker] = {
    LOWERCASE: _lowercase,
    CAPITAL: _capital,
    NO_COMMA: _no_comma,
    TITLE: _title,
    BULLETS: _bullets,
    HIGHLIGHTS: _highlights,
    JSON: _json,
    WORDS: _words,
    SENTENCES: _sentences,
    PARAGRAPHS: _paragraphs,
    QUOTATION: _quotation,
    END: _end,
    POSTSCRIPT: _postscript,
    PLACEHOLDERS: _placeholders,
    KEYWORDS: _keywords,
    LETTERS: _letters,
}

# Kinds never asked together: any two of one group conflict. A case rule against a phrase
# the reply must copy as written (the end phrase, "P.S.") asks for the impossible; one
# length rule is enough (two can contradict); quotes around the reply leave no first line
# for a title or a bullet and no last words for an end phrase; a postscript "at the end"
# fights the end phrase; a count of sentences can contradict a count of bullets.
CONFLICT_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({LOWERCASE, CAPITAL}),
    frozenset({LOWERCASE, END}),
    frozenset({LOWERCASE, POSTSCRIPT}),
    frozenset({CAPITAL, END}),
    frozenset({WORDS, SENTENCES, PARAGRAPHS}),
    frozenset({QUOTATION, TITLE}),
    frozenset({QUOTATION, END}),
    frozenset({QUOTATION, BULLETS}),
    frozenset({POSTSCRIPT, END}),
    frozenset({SENTENCES, BULLETS}),
)
# A kind that goes with none but the kinds listed: a JSON reply has no room for a title,
# bullets, quotes, a postscript, ...; its keys and strings can still hold keywords (as
# lm-eval's own INSTRUCTION_CONFLICTS has it).
ONLY_WITH: dict[str, frozenset[str]] = {JSON: frozenset({KEYWORDS})}


def _conflict_pairs() -> frozenset[frozenset[str]]:
    pairs = {frozenset(pair) for group in CONFLICT_GROUPS for pair in combinations(group, 2)}
    for kind, allowed in ONLY_WITH.items():
        pairs |= {frozenset((kind, other)) for other in MAKERS if other not in allowed | {kind}}
    return frozenset(pairs)


# Every conflicting pair of kinds, each as a two-member frozenset.
CONFLICTS = _conflict_pairs()
# Random orders tried for `count` compatible kinds before giving up.
_TRIES = 200


def choose_kinds(rng: random.Random, count: int) -> list[str]:
    """`count` distinct kinds, no two in CONFLICTS, in a random order drawn from `rng`.
    Raises ValueError when no such set turns up (count larger than what fits together)."""
    if count < 1:
        raise ValueError(f"count={count}: attach at least one constraint")
    kinds, most = sorted(MAKERS), 0
    for _ in range(_TRIES):
        chosen: list[str] = []
        for kind in rng.sample(kinds, len(kinds)):
            if all(frozenset((kind, other)) not in CONFLICTS for other in chosen):
                chosen.append(kind)
                if len(chosen) == count:
                    return chosen
        most = max(most, len(chosen))
    raise ValueError(
        f"{count} constraints that fit together were not found; ask for {most} or fewer"
    )


def attach_constraints(instruction: str, rng: random.Random, count: int) -> tuple[str, dict]:
    """(the instruction followed by `count` constraint sentences, the spec of the ifeval
    verifier: {"prompt", "instruction_id_list", "kwargs"}, with one kwargs dict per id
    holding only the keys its checker takes). No two constraints conflict; the result
    depends only on the arguments and the state of `rng`."""
    kinds = choose_kinds(rng, count)
    drawn = [MAKERS[kind](rng) for kind in kinds]
    text = f"{instruction.rstrip()}\n\n{' '.join(sentence for sentence, _ in drawn)}"
    spec = {
        "prompt": text,
        "instruction_id_list": kinds,
        "kwargs": [kwargs for _, kwargs in drawn],
    }
    return text, spec
