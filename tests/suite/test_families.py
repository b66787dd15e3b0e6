"""The families: registry shape, templates that describe the prompts, and checkers that
accept every reference and reject wrong answers without ever raising."""

from __future__ import annotations

import random
import re
import string

import pytest

from framework.config.schema import DEFAULT_HELD_OUT, HELD_OUT_TWISTS, KNOWLEDGE_FAMILIES
from framework.suite import knowledge
from framework.suite.build import SPLITS, family_items
from framework.suite.checkers import normalize, normalized_equal
from framework.suite.families import FAMILIES
from framework.suite.wording import ACKS, VOWELS, WORDS
from tests.helpers import matches_templates

GARBAGE = [
    "",
    " ",
    "zzz qqq",
    "[",
    "]",
    "[]",
    "{",
    '{"answer": ',
    "[" * 5000,
    "9" * 5000,
    "-",
    ", ,",
    "null",
    "\x00\n\t",
    "١٢٣",
    '"',
    ".",
]


def test_registry_has_enough_families_with_paraphrases():
    assert len(FAMILIES) >= 24
    for name, family in FAMILIES.items():
        assert family.name == name and re.fullmatch(r"[a-z]+(_[a-z]+)*", name)
        assert family.skill and len(family.templates) >= 3
        assert len(set(family.templates)) == len(family.templates), name


def test_default_held_out_are_six_twists_and_the_five_knowledge_families():
    assert DEFAULT_HELD_OUT == HELD_OUT_TWISTS + KNOWLEDGE_FAMILIES
    assert len(set(HELD_OUT_TWISTS)) == 6 and set(DEFAULT_HELD_OUT) <= set(FAMILIES)
    assert tuple(knowledge.DRAWS) == KNOWLEDGE_FAMILIES


@pytest.mark.parametrize("family", KNOWLEDGE_FAMILIES)
def test_a_knowledge_question_asks_for_the_bare_answer(family):
    rng = random.Random(0)
    for _ in range(100):
        [turn], reference = FAMILIES[family].generate(rng)
        assert any(terse in turn["content"] for terse in knowledge.TERSE)
        assert reference and "\n" not in reference


def test_each_fact_has_one_answer_and_numbers_are_spelt_as_usual():
    assert all(knowledge.OPPOSITES[knowledge.OPPOSITES[w]] == w for w in knowledge.OPPOSITES)
    assert len(set(knowledge.CAPITALS.values())) == len(knowledge.CAPITALS)
    spelt = [knowledge.number_in_words(n) for n in (0, 7, 13, 20, 42, 99)]
    assert spelt == ["zero", "seven", "thirteen", "twenty", "forty-two", "ninety-nine"]


def test_recall_is_multi_turn_with_an_acknowledged_first_turn():
    rng = random.Random(0)
    for _ in range(50):
        prompt, reference = FAMILIES["recall"].generate(rng)
        assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
        assert prompt[1]["content"] in ACKS
        stored = prompt[0]["content"].rstrip(".").split()[-1]
        plus = re.search(r"\d+", prompt[2]["content"])
        assert reference == (str(int(stored) + int(plus[0])) if plus else stored)


def test_vocabulary_suits_every_word_task():
    assert len(WORDS) == len(set(WORDS)) >= 150
    for word in WORDS:
        assert word.isalpha() and word.islower() and 3 <= len(word) <= 7, word
        # remove_vowels never answers nothing; reverse_word never answers the word itself.
        assert set(word) - set(VOWELS) and set(word) & set(VOWELS), word
        assert word != word[::-1], word


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prompts_are_short_and_described_by_the_templates(name):
    rng = random.Random(1)
    for _ in range(100):
        prompt, reference = FAMILIES[name].generate(rng)
        assert prompt[-1]["role"] == "user"
        for message in prompt:
            if message["role"] == "user":
                assert len(message["content"].split()) <= 30, message
                assert matches_templates(message["content"], name), message
        assert reference.strip() == reference and 0 < len(reference.split()) <= 6


def test_normalize():
    assert normalize('  "Hello   World!"  ') == "hello world"
    assert normalize("`42`.") == "42"
    assert normalize("'yes'.") == "yes"
    assert normalize('"tiger".') == "tiger"
    assert normalize("a, b;") == "a, b"
    assert normalize("well...?") == "well"
    assert normalize("") == ""
    assert normalized_equal("Even.", "even")
    assert not normalized_equal("evens", "even")


def _swap_first_two(reference: str) -> str:
    parts = reference.split(", ")
    return ", ".join([parts[1], parts[0], *parts[2:]])


def _plus_one(reference: str) -> str:
    return str(int(reference) + 1)


# Family-specific near misses: a plausible answer that is still wrong.
NEAR_MISSES = {
    "reverse_word": [lambda r: r[::-1]],
    "uppercase": [str.lower, str.title],
    "lowercase": [str.upper, str.title],
    "title_case": [str.lower, str.upper],
    "multi_step": [str.lower, lambda r: r[::-1]],
    "add": [_plus_one],
    "subtract": [_plus_one, lambda r: f"-{r}" if r != "0" else "1"],
    "multiply": [_plus_one],
    "larger_number": [_plus_one],
    "smallest_number": [_plus_one],
    "count_letter": [_plus_one],
    "count_words": [_plus_one],
    "parity": [lambda r: {"even": "odd", "odd": "even"}[r]],
    "contains_letter": [lambda r: {"yes": "no", "no": "yes"}[r]],
    "sort_ascending": [_swap_first_two, lambda r: ", ".join(reversed(r.split(", ")))],
    "sort_descending": [_swap_first_two, lambda r: ", ".join(reversed(r.split(", ")))],
    "alphabetical": [_swap_first_two, lambda r: r.rsplit(", ", 1)[0]],
    "first_letters": [lambda r: r[:-1], lambda r: r + "s"],
    "last_letters": [lambda r: r[:-1], lambda r: r + "s"],
    "date_format": [lambda r: r.replace(",", ""), lambda r: r.replace(" ", " 0", 1)],
    "spell_out": [lambda r: r.replace("-", ""), lambda r: r.replace("-", " ")],
    "repeat_word": [lambda r: r.rsplit(" ", 1)[0], lambda r: f"{r} {r.split()[0]}"],
    "remove_vowels": [lambda r: r + "a"],
    "answer_format": [
        lambda r: r.strip("[]{}").replace('"answer": ', "").strip('"'),  # the bare value
        lambda r: r.replace("[", "(").replace("]", ")"),
        lambda r: r.replace('{"answer": ', '{"result": '),
    ],
    "recall": [lambda r: r + "1"],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_checker_accepts_references_and_rejects_wrong_answers(name):
    check = FAMILIES[name].check
    for split in SPLITS:
        items = family_items(name, split, 50, seed=7)
        references = [item.reference for item in items]
        assert len(set(references)) > 1, "every wrong-reference case would be skipped"
        for index, reference in enumerate(references):
            assert check(reference, reference)
            assert check(f"  {reference}.  ", reference)
            other = references[index - 1]
            if other != reference:
                assert not check(other, reference), (other, reference)
            for wrong in ["", "zzz qqq", f"{reference} extra"]:
                assert not check(wrong, reference), (wrong, reference)
            for near_miss in NEAR_MISSES.get(name, []):
                wrong = near_miss(reference)
                if wrong != reference:
                    assert not check(wrong, reference), (wrong, reference)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_checker_never_raises(name):
    rng = random.Random(3)
    check = FAMILIES[name].check
    _, reference = FAMILIES[name].generate(rng)
    noise = ["".join(rng.choice(string.printable) for _ in range(12)) for _ in range(50)]
    for text in GARBAGE + noise:
        assert check(text, reference) is False
        assert isinstance(check(reference, text), bool)


def test_list_checkers_ignore_separators_but_not_order():
    check = FAMILIES["sort_ascending"].check
    for accepted in ["1, 2, 3", "1,2,3", "1 2 3", "[1, 2, 3]", " 1, 2, 3. "]:
        assert check(accepted, "1, 2, 3"), accepted
    for rejected in ["1, 3, 2", "1, 2", "1, 2, 3, 4", "123", "1, 2, 3 and 4", "one, 2, 3"]:
        assert not check(rejected, "1, 2, 3"), rejected
    words = FAMILIES["alphabetical"].check
    assert words("Apple,cat, dog", "apple, cat, dog")
    assert not words("cat, apple, dog", "apple, cat, dog")


def test_case_checkers_are_case_sensitive():
    check = FAMILIES["uppercase"].check
    assert check(" RED CAR. ", "RED CAR")
    assert not check("Red Car", "RED CAR")
    assert not check("RED  CAR!", "RED CAR")


def test_answer_format_checker_parses_json_and_brackets():
    check = FAMILIES["answer_format"].check
    assert check('{"answer":7}', '{"answer": 7}')
    assert check(' {"answer": 7}. ', '{"answer": 7}')
    for rejected in ['{"answer": "7"}', '{"answer": 8}', "7", '{"answer": 7', "[7]", "true"]:
        assert not check(rejected, '{"answer": 7}'), rejected
    assert not check('{"answer": true}', '{"answer": 1}')
    assert check("[Even]", "[even]")
    assert check("[ even ]", "[even]")
    for rejected in ["even", "[odd]", "[even", '{"answer": "even"}', "[[even]]"]:
        assert not check(rejected, "[even]"), rejected
