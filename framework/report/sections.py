"""The report's sections, each from one or more runs: a section's plots overlay the runs,
its tables give a row (or a table) per run. A section with nothing logged yet is left out."""

from __future__ import annotations

import math
from html import escape

from framework.report import plots
from framework.report.runs import Run

# The final figures: (metrics.jsonl key, column title).
FINAL_FIGURES = [
    ("loss", "loss"),
    ("eval_loss", "eval loss"),
    ("suite/trained/normalized", "suite trained"),
    ("suite/held_out/normalized", "suite held out"),
    ("suite/held_out_knowledge/normalized", "held-out knowledge"),
    ("suite/held_out_twists/normalized", "held-out twists"),
    ("ifeval/prompt_strict", "IFEval prompt strict"),
    ("rewards/accuracy", "reward accuracy"),
    ("eval_rewards/accuracy", "eval reward accuracy"),
    ("tokens_per_s", "tokens/s"),
    ("packing_efficiency", "slot efficiency"),
    ("peak_memory_gb", "peak memory GB"),
]
SUITE_GROUPS = ("trained", "held_out_knowledge", "held_out_twists")
STEP_PARTS = {"data wait": "data_wait_s", "compute": "compute_s", "optimizer": "optimizer_s"}
ANSWERS_SHOWN = 8
HEATMAP_COLUMNS = 12  # evaluations shown per family


def number(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and value > 99):
        return f"{int(value):,}"
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


def table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped where they came from data)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_cell(key: str, value) -> str:
    """A final figure, with its exact value kept for whoever checks the page."""
    if value is None:
        return ""
    return f'<span data-key="{escape(key)}" data-value="{value!r}">{number(value)}</span>'


def _series(runs: list[Run], labels: list[str], key: str, lines: str = "steps") -> list:
    found = []
    for run, label in zip(runs, labels, strict=True):
        points = [(line["step"], line[key]) for line in getattr(run, lines) if key in line]
        if points:
            found.append((label, [p[0] for p in points], [p[1] for p in points]))
    return found


def _curve(runs, labels, key: str, title: str, ylabel: str, lines: str = "steps", **kw) -> str:
    series = _series(runs, labels, key, lines)
    return plots.lines(title, ylabel, series, **kw) if series else ""


# ------------------------------------------------------------ overview


def overview(runs: list[Run], labels: list[str]) -> str:
    shown = [(k, t) for k, t in FINAL_FIGURES if any(r.final(k) is not None for r in runs)]
    rows = []
    for run, label in zip(runs, labels, strict=True):
        cells = [escape(label), escape(run.state), figure_cell("step", run.last_step)]
        rows.append(cells + [figure_cell(k, run.final(k)) for k, _ in shown])
    header = ["run", "state", "steps", *(t for _, t in shown)]
    named = zip(runs, labels, strict=True)
    setups = [[escape(label), *map(escape, _setup(run))] for run, label in named]
    warnings = [
        f"<p class=warn>{escape(label)}: could not read {escape(', '.join(run.unreadable))} "
        "(a line being written as the report read it, or damaged); the rest is shown.</p>"
        for run, label in zip(runs, labels, strict=True)
        if run.unreadable
    ]
    return (
        "<h2>Final figures</h2><p>The last logged value of each (training lines, then "
        "evaluations), from metrics.jsonl.</p>"
        + table(header, rows)
        + "".join(warnings)
        + "<h2>Setup</h2>"
        + table(["run", "model", "adapter", "objective", "data", "layout"], setups)
    )


def _setup(run: Run) -> list[str]:
    cfg = run.config
    model = cfg.model.name_or_path or (
        f"random init ({cfg.model.num_layers} layers, hidden {cfg.model.hidden_size})"
    )
    adapter = cfg.adapter
    tuned = (
        "full fine-tuning"
        if adapter.method == "none"
        else f"{adapter.method} rank {adapter.rank}, alpha {adapter.alpha:g}"
    )
    objective = cfg.objective.name
    if cfg.objective.name != "sft":
        objective += f" (beta {cfg.objective.beta:g})"
    sources = [s.name or s.path for s in cfg.data.sources]
    data = ", ".join(sources) or f"the built-in suite ({cfg.data.suite.train_examples} examples)"
    layout = (
        f"{cfg.layout()}, {cfg.data.max_seq_len} tokens a row, "
        f"{'packed' if cfg.data.packing else 'padded'}, ZeRO-{cfg.parallelism.zero_stage}, "
        f"{cfg.trainer.precision}, {cfg.trainer.max_steps} steps at lr {cfg.trainer.lr:g}"
    )
    return [model, tuned, objective, data, layout]


# ------------------------------------------------------------ training curves


def training(runs: list[Run], labels: list[str]) -> str:
    eval_keys = sorted({k for r in runs for e in r.evals for k in e if k.startswith("eval_loss")})
    eval_series = [
        (f"{label}: {key.removeprefix('eval_loss/') if '/' in key else 'all'}", xs, ys)
        for key in eval_keys
        for label, xs, ys in _series(runs, labels, key, "evals")
    ]
    parts = [
        _curve(runs, labels, "loss", "training loss", "loss"),
        plots.lines("eval loss per source", "loss", eval_series) if eval_series else "",
        _curve(runs, labels, "lr", "learning rate", "lr"),
        _curve(runs, labels, "grad_norm", "gradient norm (before clipping)", "norm", log_y=True),
        _curve(runs, labels, "tokens_per_s", "throughput (real tokens, all workers)", "tokens/s"),
    ]
    return _plots_section("Training", parts)


def _plots_section(title: str, parts: list[str]) -> str:
    shown = [f"<figure>{p}</figure>" for p in parts if p]
    return f"<h2>{title}</h2><div class=plots>{''.join(shown)}</div>" if shown else ""


# ------------------------------------------------------------ the instruction suite


def suite(runs: list[Run], labels: list[str]) -> str:
    series = [
        (f"{label}: {group.replace('_', ' ')}", xs, ys)
        for group in SUITE_GROUPS
        for label, xs, ys in _series(runs, labels, f"suite/{group}/normalized", "evals")
    ]
    if not series:
        return ""
    html = _plots_section(
        "Instruction suite", [plots.lines("suite accuracy (normalized match)", "accuracy", series)]
    )
    for run, label in zip(runs, labels, strict=True):
        html += _families(run, label) + _answers(run, label)
    return html


def _families(run: Run, label: str) -> str:
    """Each family's accuracy at each evaluation (HEATMAP_COLUMNS at most, the first and
    the last among them), worst first at the last one."""
    evals = [e for e in run.evals if any(k.startswith("suite/family/") for k in e)]
    if not evals:
        return ""
    evals = spread(evals, HEATMAP_COLUMNS)
    families = [k.removeprefix("suite/family/") for k in evals[-1] if k.startswith("suite/family/")]
    families.sort(key=lambda name: evals[-1][f"suite/family/{name}"])
    held_out = set(run.config.data.suite.held_out)
    rows = [f"{name}{' *' if name in held_out else ''}" for name in families]
    values = [[e.get(f"suite/family/{n}", math.nan) for e in evals] for n in families]
    columns = [str(e["step"]) for e in evals]
    figure = plots.heatmap(f"{label}: accuracy per family (* held out)", rows, columns, values)
    return f"<figure class=wide>{figure}</figure>"


def spread(items: list, count: int) -> list:
    """`count` of `items` evenly spaced, the first and the last among them (all if fewer)."""
    if len(items) <= count:
        return items
    last = len(items) - 1
    return [items[round(i * last / (count - 1))] for i in range(count)]


def _answers(run: Run, label: str) -> str:
    """A few answers of the last evaluation, from the worst families (the file's order)."""
    if not run.answers:
        return ""
    last = run.answers[-1]["step"]
    shown = [a for a in run.answers if a["step"] == last][:ANSWERS_SHOWN]
    rows = [
        [escape(a["group"]), escape(a["prompt"]), f"<pre>{escape(a['reference'])}</pre>",
         f"<pre>{escape(a['prediction'])}</pre>", "yes" if a["normalized"] else "no"]
        for a in shown
    ]  # fmt: skip
    header = ["family", "prompt", "reference", "answer", "correct"]
    return f"<h3>{escape(label)}: answers at step {last}, worst families first</h3>" + table(
        header, rows
    )


# ------------------------------------------------------------ data


def data(runs: list[Run], labels: list[str]) -> str:
    described = [(run, label) for run, label in zip(runs, labels, strict=True) if run.data]
    if not described:
        return ""
    html = "<h2>Data</h2>"
    for run, label in described:
        tables = (
            _prompts(run.data)
            if run.data.get("kind") == "prompts"
            else (_sources(run.data) + _totals(run.data))
        )
        html += f"<h3>{escape(label)}</h3>" + tables
    described = [(run, label) for run, label in described if "length_histogram" in run.data]
    if not described:
        return html
    histograms = {label: run.data["length_histogram"] for run, label in described}
    buckets = list(dict.fromkeys(b for h in histograms.values() for b in h))
    groups = {label: [h.get(b, 0) for b in buckets] for label, h in histograms.items()}
    figure = plots.bars("examples by length (tokens)", "examples", buckets, groups)
    return html + f"<div class=plots><figure>{figure}</figure></div>"


def _prompts(stats: dict) -> str:
    """An online RL run's prompts: per source, and what was attached and dropped."""
    header = ["source", "records", "skipped", "decontaminated", "kept"]
    rows = [
        [escape(name), number(s["records"]), _reasons(s["skipped"]),
         number(s["decontaminated"]), number(s["kept"])]
        for name, s in stats["sources"].items()
    ]  # fmt: skip
    verifiers = ", ".join(f"{escape(k)} {v:,}" for k, v in sorted(stats["verifiers"].items()))
    facts = [
        ("training / held-out prompts", f"{number(stats['train'])} / {number(stats['eval'])}"),
        ("prompts per verifier", verifiers),
        ("constraints attached", _reasons(stats["constraints"]["kinds"])),
    ]
    return table(header, rows) + table(["", ""], [[escape(k), v] for k, v in facts])


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{escape(k)} {v:,}" for k, v in counts.items()) or "0"


def _sources(stats: dict) -> str:
    header = ["source", "records", "skipped", "removed", "kept", "held out", "taken",
              "truncated", "dropped (too long)"]  # fmt: skip
    rows = [
        [escape(name), number(s["records"]), _reasons(s["skipped"]),
         _reasons(s.get("removed", {})), number(s["kept"]), number(s["held_out"]),
         number(s["taken"]), number(s["truncated"]), number(s["dropped_too_long"])]
        for name, s in stats["sources"].items()
    ]  # fmt: skip
    return table(header, rows)


def _totals(stats: dict) -> str:
    curation = stats.get("curation", {})
    packing = stats.get("packing")
    facts = [
        ("training examples", number(stats["examples"])),
        ("tokens (trained)", f"{number(stats['tokens'])} ({stats['trained_fraction']:.1%})"),
        ("records skipped", number(stats["skipped"])),
        ("curation filters", escape(", ".join(curation.get("filters", [])) or "none")),
        ("curation removals", _reasons(curation.get("by_reason", {}))),
        ("longest / mean example", f"{stats['max_length']:,} / {stats['mean_length']:.1f}"),
    ]
    if "pairs" in stats:
        facts.append(("preference pairs", number(stats["pairs"])))
    if packing:
        facts.append(
            ("packing", f"{packing['rows']:,} rows against a lower bound of "
             f"{packing['lower_bound_rows']:,}; {packing['efficiency']:.1%} of slots hold tokens")
        )  # fmt: skip
    return table(["", ""], [[escape(k), v] for k, v in facts])


# ------------------------------------------------------------ performance


def performance(runs: list[Run], labels: list[str]) -> str:
    timed = [(r, label) for r, label in zip(runs, labels, strict=True) if r.steps]
    if not timed:
        return ""
    parts: dict[str, dict[str, float]] = {part: {} for part in [*STEP_PARTS, "other"]}
    for run, label in timed:
        means = {k: sum(s.get(k, 0.0) for s in run.steps) / len(run.steps)
                 for k in [*STEP_PARTS.values(), "step_time_s"]}  # fmt: skip
        for part, key in STEP_PARTS.items():
            parts[part][label] = means[key]
        parts["other"][label] = max(
            means["step_time_s"] - sum(means[k] for k in STEP_PARTS.values()), 0.0
        )
    figures = [
        plots.stacked_bars("a step's time, mean over logged steps (slowest rank)", "s", parts),
        _curve(runs, labels, "peak_memory_gb", "peak memory (largest rank)", "GB"),
        _curve(runs, labels, "step_time_skew", "rank skew: slowest / fastest rank's step", "x"),
        _curve(runs, labels, "mfu", "model FLOPs utilisation", "MFU"),
    ]
    return _plots_section("Performance", figures)


# ------------------------------------------------------------ preference tuning


def preference(runs: list[Run], labels: list[str]) -> str:
    figures = [
        _curve(runs, labels, "rewards/margin", "reward margin (chosen - rejected)", "margin"),
        _curve(runs, labels, "rewards/accuracy", "reward accuracy (chosen > rejected)", "share"),
        _curve(runs, labels, "eval_rewards/margin", "eval reward margin", "margin", "evals"),
        _curve(runs, labels, "eval_rewards/accuracy", "eval reward accuracy", "share", "evals"),
    ]
    return _plots_section("Preference tuning", figures)


# ------------------------------------------------------------ online RL


def online_rl(runs: list[Run], labels: list[str]) -> str:
    per_verifier = sorted(
        {key for run in runs for line in run.steps for key in line if key.startswith("reward/")}
    )
    figures = [
        _curve(runs, labels, "reward", "mean reward of the sampled completions", "reward"),
        *(_curve(runs, labels, key, f"mean {key}", "reward") for key in per_verifier),
        _curve(runs, labels, "kl", "KL to the reference (k3, per token)", "nats"),
        _curve(runs, labels, "clip_fraction", "tokens whose ratio was clipped", "share"),
        _curve(runs, labels, "completion_tokens", "completion length (mean)", "tokens"),
        _curve(runs, labels, "truncated", "completions cut at the token budget", "share"),
        _curve(runs, labels, "uniform_groups", "groups whose rewards are all equal", "share"),
        _curve(runs, labels, "logp_gap", "learner vs sampler log-prob gap (fresh)", "nats"),
        _curve(runs, labels, "entropy", "sampling entropy (per token)", "nats"),
        # Inside the fresh step's data wait (the round is sampled when its batches are due).
        _curve(runs, labels, "generate_s", "sampling time per round (slowest rank)", "s"),
        _curve(runs, labels, "step_time_s", "step time (sampling included)", "s"),
    ]
    if any(line.get("weight_sync_mb") for run in runs for line in run.steps):  # actors
        figures.append(
            _curve(runs, labels, "weight_sync_s", "weights sent to the generation actors", "s")
        )
    return _plots_section("Online RL", figures)
