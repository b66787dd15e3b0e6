"""Evaluate a model: greedy answers to the suite's test split (or a JSONL of prompts with
references), scored per task family and for trained vs held-out families; IFEval's prompts
judged by the official checkers; or lm-eval tasks on the model's export.

python launch/eval.py model=outputs/smollm2-sft/hf
python launch/eval.py model=outputs/smollm2-sft/checkpoints split=validation per_family=20
python launch/eval.py model=outputs/smollm2-sft/hf eval=questions path=my_questions.jsonl
python launch/eval.py model=smollm2_135m eval=ifeval path=../shared/data/ifeval/input_data.jsonl
python launch/eval.py model=outputs/smollm2-sft/hf eval=lm_eval tasks=[ifeval] limit=20

`model` is any name framework/hf/resolve.py accepts: a run's hf/, a step_* checkpoint
or a run's checkpoint directory, a preset (model=smollm2_135m: the untrained base model),
a .gguf file, a Hugging Face directory or hub id. A table goes to stdout, every answer
(worst first) to `<out>/eval.json` (default `<model>-eval/`, `<model>-<eval>/` for
ifeval, questions and lm_eval), and both to a wandb
run (offline unless an API key is set). The keys are framework.config.commands.EvalConfig's
(launch/conf/eval.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import eval_config, register_schemas
from framework.eval.job import output_dir, run_eval
from framework.run.files import EVAL_FILE

register_schemas()


# Its config outside conf/: there, Hydra would take `model=<dir>` for a choice of the
# training config's `model` group.
@hydra.main(config_path="conf", config_name="eval", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = eval_config(raw)
        run_eval(cfg)
    print(f"done: {output_dir(cfg) / EVAL_FILE}", flush=True)


if __name__ == "__main__":
    main()
