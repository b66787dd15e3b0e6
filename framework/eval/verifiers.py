"""Verifiers: a completion checked by code gives a reward in [0, 1]. One registry serves
online RL's rewards and the improvement rounds' pairs.

- suite: the built-in family's own checker on the item's reference (1 or 0);
- ifeval: the share of the prompt's IFEval-style instructions the reply follows, judged
  strictly by the official checkers (eval/ifeval.py);
- exact_answer: the last number in the reply equals the expected answer (1 or 0).

Verifiers run in a child process (VerifierPool): one that raises gives reward 0 and its
error is counted; one that runs past its time limit is stopped (the child is replaced)
and gives reward 0, so no completion can hang or crash the learner.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable
from dataclasses import dataclass

Verifier = Callable[[str, dict], float]


def suite_reward(reply: str, spec: dict) -> float:
    from framework.suite.families import FAMILIES

    return float(FAMILIES[spec["family"]].check(reply, spec["reference"]))


def ifeval_reward(reply: str, spec: dict) -> float:
    from framework.eval.ifeval import IFEvalPrompt, judge

    prompt = IFEvalPrompt(
        key=int(spec.get("key", 0)),
        prompt=spec["prompt"],
        instruction_ids=tuple(spec["instruction_id_list"]),
        kwargs=tuple(spec["kwargs"]),
    )
    verdicts = judge(prompt, reply).strict
    return sum(verdicts) / len(verdicts)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_answer_reward(reply: str, spec: dict) -> float:
    numbers = _NUMBER.findall(reply.replace(",", ""))
    return float(bool(numbers) and float(numbers[-1]) == float(spec["answer"]))


VERIFIERS: dict[str, Verifier] = {
    "suite": suite_reward,
    "ifeval": ifeval_reward,
    "exact_answer": exact_answer_reward,
}


def check_verifier(name: str, key: str, verifiers: dict[str, Verifier] = VERIFIERS) -> None:
    """A record's or config's verifier name, refused in one line naming `key` unless known."""
    if name not in verifiers:
        raise ValueError(f"{key}={name!r}: no such verifier; give one of {sorted(verifiers)}")


@dataclass(frozen=True)
class Reward:
    value: float
    failure: str | None = None  # "timeout", or the error a verifier raised


# How long a child may take to start and import the checkers (lm-eval's take seconds).
_START_S = 120


def _serve(connection, verifiers: dict[str, Verifier]) -> None:
    from framework.eval import ifeval

    ifeval.checkers()  # imported before the first time limit runs
    connection.send("ready")
    while True:
        try:
            name, reply, spec = connection.recv()
        except EOFError:  # the parent closed its end: nothing more to check
            return
        try:
            connection.send(Reward(float(verifiers[name](reply, spec))))
        except Exception as err:  # any verifier's error is a 0 reward, counted
            connection.send(Reward(0.0, f"{type(err).__name__}: {err}"))


class VerifierPool:
    """Verifiers in a child process (spawned: safe beside threads, as in a Ray worker), each
    completion under a time limit.

        with VerifierPool(timeout_s=5) as pool:
            rewards = pool.score([("suite", reply, spec), ...])
    """

    def __init__(self, timeout_s: float, verifiers: dict[str, Verifier] | None = None):
        self.timeout_s = timeout_s
        self.verifiers = VERIFIERS if verifiers is None else verifiers
        self._context = multiprocessing.get_context("spawn")
        self._process = self._connection = None

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_serve, args=(child, self.verifiers), daemon=True
        )
        self._process.start()
        if not self._connection.poll(_START_S) or self._connection.recv() != "ready":
            self.close()
            raise RuntimeError(f"the verifier process did not start within {_START_S} s")

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._process = None

    def score(self, items: list[tuple[str, str, dict]]) -> list[Reward]:
        rewards = []
        for name, reply, spec in items:
            check_verifier(name, "verifier", self.verifiers)
            if self._process is None:
                self._start()
            self._connection.send((name, reply, spec))
            if self._connection.poll(self.timeout_s):
                rewards.append(self._connection.recv())
            else:  # stopped: the next completion gets a fresh child
                self.close()
                rewards.append(Reward(0.0, "timeout"))
        return rewards
