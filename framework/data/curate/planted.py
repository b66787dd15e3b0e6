"""A mixture with known contents for the curation recipe (conf/data/curate_demo.yaml):
records planted beside ../shared/data/alpaca_en_demo.json so that what curation must
find is known in advance. Deterministic; writes planted.jsonl and expected.json.

    python -m framework.data.curate.planted outputs/planted

Planted (alpaca records, so they convert exactly as the shared file's do):
- exact copies of alpaca records, half re-cased and re-spaced (found: duplicate);
- near copies, a word dropped or swapped here and there, true Jaccard 0.85-0.97 of word
  5-gram sets (near_duplicate), and heavier rewrites below 0.5 that must stay;
- suite test prompts, some wrapped in a sentence (contaminated, on the prompt), and
  replies quoting 20 words of an IFEval prompt (contaminated, on the reply);
- replies with no word, replies that repeat the prompt, replies in a loop.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from framework.config.schema import SuiteConfig
from framework.data.curate.dedup import jaccard, shingles
from framework.data.curate.text import normalise, words
from framework.suite.build import eval_items
from framework.suite.families import FAMILIES

SHARED = Path(__file__).parents[3].parent / "shared" / "data"
ALPACA, IFEVAL = SHARED / "alpaca_en_demo.json", SHARED / "ifeval" / "input_data.jsonl"
COUNTS = {"exact": 40, "near": 40, "keep": 20, "suite": 30, "ifeval": 15, "quality": 10}


def _text(record: dict) -> str:
    return "\n".join([record["instruction"], record["input"], record["output"]])


def _unique(records: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for record in records:
        key = normalise(_text(record))
        seen[key] = seen.get(key, 0) + 1
    return [r for r in records if seen[normalise(_text(r))] == 1]


def _edited(output: str, rng: random.Random, every: int) -> str:
    """Every `every`-th word dropped or swapped with its neighbour."""
    tokens = output.split()
    for i in range(rng.randrange(every), len(tokens) - 1, every):
        if rng.random() < 0.5:
            tokens[i] = ""
        else:
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    return " ".join(t for t in tokens if t)


def _similarity(a: dict, b: dict) -> float:
    return jaccard(shingles(_text(a), 5), shingles(_text(b), 5))


def _variants(pool, rng, count, every, low, high) -> list[dict]:
    found = []
    for record in pool:
        variant = dict(record, output=_edited(record["output"], rng, every))
        if low <= _similarity(record, variant) <= high:
            found.append(variant)
        if len(found) == count:
            return found
    raise ValueError(f"only {len(found)} variants in [{low}, {high}]")


def _quality(pool: list[dict]) -> list[dict]:
    n = COUNTS["quality"]
    empty = [dict(r, output=["...", "?!", "-", "…"][i % 4]) for i, r in enumerate(pool[:n])]
    echo = [dict(r, output=r["instruction"], input="") for r in pool[n : 2 * n]]
    loop = [
        dict(r, output=" ".join([r["instruction"].split(".")[0]] * 12)) for r in pool[2 * n : 3 * n]
    ]
    return empty + echo + loop


def planted(seed: int = 0) -> tuple[list[dict], dict]:
    """(the planted records, the removals expected among them per reason)."""
    rng = random.Random(seed)
    alpaca = _unique(json.loads(ALPACA.read_text()))
    rng.shuffle(alpaca)
    long = [r for r in alpaca if len(r["output"].split()) >= 120]
    exact = alpaca[: COUNTS["exact"]]
    exact = exact[:20] + [dict(r, output="  " + r["output"].upper()) for r in exact[20:]]
    near = _variants(long[: len(long) // 2], rng, COUNTS["near"], 80, 0.85, 0.97)
    keep = _variants(long[len(long) // 2 :], rng, COUNTS["keep"], 2, 0.0, 0.5)
    tests = [  # long enough to be matched whole (data.curate.decontaminate_min_words)
        item
        for item in eval_items(list(FAMILIES), "test", 4, SuiteConfig().seed)
        if len(words(item.prompt[-1]["content"])) >= 6
    ][: COUNTS["suite"]]
    suite = [
        {
            "instruction": (
                item.prompt[-1]["content"] if i % 2 else f"Quick one: {item.prompt[-1]['content']}"
            ),
            "input": "",
            "output": item.reference,
        }
        for i, item in enumerate(tests)
    ]
    prompts = [json.loads(line)["prompt"] for line in IFEVAL.read_text().splitlines()]
    quoted = [p for p in prompts if len(p.split()) >= 30][: COUNTS["ifeval"]]
    ifeval = [
        {
            "instruction": f"Write task {i} down for me.",
            "input": "",
            "output": "Here it is: " + " ".join(p.split()[:20]),
        }
        for i, p in enumerate(quoted)
    ]
    records = [*exact, *near, *keep, *suite, *ifeval, *_quality(alpaca[COUNTS["exact"] :])]
    expected = {
        "duplicate": COUNTS["exact"],
        "near_duplicate": COUNTS["near"],
        "contaminated": COUNTS["suite"] + COUNTS["ifeval"],
        "empty_reply": COUNTS["quality"],
        "repeats_prompt": COUNTS["quality"],
        "repetitive": COUNTS["quality"],
    }
    return records, expected


def main(out: str) -> None:
    records, expected = planted()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "planted.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (folder / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"{len(records)} records in {folder / 'planted.jsonl'}; expected removals {expected}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/planted")
