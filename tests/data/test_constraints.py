"""IFEval-style constraints: each kind judged by its official checker (a reply written to
follow it gets reward 1, one that breaks it 0), kwargs the checker takes as they are, no
conflicting pair ever drawn, and no sentence copied from IFEval's prompts."""

import json
import random

import pytest

from framework.data.constraints import CONFLICTS, MAKERS, attach_constraints, choose_kinds
from framework.data.curate.decontam import EvalIndex, EvalText
from framework.eval.ifeval import checkers
from framework.eval.verifiers import ifeval_reward
from tests.helpers import SHARED_DATA

SEEDS = range(12)
_TEXT = "the garden was quiet in the early morning and the birds sang over the river"


def _count(kwargs: dict, key: str, relation: str) -> tuple[int, int]:
    """(a count that meets `relation` to kwargs[key], one that does not)."""
    n = kwargs[key]
    return (n, n - 1) if kwargs[relation] == "at least" else (n - 1, n)


def _letters(kwargs: dict) -> tuple[str, str]:
    good, bad = _count(kwargs, "let_frequency", "let_relation")
    return f"{kwargs['letter'] * good} .", f"{kwargs['letter'] * bad} ."


def _sentences(k: int) -> str:
    return " ".join(["This is a sentence."] * k) or "Nothing"


def _paragraphs(k: int) -> str:
    return "\n***\n".join(f"Paragraph number {i}." for i in range(k))


# kind -> kwargs -> (a reply that follows the constraint, one that breaks it)
REPLIES = {
    "change_case:english_lowercase": lambda kw: (_TEXT, _TEXT.capitalize()),
    "change_case:english_capital": lambda kw: (_TEXT.upper(), _TEXT.capitalize()),
    "punctuation:no_comma": lambda kw: ("A plain reply.", "Yes, a comma."),
    "detectable_format:title": lambda kw: ("<<Morning Walk>>\nA walk.", "Morning Walk\nA walk."),
    "detectable_format:number_bullet_lists": lambda kw: tuple(
        "\n".join(f"* point {i}" for i in range(k))
        for k in (kw["num_bullets"], kw["num_bullets"] + 1)
    ),
    "detectable_format:number_highlighted_sections": lambda kw: (
        " ".join(f"*part {i}*" for i in range(kw["num_highlights"])),
        "No emphasis here.",
    ),
    "detectable_format:json_format": lambda kw: ('```json\n{"answer": "yes"}\n```', "answer: yes"),
    "length_constraints:number_words": lambda kw: tuple(
        " ".join(["word"] * k) for k in _count(kw, "num_words", "relation")
    ),
    "length_constraints:number_sentences": lambda kw: tuple(
        _sentences(k) for k in _count(kw, "num_sentences", "relation")
    ),
    "length_constraints:number_paragraphs": lambda kw: tuple(
        _paragraphs(k) for k in (kw["num_paragraphs"], kw["num_paragraphs"] + 1)
    ),
    "startend:quotation": lambda kw: ('"A quoted reply."', "A reply without quotes."),
    "startend:end_checker": lambda kw: (
        f"Some answer. {kw['end_phrase']}",
        f"{kw['end_phrase']} Some answer.",
    ),
    "detectable_content:postscript": lambda kw: (
        f"Main reply.\n{kw['postscript_marker']} A note.",
        "Main reply only.",
    ),
    "detectable_content:number_placeholders": lambda kw: (
        " ".join(f"[field{i}]" for i in range(kw["num_placeholders"])),
        "No blanks to fill.",
    ),
    "keywords:existence": lambda kw: (" and ".join(kw["keywords"]), f"Only {kw['keywords'][0]}."),
    "keywords:letter_frequency": _letters,
}


def test_every_kind_has_replies_and_is_an_official_ifeval_instruction():
    assert sorted(REPLIES) == sorted(MAKERS) and len(MAKERS) >= 12
    assert set(MAKERS) <= set(checkers().instructions_registry.INSTRUCTION_DICT)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_reply_that_follows_gets_1_and_one_that_breaks_gets_0(kind):
    registry = checkers().instructions_registry.INSTRUCTION_DICT
    for seed in SEEDS:
        sentence, kwargs = MAKERS[kind](random.Random(seed))
        checker = registry[kind](kind)
        checker.build_description(**kwargs)  # the checker takes these keys, no others
        assert (checker.get_instruction_args() or {}) == kwargs
        spec = {"prompt": sentence, "instruction_id_list": [kind], "kwargs": [kwargs]}
        follows, breaks = REPLIES[kind](kwargs)
        assert ifeval_reward(follows, spec) == 1.0, (sentence, follows)
        assert ifeval_reward(breaks, spec) == 0.0, (sentence, breaks)


def test_attached_constraints_never_conflict_and_repeat_for_a_seed():
    registry = checkers().instructions_registry
    theirs = registry.conflict_make({k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()})
    for kind in MAKERS:  # every conflict lm-eval knows between our kinds is one of ours
        for other in theirs[kind] & set(MAKERS) - {kind}:
            assert frozenset((kind, other)) in CONFLICTS, (kind, other)
    seen = set()
    for seed in range(300):
        for count in (1, 2, 3, 4):
            text, spec = attach_constraints("Describe a lake.", random.Random(seed), count)
            ids = spec["instruction_id_list"]
            assert len(ids) == len(set(ids)) == len(spec["kwargs"]) == count
            assert not any(frozenset(pair) in CONFLICTS for pair in _pairs(ids))
            assert text.startswith("Describe a lake.\n\n") and spec["prompt"] == text
            assert (text, spec) == attach_constraints(
                "Describe a lake.", random.Random(seed), count
            )
            json.dumps(spec)
            seen.update(ids)
    assert seen == set(MAKERS)


def _pairs(ids: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]


def test_asking_for_more_than_fits_together_is_an_error():
    with pytest.raises(ValueError, match="constraints that fit together were not found"):
        choose_kinds(random.Random(0), len(MAKERS))


def test_no_sentence_shares_a_13_word_ngram_with_an_ifeval_prompt():
    lines = (SHARED_DATA / "ifeval" / "input_data.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    assert len(prompts) == 541
    texts = [EvalText(f"ifeval[{i}]", p) for i, p in enumerate(prompts)]
    index = EvalIndex.build(texts, 13, 6)
    # Stricter than decontamination asks: not even 8 words in a row from IFEval.
    strict = EvalIndex.build(texts, 8, 8)
    for kind, make in MAKERS.items():
        for seed in range(40):
            sentence, _ = make(random.Random(seed))
            assert index.match(sentence) is None and strict.match(sentence) is None, kind
