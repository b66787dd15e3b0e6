"""Chat with a model: a run's hf/ export, a checkpoint, a preset (smollm2_135m), a .gguf
file, a Hugging Face directory or hub id (framework/hf/resolve.py).

python launch/chat.py model=outputs/smollm2-sft/hf                  # interactive
python launch/chat.py model=smollm2_135m --prompt "Capital of Peru?" # the untrained model
python launch/chat.py model=outputs/smollm2-sft/hf --prompt "hello"   # answer once, exit 0
python launch/chat.py model=outputs/smollm2-sft/hf system="Be brief." temperature=0.7

`--prompt "..."` is shorthand for the Hydra override `prompt=...` (Hydra itself rejects
unknown flags), quoted so that the text arrives exactly as written. The keys are those of
framework.config.commands.ChatConfig (launch/conf/chat.yaml). Interactive mode reads lines after a
`> ` prompt: `/reset` clears the history, `/exit` or Ctrl-D quits, Ctrl-C stops a reply.
Replies stream to stdout; in one-shot mode stdout holds the reply and nothing else.
"""

from __future__ import annotations

import readline  # noqa: F401  (line editing and history for input() at the prompt)
import sys

import hydra
from omegaconf import DictConfig

from framework.commands.chat import Conversation, interact, load_model, prompt_flag_as_override
from framework.commands.cli import exit_on_user_error
from framework.commands.compose import chat_config, register_schemas

register_schemas()


# Its config outside conf/: there, Hydra would take `model=<dir>` for a choice of the
# training config's `model` group.
@hydra.main(config_path="conf", config_name="chat", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = chat_config(raw)
        model, tokenizer = load_model(cfg)
    conversation = Conversation(model, tokenizer, cfg)
    if cfg.prompt is not None:
        conversation.ask(cfg.prompt)
        return
    print(
        f"chatting with {cfg.model} on {model.device} ({model.dtype}); "
        "/reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops a reply",
        flush=True,
    )
    interact(conversation)


if __name__ == "__main__":
    with exit_on_user_error():
        sys.argv = prompt_flag_as_override(sys.argv)
    main()
