"""Exhaustive facts about the task, computed over every context of a stage.

Which tools apply never depends on the digits (only on which registers are empty
and how far the cursor is), so a fixed program follows one control path on every
context. That lets us run a program on all 10^5 contexts at once with numpy,
and walk the tree of all programs depth first, sharing prefixes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from envs.machine import (
    ADD,
    ANS,
    ARITHMETIC,
    EXPRESSION_OPERATORS,
    IDENTITY,
    MUL,
    RCL,
    SEED_EPISODE_TOKENS,
    STAGE_DIGITS,
    STO,
    SUB,
    combine,
    stage_target,
)


@cache
def all_contexts(num_digits: int) -> np.ndarray:
    """Every context of ``num_digits`` digits, shape ``[10**n, n]``, lexicographic."""
    grid = np.array(list(itertools.product(range(10), repeat=num_digits)), dtype=np.int64)
    grid.setflags(write=False)
    return grid


def targets(stage: int, contexts: np.ndarray) -> np.ndarray:
    """The target of every context (rows of ``contexts``)."""
    return stage_target(stage, contexts.T)


@dataclass(frozen=True)
class _Branch:
    """The exact machine over many contexts: control scalar, registers arrays."""

    acc: np.ndarray | None
    mem: np.ndarray | None
    cursor: int
    armed: bool

    def step(self, tool: int, contexts: np.ndarray) -> _Branch | None:
        """The next branch, or None when ``tool`` cannot apply (a wasted step)."""
        if tool in ARITHMETIC:
            if self.armed:
                right = IDENTITY[tool] if self.acc is None else self.acc
                return _Branch(combine(tool, self.mem, right), None, self.cursor, False)
            if self.cursor >= contexts.shape[1]:
                return None
            left = IDENTITY[tool] if self.acc is None else self.acc
            acc = combine(tool, left, contexts[:, self.cursor])
            return _Branch(acc, self.mem, self.cursor + 1, False)
        if tool == STO:
            return None if self.acc is None else _Branch(None, self.acc, self.cursor, self.armed)
        if tool == RCL:
            return None if self.mem is None else _Branch(self.acc, self.mem, self.cursor, True)
        raise ValueError(f"not a non-submitting tool: {tool}")


def exact_programs(
    contexts: np.ndarray, max_len: int, tools=(MUL, ADD, SUB, STO, RCL)
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Every program of at most ``max_len`` actions ending in ``ANS`` with no wasted
    step, and its submitted value on each context (rows with empty ``acc`` never
    yield: submitting nothing is never correct)."""

    def walk(branch: _Branch, prefix: tuple[int, ...]):
        if branch.acc is not None:
            yield prefix + (ANS,), branch.acc
        if len(prefix) + 1 >= max_len:
            return
        for tool in tools:
            nxt = branch.step(tool, contexts)
            if nxt is not None:
                yield from walk(nxt, prefix + (tool,))

    yield from walk(_Branch(None, None, 0, False), ())


def memory_free_solvable(stage: int, contexts: np.ndarray | None = None) -> np.ndarray:
    """Per context: does some program without STO/RCL submit the target?"""
    contexts = all_contexts(STAGE_DIGITS[stage]) if contexts is None else contexts
    want = targets(stage, contexts)
    hit = np.zeros(len(contexts), dtype=bool)
    for _, answers in exact_programs(contexts, max_len=contexts.shape[1] + 1, tools=ARITHMETIC):
        hit |= answers == want
    return hit


@cache
def memory_required_contexts(stage: int = 2) -> np.ndarray:
    """The contexts of ``stage`` that no memory-free program solves, ``[n, digits]``."""
    contexts = all_contexts(STAGE_DIGITS[stage])
    required = contexts[~memory_free_solvable(stage, contexts)]
    required.setflags(write=False)
    return required


def program_answers(program: Sequence[int], contexts: np.ndarray) -> np.ndarray | None:
    """What ``program`` submits on every context (rows), as the exact machine runs it:
    wasted steps change nothing, and the first ``ANS`` submits. None if it never
    submits a value (no ``ANS``, or ``ANS`` with an empty accumulator)."""
    branch = _Branch(None, None, 0, False)
    for tool in program:
        if tool == ANS:
            return branch.acc
        branch = branch.step(tool, contexts) or branch
    return None


def expression_targets(operators: Sequence[int], contexts: np.ndarray) -> np.ndarray:
    """``x0 o1 x1 ... ok xk`` for every row of digits (``machine.expression_value``, vectorised)."""
    total, term, sign = np.zeros(len(contexts), dtype=np.int64), contexts[:, 0].astype(np.int64), 1
    for i, op in enumerate(operators, start=1):
        if op == MUL:
            term = term * contexts[:, i]
        else:
            total, sign, term = total + sign * term, (1 if op == ADD else -1), contexts[:, i].astype(np.int64)
    return total + sign * term


class ProgramCheck:
    """Is a tool sequence that answered one task right a *program* for its whole family?

    A family is a digit stage, or an expression stage's operator pattern: every context
    of it has the same general program. A shortcut is right on some contexts only
    (stage 2's memory-free answers when ``d*e`` is 0; an expression's 9-step answer to a
    12-step pattern when digits are 0 or 1), and a right answer it gives is a
    coincidence. The check runs the sequence on ``trials`` contexts of the family, drawn
    once per family from ``seed``, and says whether it is right on all of them: a
    shortcut right on a share p of contexts passes with chance p**trials. The answer
    depends only on the family and the sequence (which tools apply never depends on
    the digits), so it is cached.
    """

    def __init__(self, trials: int = 64, seed: int = 0):
        if trials < 1:
            raise ValueError(f"a program check needs at least 1 trial context, got {trials}")
        self.trials, self.seed = trials, seed
        self._contexts: dict[tuple[int, int], np.ndarray] = {}
        self._verdicts: dict[tuple, bool] = {}

    def __call__(self, stage: int, operators: Sequence[int], program: Sequence[int]) -> bool:
        key = (stage, tuple(operators), tuple(program))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._check(stage, key[1], key[2])
        return verdict

    def _check(self, stage: int, operators: tuple[int, ...], program: tuple[int, ...]) -> bool:
        expression = stage in EXPRESSION_OPERATORS
        num_digits = len(operators) + 1 if expression else STAGE_DIGITS[stage]
        contexts = self._contexts.get((stage, num_digits))
        if contexts is None:
            rng = np.random.default_rng([self.seed, stage, num_digits])
            contexts = self._contexts[(stage, num_digits)] = rng.integers(0, 10, size=(self.trials, num_digits))
        answers = program_answers(program, contexts)
        if answers is None:
            return False
        want = expression_targets(operators, contexts) if expression else targets(stage, contexts)
        return bool(np.all(answers == want))


# --------------------------------------------------------------------------------------
# The seed variant: its control path (is ``last`` set, what is ``mem``) is also
# independent of the digits, so the same trick applies.


def seed_programs(stage: int) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Every token sequence the tutorial's env can score (``ANS`` within 6 tokens),
    with its reward and its submitted value on all 10^5 drawn contexts
    (``last`` none is reported as a value no target can equal)."""
    ctx = all_contexts(5)
    a, b, c, d, e = (ctx[:, i] for i in range(5))
    goal0 = a * b
    goal1 = goal0 + c
    goal2 = goal1 - d
    goal3 = d * e
    goal4 = goal1 - goal3
    checked = (goal0, goal1, goal2)[stage]
    never = np.full(len(ctx), np.iinfo(np.int64).min)

    def reward(last):
        if last is None:
            return np.zeros(len(ctx)), never
        eq = lambda g: (last == g).astype(np.float64)  # noqa: E731
        if stage == 0:
            shaped = 0.25 * eq(goal0) + 0.5 * eq(goal1)
        elif stage == 1:
            shaped = 0.25 * eq(goal0) + 0.5 * eq(goal1) + 0.75 * eq(goal2)
        else:
            shaped = 0.2 * eq(goal0) + 0.4 * eq(goal1) + 0.6 * eq(goal4) + 0.6 * eq(goal3)
        return eq(checked) + 0.2 * shaped, last

    def walk(last, mem, prefix):
        r, value = reward(last)
        yield prefix + (ANS,), r, value
        if len(prefix) + 1 >= SEED_EPISODE_TOKENS:
            return
        for tool in (MUL, ADD, SUB, STO, RCL):
            new_last, new_mem = last, mem
            if tool == MUL:
                new_last = goal0 if last is None else last * (d if stage >= 1 else 1)
            elif tool == ADD and last is not None:
                new_last = last + c
            elif tool == SUB and last is not None:
                if stage == 2 and mem == "use_d":
                    new_last = last - e
                else:
                    new_last = last - (d if stage >= 1 else 0)
            elif tool == STO:
                new_mem = "use_d" if stage >= 1 else "ok"
            elif tool == RCL and mem is not None:
                if stage == 2 and mem == "use_d":
                    new_last = goal3
                elif last is None:
                    new_last = np.zeros(len(ctx), dtype=np.int64)
            yield from walk(new_last, new_mem, prefix + (tool,))

    yield from walk(None, None, ())
