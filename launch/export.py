"""Export a checkpoint as a Hugging Face model directory, verified by reloading it.

python launch/export.py checkpoint=outputs/tiny-sft/checkpoints out=outputs/tiny-sft/export
python launch/export.py checkpoint=outputs/tiny-sft/checkpoints/step_00000100 out=step100

`checkpoint` is a step_* directory, or a run's checkpoint directory (run.checkpoint_dir)
for its newest committed checkpoint. One CPU process, whatever ZeRO stage and number of
workers wrote it; `out` is replaced only once the new export has passed verification.
The keys are framework.config.schema.ExportConfig's (conf/export.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from framework.cli import exit_on_user_error
from framework.config.compose import export_config, register_schemas

register_schemas()


@hydra.main(config_path="../conf", config_name="export", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = export_config(raw)

        from framework import export  # imported late: DeepSpeed takes seconds to load

        source = export.find_checkpoint(cfg.checkpoint)
        print(f"exporting {source}", flush=True)
        out = export.export_checkpoint(source, cfg.out)
    print(
        f"done: {out} holds the model (reloaded and verified: every weight equal to the "
        "checkpoint's, logits matching)",
        flush=True,
    )


if __name__ == "__main__":
    main()
