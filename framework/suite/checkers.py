"""Checkers: whether a prediction answers like the reference. None ever raises: garbage
is simply wrong."""

from __future__ import annotations

import json
import re

_QUOTES = "\"'`"
_END_PUNCTUATION = ".!?,;:"


def normalize(text: str) -> str:
    """Lowercase, whitespace collapsed, and surrounding whitespace, quotes, backticks and
    trailing sentence punctuation (. ! ? , ; :) stripped, in any nesting ('"7".' -> 7)."""
    text = " ".join(text.lower().split())
    while True:
        stripped = text.strip(_QUOTES + " ").rstrip(_END_PUNCTUATION + " ")
        if stripped == text:
            return text
        text = stripped


def normalized_equal(prediction: str, reference: str) -> bool:
    """The default checker: equal after `normalize`."""
    return normalize(prediction) == normalize(reference)


def _strip_end(text: str) -> str:
    """Surrounding whitespace and one trailing period removed (case and quotes kept)."""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_equal(prediction: str, reference: str) -> bool:
    """Case-sensitive: equal after stripping surrounding whitespace and a trailing '.'."""
    return _strip_end(prediction) == _strip_end(reference)


def _list_items(text: str, item: str) -> list[str] | None:
    """The comma- or space-separated items of `text` (optionally in [...]), each matching
    the regex `item`; None when any part does not (so prose around a list fails)."""
    body = _strip_end(text)
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    parts = [part for part in re.split(r"[,\s]+", body) if part]
    if not parts or not all(re.fullmatch(item, part) for part in parts):
        return None
    return parts


_INT = r"-?\d{1,9}"  # bounded: int() of a huge digit string raises


def _ints(parts: list[str]) -> list[int]:
    return [int(part) for part in parts]


def int_list_equal(prediction: str, reference: str) -> bool:
    """The same integers in the same order, whatever the separators ("1,2" == "1, 2")."""
    predicted, expected = _list_items(prediction, _INT), _list_items(reference, _INT)
    return predicted is not None and expected is not None and _ints(predicted) == _ints(expected)


def word_list_equal(prediction: str, reference: str) -> bool:
    """The same words (case-insensitive) in the same order, whatever the separators."""
    predicted = _list_items(prediction.lower(), r"[a-z]+")
    return predicted is not None and predicted == _list_items(reference.lower(), r"[a-z]+")


def _canonical_json(text: str) -> str | None:
    """`text` parsed as JSON and dumped with sorted keys; None when it is not JSON."""
    try:
        return json.dumps(json.loads(_strip_end(text)), sort_keys=True)
    except (ValueError, RecursionError):
        return None


def _bracketed(text: str) -> str | None:
    """The normalized content of '[...]', or None when `text` is not one bracketed value."""
    text = _strip_end(text)
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        return None
    return normalize(text[1:-1])


def format_equal(prediction: str, reference: str) -> bool:
    """A JSON reference: the same JSON value (canonical dump, so 7 != "7" != true);
    a bracketed one: '[...]' around the normalized-equal content."""
    if reference.startswith("{"):
        expected = _canonical_json(reference)
        return expected is not None and _canonical_json(prediction) == expected
    expected = _bracketed(reference)
    return expected is not None and _bracketed(prediction) == expected
