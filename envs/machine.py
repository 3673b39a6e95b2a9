"""The rules of the tool machine, as plain functions (spec: docs/task.md).

Two rule sets live here:

* ``exact`` (the default): the machine the tutorial meant. An accumulator, one
  memory slot, a read cursor over the context digits and an *armed* flag.
* ``seed``: the tutorial's environment reproduced token for token, kept so its
  defects can be measured against ``exact``.

Both are written as small pure functions on a state value so that the Gymnasium
env, the oracle and the brute-force tests share one definition of every rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

MUL, ADD, SUB, STO, RCL, ANS = range(6)
ACTION_NAMES = ("MUL", "ADD", "SUB", "STO", "RCL", "ANS")
NUM_ACTIONS = len(ACTION_NAMES)
ARITHMETIC = (MUL, ADD, SUB)

#: Context digits shown per stage. Stages 0-2 are the spec's; 3 and 4 are memory
#: drills (shorter targets that also need STO/RCL, ending in ``RCL SUB``), a curriculum
#: lever for stage 2; 10 and 11 are the same drills ending in ``RCL ADD``, so that both
#: signs of the expression stages' store-before-a-product move have one; 12 (``a+b-c*d``)
#: and 13 (``a-b+c*d``) store after a sum (``MUL ADD STO``), the product as the third term.
STAGE_DIGITS = {0: 3, 1: 4, 2: 5, 3: 3, 4: 4, 10: 3, 11: 4, 12: 4, 13: 4}
#: The stages that cannot be solved on every context without STO/RCL.
MEMORY_STAGES = (2, 3, 4, 10, 11, 12, 13)

#: Expression stages (spec, "Expression stages"): the context is ``x0 o1 x1 ... ok xk``,
#: digits and operator tokens, and the target its value under the usual precedence.
#: Stage -> the operator counts ``k`` it draws from (uniformly). They are numbered after
#: the memory drills: stage 5 is the issue's "stage 3" (1-2 operators).
EXPRESSION_OPERATORS = {5: (1, 2), 6: (3,), 7: (4,), 8: (5,), 9: (6,)}
EXPRESSION_STAGES = tuple(EXPRESSION_OPERATORS)
MAX_OPERATORS = max(max(counts) for counts in EXPRESSION_OPERATORS.values())
#: Context token of each operator (digits are their own tokens 0-9).
OPERATOR_TOKEN = {MUL: 10, ADD: 11, SUB: 12}
TOKEN_OPERATOR = {token: tool for tool, token in OPERATOR_TOKEN.items()}
#: The expression stage that draws expressions of k operators.
OPERATOR_STAGE = {k: stage for stage, counts in EXPRESSION_OPERATORS.items() for k in counts}
#: All stages, in order: the digit stages 0-4, the expression stages 5-9, the drills 10-13.
STAGES = tuple(sorted((*STAGE_DIGITS, *EXPRESSION_STAGES)))
assert STAGES == tuple(range(len(STAGES)))
#: An expression's operator pattern as one integer: the patterns of k operators are
#: ``PATTERN_OFFSET[k] .. PATTERN_OFFSET[k] + 3**k - 1``, operator i the i-th base-3 digit
#: (``ARITHMETIC`` order). ``NO_PATTERN`` for a digit stage.
PATTERN_OFFSET = {k: sum(3**j for j in range(1, k)) for k in range(1, MAX_OPERATORS + 1)}
NUM_PATTERNS = PATTERN_OFFSET[MAX_OPERATORS] + 3**MAX_OPERATORS
NO_PATTERN = -1


def pattern_code(operators: Sequence[int]) -> int:
    """The pattern number of an operator sequence (``NO_PATTERN`` for none)."""
    if not operators:
        return NO_PATTERN
    return PATTERN_OFFSET[len(operators)] + sum(ARITHMETIC.index(op) * 3**i for i, op in enumerate(operators))


def pattern_operators(code: int) -> tuple[int, ...]:
    """The operator sequence of a pattern number (inverse of ``pattern_code``)."""
    k = max(k for k, offset in PATTERN_OFFSET.items() if offset <= code)
    index = code - PATTERN_OFFSET[k]
    if not 0 <= index < 3**k:
        raise ValueError(f"pattern numbers are 0..{NUM_PATTERNS - 1}, got {code}")
    return tuple(ARITHMETIC[index // 3**i % 3] for i in range(k))


def program_text(tools: Sequence[int]) -> str:
    """Tools as the names a reader knows: ``(MUL, ADD, ANS)`` -> ``"MUL ADD ANS"``."""
    return " ".join(ACTION_NAMES[t] for t in tools)


def pattern_text(operators: Sequence[int]) -> str:
    """An operator pattern as an expression over letters: ``(ADD, MUL)`` -> ``"a + b*c"``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    if len(operators) >= len(letters):
        raise ValueError(f"patterns of up to {len(letters) - 1} operators, got {len(operators)}")
    out = letters[0]
    for i, op in enumerate(operators):
        out += {MUL: "*", ADD: " + ", SUB: " - "}[op] + letters[i + 1]
    return out


def expression_value(digits: Sequence[int], operators: Sequence[int]) -> int:
    """``x0 o1 x1 ... ok xk`` with ``MUL`` before ``ADD``/``SUB``, left to right."""
    if len(digits) != len(operators) + 1:
        raise ValueError(f"an expression has one digit more than operators, got {len(digits)} and {len(operators)}")
    total, term = 0, int(digits[0])
    sign = 1
    for op, x in zip(operators, digits[1:]):
        if op == MUL:
            term *= int(x)
        else:
            total += sign * term
            sign, term = (1 if op == ADD else -1), int(x)
    return total + sign * term


def expression_terms(operators: Sequence[int]) -> list[tuple[int, int]]:
    """The additive terms of ``x0 o1 x1 ... ok xk`` as ``(sign operator, number of digits)``:
    the first term's sign is ``ADD``; e.g. ``MUL ADD SUB MUL`` -> ``[(ADD, 2), (ADD, 1), (SUB, 2)]``."""
    terms = [(ADD, 1)]
    for op in operators:
        if op == MUL:
            terms[-1] = (terms[-1][0], terms[-1][1] + 1)
        else:
            terms.append((op, 1))
    return terms


def needs_memory(operators: Sequence[int]) -> bool:
    """Whether ``x0 o1 x1 ... ok xk`` needs ``STO``/``RCL`` in the oracle's program: some
    later term is a product (an ``ADD``/``SUB`` followed by a ``MUL``)."""
    return any(a != MUL and b == MUL for a, b in zip(operators, operators[1:]))


def stage_target(stage: int, digits: Sequence[int], operators: Sequence[int] = ()) -> int:
    """The value the agent must submit at ``stage`` for context ``digits`` (and, at an
    expression stage, its ``operators``); the digit stages also take the digit columns
    of many contexts (vectorised)."""
    if stage in EXPRESSION_OPERATORS:
        return expression_value(digits, operators)
    a, b, c = digits[0], digits[1], digits[2]
    if stage == 0:
        return a * b + c
    if stage == 1:
        return a * b + c - digits[3]
    if stage == 2:
        return (a * b + c) - (digits[3] * digits[4])
    if stage == 3:
        return a - b * c
    if stage == 4:
        return a * b - c * digits[3]
    if stage == 10:
        return a + b * c
    if stage == 11:
        return a * b + c * digits[3]
    if stage == 12:
        return a + b - c * digits[3]
    if stage == 13:
        return a - b + c * digits[3]
    raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")


def combine(tool: int, left, right):
    """``left ∘ right`` for an arithmetic tool (ints or numpy arrays alike)."""
    if tool == MUL:
        return left * right
    if tool == ADD:
        return left + right
    return left - right


#: What an empty accumulator acts as, per arithmetic tool.
IDENTITY = {MUL: 1, ADD: 0, SUB: 0}


@dataclass(frozen=True)
class MachineState:
    """Registers of the ``exact`` machine. ``None`` means empty."""

    acc: int | None = None
    mem: int | None = None
    cursor: int = 0
    armed: bool = False
    submitted: bool = False


def tool_applies(state: MachineState, tool: int, num_digits: int) -> bool:
    """Whether ``tool`` changes the machine (inapplicable tools only use a step)."""
    if tool in ARITHMETIC:
        return state.armed or state.cursor < num_digits
    if tool == STO:
        return state.acc is not None
    if tool == RCL:
        return state.mem is not None
    return tool == ANS


def apply_tool(state: MachineState, tool: int, digits: Sequence[int]) -> MachineState:
    """One step of the ``exact`` machine. Unknown or inapplicable tools change nothing."""
    if not tool_applies(state, tool, len(digits)):
        return state
    if tool in ARITHMETIC:
        if state.armed:
            right = IDENTITY[tool] if state.acc is None else state.acc
            return replace(state, acc=combine(tool, state.mem, right), mem=None, armed=False)
        left = IDENTITY[tool] if state.acc is None else state.acc
        return replace(
            state, acc=combine(tool, left, digits[state.cursor]), cursor=state.cursor + 1
        )
    if tool == STO:
        return replace(state, mem=state.acc, acc=None)
    if tool == RCL:
        return replace(state, armed=True)
    return replace(state, submitted=True)


def run_program(program: Sequence[int], digits: Sequence[int], max_steps: int) -> int | None:
    """Run ``program`` on the exact machine; the submitted value, or None without ANS."""
    state = MachineState()
    for tool in program[:max_steps]:
        state = apply_tool(state, tool, digits)
        if state.submitted:
            return state.acc
    return None


# --------------------------------------------------------------------------------------
# The tutorial's rules (the ``seed`` variant). Values named as in the spec.

SEED_EPISODE_TOKENS = 6


@dataclass(frozen=True)
class SeedState:
    last: int | None = None
    mem: str | None = None
    submitted: bool = False


def seed_goals(digits: Sequence[int]) -> tuple[int, int, int, int, int]:
    a, b, c, d, e = digits
    goal0 = a * b
    goal1 = goal0 + c
    goal2 = goal1 - d
    goal3 = d * e
    return goal0, goal1, goal2, goal3, goal1 - goal3


def seed_apply(state: SeedState, tool: int, digits: Sequence[int], stage: int) -> SeedState:
    """One token of the tutorial's env. ``digits`` are all five drawn digits."""
    a, b, c, d, e = digits
    last, mem = state.last, state.mem
    if tool == MUL:
        if last is None:
            last = a * b
        else:
            last *= d if stage >= 1 else 1
    elif tool == ADD:
        if last is not None:
            last += c
    elif tool == SUB:
        if last is not None:
            if stage == 2 and mem == "use_d":
                last -= e
            else:
                last -= d if stage >= 1 else 0
    elif tool == STO:
        mem = "use_d" if stage >= 1 else "ok"
    elif tool == RCL:
        if mem is not None:
            if stage == 2 and mem == "use_d":
                last = d * e
            elif last is None:
                last = 0
    elif tool == ANS:
        return replace(state, submitted=True)
    return SeedState(last=last, mem=mem)


def seed_reward(last: int | None, digits: Sequence[int], stage: int) -> float:
    """The tutorial's reward at ``ANS``: it checks the target one stage behind."""
    goal0, goal1, goal2, goal3, goal4 = seed_goals(digits)
    checked = (goal0, goal1, goal2)[stage]
    if stage == 0:
        shaped = 0.25 * (last == goal0) + 0.5 * (last == goal1)
    elif stage == 1:
        shaped = 0.25 * (last == goal0) + 0.5 * (last == goal1) + 0.75 * (last == goal2)
    else:
        shaped = (
            0.2 * (last == goal0)
            + 0.4 * (last == goal1)
            + 0.6 * (last == goal4)
            + 0.6 * (last == goal3)
        )
    return 1.0 * (last == checked) + 0.2 * shaped
