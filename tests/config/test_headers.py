"""Every shipped config starts with the commands that run it (`#   python launch/...`):
each one composes into its script's checked config, as the script would compose it. Only
composed, never run: tests/commands/test_prepare.py prepares every data recipe for real."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from framework.commands.chat import prompt_flag_as_override
from framework.commands.compose import (
    CONF_DIR,
    chat_config,
    compose_train_config,
    eval_config,
    export_config,
    improve_config,
    serve_config,
)

COMMAND = re.compile(r"#\s+python (launch/\S+\.py.*)")
# The other commands' configs: launch/conf/<script>.yaml (train.py and prepare.py compose
# conf/train.yaml with its groups).
COMMAND_CONF_DIR = Path(CONF_DIR).parent / "launch" / "conf"
# launch/<script>.py -> what turns its composition into its checked config.
OTHER_SCRIPTS = {
    "chat": chat_config,
    "eval": eval_config,
    "export": export_config,
    "improve": improve_config,
    "serve": serve_config,
}


def header_commands() -> list:
    """(config file, line number, argv) for each command in a config's leading comments."""
    found = []
    root = Path(CONF_DIR).parent
    for path in sorted([*Path(CONF_DIR).rglob("*.yaml"), *COMMAND_CONF_DIR.glob("*.yaml")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.startswith("#"):
                break
            match = COMMAND.fullmatch(line)
            if match:
                name = f"{path.relative_to(root)}:{number}"
                found.append(pytest.param(shlex.split(match[1], comments=True), id=name))
    return found


def _compose_other(script: str, overrides: list[str]):
    GlobalHydra.instance().clear()  # compose_train_config initialises conf/ again
    try:
        with initialize_config_dir(str(COMMAND_CONF_DIR), version_base=None):
            raw = compose(config_name=script, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    return OTHER_SCRIPTS[script](raw)


def test_the_headers_name_scripts_that_exist():
    commands = [p.values[0] for p in header_commands()]
    assert len(commands) > 40  # every config file's header, not a broken pattern
    scripts = {argv[0] for argv in commands}
    assert all((Path(CONF_DIR).parent / s).is_file() for s in scripts), scripts
    assert {Path(s).stem for s in scripts} <= {"train", "prepare", *OTHER_SCRIPTS}


@pytest.mark.parametrize("argv", header_commands())
def test_every_header_command_composes(argv, tmp_path):
    # my.jsonl stands for the user's own file: one question, as eval=questions reads it.
    mine = tmp_path / "my.jsonl"
    mine.write_text('{"prompt": "What is 2+2?", "reference": "4"}\n')
    script = Path(argv[0]).stem
    overrides = [arg.replace("=my.jsonl", f"={mine}") for arg in argv[1:]]
    if script in ("train", "prepare"):
        cfg = compose_train_config(overrides)
        assert cfg.data.max_seq_len > 0
    else:
        overrides = prompt_flag_as_override(["chat.py", *overrides])[1:]
        assert _compose_other(script, overrides) is not None
