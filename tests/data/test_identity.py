"""A checkpoint records what its run's data was; a resume on other data stops, naming what
changed, or (checkpoint.resume_on_changed_data=continue) says where it continues."""

import copy
import json
import logging
import os

import pytest

from framework.commands.prepare import prepare_run
from framework.config.schema import ConfigError
from framework.data import cache, identity
from framework.run.checkpoints import committed, read_progress
from framework.train import checkpoint
from tests.helpers import RUN, compose_config, run


def _write_chats(path, count: int):
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": f"{i}"},
            ]
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    return path


def _summary(cfg, tokenizer):
    found = cache.artifact_identity(cfg.data, tokenizer, cfg.trainer.seed, cfg.objective.pairs)
    return identity.summarize(found, cfg.data, cache.digest(found))


def test_changes_name_each_kind_of_change(tmp_path, tokenizer):
    data = _write_chats(tmp_path / "chats.jsonl", 40)
    cfg = compose_config([f"data.path={data}", "data.max_seq_len=128"])
    recorded = _summary(cfg, tokenizer)
    assert identity.changes(recorded, _summary(cfg, tokenizer)) is None
    # A checkpoint or an artifact from before these records: resumed as before.
    assert identity.changes(None, recorded) is None
    assert identity.changes(recorded, None) is None

    other = compose_config([f"data.path={data}", "data.max_seq_len=64", "trainer.seed=5"])
    assert identity.changes(recorded, _summary(other, tokenizer)) == (
        "data.max_seq_len changed (128 -> 64); trainer.seed changed (1234 -> 5)"
    )
    template = copy.deepcopy(tokenizer)
    template.chat_template = "{{ messages }}"
    assert identity.changes(recorded, _summary(cfg, template)) == "the chat template changed"
    vocabulary = copy.deepcopy(tokenizer)
    vocabulary.add_tokens(["<new>"])
    assert identity.changes(recorded, _summary(cfg, vocabulary)) == "the tokenizer changed"
    everything = compose_config(
        [f"data.path={data}", "data.max_seq_len=64", "trainer.seed=5", "data.train_on=all"]
    )
    assert identity.changes(recorded, _summary(everything, vocabulary)).endswith(
        "trainer.seed changed (1234 -> 5) and 1 more"
    )

    size = data.stat().st_size
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert identity.changes(recorded, _summary(cfg, tokenizer)) == (
        f"data.sources[0] {data} changed (same size, modified since)"
    )
    _write_chats(data, 20)
    assert identity.changes(recorded, _summary(cfg, tokenizer)) == (
        f"data.sources[0] {data} changed (size {size} -> {data.stat().st_size} bytes)"
    )


def test_a_resume_on_edited_data_stops_or_continues_as_asked(tmp_path, caplog):
    """A 2-step run on a JSONL file, checkpointed; the same data resumes silently; half the
    records removed, the resume stops naming the file (and the tokenizer, trained on it);
    with checkpoint.resume_on_changed_data=continue it goes on from step 2, and says so."""
    data = _write_chats(tmp_path / "chats.jsonl", 200)
    out, cache_dir = tmp_path / "run", tmp_path / "cache"
    steps = [f"data.path={data}", "trainer.max_steps=2", "checkpoint.every=2"]
    run(out, cache_dir, *steps, world=1)
    (saved,) = committed(out / "checkpoints")
    assert read_progress(saved)["data"] == checkpoint.run_data_identity(out)

    def resume(*more):
        where = [f"run.output_dir={out}", f"run.cache_dir={cache_dir}"]
        cfg = compose_config([*RUN, *steps, *where, *more])
        cfg = prepare_run(cfg).cfg
        return checkpoint.check_resume(cfg)

    with caplog.at_level(logging.WARNING):
        assert resume("trainer.max_steps=4") == saved
    assert not caplog.records

    size = data.stat().st_size
    _write_chats(data, 100)
    with pytest.raises(ConfigError) as refused:
        resume("trainer.max_steps=4")
    assert str(refused.value) == (
        f"{saved} was trained on other data: data.sources[0] {data} changed (size {size} -> "
        f"{data.stat().st_size} bytes); the tokenizer changed; set "
        "checkpoint.resume_on_changed_data=continue to continue from step 2 on the new data, "
        "or start afresh in another run.output_dir"
    )
    with caplog.at_level(logging.WARNING):
        assert resume("trainer.max_steps=4", "checkpoint.resume_on_changed_data=continue") == saved
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"resuming {saved} on changed data (data.sources[0] {data} changed")
    assert said.endswith(
        "the run continues at step 2, row 4 of epoch 0 of the new data's packed stream "
        "(checkpoint.resume_on_changed_data=continue); not an exact continuation"
    )
    with pytest.raises(ConfigError, match="resume_on_changed_data='carry_on' is not one of"):
        compose_config(["checkpoint.resume_on_changed_data=carry_on"])
