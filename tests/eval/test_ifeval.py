"""IFEval: the official checkers' verdicts on hand-written replies (against the if-verifiable
package's copy of the same checkers), the four aggregates against hand values and
lm-eval's own aggregation, the offline Punkt model, bad input, and launch/eval.py
eval=ifeval end to end on the tiny model, next to lm-eval's harness on the same model."""

from __future__ import annotations

import json
import re

import pytest

from framework.config.schema import ConfigError
from framework.data.formats import DataError
from framework.eval.ifeval import IFEvalPrompt, checkers, judge, load_prompts, summarize
from tests.helpers import SHARED_DATA, eval_command

IFEVAL_FILE = SHARED_DATA / "ifeval" / "input_data.jsonl"
ENGLISH = "this answer is written in plain english so that the language check can tell"
END = "Is there anything else I can help with?"

# (instruction id, its kwargs, reply, strict verdict, loose verdict), worked out by hand.
CASES = [
    ("punctuation:no_comma", {}, "No commas appear in this reply.", True, True),
    ("punctuation:no_comma", {}, "Yes, there is one.", False, False),
    ("punctuation:no_comma", {}, "Sure, here it is:\nno commas in this line", False, True),
    ("change_case:english_lowercase", {}, ENGLISH + ".", True, True),
    ("change_case:english_lowercase", {}, f"**Answer**\n{ENGLISH}.", False, True),
    ("change_case:english_capital", {}, ENGLISH.upper() + ".", True, True),
    ("detectable_format:json_format", {}, '```json\n{"answer": 1}\n```', True, True),
    ("detectable_format:json_format", {}, "answer: 1", False, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one", False, False),
    ("detectable_format:title", {}, "<<A Title>>\nThe body.", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* *b*", True, True),
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "one two three four five",
        True,
        True,
    ),
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "only three words",
        False,
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "Mr. Smith met Dr. Jones in Washington. They left.",  # 2 sentences for Punkt
        True,
        True,
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First paragraph.\n***\nSecond paragraph.",
        True,
        True,
    ),
    ("startend:end_checker", {"end_phrase": END}, f"Done. {END}", True, True),
    ("startend:end_checker", {"end_phrase": END}, f"Done. {END}\n**", False, True),
    ("startend:quotation", {}, '"All of it quoted."', True, True),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple and a pear.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "This is bad.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. Bye.", True, True),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
]


def _prompt(kind: str, kwargs: dict, key: int = 1) -> IFEvalPrompt:
    return IFEvalPrompt(key=key, prompt="Answer.", instruction_ids=(kind,), kwargs=(kwargs,))


def _reference_verdicts(prompt: IFEvalPrompt, reply: str) -> tuple[list[bool], list[bool]]:
    """The same checkers as if-verifiable packages them, with its own strict/loose logic."""
    checkers()  # the Punkt model in place for if-verifiable's NLTK calls too
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    results, _ = evaluate_instructions(
        reply, list(prompt.instruction_ids), list(prompt.kwargs), prompt.prompt, INSTRUCTION_DICT
    )
    return [r.strict_pass for r in results], [r.loose_pass for r in results]


@pytest.mark.parametrize(("kind", "kwargs", "reply", "strict", "loose"), CASES)
def test_verdicts_on_hand_written_replies_equal_the_official_packages(
    kind, kwargs, reply, strict, loose
):
    prompt = _prompt(kind, kwargs)
    judged = judge(prompt, reply)
    assert (judged.strict, judged.loose) == ([strict], [loose])
    assert _reference_verdicts(prompt, reply) == ([strict], [loose])


def test_the_cases_cover_a_dozen_instruction_kinds_and_both_modes():
    assert len({case[0] for case in CASES}) >= 12
    assert any(strict != loose for *_, strict, loose in CASES)


# Four prompts, six instructions; verdicts by hand:
#   strict: [T] [F, F] [F, F] [T]  -> prompts 2/4, instructions 2/6
#   loose:  [T] [T, T] [F, F] [T]  -> prompts 3/4, instructions 4/6
AGGREGATE_CASES = [
    (("punctuation:no_comma",), ({},), "Fine."),
    (
        ("punctuation:no_comma", "change_case:english_lowercase"),
        ({}, {}),
        f"Sure, Here:\n{ENGLISH}.",
    ),
    (
        ("length_constraints:number_words", "startend:end_checker"),
        ({"relation": "at least", "num_words": 5}, {"end_phrase": END}),
        "Too short.",
    ),
    (("detectable_format:json_format",), ({},), '{"a": [1, 2]}'),
]


def _aggregate_prompts() -> list[tuple[IFEvalPrompt, str]]:
    return [
        (IFEvalPrompt(key=i, prompt="Answer.", instruction_ids=ids, kwargs=kwargs), reply)
        for i, (ids, kwargs, reply) in enumerate(AGGREGATE_CASES)
    ]


def test_the_four_aggregates_equal_hand_values_and_lm_evals_aggregation():
    pairs = _aggregate_prompts()
    summary = summarize([judge(p, reply) for p, reply in pairs])
    assert (summary["prompts"], summary["instructions"]) == (4, 6)
    assert summary["prompt_strict"] == pytest.approx(2 / 4)
    assert summary["inst_strict"] == pytest.approx(2 / 6)
    assert summary["prompt_loose"] == pytest.approx(3 / 4)
    assert summary["inst_loose"] == pytest.approx(4 / 6)

    utils = checkers()  # lm-eval's task module: process_results per doc, then its aggregation
    docs = [
        {
            "key": p.key,
            "prompt": p.prompt,
            "instruction_id_list": list(p.instruction_ids),
            "kwargs": list(p.kwargs),
        }
        for p, _ in pairs
    ]
    per_doc = [
        utils.process_results(doc, [reply]) for doc, (_, reply) in zip(docs, pairs, strict=True)
    ]
    for mode in ("strict", "loose"):
        prompt_level = [d[f"prompt_level_{mode}_acc"] for d in per_doc]
        assert summary[f"prompt_{mode}"] == pytest.approx(sum(prompt_level) / len(prompt_level))
        inst_level = utils.agg_inst_level_acc([d[f"inst_level_{mode}_acc"] for d in per_doc])
        assert summary[f"inst_{mode}"] == pytest.approx(inst_level)


def test_kinds_come_worst_first_with_the_failing_prompts():
    pairs = _aggregate_prompts()
    kinds = summarize([judge(p, reply) for p, reply in pairs])["kinds"]
    # By strict accuracy, then loose, then name.
    assert list(kinds) == [
        "length_constraints:number_words",
        "startend:end_checker",
        "change_case:english_lowercase",
        "punctuation:no_comma",
        "detectable_format:json_format",
    ]
    assert kinds["punctuation:no_comma"] == {"n": 2, "strict": 0.5, "loose": 1.0, "failing": [1]}
    assert kinds["detectable_format:json_format"]["failing"] == []


def test_the_offline_punkt_model_is_nltks_english_one():
    checkers()
    import nltk
    from punkt.data import load_bundled

    loaded = nltk.tokenize.punkt.PunktTokenizer("english")._params
    bundled = load_bundled("english")
    assert loaded.abbrev_types == bundled.abbrev_types and len(loaded.abbrev_types) > 100
    assert loaded.collocations == bundled.collocations
    assert loaded.sent_starters == bundled.sent_starters
    assert dict(loaded.ortho_context) == dict(bundled.ortho_context)


def test_the_benchmark_file_loads_whole_and_limited():
    prompts = load_prompts(str(IFEVAL_FILE))
    assert len(prompts) == 541
    assert len({p.key for p in prompts}) == 541
    assert sum(len(p.instruction_ids) for p in prompts) == 834
    assert load_prompts(str(IFEVAL_FILE), limit=5) == prompts[:5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"key": 1, "prompt": "x"}', "not an IFEval prompt"),
        (
            '{"key": 1, "prompt": "x", "instruction_id_list": ["a:b"], "kwargs": [{}]}',
            r"unknown instruction ids \['a:b'\]",
        ),
        (
            '{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], '
            '"kwargs": []}',
            "instruction_id_list and kwargs must be lists of one length",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, message):
    good = IFEVAL_FILE.read_text().splitlines()[0]
    path = tmp_path / "ifeval.jsonl"
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(DataError, match=f"^{path}:2: {message}"):
        load_prompts(str(path))


def test_a_missing_file_names_the_key():
    with pytest.raises(ConfigError, match=r"^path=/no/such\.jsonl: no such file"):
        load_prompts("/no/such.jsonl")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["path=/no/such.jsonl"], "error: path=/no/such.jsonl: no such file; give IFEval's"),
        (["limit=0"], "error: limit=0 must be a whole number > 0"),
        (["limit=-3"], "error: limit=-3 must be a whole number > 0"),
    ],
)
def test_bad_path_and_bad_limit_give_one_clear_error(tiny_model_dir, overrides, message):
    result = eval_command(f"model={tiny_model_dir}", "eval=ifeval", *overrides)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_path_and_no_hub_says_to_give_the_file(tiny_model_dir):
    result = eval_command(f"model={tiny_model_dir}", "eval=ifeval", HF_HUB_OFFLINE="1")
    assert result.returncode == 1
    assert "error: eval=ifeval: google/IFEval could not be loaded from the hub" in result.stderr
    assert "offline, give path=<input_data.jsonl>" in result.stderr
    assert "Traceback" not in result.stderr


def test_ifeval_end_to_end_on_the_tiny_model_matches_lm_evals_harness(tiny_model_dir, tmp_path):
    # fp32: in bf16 the two paths round differently and a random model flips near-ties.
    common = [f"model={tiny_model_dir}", f"path={IFEVAL_FILE}", "limit=5", "max_new_tokens=12"]
    common.append("dtype=fp32")
    ours = eval_command(*common, "eval=ifeval", f"out={tmp_path / 'ours'}", "batch_size=2")
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert "prompt-level accuracy" in ours.stdout and "instruction-level accuracy" in ours.stdout
    written = json.loads((tmp_path / "ours" / "eval.json").read_text())
    assert written["eval"] == "ifeval" and written["summary"]["prompts"] == 5
    assert len(written["replies"]) == 5
    assert all(len(r["strict"]) == len(r["instruction_ids"]) for r in written["replies"])

    harness = eval_command(*common, "eval=lm_eval", "tasks=[ifeval]", f"out={tmp_path / 'lm'}")
    assert harness.returncode == 0, harness.stderr[-3000:]
    lm_eval = json.loads((tmp_path / "lm" / "eval.json").read_text())
    # The same greedy replies through the same template (lm-eval keeps edge whitespace) ...
    keys = [p.key for p in load_prompts(str(IFEVAL_FILE), limit=5)]
    theirs = {keys[s["doc_id"]]: s["reply"].strip() for s in lm_eval["samples"]["ifeval"]}
    assert theirs == {r["key"]: r["reply"] for r in written["replies"]}
    # ... and the same four numbers.
    results = lm_eval["results"]["ifeval"]
    for ours_name, theirs in [
        ("prompt_strict", "prompt_level_strict_acc,none"),
        ("inst_strict", "inst_level_strict_acc,none"),
        ("prompt_loose", "prompt_level_loose_acc,none"),
        ("inst_loose", "inst_level_loose_acc,none"),
    ]:
        assert written["summary"][ours_name] == pytest.approx(results[theirs])


def test_the_training_sample_is_fixed_and_off_unless_asked_on_any_device():
    from framework.train.evaluation import ifeval_sample
    from tests.helpers import compose_config

    assert ifeval_sample(compose_config()) == []
    assert ifeval_sample(compose_config(["cluster.use_gpu=true"])) == []
    chosen = compose_config([f"eval.ifeval_path={IFEVAL_FILE}", "eval.ifeval_prompts=7"])
    sample = ifeval_sample(chosen)
    assert len(sample) == 7 and sample == ifeval_sample(chosen)
    assert [p.key for p in sample] == sorted(p.key for p in sample)
    assert sample != load_prompts(str(IFEVAL_FILE), limit=7)  # a sample, not the first 7


def test_the_hubs_prompts_are_fetched_by_the_driver_once_for_the_workers(tmp_path, monkeypatch):
    """No path: the driver reads the hub at start and hands the workers a file in the run
    directory (compute nodes are often offline); offline, the run stops at start naming
    the key. The hub is stood in for by the benchmark's file (no network here)."""
    from framework.commands.prepare import prepare_run
    from framework.eval import ifeval
    from framework.run.files import IFEVAL_PROMPTS_FILE
    from tests.helpers import compose_config

    overrides = [f"run.output_dir={tmp_path}", "eval.ifeval_prompts=5"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=re.escape("offline, give path=<input_data.jsonl>")):
        prepare_run(compose_config(overrides))
    monkeypatch.setattr(ifeval, "_hub_rows", lambda: ifeval._file_rows(str(IFEVAL_FILE)))
    cfg = prepare_run(compose_config(overrides)).cfg
    assert cfg.eval.ifeval_path == str(tmp_path / IFEVAL_PROMPTS_FILE)
    assert load_prompts(cfg.eval.ifeval_path) == load_prompts(str(IFEVAL_FILE))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.ifeval_prompts=-1", "eval.ifeval_prompts=-1 must be >= 0"),
        ("eval.ifeval_path=/no/such.jsonl", "eval.ifeval_path=/no/such.jsonl"),
        ("eval.ifeval_max_new_tokens=0", "eval.ifeval_max_new_tokens must be"),
    ],
)
def test_bad_training_sample_settings_name_their_key(override, message):
    from tests.helpers import compose_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config([override])


def test_a_checker_drawing_a_random_parameter_gives_one_verdict_every_time():
    """letter "#" is no letter: the official checker draws a random one, so the verdict
    (and loose >= strict) would change from run to run without the per-prompt seed."""
    prompt = _prompt(
        "keywords:letter_frequency", {"letter": "#", "let_frequency": 3, "let_relation": "at least"}
    )
    reply = "aaa bbb ccc ddd eee fff ggg hhh iii jjj kkk lll mmm nnn ooo ppp"
    verdicts = {tuple(judge(prompt, reply).strict + judge(prompt, reply).loose) for _ in range(20)}
    assert len(verdicts) == 1
    (strict_loose,) = verdicts
    assert strict_loose[0] <= strict_loose[1]
