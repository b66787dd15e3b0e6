"""A readable view of rendered examples: trained text marked, weights shown, trained
tokens per role, and warnings about templates that lose or double special tokens."""

from __future__ import annotations

from collections import Counter

from transformers import PreTrainedTokenizerBase

from framework.data.formats import Conversation
from framework.data.render import render, trained_spans
from framework.data.templates import END_OF_TURN_MARKERS

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ trained ⟧


def marked_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], weights: list[float]) -> str:
    """The decoded example with every trained run in ⟦ ⟧, its weight appended when not 1."""
    pieces, run, run_weight = [], [], None
    for token, weight in [*zip(ids, weights, strict=True), (None, None)]:
        if weight != run_weight and run:
            text = tokenizer.decode(run)
            if run_weight:
                suffix = "" if run_weight == 1.0 else f"\u00d7{run_weight:g}"
                text = f"{OPEN}{text}{CLOSE}{suffix}"
            pieces.append(text)
            run = []
        if token is not None:
            run.append(token)
        run_weight = weight
    return "".join(pieces)


def trained_per_role(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, weights: list[float]
) -> Counter:
    """Trained tokens counted by the role of the message they fall in."""
    if conversation.text is not None:
        return Counter(text=sum(w > 0 for w in weights))
    _, spans = trained_spans(tokenizer, conversation, "all", "inspect")
    encoding = tokenizer(
        tokenizer.apply_chat_template(
            conversation.messages, tools=conversation.tools, tokenize=False
        ),
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    counts: Counter = Counter()
    for (start, _), weight in zip(encoding["offset_mapping"], weights, strict=False):
        if weight <= 0:
            continue
        role = next(
            (
                conversation.messages[i]["role"]
                for i, (a, b, _) in enumerate(spans)
                if a <= start < b
            ),
            "template",
        )
        counts[role] += 1
    return counts


def warnings_for(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], weights: list[float]
) -> list[str]:
    found = []
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        found.append("double BOS at the start")
    vocab = tokenizer.get_vocab()
    end_of_turn = {tokenizer.eos_token_id} | {vocab[t] for t in END_OF_TURN_MARKERS if t in vocab}
    run_ends = [
        i for i, w in enumerate(weights) if w > 0 and (i + 1 == len(ids) or weights[i + 1] == 0)
    ]
    if any(ids[i] not in end_of_turn for i in run_ends):
        found.append("a trained reply does not end with an end-of-turn token")
    return found


def inspect_example(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, train_on: str, where: str
) -> dict:
    """Everything prepare.py shows about one example."""
    example = render(tokenizer, conversation, train_on, where)
    return {
        "where": where,
        "text": marked_text(tokenizer, example.input_ids, example.weights),
        "tokens": len(example.input_ids),
        "trained_per_role": dict(trained_per_role(tokenizer, conversation, example.weights)),
        "warnings": warnings_for(tokenizer, example.input_ids, example.weights),
    }
