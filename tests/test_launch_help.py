"""What a newcomer sees first: each command's --help says what the command does and shows
its own options only, with no library noise above it."""

import subprocess
import sys

from tests.helpers import ROOT

COMMANDS = ("train", "prepare", "chat", "eval", "export", "improve", "serve")
TRAIN_GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())


def _helps() -> dict[str, str]:
    # All at once: each costs a few seconds of imports.
    runs = {
        command: subprocess.Popen(
            [sys.executable, f"launch/{command}.py", "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in COMMANDS
    }
    helps = {}
    for command, run in runs.items():
        out, _ = run.communicate(timeout=300)  # six imports at once on two loaded cores
        assert run.returncode == 0, f"{command}: {out}"
        helps[command] = out
    return helps


def test_each_command_help_shows_its_own_options_only():
    helps = _helps()
    for command, text in helps.items():
        # The first line is ours (DeepSpeed's CPU fallback warning used to come first).
        # prepare.py shares train.py's config, and its help, which names both.
        first = "train" if command == "prepare" else command
        assert text.startswith(f"launch/{first}.py "), f"{command}: {text[:300]}"
        assert "Setting accelerator" not in text
    for command in ("train", "prepare"):
        text = helps[command]
        section = text.split("== Config groups (group=option) ==\n")[1].split("\n\n")[0]
        assert [line.split(":")[0] for line in section.splitlines()] == TRAIN_GROUPS, text
        assert "smollm2_135m, tiny_llama" in text and "launch/prepare.py builds" in text
        # Not the composed config: its random-init sizes read as the default model's.
        assert (
            "vocab_size" not in text and f"launch/{command}.py model=tiny_llama --cfg job" in text
        )
    for command in ("chat", "eval", "export", "improve"):
        text = helps[command]
        assert "\nmodel: " in text and "parallelism" not in text and "groups" not in text
    assert "\nrounds: 2\n" in helps["improve"] and "\nout: ???\n" in helps["export"]
