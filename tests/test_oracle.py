"""The oracle: correct programs for any task, checked through the real env."""

import numpy as np
import pytest

from envs import (
    ANS,
    CONTEXT_LEN,
    PAD_TOKEN,
    STO,
    ToolMachineEnv,
    ToolMachineVectorEnv,
    general_program,
    shortest_program,
)
from envs.analysis import memory_required_contexts
from envs.machine import (
    ADD,
    EXPRESSION_OPERATORS,
    EXPRESSION_STAGES,
    MAX_OPERATORS,
    MUL,
    RCL,
    STAGE_DIGITS,
    STAGES,
    SUB,
    TOKEN_OPERATOR,
    expression_value,
    needs_memory,
    run_program,
    stage_target,
)
from envs.oracle import compile_expression, longest_oracle_program, oracle_program
from envs.tool_machine import stage_max_steps


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_oracle_solves_10000_random_tasks_per_stage(stage):
    env = ToolMachineEnv()
    env.set_stage(stage)
    env.reset(seed=stage)
    program = general_program(stage)
    solved = 0
    for _ in range(10_000):
        env.reset()
        total = 0.0
        for tool in program:
            _, r, term, trunc, info = env.step(tool)
            total += r
        solved += term and total == 1.0 and info["correct"]
    assert solved == 10_000


@pytest.mark.parametrize("stage", STAGES)
def test_oracle_compiles_and_solves_10000_random_tasks_of_every_stage_in_the_env(stage):
    """10,000 fresh tasks per stage in one vector env (bit for bit the single env): the
    oracle's program, read off each observation, is correct within the stage's step limit."""
    n = 10_000
    env = ToolMachineVectorEnv({"stage": stage}, num_envs=n)
    obs, _ = env.reset(seed=stage)
    operators = [[TOKEN_OPERATOR[t] for t in row[1:CONTEXT_LEN:2] if t in TOKEN_OPERATOR] for row in obs]
    programs = [oracle_program(stage, ops) for ops in operators]
    if stage in EXPRESSION_OPERATORS:  # every operator count of the stage is drawn
        assert {len(ops) for ops in operators} == set(EXPRESSION_OPERATORS[stage])
    width = max(len(p) for p in programs)
    assert width <= stage_max_steps(stage)
    plan = np.array([p + (ANS,) * (width - len(p)) for p in programs])
    done = np.zeros(n, dtype=bool)
    correct = np.zeros(n, dtype=bool)
    for t in range(width):
        _, reward, terminated, truncated, info = env.step(plan[:, t])
        ended = (terminated | truncated) & ~done
        if ended.any():
            correct[ended] = info["correct"][ended] & (reward[ended] == 1.0)
        done |= ended
    assert done.all() and correct.all()


@pytest.mark.parametrize("stage", EXPRESSION_STAGES)
def test_compiled_expressions_compute_their_value_by_precedence(stage):
    rng = np.random.default_rng(stage)
    for _ in range(10_000):
        k = int(rng.choice(EXPRESSION_OPERATORS[stage]))
        digits = [int(x) for x in rng.integers(0, 10, size=k + 1)]
        ops = [int(x) for x in rng.choice([MUL, ADD, SUB], size=k)]
        text = "".join(f"{x}{'*+-'[op]}" for x, op in zip(digits, ops)) + str(digits[-1])
        assert expression_value(digits, ops) == eval(text)  # Python's precedence is the usual one
        program = compile_expression(ops)
        assert run_program(program, digits, max_steps=stage_max_steps(stage)) == eval(text)
        # memory is used exactly when a later term is a product: a MUL right after an ADD/SUB
        later_product = any(ops[i] in (ADD, SUB) and ops[i + 1] == MUL for i in range(k - 1))
        assert (STO in program) == (RCL in program) == later_product == needs_memory(ops)


def test_expression_step_limits_are_the_longest_oracle_program_plus_3():
    assert [longest_oracle_program(s) for s in EXPRESSION_STAGES] == [7, 8, 12, 13, 17]
    assert [stage_max_steps(s) for s in STAGES] == [12] * 5 + [10, 11, 15, 16, 20] + [12] * 4
    # the longest: x0 + x1*x2 + x3*x4 + x5*x6 (STO, 2 MULs, RCL, ADD per product term)
    assert len(compile_expression((ADD, MUL, ADD, MUL, ADD, MUL))) == 17


def test_the_longest_stage_fits_the_observation():
    env = ToolMachineEnv({"stage": 9, "action_mask": True})
    assert CONTEXT_LEN == 2 * MAX_OPERATORS + 1
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        assert len(env.operators) == 6 and tuple(obs[:CONTEXT_LEN]) == env.context  # no padding, nothing cut
    obs, _ = env.reset(seed=0, options={"stage": 5, "num_operators": 1})
    assert len(env.context) == 3 and (obs[3:CONTEXT_LEN] == PAD_TOKEN).all()  # shorter ones are padded


@pytest.mark.parametrize("stage", sorted(STAGE_DIGITS))
def test_shortest_program_per_task_is_correct_and_never_longer_than_the_general_one(stage):
    rng = np.random.default_rng(stage)
    for digits in rng.integers(0, 10, size=(300, STAGE_DIGITS[stage])):
        digits = tuple(int(x) for x in digits)
        program = shortest_program(stage, digits)
        assert program[-1] == ANS
        assert run_program(program, digits, max_steps=12) == stage_target(stage, digits)
        assert len(program) <= len(general_program(stage))


def test_memory_required_tasks_are_solved_only_with_memory_tools():
    # STO alone can act as "clear the accumulator", so RCL is not always needed
    required = memory_required_contexts(2)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(required), size=100, replace=False):
        digits = tuple(int(x) for x in required[i])
        program = shortest_program(2, digits)
        assert STO in program
        assert run_program(program, digits, max_steps=12) == stage_target(2, digits)


def test_shortcut_contexts_have_shorter_programs():
    # d*e == 0: a*b+c is already the target
    assert len(shortest_program(2, (3, 4, 5, 0, 7))) == 4


def test_oracle_rejects_bad_tasks():
    with pytest.raises(ValueError):
        general_program(5)
    with pytest.raises(ValueError):
        shortest_program(2, (1, 2, 3))


@pytest.mark.parametrize("stage", EXPRESSION_STAGES)
def test_hard_expressions_are_the_ones_that_need_memory(stage):
    """hard_fraction 1: every task needs STO/RCL; 0: the uniform draw, where they are rarer."""
    hard, uniform = ToolMachineEnv({"stage": stage, "hard_fraction": 1.0}), ToolMachineEnv({"stage": stage})
    drawn = [(hard.reset(seed=i), hard.operators)[1] for i in range(300)]
    assert all(needs_memory(ops) for ops in drawn)
    assert {len(ops) for ops in drawn} == set(EXPRESSION_OPERATORS[stage]) - {1}  # one operator never needs it
    share = np.mean([needs_memory((uniform.reset(seed=i), uniform.operators)[1]) for i in range(300)])
    assert 0.05 < share < 1.0
