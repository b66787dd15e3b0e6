"""launch/eval.py: a user's file of predictions scored as worked out by hand; clear errors
for bad input. (On a trained model and a checkpoint: tests/test_train_e2e.py.)"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from framework.commands.compose import eval_config
from framework.config.commands import EvalConfig
from framework.config.schema import ConfigError, LoggerConfig
from framework.data.formats import DataError
from framework.eval.job import run_eval
from framework.eval.questions import file_questions
from tests.helpers import eval_command

# Worked out by hand (ROUGE-L F1 of "the cat" against "the cat sat": P 1, R 2/3 -> 0.8).
PREDICTIONS = [
    {"prompt": "Say it.", "reference": "the cat sat", "prediction": "the cat sat", "task": "a"},
    {"prompt": "Say it.", "reference": "the cat sat", "prediction": "The cat sat.", "task": "a"},
    {"prompt": "Say it.", "reference": "the cat sat", "prediction": "the cat", "task": "b"},
    {
        "messages": [
            {"role": "user", "content": "Keep 4 in mind."},
            {"role": "assistant", "content": "OK."},
            {"role": "user", "content": "Which number?"},
        ],
        "reference": "a b c d",
        "prediction": "x y",
        "task": "b",
    },
]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_file_of_predictions_scores_as_worked_out_by_hand(tmp_path):
    data = _write(tmp_path / "answers.jsonl", PREDICTIONS)
    cfg = EvalConfig(
        eval="questions", path=data, out=str(tmp_path / "out"), logger=LoggerConfig(backend="none")
    )
    result = run_eval(cfg)
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written == json.loads(json.dumps(result))
    summary = written["summary"]
    assert list(summary["groups"]) == ["b", "a"]
    assert summary["groups"]["a"] == {
        "n": 2,
        "held_out": None,
        "exact": 0.5,
        "normalized": 1.0,
        "rouge_l": 1.0,
    }
    assert summary["groups"]["b"]["exact"] == summary["groups"]["b"]["normalized"] == 0.0
    assert summary["groups"]["b"]["rouge_l"] == pytest.approx(0.4)
    assert summary["all"] == pytest.approx(
        {"groups": 2, "exact": 0.25, "normalized": 0.5, "rouge_l": 0.7}
    )
    assert "trained" not in summary and "held_out" not in summary  # no such split in a file
    assert [a["prediction"] for a in written["answers"]] == [
        "x y",
        "the cat",
        "The cat sat.",
        "the cat sat",
    ]
    assert written["answers"][0]["prompt"].splitlines() == [
        "user: Keep 4 in mind.",
        "assistant: OK.",
        "user: Which number?",
    ]


def test_the_command_prints_the_table_worst_first(tmp_path):
    data = _write(tmp_path / "answers.jsonl", PREDICTIONS)
    result = eval_command("eval=questions", f"path={data}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("a ", "b ", "mean:"))]
    assert rows[0].split() == ["b", "-", "2", "0.0%", "0.0%", "0.400"]
    assert rows[1].split() == ["a", "-", "2", "50.0%", "100.0%", "1.000"]
    assert rows[2].split() == ["mean:", "all", "2", "25.0%", "50.0%", "0.700"]
    assert (tmp_path / "answers.jsonl-questions" / "eval.json").is_file()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"prompt": "hi"}', "no string `reference`"),
        ('{"reference": "x"}', "no `prompt` string or `messages` list"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": '
            '"b"}], "reference": "x"}',
            "the messages must end with a user turn",
        ),
        ('{"prompt": "hi", "reference": "x", "prediction": 3}', "`prediction` must be a string"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "hi", "reference": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"^{path}:2: {message}"):
        file_questions(str(path))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (EvalConfig(), "model: give the model to evaluate"),
        (EvalConfig(model="m", split="train"), "split='train' is not one of"),
        (EvalConfig(model="m", per_family=0), "per_family=0 must be a whole number > 0"),
        (
            EvalConfig(model="m", eval="questions", path="/no/such.jsonl"),
            "path=/no/such.jsonl: no such file",
        ),
        (EvalConfig(model="m", eval="questions"), "eval=questions needs path=<file.jsonl>"),
        (
            EvalConfig(model="m", eval="my.jsonl"),
            r"eval='my.jsonl' is not one of \['suite', 'questions', 'ifeval', 'lm_eval'\] "
            r"\(a file of questions: eval=questions path=<file>\)",
        ),
        (EvalConfig(model="m", path="x.jsonl"), "path=x.jsonl: eval=suite reads no file"),
        (EvalConfig(model="m", eval="ifeval", limit=0), "limit=0 must be a whole number > 0"),
        (EvalConfig(model="m", eval="lm_eval", tasks=[]), r"tasks=\[\] names no lm-eval task"),
        (EvalConfig(eval="ifeval"), "model: give the model to evaluate"),
        (EvalConfig(model="m", held_out=["reverse", "add"]), "held_out: unknown task family"),
    ],
)
def test_bad_settings_name_their_key(cfg, message):
    # As launch/eval.py checks its composed config.
    with pytest.raises(ConfigError, match=message):
        eval_config(OmegaConf.structured(cfg))


def test_a_model_path_that_is_neither_a_model_nor_a_checkpoint_is_named(tmp_path):
    result = eval_command(f"model={tmp_path}")
    assert result.returncode == 1
    assert f"error: model={tmp_path}: holds no config.json, .gguf or step_*" in result.stderr
    assert "Traceback" not in result.stderr
