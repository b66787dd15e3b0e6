"""Export a model as a verified Hugging Face directory: a checkpoint's trained weights, or
any other model name converted (a .gguf file, a preset such as smollm2_135m).

python launch/export.py model=outputs/tiny-sft/checkpoints out=outputs/tiny-sft/export
python launch/export.py model=outputs/tiny-sft/checkpoints/step_00000100 out=step100
python launch/export.py model=smollm2_135m out=smollm2-hf
python launch/export.py model=outputs/tiny-sft/hf out=tiny.gguf format=gguf gguf_type=q8_0

`model` takes every form framework/hf/resolve.py accepts; for a checkpoint, a step_*
directory or a run's checkpoint directory (run.checkpoint_dir) for its newest committed
one, in one CPU process, whatever ZeRO stage and number of workers wrote it. `out` is
replaced only once the new export has reloaded with equal weights and logits. The keys
are framework.config.commands.ExportConfig's (launch/conf/export.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import export_config, register_schemas

register_schemas()


@hydra.main(config_path="conf", config_name="export", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = export_config(raw)

        # imported late: DeepSpeed takes seconds to load
        from framework.hf.checkpoint_export import export_model

        out = export_model(cfg)
    if cfg.format == "gguf":  # export_model said how close the file came back
        print(f"done: {out} holds the model", flush=True)
        return
    print(
        f"done: {out} holds the model (reloaded and verified: every weight equal to the "
        "checkpoint's, logits matching)",
        flush=True,
    )


if __name__ == "__main__":
    main()
