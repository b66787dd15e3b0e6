"""The bridge to the rest of lm-evaluation-harness: lm-eval tasks run on the model's Hugging
Face export by lm-eval's own `hf` backend (its prompts, chat-template handling, generation
and metrics), so a number here is lm-eval's number. Task data comes from the hub or a warm
datasets cache; offline, path= serves the ifeval task from the benchmark's own file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from framework.config.commands import EvalConfig
from framework.config.schema import ConfigError
from framework.eval.ifeval import checkers
from framework.hf.local import inference_dtype, resolve_device
from framework.hf.resolve import resolve_model


def run_lm_eval(cfg: EvalConfig) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """lm-eval's results per task ({task: {"metric,filter": value}}) and every sample's
    reply and metrics per task; lm-eval's table printed."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    checkers()  # NLTK's Punkt model in place before lm-eval's ifeval module is imported
    model_dir = resolve_model(cfg.model, cfg.cache_dir)
    device = resolve_device(cfg.device)
    dtype = str(inference_dtype(cfg.dtype, device)).removeprefix("torch.")
    print(f"lm-eval: tasks {cfg.tasks} on {model_dir} ({dtype}, {device})", flush=True)
    with tempfile.TemporaryDirectory() as tasks_dir:
        manager = TaskManager(include_path=_ifeval_from_file(cfg, tasks_dir))
        unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"tasks: {unknown} are not lm-eval tasks (lm-eval --tasks list)")
        try:
            output = lm_eval.simple_evaluate(
                model="hf",
                model_args={
                    "pretrained": model_dir,
                    "dtype": dtype,
                    "trust_remote_code": cfg.trust_remote_code,
                },
                tasks=list(cfg.tasks),
                batch_size=cfg.batch_size,
                device=str(device),
                limit=cfg.limit,
                apply_chat_template=True,
                gen_kwargs={"max_gen_toks": cfg.max_new_tokens} if cfg.max_new_tokens else None,
                task_manager=manager,
                log_samples=True,
            )
        except (ConnectionError, OSError) as err:  # the hub unreachable, no cached data
            reason = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"tasks={list(cfg.tasks)}: lm-eval could not load the task data ({reason}); "
                "it needs the hub or a warm datasets cache (for ifeval: path=<its file>)"
            ) from None
    print(make_table(output), flush=True)
    samples = {
        task: [
            {"doc_id": s["doc_id"], "reply": s["filtered_resps"][0], **_metrics(s, task, output)}
            for s in rows
        ]
        for task, rows in output["samples"].items()
    }
    return output["results"], samples


def _metrics(sample: dict, task: str, output: dict) -> dict:
    names = [m.split(",")[0] for m in output["results"][task] if "," in m]
    return {name: sample[name] for name in names if name in sample}


def _ifeval_from_file(cfg: EvalConfig, tasks_dir: str) -> str | None:
    """A task directory whose `ifeval` is lm-eval's own, reading cfg.path (JSON lines)
    instead of the hub; lm-eval lets a later task directory override a built-in task."""
    if cfg.path is None:
        return None
    builtin = Path(checkers().__file__).parent / "ifeval.yaml"
    yaml = (
        f"include: {builtin}\n"
        "task: ifeval\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{train: {Path(cfg.path).resolve()}}}\n"
    )
    (Path(tasks_dir) / "ifeval_from_file.yaml").write_text(yaml, encoding="utf-8")
    return tasks_dir
