"""Improvement rounds (framework/commands/improve.py, framework/cluster/ray_sampling.py): pairs only
where the checker splits a prompt's answers, new prompts each round, and a round that
samples on Ray, trains (with a served model's rated replies too) and logs."""

from __future__ import annotations

import json

import pytest

from framework.commands.improve import ROUNDS_FILE, build_pairs, round_prompts, run_rounds
from framework.config.commands import ImproveConfig
from framework.config.schema import DEFAULT_HELD_OUT
from framework.run.files import STATS_FILE
from framework.serve.conversations import ConversationLog
from framework.suite.families import FAMILIES
from tests.helpers import TINY_RUN, logged


def test_pairs_are_built_only_where_one_answer_is_right_and_another_wrong():
    cfg = ImproveConfig(model="-", prompts_per_family=1)
    by_family = {item.family: item for item in round_prompts(cfg, 1)}
    add, upper, reverse = (by_family[f] for f in ("add", "uppercase", "reverse_word"))
    answers = [
        [f" {add.reference}.", "0", "1"],  # right (normalised) and wrong: a pair
        ["wrong", "also wrong"],  # all wrong: none
        [reverse.reference, reverse.reference.upper()],  # all right (case-insensitive)
    ]
    pairs, counts = build_pairs([add, upper, reverse], answers)
    assert counts == {"mixed": 1, "all_wrong": 1, "all_right": 1}
    assert pairs == [
        {"prompt": add.prompt, "chosen": f" {add.reference}.", "rejected": "0", "family": "add"}
    ]


def test_each_round_asks_new_prompts_of_the_trained_families_only():
    cfg = ImproveConfig(model="-", prompts_per_family=3)
    first, second = round_prompts(cfg, 1), round_prompts(cfg, 2)
    assert len(first) == len(second) == 3 * (len(FAMILIES) - len(DEFAULT_HELD_OUT))
    assert not {str(i.prompt) for i in first} & {str(i.prompt) for i in second}
    assert not {i.family for i in first} & set(DEFAULT_HELD_OUT)


@pytest.mark.slow
def test_a_round_samples_on_ray_trains_on_its_pairs_and_logs(
    tmp_path, tiny_model_dir, ray_cluster, monkeypatch
):
    """One round from the random-init tiny model. Its sampled answers (real, on Ray
    workers) are never right, so half of the prompts also get the reference among their
    answers, as a stand-in for a model that is sometimes right; everything else is the
    real path."""
    from framework.cluster.ray_sampling import sample_answers

    feedback = ConversationLog(str(tmp_path / "served"), retention_days=30)  # a server's log
    feedback.record_exchange("a", [{"role": "user", "content": "Name a colour."}], "7")
    feedback.record_feedback({"id": "a", "preferred": "Blue."})
    cfg = ImproveConfig(
        model=str(tiny_model_dir), out=str(tmp_path / "improve"), rounds=1,
        prompts_per_family=2, samples=2, max_new_tokens=8, eval_per_family=1,
        cache_dir=str(tmp_path / "cache"), feedback=str(tmp_path / "served"),
        train=[*TINY_RUN, "objective=dpo", "trainer.max_steps=2", "trainer.log_every=1"],
    )  # fmt: skip
    items = round_prompts(cfg, 1)

    def sample(model: str, chats: list) -> list[list[str]]:
        assert model == cfg.model and chats == [item.prompt for item in items]
        found = sample_answers(model, chats, workers=2, cpus_per_worker=1, address=None,
                               cache_dir=cfg.cache_dir, seed=0, samples=2, temperature=1.0,
                               top_p=1.0, max_new_tokens=8, batch_size=8)  # fmt: skip
        assert [len(answers) for answers in found] == [2] * len(chats)
        # The round's training run joins the session's Ray. (The sampling above ran on a
        # Ray of this process's own: Ray reads its authentication token once per process.)
        for name, value in ray_cluster.joining().items():
            monkeypatch.setenv(name, value)
        return [
            [item.reference, answers[1]] if i % 2 else answers
            for i, (item, answers) in enumerate(zip(items, found, strict=True))
        ]

    rows = run_rounds(cfg, sample)
    out = tmp_path / "improve"
    pairs = [
        json.loads(line) for line in (out / "round_1" / "pairs.jsonl").read_text().splitlines()
    ]
    assert len(pairs) == rows[1]["pairs"] == rows[1]["prompts"]["mixed"] > 0
    for pair in pairs:
        check = FAMILIES[pair["family"]].check
        reference = next(i.reference for i in items if i.prompt == pair["prompt"])
        assert check(pair["chosen"], reference) and not check(pair["rejected"], reference)
    sources = json.loads((out / "round_1" / "run" / STATS_FILE).read_text())["sources"]
    assert sources["served"]["kept"] == 1  # the feedback log's pair joined the round's
    steps = logged(out / "round_1" / "run")
    assert [m["step"] for m in steps] == [1, 2] and all("rewards/accuracy" in m for m in steps)
    assert (out / "round_1" / "run" / "hf" / "model.safetensors").is_file()
    lines = [json.loads(line) for line in (out / ROUNDS_FILE).read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1]
    assert set(lines[1]["accuracy"]) == {"trained", "held_out_knowledge", "held_out_twists"}
