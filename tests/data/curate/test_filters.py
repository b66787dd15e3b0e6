"""Each curation filter on small fixtures: what must go goes, with its reason and what it
matched; what must stay stays (short correct answers, paraphrases below the threshold)."""

import pytest

from framework.config.schema import CurateConfig, DataConfig, SourceConfig, SuiteConfig
from framework.data.curate.decontam import EvalIndex, EvalText
from framework.data.curate.quality import repetition
from framework.data.curate.stage import curate
from framework.data.curate.text import words
from framework.data.formats import Conversation, DataError, ErrorPolicy
from framework.data.parallel import LocalMapper
from framework.data.sources import LoadedRecord, load_data
from tests.helpers import write_jsonl

ESSAY = (
    "Photosynthesis lets plants turn light into chemical energy. Chlorophyll in the "
    "leaves absorbs mostly red and blue light, water is split and oxygen released, and "
    "the energy is stored in sugars that the plant later burns to grow roots, stems and "
    "new leaves through the spring and summer months until autumn arrives."
)


def _record(prompt: str, reply: str, where: str, source: str = "a") -> LoadedRecord:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return LoadedRecord(source, where, Conversation(messages))


def _run(records, cfg=None, index=None, sources=None):
    cfg = cfg or CurateConfig(decontaminate=False)
    sources = sources or [("a", 1.0, records)]
    kept, removals = curate(sources, index, cfg, LocalMapper(1), pairs=False)
    return kept, {r.where: (r.reason, r.match) for r in removals}


def test_quality_filters_take_wordless_echoing_and_looping_replies_only():
    loop = " ".join(["I am a helpful assistant."] * 8)
    records = [
        _record("What is the capital of France?", "Paris", "short"),
        _record("Classify the sentiment: I loved every minute of it.", "Positive", "label"),
        _record("2 + 2?", "4", "digit"),
        _record("Describe photosynthesis.", ESSAY, "essay"),
        _record("Say something.", "...", "wordless"),
        _record("Repeat after me: hello there", "Repeat after me: hello  THERE", "echo"),
        _record("Tell me about yourself.", loop, "loop"),
    ]
    kept, removed = _run(records)
    assert [r.where for r in kept["a"]] == ["short", "label", "digit", "essay"]
    assert removed == {
        "wordless": ("empty_reply", None),
        "echo": ("repeats_prompt", None),
        "loop": ("repetitive", None),
    }
    assert repetition(words(loop)) > 0.5 > repetition(words(ESSAY))


def test_length_ratio_filters_are_off_by_default_and_bound_when_set():
    records = [_record("Classify: " + "word " * 40, "Yes", "terse"), _record("Hi", ESSAY, "long")]
    assert _run(records)[1] == {}
    bounded = CurateConfig(decontaminate=False, min_reply_ratio=0.1, max_reply_ratio=20)
    assert _run(records, bounded)[1] == {
        "terse": ("short_reply", None),
        "long": ("long_reply", None),
    }


def test_exact_duplicates_are_normalised_and_the_prompt_alone_is_optional():
    records = [
        _record("Name a colour.", "Blue.", "first"),
        _record("name a   COLOUR.", "blue.", "copy"),
        _record("Name a colour.", "Green.", "other_answer"),
    ]
    assert _run(records)[1] == {"copy": ("duplicate", "a first")}
    by_prompt = CurateConfig(decontaminate=False, exact_prompt=True)
    assert _run(records, by_prompt)[1] == {
        "copy": ("duplicate", "a first"),
        "other_answer": ("duplicate_prompt", "a first"),
    }


def _variant(text: str, every: int) -> str:
    """`text` without every `every`-th word."""
    tokens = text.split()
    return " ".join(t for i, t in enumerate(tokens) if i % every != every - 1)


def test_near_duplicates_keep_the_higher_weighted_source_and_spare_paraphrases():
    near = CurateConfig(decontaminate=False, near=True)
    light = [_record("Describe photosynthesis.", ESSAY, "original", source="light")]
    heavy = [
        _record("Describe photosynthesis.", _variant(ESSAY, 50), "close", source="heavy"),
        _record("Describe photosynthesis.", _variant(ESSAY, 2), "paraphrase", source="heavy"),
    ]
    kept, removed = _run(None, near, sources=[("light", 1.0, light), ("heavy", 2.0, heavy)])
    # heavy weighs more: its record is kept, the light source's copy goes.
    assert removed == {"original": ("near_duplicate", "heavy close")}
    assert [r.where for r in kept["heavy"]] == ["close", "paraphrase"]
    assert kept["light"] == []


def test_contamination_is_found_on_prompts_and_on_replies_and_short_answers_are_not():
    passage = " ".join(ESSAY.split()[:20])
    index = EvalIndex.build(
        [
            EvalText("suite test capital[0]", "Which city is the capital of Peru today?"),
            EvalText("suite test capital[0] reference", "Lima", question=False),
            EvalText("bench.jsonl:3", "Summarise this: " + passage),
        ],
        n=13,
        min_words=6,
    )
    records = [
        _record("Quick one: which city is the CAPITAL of Peru today?", "Lima", "prompt_hit"),
        _record("Tell me about plants.", "Sure. " + passage + " More.", "reply_hit"),
        _record("Where is Lima?", "Lima is in Peru.", "short_answer"),
    ]
    assert _run(records, CurateConfig(), index)[1] == {
        "prompt_hit": ("contaminated", "suite test capital[0]"),
        "reply_hit": ("contaminated", "bench.jsonl:3"),
    }


def test_load_data_counts_removals_per_source_and_decontaminates_against_named_files(tmp_path):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": ESSAY}])
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"instruction": "Explain photosynthesis.", "output": ESSAY},
            {"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Name a colour.", "output": "Blue."},
        ],
    )
    curate_cfg = CurateConfig(decontaminate_files=[str(bench)])
    cfg = DataConfig(sources=[SourceConfig(path=str(train))], curate=curate_cfg)
    loaded = load_data(cfg, 0, ErrorPolicy("raise"))
    summary = loaded.summaries["train"]
    assert summary.records == 3 and summary.kept == 1 and summary.taken == 1
    assert summary.removed == {"contaminated": 1, "duplicate": 1}
    assert {(r.where, r.match) for r in loaded.removals} == {
        (f"{train}:1", f"{bench}:1"),
        (f"{train}:3", f"train {train}:2"),
    }
    curate_cfg.decontaminate_files = [str(tmp_path / "missing.jsonl")]
    with pytest.raises(DataError, match=r"data.curate.decontaminate_files: .*missing\.jsonl"):
        load_data(cfg, 0, ErrorPolicy("raise"))


def test_the_suite_default_mix_loses_only_what_curation_explains():
    """The built-in suite: its exact repeats and the chats that reword a validation or
    test prompt (the suite splits by the prompt's exact text) go; nothing else."""
    loaded = load_data(DataConfig(suite=SuiteConfig(train_examples=3000)), 0, ErrorPolicy("raise"))
    reasons = {r.reason for r in loaded.removals}
    assert reasons <= {"duplicate", "contaminated"} and 0 < len(loaded.removals) < 60
    for removal in loaded.removals:
        if removal.reason == "contaminated":
            assert removal.match.startswith(("suite validation", "suite test"))
