"""The server's conversation log (launch/serve.py log_dir=...) read back as preference
pairs, a source of `format: feedback` for the preference objectives.

A pair comes from a rated reply two ways: a reply its user gave a better one for
(`preferred`: chosen, the logged reply: rejected), and two replies to the same
conversation rated differently (the one rated 1: chosen, the one rated -1: rejected).
A rating's latest word on a reply counts. Records are TRL's shape ({prompt: messages,
chosen, rejected}), read on by data/preference.py and curated as any pairs: deduplicated,
decontaminated against the eval sets. How many exchanges and ratings made pairs, and how
many did not, is printed."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from framework.data.formats import DataError, RecordError
from framework.data.readers import Raw, read_file
from framework.run.files import CONVERSATIONS_FILE, FEEDBACK_FILE


def feedback_records(directory: str) -> Iterator[Raw]:
    """The pairs of the log in `directory`, each with the feedback line it comes from."""
    folder = Path(directory).expanduser()
    if not (folder / CONVERSATIONS_FILE).is_file():
        raise DataError(
            f"{directory}: no {CONVERSATIONS_FILE}; a feedback source is the log_dir of "
            "launch/serve.py (log_dir=<dir>), where the server logs its conversations"
        )
    exchanges = dict(_exchanges(folder / CONVERSATIONS_FILE))
    rated = folder / FEEDBACK_FILE
    feedback = _latest_feedback(rated, exchanges) if rated.is_file() else {}
    pairs = list(_preferred_pairs(feedback, exchanges)) + list(_rated_pairs(feedback, exchanges))
    paired = {reply_id for _, _, ids in pairs for reply_id in ids}
    print(
        f"feedback {directory}: {len(exchanges)} logged replies, {len(feedback)} rated, "
        f"{len(pairs)} pairs; {len(set(feedback) - paired)} rated replies made no pair "
        "(a rating needs an opposite rating of a reply to the same conversation)",
        flush=True,
    )
    for where, record, _ in pairs:
        yield where, record


def _log_lines(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """The log file's records with their `file:line`: RecordError for a line that is not
    one of the server's records (the log was edited or cut off)."""
    for where, record in read_file(path):
        if isinstance(record, RecordError):
            raise record
        if not isinstance(record, dict) or any(f not in record for f in fields):
            raise RecordError(where, "missing_field", f"a {path.name} record has {fields}")
        yield where, record


def _exchanges(path: Path) -> Iterator[tuple[str, dict]]:
    for where, record in _log_lines(path, ("id", "messages", "reply")):
        yield record["id"], {**record, "where": where}


def _latest_feedback(path: Path, exchanges: dict[str, dict]) -> dict[str, dict]:
    latest = {}
    for where, record in _log_lines(path, ("id", "rating", "preferred")):
        if record["id"] in exchanges:  # an exchange past the retention is gone
            latest[record["id"]] = {**record, "where": where}
    return latest


def _pair(prompt: list[dict], chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _preferred_pairs(feedback: dict, exchanges: dict) -> Iterator[tuple[str, dict, tuple]]:
    for reply_id, rating in feedback.items():
        exchange = exchanges[reply_id]
        preferred = rating.get("preferred")
        if preferred and preferred.strip() != exchange["reply"].strip():
            record = _pair(exchange["messages"], preferred, exchange["reply"])
            yield rating["where"], record, (reply_id,)


def _rated_pairs(feedback: dict, exchanges: dict) -> Iterator[tuple[str, dict, tuple]]:
    """Per conversation, its replies rated 1 paired in turn with those rated -1."""
    by_prompt = defaultdict(lambda: {1: [], -1: []})
    for reply_id, rating in feedback.items():
        if rating.get("rating") in (1, -1):
            prompt = json.dumps(exchanges[reply_id]["messages"], sort_keys=True)
            by_prompt[prompt][rating["rating"]].append(reply_id)
    for ratings in by_prompt.values():
        for good, bad in zip(ratings[1], ratings[-1], strict=False):  # the rest: no pair
            chosen, rejected = exchanges[good], exchanges[bad]
            if chosen["reply"].strip() != rejected["reply"].strip():
                record = _pair(chosen["messages"], chosen["reply"], rejected["reply"])
                yield feedback[good]["where"], record, (good, bad)
