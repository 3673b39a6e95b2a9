"""The spec's exhaustive facts, recomputed over every context of every stage."""

import itertools
import random

import numpy as np
import pytest

from envs import ADD, ANS, MUL, RCL, STO, SUB, ToolMachineEnv, general_program
from envs.analysis import (
    ProgramCheck,
    all_contexts,
    exact_programs,
    expression_targets,
    memory_free_solvable,
    memory_required_contexts,
    program_answers,
    seed_programs,
    targets,
)
from envs.machine import (
    ARITHMETIC,
    EXPRESSION_OPERATORS,
    MEMORY_STAGES,
    PATTERN_OFFSET,
    STAGE_DIGITS,
    SeedState,
    expression_value,
    pattern_operators,
    run_program,
    seed_apply,
    seed_reward,
    stage_target,
)
from envs.oracle import oracle_program

SHORTEST = {0: 4, 1: 5, 2: 9, 3: 7, 4: 8, 10: 7, 11: 8, 12: 8, 13: 8}


def test_vectorised_machine_agrees_with_the_scalar_machine():
    """The brute force below trusts analysis.exact_programs: check it against
    machine.apply_tool on sampled programs and contexts."""
    rng = random.Random(0)
    contexts = all_contexts(5)[rng.sample(range(100_000), 40)]
    checked = 0
    for program, answers in exact_programs(contexts, max_len=7):
        if rng.random() < 0.05:
            for ctx, ans in zip(contexts, answers):
                assert run_program(program, tuple(ctx), max_steps=12) == ans
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("stage", sorted(STAGE_DIGITS))
def test_shortest_program_correct_on_every_context(stage):
    contexts = all_contexts(STAGE_DIGITS[stage])
    want = targets(stage, contexts)
    lengths = {}
    for program, answers in exact_programs(contexts, max_len=SHORTEST[stage]):
        if np.array_equal(answers, want):
            lengths.setdefault(len(program), []).append(program)
    # reachable, and nothing shorter than the spec's length solves every context
    assert min(lengths) == SHORTEST[stage]
    assert general_program(stage) in lengths[SHORTEST[stage]]


@pytest.mark.parametrize("stage", MEMORY_STAGES)
def test_memory_stages_need_memory(stage):
    # no program without STO/RCL (any length: only the context's digits can be read)
    # solves stage 2 or a drill
    contexts = all_contexts(STAGE_DIGITS[stage])
    want = targets(stage, contexts)
    for _, answers in exact_programs(contexts, max_len=12, tools=(MUL, ADD, SUB)):
        assert not np.array_equal(answers, want)
    # ... and every shortest general program uses both STO and RCL
    for program, answers in exact_programs(contexts, max_len=SHORTEST[stage]):
        if np.array_equal(answers, want):
            assert STO in program and RCL in program


def test_twenty_percent_of_stage_2_contexts_need_memory():
    assert len(memory_required_contexts(2)) == 20_019  # 20.0% of 10^5
    assert memory_free_solvable(0).all() and memory_free_solvable(1).all()
    # e.g. a*b+c-d solves it when e == 1, a*b+c when d*e == 0: never required
    req = memory_required_contexts(2)
    assert not (req[:, 4] == 1).any() and not ((req[:, 3] * req[:, 4]) == 0).any()


def test_memory_required_subsets_of_the_drills():
    # a-b*c: 41.9% of 10^3 contexts; a*b-c*d: 26.0% of 10^4; a+b*c: 47.8%; a*b+c*d: 42.3%;
    # a+b-c*d: 32.3%; a-b+c*d: 36.9%
    assert len(memory_required_contexts(3)) == 419
    assert len(memory_required_contexts(4)) == 2_603
    assert len(memory_required_contexts(10)) == 478
    assert len(memory_required_contexts(11)) == 4_225
    assert len(memory_required_contexts(12)) == 3_231
    assert len(memory_required_contexts(13)) == 3_692
    # checked context by context with the plain rules, independently of the
    # vectorised walk: a context is memory-required iff no sequence of arithmetic
    # tools (each reads one digit) followed by ANS submits the target
    rng = random.Random(2)
    for stage, sample in ((3, None), (4, 400), (10, None), (11, 400), (12, 400), (13, 400)):
        n = STAGE_DIGITS[stage]
        required = {tuple(map(int, r)) for r in memory_required_contexts(stage)}
        contexts = [tuple(map(int, c)) for c in all_contexts(n)]
        for digits in contexts if sample is None else rng.sample(contexts, sample):
            programs = (
                p + (ANS,) for k in range(1, n + 1) for p in itertools.product((MUL, ADD, SUB), repeat=k)
            )
            solvable = any(run_program(p, digits, max_steps=12) == stage_target(stage, digits) for p in programs)
            assert solvable == (digits not in required), digits


# -- the seed variant (the tutorial's env) ----------------------------------------------

SEED_BEST = {0: ((MUL, ANS), 1.0600), 1: ((MUL, ADD, ANS), 1.1200), 2: ((MUL, ADD, SUB, ANS), 1.0370)}


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_seed_variant_best_fixed_programs(stage):
    results = [(program, reward.mean()) for program, reward, _ in seed_programs(stage)]
    best = max(r for _, r in results)
    program, figure = SEED_BEST[stage]
    assert round(best, 4) == figure
    assert round(dict(results)[program], 4) == figure


def test_seed_variant_always_correct_programs_hit_the_checked_target():
    for stage, (program, _) in SEED_BEST.items():
        rewards = next(r for p, r, _ in seed_programs(stage) if p == program)
        assert (rewards >= 1.0).all()


def test_seed_variant_stated_stage_2_target_is_unreachable():
    stated = targets(2, all_contexts(5))
    best = max((value == stated).mean() for _, _, value in seed_programs(2))
    assert round(best, 3) == 0.271


def test_seed_analysis_agrees_with_the_seed_rules():
    rng = random.Random(1)
    ctx = all_contexts(5)
    rows = rng.sample(range(len(ctx)), 30)
    for stage in range(3):
        for program, reward, _ in seed_programs(stage):
            if rng.random() > 0.03:
                continue
            for i in rows:
                digits = tuple(int(x) for x in ctx[i])
                state = SeedState()
                for tool in program[:-1]:
                    state = seed_apply(state, tool, digits, stage)
                assert seed_reward(state.last, digits, stage) == pytest.approx(reward[i])


def test_seed_env_episode_matches_the_rules():
    env = ToolMachineEnv({"variant": "seed"})
    for stage, (program, _) in SEED_BEST.items():
        for digits in itertools.islice(itertools.product(range(10), repeat=5), 0, 100_000, 7919):
            env.reset(seed=0, options={"stage": stage, "digits": digits})
            total = 0.0
            for tool in program:
                _, r, term, trunc, info = env.step(tool)
                total += r
            assert term and total == pytest.approx(seed_reward(info["answer"], digits, stage))
            assert total >= 1.0


def test_seed_env_truncates_after_six_tokens_with_zero_reward():
    env = ToolMachineEnv({"variant": "seed", "max_steps": 12})
    env.reset(seed=0, options={"stage": 1})
    for _t in range(6):
        _, r, term, trunc, _ = env.step(MUL)
        assert r == 0.0 and not term
    assert trunc


def test_seed_tokens_with_memory_at_stage_2():
    """Spot checks of the tutorial's token table at stage 2 with STO."""
    digits = (2, 3, 4, 5, 6)
    s = SeedState()
    s = seed_apply(s, STO, digits, 2)
    assert s.mem == "use_d"
    s = seed_apply(s, RCL, digits, 2)
    assert s.last == 5 * 6
    s = seed_apply(s, SUB, digits, 2)
    assert s.last == 30 - 6  # subtracts e once memory is "use_d"
    s = seed_apply(s, MUL, digits, 2)
    assert s.last == 24 * 5
    assert seed_apply(SeedState(), ANS, digits, 2).submitted


# --------------------------------------------------------------------------------------
# The program check (self-imitation's filter against coincidental wins)


def test_program_answers_and_expression_targets_agree_with_the_scalar_machine():
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 10, size=(50, 5))
    for _ in range(300):
        # any tools, wasted steps included, sometimes no ANS at all
        program = tuple(int(t) for t in rng.integers(0, 6, size=int(rng.integers(1, 12))))
        answers = program_answers(program, contexts)
        scalar = [run_program(program, tuple(ctx), max_steps=12) for ctx in contexts]
        if answers is None:
            assert all(a is None for a in scalar)
        else:
            assert list(np.broadcast_to(answers, len(contexts))) == scalar
    for _ in range(200):
        operators = tuple(int(o) for o in rng.integers(0, 3, size=4))
        assert list(expression_targets(operators, contexts)) == [expression_value(c, operators) for c in contexts]


@pytest.mark.parametrize("stage", [0, 1])
def test_program_check_accepts_the_general_programs_and_rejects_the_coincidences(stage):
    """Over every program of up to two steps more than the shortest, on every context:
    those right everywhere pass, those right on under 90% of contexts (and on some) fail."""
    contexts = all_contexts(STAGE_DIGITS[stage])
    want = targets(stage, contexts)
    check = ProgramCheck(trials=64)
    general = coincidental = 0
    for program, answers in exact_programs(contexts, max_len=SHORTEST[stage] + 2):
        share = float(np.mean(answers == want))
        if share == 1.0:
            assert check(stage, (), program), program
            general += 1
        elif 0 < share < 0.9:
            assert not check(stage, (), program), (program, share)
            coincidental += 1
    assert general >= 1 and coincidental > 10


def test_program_check_at_stage_2_and_at_the_two_memory_cycle_patterns():
    check = ProgramCheck(trials=64)
    assert check(2, (), general_program(2))
    # answering a*b+c when d*e = 0: right on 19% of contexts, never a program
    assert not check(2, (), (MUL, MUL, ADD, ANS))
    contexts = np.random.default_rng(1).integers(0, 10, size=(2000, 5))
    for operators in [(ADD, MUL, ADD, MUL), (SUB, MUL, SUB, MUL), (ADD, MUL, SUB, MUL), (SUB, MUL, ADD, MUL)]:
        assert check(7, operators, oracle_program(7, operators))
        want = expression_targets(operators, contexts)
        lucky = 0
        # no memory-free program is right on every context, yet some are right on some
        for program, answers in exact_programs(contexts, max_len=6, tools=ARITHMETIC):
            assert not check(7, operators, program)
            lucky += bool(np.any(answers == want))
        assert lucky > 0


@pytest.mark.parametrize("stage", sorted(EXPRESSION_OPERATORS))
def test_program_check_accepts_the_oracle_on_every_pattern(stage):
    check = ProgramCheck(trials=32)
    for k in EXPRESSION_OPERATORS[stage]:
        for code in range(PATTERN_OFFSET[k], PATTERN_OFFSET[k] + 3**k):
            operators = pattern_operators(code)
            program = oracle_program(stage, operators)
            assert check(stage, operators, program)
            # without its last tool the answer is a coincidence at most
            assert not check(stage, operators, program[:-2] + (ANS,))
