"""Verifiers as rewards: each built-in one on a right and a wrong reply, and the pool that
runs them turns an error into reward 0 with its message and stops one that hangs."""

import time

import pytest

from framework.eval.verifiers import (
    VERIFIERS,
    VerifierPool,
    check_verifier,
    exact_answer_reward,
    ifeval_reward,
    suite_reward,
)


def test_the_suite_verifier_is_the_familys_checker():
    spec = {"family": "uppercase", "reference": "APPLE"}
    assert suite_reward("APPLE", spec) == 1.0
    assert suite_reward("apple", spec) == 0.0


def test_the_ifeval_verifier_gives_the_share_of_instructions_followed():
    spec = {
        "prompt": "Describe a cat. Answer in lowercase, in at least 5 words.",
        "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
        "kwargs": [{}, {"relation": "at least", "num_words": 5}],
    }
    assert ifeval_reward("a cat is a small furry animal", spec) == 1.0
    assert ifeval_reward("A cat is a small furry animal", spec) == 0.5
    assert ifeval_reward("CAT", spec) == 0.0


@pytest.mark.parametrize(("reply", "reward"), [("The sum is 1,234.", 1.0), ("12 then 1234", 1.0),
                         ("1234 or maybe 12", 0.0), ("no number", 0.0)])  # fmt: skip
def test_exact_answer_takes_the_last_number(reply, reward):
    assert exact_answer_reward(reply, {"answer": "1234"}) == reward


def test_an_unknown_verifier_is_named_with_its_key():
    with pytest.raises(ValueError, match=r"data.verifier='regex': no such verifier; give one of"):
        check_verifier("regex", "data.verifier")


def raises(reply: str, spec: dict) -> float:
    raise KeyError("family")


def hangs(reply: str, spec: dict) -> float:
    time.sleep(60)
    return 1.0


def test_the_pool_counts_errors_stops_hangs_and_goes_on():
    verifiers = {**VERIFIERS, "raises": raises, "hangs": hangs}
    items = [("raises", "x", {}), ("hangs", "x", {}), ("exact_answer", "42", {"answer": 42})]
    with VerifierPool(timeout_s=2, verifiers=verifiers) as pool:
        started = time.monotonic()
        rewards = pool.score(items)
        assert time.monotonic() - started < 30  # the hanging one was stopped, not waited for
    assert [r.value for r in rewards] == [0.0, 0.0, 1.0]
    assert rewards[0].failure == "KeyError: 'family'"
    assert rewards[1].failure == "timeout" and rewards[2].failure is None
