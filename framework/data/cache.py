"""The preprocessed data artifact: rendered, masked, length-checked examples plus the first
epoch's packing plan and the statistics, under a directory named by a fingerprint of
everything that shapes them. Built once on the driver, in parallel over cores; a changed
source, tokenizer, template or setting gives a new fingerprint and a new artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from framework.config import DataConfig
from framework.data.dataset import TokenizedDataset
from framework.data.formats import ErrorPolicy, RecordError
from framework.data.pack import PackingPlan, best_fit_decreasing
from framework.data.render import RenderedExample, render
from framework.data.sources import LoadedData, LoadedRecord
from framework.data.stats import dataset_stats

ARTIFACT_VERSION = 2
_CHUNK = 256


def _source_identity(path: str) -> list:
    """Local files are identified by path, size and modification time; hub names by name."""
    root = Path(path)
    if not root.exists():
        return [path]
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def fingerprint(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> str:
    """A digest of the sources' contents (by identity), the tokenizer, its chat template
    and every setting that changes the artifact."""
    settings = dataclasses.asdict(cfg)
    settings.pop("inspect")
    settings.pop("num_proc")
    identity = {
        "version": ARTIFACT_VERSION,
        "settings": settings,
        "files": [_source_identity(s.path) for s in [*cfg.sources, *cfg.eval_sources]],
        "tokenizer": tokenizer.backend_tokenizer.to_str(),
        "specials": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
        "template": tokenizer.chat_template,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


_worker_state: dict = {}


def _init_worker(tokenizer: PreTrainedTokenizerBase, train_on: str) -> None:
    _worker_state.update(tokenizer=tokenizer, train_on=train_on)


def _render_chunk(records: list[LoadedRecord]) -> list[RenderedExample | RecordError]:
    out: list[RenderedExample | RecordError] = []
    for record in records:
        try:
            out.append(
                render(
                    _worker_state["tokenizer"],
                    record.conversation,
                    _worker_state["train_on"],
                    record.where,
                )
            )
        except RecordError as err:
            out.append(err)
    return out


def render_all(
    records: list[LoadedRecord], tokenizer: PreTrainedTokenizerBase, train_on: str, num_proc: int
) -> list[RenderedExample | RecordError]:
    """Render every record, in order, over `num_proc` processes, with a progress bar."""
    chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
    bar = tqdm(total=len(records), desc="tokenizing", unit="ex", disable=not records)
    results: list[RenderedExample | RecordError] = []
    if num_proc <= 1 or len(chunks) <= 1:
        _init_worker(tokenizer, train_on)
        for chunk in chunks:
            results += _render_chunk(chunk)
            bar.update(len(chunk))
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with ProcessPoolExecutor(
            num_proc, initializer=_init_worker, initargs=(tokenizer, train_on)
        ) as pool:
            for chunk, rendered in zip(chunks, pool.map(_render_chunk, chunks), strict=True):
                results += rendered
                bar.update(len(chunk))
    bar.close()
    return results


@dataclasses.dataclass
class Fitted:
    examples: list[tuple[list[int], list[float]]]
    truncated: Counter
    dropped: Counter
    sources: list[str] = dataclasses.field(default_factory=list)  # per kept example


def fit_to_length(
    records: list[LoadedRecord],
    rendered: list[RenderedExample | RecordError],
    cfg: DataConfig,
    policy: ErrorPolicy,
) -> Fitted:
    """Apply data.overlong and drop examples with nothing to train, counting per source."""
    fitted = Fitted([], Counter(), Counter())
    for record, result in zip(records, rendered, strict=True):
        if isinstance(result, RecordError):
            policy(result, record.source)
            continue
        ids, weights = result.input_ids, result.weights
        if len(ids) > cfg.max_seq_len:
            if cfg.overlong == "drop":
                fitted.dropped[record.source] += 1
                continue
            fitted.truncated[record.source] += 1
            ids, weights = ids[: cfg.max_seq_len], weights[: cfg.max_seq_len]
        if not any(w > 0 for w in weights[1:]):
            policy(
                RecordError(record.where, "no_target", "no trained token within data.max_seq_len"),
                record.source,
            )
            continue
        fitted.examples.append((ids, weights))
        fitted.sources.append(record.source)
    return fitted


def build_artifact(
    directory: Path,
    data: LoadedData,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    policy: ErrorPolicy,
    seed: int,
) -> None:
    """Write the artifact into `directory` atomically (a temporary sibling, then a rename)."""
    num_proc = cfg.num_proc or os.cpu_count() or 1
    splits = {}
    for split, records in (("train", data.train), ("eval", data.eval)):
        rendered = render_all(records, tokenizer, cfg.train_on, num_proc)
        splits[split] = (fit_to_length(records, rendered, cfg, policy), records)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".building-"))
    names = list(data.summaries)
    for split, (fitted, _) in splits.items():
        TokenizedDataset.from_examples(fitted.examples).save(staging, split)
        source_ids = np.array([names.index(n) for n in fitted.sources], dtype=np.int32)
        np.save(staging / f"{split}_source.npy", source_ids)
    train = TokenizedDataset.load(staging, "train")
    plan = None
    if cfg.packing:
        plan = best_fit_decreasing(train.lengths(), cfg.max_seq_len, seed)
        np.save(staging / "plan_example_ids.npy", plan.example_ids)
        np.save(staging / "plan_row_offsets.npy", plan.row_offsets)
    stats = dataset_stats(train, data, splits["train"][0], policy, cfg, plan)
    stats["eval_examples"] = len(splits["eval"][0].examples)
    stats["source_names"] = names
    (staging / "stats.json").write_text(json.dumps(stats, indent=2))
    try:
        os.rename(staging, directory)
    except OSError:  # another process built the same artifact first: keep theirs
        shutil.rmtree(staging)


def first_plan(directory: str | Path) -> PackingPlan | None:
    """The stored packing plan of epoch 0 (later epochs are re-planned from the seed)."""
    ids = Path(directory) / "plan_example_ids.npy"
    if not ids.exists():
        return None
    return PackingPlan(np.load(ids), np.load(Path(directory) / "plan_row_offsets.npy"))


def load_stats(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "stats.json").read_text())
