"""Quality filters for instruction data: what a reply must not be. Each returns a reason
and a detail for the record's first bad reply, or None. Of a preference pair only the
chosen reply is judged: a poor rejected reply is what the pair is for."""

from __future__ import annotations

from framework.config.schema import CurateConfig
from framework.data.curate.text import RecordText, normalise, words

_REPETITION_N = 3


def repetition(tokens: list[str]) -> float:
    """The share of the word 3-grams that repeat an earlier one: 0 for a text that never
    repeats itself, near 1 for a loop ("the the the ...")."""
    grams = [tuple(tokens[i : i + _REPETITION_N]) for i in range(len(tokens) - _REPETITION_N + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _ratio_reason(reply_words: int, prompt_words: int, cfg: CurateConfig):
    ratio = reply_words / max(prompt_words, 1)
    if cfg.min_reply_ratio is not None and ratio < cfg.min_reply_ratio:
        return "short_reply", f"{reply_words} words for a {prompt_words}-word prompt"
    if cfg.max_reply_ratio is not None and ratio > cfg.max_reply_ratio:
        return "long_reply", f"{reply_words} words for a {prompt_words}-word prompt"
    return None


def quality_reason(text: RecordText, cfg: CurateConfig, pair: bool) -> tuple[str, str] | None:
    replies = text.replies[:1] if pair else text.replies
    prompt = {normalise(text.prompt), normalise(text.last_user)} - {""}
    prompt_words = len(words(text.prompt))
    for reply in replies:
        tokens = words(reply)
        if not tokens:
            return "empty_reply", f"the reply {reply[:40]!r} has no word"
        if normalise(reply) in prompt:
            return "repeats_prompt", "the reply is the prompt again"
        share = repetition(tokens)
        if len(tokens) >= cfg.repetition_min_words and share > cfg.max_repetition:
            return "repetitive", f"{share:.0%} of its word 3-grams repeat"
        if text.prompt:
            found = _ratio_reason(len(tokens), prompt_words, cfg)
            if found:
                return found
    return None
