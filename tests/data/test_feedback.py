"""The server's conversation log as preference pairs (framework/data/feedback.py), written
by the server's own log (framework/serve/conversations.py) and curated as any pairs."""

from __future__ import annotations

import pytest

from framework.commands.prepare import prepare_run
from framework.config.schema import ConfigError
from framework.data.feedback import feedback_records
from framework.data.formats import DataError
from framework.run.files import CONVERSATIONS_FILE
from framework.serve.conversations import ConversationLog
from framework.suite.build import eval_items
from tests.helpers import TINY_RUN, compose_config


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_preferred_replies_and_opposite_ratings_make_pairs_the_rest_is_counted(tmp_path, capsys):
    log = ConversationLog(str(tmp_path), retention_days=30)
    for reply_id, prompt, reply in [("a", "Name a colour.", "Blue."), ("b", "Name a colour.", "7"),
                                    ("c", "Capital of Peru?", "Paris."), ("d", "Hi", "Hello!"),
                                    ("e", "Hi", "Hello!")]:  # fmt: skip
        log.record_exchange(reply_id, _user(prompt), reply)
    log.record_feedback({"id": "a", "rating": -1})
    log.record_feedback({"id": "a", "rating": 1})  # the latest word counts
    log.record_feedback({"id": "b", "rating": -1})
    log.record_feedback({"id": "c", "preferred": "Lima."})
    log.record_feedback({"id": "d", "rating": 1})  # the same reply as e: no pair
    log.record_feedback({"id": "e", "rating": -1})
    pairs = [record for _, record in feedback_records(str(tmp_path))]
    assert pairs == [
        {"prompt": _user("Capital of Peru?"), "chosen": "Lima.", "rejected": "Paris."},
        {"prompt": _user("Name a colour."), "chosen": "Blue.", "rejected": "7"},
    ]
    assert "5 logged replies, 5 rated, 2 pairs; 2 rated replies made no pair" in (
        capsys.readouterr().out
    )


def test_a_feedback_source_is_deduplicated_and_decontaminated_as_any_pairs(tmp_path):
    log_dir = tmp_path / "log"
    log = ConversationLog(str(log_dir), retention_days=30)
    suite_test = eval_items(["odd_one_out"], "test", 1, seed=0)[0].prompt  # an eval prompt
    for index, prompt in enumerate([_user("Name a colour."), _user("Name a colour."), suite_test]):
        log.record_exchange(str(index), prompt, "no idea")
        log.record_feedback({"id": str(index), "preferred": "Blue."})
    cfg = compose_config(
        [*TINY_RUN, "objective=dpo", f"data.sources=[{{path: '{log_dir}', format: feedback}}]",
         "data.eval_fraction=0", "cluster.num_workers=1", "trainer.micro_batch_size=1",
         f"run.output_dir={tmp_path / 'run'}",
         f"run.cache_dir={tmp_path / 'cache'}"]
    )  # fmt: skip
    (source,) = prepare_run(cfg).stats["sources"].values()
    assert source["records"] == 3 and source["kept"] == 1
    assert source["removed"] == {"duplicate": 1, "contaminated": 1}


def test_a_feedback_source_needs_a_preference_objective_and_a_log(tmp_path):
    with pytest.raises(ConfigError, match=r"format=feedback gives preference pairs.*dpo"):
        compose_config([*TINY_RUN, f"data.sources=[{{path: '{tmp_path}', format: feedback}}]"])
    with pytest.raises(DataError, match=f"no {CONVERSATIONS_FILE}.*log_dir"):
        list(feedback_records(str(tmp_path)))
    (tmp_path / CONVERSATIONS_FILE).write_text('{"id": "a", "messages": []}\n')
    with pytest.raises(DataError, match=f"{CONVERSATIONS_FILE}:1: .*has"):
        list(feedback_records(str(tmp_path)))
