"""Serve a model over HTTP with OpenAI's chat completions API: a run's hf/ export, a
checkpoint, a preset (smollm2_135m), a .gguf file, a Hugging Face directory or hub id
(framework/hf/resolve.py), with its own chat template.

python launch/serve.py model=outputs/smollm2-sft/hf                     # 127.0.0.1:8000
python launch/serve.py model=outputs/smollm2-sft/hf port=8080 api_key=<key>
SERVE_API_KEY=<key> python launch/serve.py model=outputs/smollm2-sft/hf host=0.0.0.0
python launch/serve.py model=outputs/smollm2-sft/hf log_dir=outputs/smollm2-sft/feedback

Any OpenAI client talks to it: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=<key>).
Routes: POST /v1/chat/completions (stream or not), GET /v1/models, GET /health (no key),
and with log_dir POST /v1/feedback {"id": <a reply's id>, "rating": 1 or -1, "preferred":
<a better reply>}. The keys are framework.config.commands.ServeConfig's
(launch/conf/serve.yaml). It runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import register_schemas, serve_config

register_schemas()


@hydra.main(config_path="conf", config_name="serve", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = serve_config(raw)

        # imported late: the server's libraries load only when one is started
        from framework.serve.app import serve

        serve(cfg, dict(os.environ))


if __name__ == "__main__":
    main()
