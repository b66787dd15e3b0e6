"""What the data became: per-source counts, token totals, lengths and packing efficiency."""

from __future__ import annotations

import numpy as np

from framework.config.schema import DataConfig
from framework.data.dataset import TokenizedDataset
from framework.data.fit import Fitted
from framework.data.formats import ErrorPolicy
from framework.data.pack import PackingPlan
from framework.data.prompt_artifact import KIND, format_prompt_stats
from framework.data.sources import LoadedData


def packing_summary(plan: PackingPlan, lengths: np.ndarray, capacity: int) -> dict:
    """Rows used against the lower bound ceil(tokens / capacity), and the fill rate."""
    total = int(lengths.sum())
    rows = len(plan)
    return {
        "rows": rows,
        "lower_bound_rows": -(-total // capacity),
        "efficiency": total / (rows * capacity) if rows else 0.0,
    }


def length_histogram(lengths: np.ndarray, max_len: int) -> dict[str, int]:
    """Examples per power-of-two length bucket up to max_len."""
    edges = [0]
    while edges[-1] < max_len:
        edges.append(min(max(edges[-1] * 2, 32), max_len))
    counts, _ = np.histogram(lengths, bins=[*edges[:-1], max_len + 1])
    return {
        f"{lo + 1}-{hi}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    }


def curation_summary(data: LoadedData, cfg: DataConfig) -> dict:
    """Removals by reason over all sources, and which filters ran."""
    by_reason: dict[str, int] = {}
    for removal in data.removals:
        by_reason[removal.reason] = by_reason.get(removal.reason, 0) + 1
    curate = cfg.curate
    filters = ("exact", "exact_prompt", "near", "decontaminate", "quality")
    on = [name for name in filters if curate.enabled and getattr(curate, name)]
    return {"removed": len(data.removals), "by_reason": by_reason, "filters": on}


def dataset_stats(
    train: TokenizedDataset,
    data: LoadedData,
    fitted: Fitted,
    policy: ErrorPolicy,
    cfg: DataConfig,
    plan: PackingPlan | None,
    pairs: bool = False,
) -> dict:
    lengths = train.lengths()
    trained = int((np.asarray(train.weights) > 0).sum())
    sources = {
        name: {
            "records": s.records,
            "kept": s.kept,
            "held_out": s.held_out,
            "taken": s.taken,
            "skipped": dict(policy.skipped.get(name, {})),
            "removed": dict(s.removed),
            "truncated": fitted.truncated[name],
            "dropped_too_long": fitted.dropped[name],
        }
        for name, s in data.summaries.items()
    }
    stats = {
        "sources": sources,
        "examples": len(train),
        "tokens": int(lengths.sum()),
        "trained_tokens": trained,
        "trained_fraction": trained / max(int(lengths.sum()), 1),
        "skipped": policy.total(),
        "curation": curation_summary(data, cfg),
        "max_length": int(lengths.max()) if len(lengths) else 0,
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        "length_histogram": length_histogram(lengths, cfg.max_seq_len),
    }
    if pairs:  # examples are sequences, two per pair
        stats["pairs"] = len(train) // 2
    if plan is not None:
        stats["packing"] = packing_summary(plan, lengths, cfg.max_seq_len)
    return stats


def format_stats(stats: dict) -> str:
    """A human-readable summary of `dataset_stats` (or of a prompts artifact's) for the
    console and logs."""
    if stats.get("kind") == KIND:
        return format_prompt_stats(stats)
    lines = [
        f"{'source':<28}{'records':>9}{'skipped':>9}{'removed':>9}{'kept':>9}{'held out':>9}"
        f"{'taken':>9}{'truncated':>10}{'dropped':>9}"
    ]
    for name, s in stats["sources"].items():
        removed = s.get("removed", {})
        lines.append(
            f"{name[:27]:<28}{s['records']:>9}{sum(s['skipped'].values()):>9}"
            f"{sum(removed.values()):>9}{s['kept']:>9}{s['held_out']:>9}{s['taken']:>9}"
            f"{s['truncated']:>10}{s['dropped_too_long']:>9}"
        )
        lines += [f"    skipped {reason}: {n}" for reason, n in sorted(s["skipped"].items())]
        lines += [f"    removed {reason}: {n}" for reason, n in removed.items()]
    curation = stats.get("curation")
    if curation:
        filters = ", ".join(curation["filters"]) or "off"
        lines.append(f"curation ({filters}): {curation['removed']} records removed")
    if "pairs" in stats:
        lines.append(f"{stats['pairs']} preference pairs (each two sequences, below)")
    lines.append(
        f"{stats['examples']} examples, {stats['tokens']} tokens, "
        f"{stats['trained_tokens']} trained ({stats['trained_fraction']:.1%}); "
        f"lengths mean {stats['mean_length']:.0f}, max {stats['max_length']}; "
        f"eval examples {stats.get('eval_examples', 0)}"
    )
    hist = stats["length_histogram"]
    lines.append("lengths: " + ", ".join(f"{k}: {v}" for k, v in hist.items() if v))
    if "packing" in stats:
        p = stats["packing"]
        lines.append(
            f"packing: {p['rows']} rows (lower bound {p['lower_bound_rows']}), "
            f"{p['efficiency']:.2%} of token slots filled"
        )
    return "\n".join(lines)
