"""The oracle: correct programs for any task of stages 0-4.

* ``general_program(stage)`` is the spec's compiler for these stages: one program
  that is correct on every context of the stage (and the shortest such program,
  which ``tests/test_brute_force.py`` proves).
* ``shortest_program(stage, digits)`` is a breadth-first search over machine
  states for one task: a shortest program for *that* context. It can be shorter
  than the general program (e.g. ``MUL MUL ADD ANS`` at stage 2 when ``d*e == 0``),
  which is exactly the shortcut a policy finds before it learns memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from envs.machine import (
    ADD,
    ANS,
    MUL,
    NUM_ACTIONS,
    RCL,
    STAGE_DIGITS,
    STO,
    SUB,
    MachineState,
    apply_tool,
    stage_target,
)

_GENERAL = {
    0: (MUL, MUL, ADD, ANS),
    1: (MUL, MUL, ADD, SUB, ANS),
    2: (MUL, MUL, ADD, STO, MUL, MUL, RCL, SUB, ANS),
    3: (MUL, STO, MUL, MUL, RCL, SUB, ANS),
    4: (MUL, MUL, STO, MUL, MUL, RCL, SUB, ANS),
}


def general_program(stage: int) -> tuple[int, ...]:
    """A program correct on every context of ``stage``, of the shortest such length."""
    if stage not in _GENERAL:
        raise ValueError(f"stage must be one of {sorted(_GENERAL)}, got {stage!r}")
    return _GENERAL[stage]


def general_path(stage: int, digits: Sequence[int]) -> tuple[MachineState, ...]:
    """The machine states the general program passes through on ``digits``, after
    each of its tools before ``ANS`` (the empty start state excluded)."""
    state, path = MachineState(), []
    for tool in general_program(stage)[:-1]:
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
