"""Decontamination: training text that shares a word n-gram with an evaluation text.

GPT-3's rule (13-grams, on lower-cased words), with one addition: an evaluation text
shorter than n words (most of the suite's prompts) is matched whole, as a contiguous run
of its words, if it has at least `min_words` words and is a question, not an answer;
shorter ones are too common to mean anything ("what is 2 2")."""

from __future__ import annotations

from dataclasses import dataclass, field

from framework.data.curate.text import RecordText, words


@dataclass(frozen=True)
class EvalText:
    label: str  # where it comes from, e.g. "suite test capital_city[3]" or "file:line"
    text: str
    # Short texts match whole only if they are questions: a short answer ("104", "Paris")
    # is shared by many questions; a long one still matches by its n-grams.
    question: bool = True


@dataclass
class EvalIndex:
    """Every n-gram (or whole short text) of the evaluation texts, mapped to the first
    text it came from."""

    n: int
    min_words: int
    grams: dict[tuple[str, ...], str] = field(default_factory=dict)
    lengths: set[int] = field(default_factory=set)  # the gram lengths present (<= n)
    # first word -> the lengths of the grams it starts: most positions of a text start
    # none, and are passed over with one lookup
    starts: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, texts: list[EvalText], n: int, min_words: int) -> EvalIndex:
        index = cls(n, min_words)
        for item in texts:
            tokens = words(item.text)
            if len(tokens) >= n:
                spans = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
            elif len(tokens) >= min_words and item.question:
                spans = [tuple(tokens)]
            else:
                continue
            for span in spans:
                index.grams.setdefault(span, item.label)
                index.lengths.add(len(span))
                index.starts.setdefault(span[0], set()).add(len(span))
        return index

    def match(self, text: str) -> str | None:
        """The label of the first evaluation text `text` overlaps, or None."""
        tokens = words(text)
        starts = [(i, found) for i, t in enumerate(tokens) if (found := self.starts.get(t))]
        for length in sorted(self.lengths, reverse=True):
            for i, lengths in starts:
                if length in lengths and i + length <= len(tokens):
                    found = self.grams.get(tuple(tokens[i : i + length]))
                    if found is not None:
                        return found
        return None


def contamination(text: RecordText, index: EvalIndex) -> tuple[str, str] | None:
    """(which part overlaps, the eval text's label) for the record's prompt or replies."""
    for part, content in (("prompt", text.prompt), *(("reply", r) for r in text.replies)):
        found = index.match(content)
        if found is not None:
            return part, found
    return None
