"""The oracle: correct programs for any task of any stage.

* ``general_program(stage)`` is the spec's compiler for stages 0-4: one program
  that is correct on every context of the stage (and the shortest such program,
  which ``tests/test_brute_force.py`` proves).
* ``compile_expression(operators)`` is the spec's compiler for the expression
  stages: the program depends on the operators only (never on the digits): the first
  term with ``MUL``s; then a one-digit term with its ``ADD``/``SUB``; a product term
  with ``STO``, its ``MUL``s, ``RCL`` and its ``ADD``/``SUB``; then ``ANS``.
  ``oracle_program(stage, operators)`` is whichever of the two applies.
* ``shortest_program(stage, digits)`` is a breadth-first search over machine
  states for one task: a shortest program for *that* context. It can be shorter
  than the general program (e.g. ``MUL MUL ADD ANS`` at stage 2 when ``d*e == 0``),
  which is exactly the shortcut a policy finds before it learns memory.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from functools import cache

from envs.machine import (
    ADD,
    ANS,
    ARITHMETIC,
    EXPRESSION_OPERATORS,
    MUL,
    NUM_ACTIONS,
    RCL,
    STAGE_DIGITS,
    STO,
    SUB,
    MachineState,
    apply_tool,
    expression_terms,
    stage_target,
)

_GENERAL = {
    0: (MUL, MUL, ADD, ANS),
    1: (MUL, MUL, ADD, SUB, ANS),
    2: (MUL, MUL, ADD, STO, MUL, MUL, RCL, SUB, ANS),
    3: (MUL, STO, MUL, MUL, RCL, SUB, ANS),
    4: (MUL, MUL, STO, MUL, MUL, RCL, SUB, ANS),
    10: (MUL, STO, MUL, MUL, RCL, ADD, ANS),
    11: (MUL, MUL, STO, MUL, MUL, RCL, ADD, ANS),
    12: (MUL, ADD, STO, MUL, MUL, RCL, SUB, ANS),
    13: (MUL, SUB, STO, MUL, MUL, RCL, ADD, ANS),
}


def general_program(stage: int) -> tuple[int, ...]:
    """A program correct on every context of ``stage``, of the shortest such length."""
    if stage not in _GENERAL:
        raise ValueError(f"stage must be one of {sorted(_GENERAL)}, got {stage!r}")
    return _GENERAL[stage]


def compile_expression(operators: Sequence[int]) -> tuple[int, ...]:
    """The spec's program for ``x0 o1 x1 ... ok xk`` (any digits), ending in ``ANS``."""
    if not operators or any(op not in ARITHMETIC for op in operators):
        raise ValueError(f"operators must be a non-empty sequence of MUL/ADD/SUB (0-2), got {list(operators)}")
    terms = expression_terms(operators)
    program = [MUL] * terms[0][1]
    for sign, length in terms[1:]:
        program += [sign] if length == 1 else [STO, *[MUL] * length, RCL, sign]
    return (*program, ANS)


def oracle_program(stage: int, operators: Sequence[int] = ()) -> tuple[int, ...]:
    """A correct program for every task of ``stage`` with these ``operators`` (none at
    the digit stages)."""
    return compile_expression(operators) if stage in EXPRESSION_OPERATORS else general_program(stage)


@cache
def longest_oracle_program(stage: int) -> int:
    """The length of the oracle's longest program at an expression stage (over every
    operator sequence it can draw)."""
    return max(len(compile_expression(ops)) for k in EXPRESSION_OPERATORS[stage]
               for ops in itertools.product(ARITHMETIC, repeat=k))


def general_path(stage: int, digits: Sequence[int], operators: Sequence[int] = ()) -> tuple[MachineState, ...]:
    """The machine states the oracle's program passes through on ``digits``, after
    each of its tools before ``ANS`` (the empty start state excluded)."""
    state, path = MachineState(), []
    for tool in oracle_program(stage, operators)[:-1]:
        state = apply_tool(state, tool, digits)
        path.append(state)
    return tuple(path)


def progress(state: MachineState, path: Sequence[MachineState]) -> float:
    """How far along ``path`` the machine is, in [0, 1]: ``i / len(path)`` when its
    registers equal the path's i-th state, else 0. A potential for shaping: it reads
    only the machine's state, never the actions that led there."""
    for i in range(len(path), 0, -1):
        if path[i - 1] == state:
            return i / len(path)
    return 0.0


def shortest_program(stage: int, digits: Sequence[int], max_steps: int = 12) -> tuple[int, ...] | None:
    """A shortest program (ending in ANS) whose answer equals the target, or None.

    Breadth-first over distinct machine states, so the first hit is shortest.
    """
    if len(digits) != STAGE_DIGITS.get(stage, -1):
        raise ValueError(f"stage {stage} needs {STAGE_DIGITS.get(stage)} digits, got {len(digits)}")
    target = stage_target(stage, digits)
    start = MachineState()
    parents: dict[MachineState, tuple[MachineState | None, int | None]] = {start: (None, None)}
    frontier: deque[tuple[MachineState, int]] = deque([(start, 0)])
    while frontier:
        state, depth = frontier.popleft()
        if state.acc == target:
            program = [ANS]
            node = state
            while parents[node][0] is not None:
                node, tool = parents[node]
                program.append(tool)
            return tuple(reversed(program))
        if depth + 1 >= max_steps:  # ANS itself needs a step
            continue
        for tool in range(NUM_ACTIONS):
            if tool == ANS:
                continue
            nxt = apply_tool(state, tool, digits)
            if nxt not in parents:
                parents[nxt] = (state, tool)
                frontier.append((nxt, depth + 1))
    return None
