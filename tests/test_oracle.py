"""The oracle: correct programs for any task, checked through the real env."""

import numpy as np
import pytest

from envs import ANS, STO, ToolMachineEnv, general_program, shortest_program
from envs.analysis import memory_required_contexts
from envs.machine import STAGE_DIGITS, run_program, stage_target


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


@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
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
