"""Every rule of the spec's tables, on the machine and through the Gymnasium env."""

import numpy as np
import pytest

from envs import (
    ADD,
    ANS,
    CONTEXT_LEN,
    MUL,
    NUM_ACTIONS,
    NUM_STAGES,
    PAD_TOKEN,
    RCL,
    START_ACTION,
    STO,
    SUB,
    MachineState,
    ToolMachineEnv,
    apply_tool,
    observation_layout,
    stage_target,
)
from envs.machine import MEMORY_STAGES, STAGE_DIGITS, run_program

DIGITS = (7, 3, 4, 2, 5)


def run(program, digits=DIGITS):
    state = MachineState()
    for tool in program:
        state = apply_tool(state, tool, digits)
    return state


# -- the machine ----------------------------------------------------------------------

def test_arithmetic_reads_next_digit_and_empty_acc_is_identity():
    assert run([MUL]) == MachineState(acc=7, cursor=1)  # 1 * 7
    assert run([ADD]) == MachineState(acc=7, cursor=1)  # 0 + 7
    assert run([SUB]) == MachineState(acc=-7, cursor=1)  # 0 - 7
    assert run([MUL, MUL]).acc == 21
    assert run([MUL, ADD]).acc == 10
    assert run([MUL, SUB]).acc == 4
    assert run([MUL, MUL, ADD]).cursor == 3


def test_sto_moves_acc_to_memory_and_empties_acc():
    s = run([MUL, MUL, STO])
    assert (s.acc, s.mem, s.cursor) == (None, 21, 2)
    # the next arithmetic tool starts from the identity again
    assert run([MUL, MUL, STO, MUL]).acc == 4


def test_rcl_arms_the_next_arithmetic_tool_to_combine_memory_with_acc():
    s = run([MUL, MUL, STO, MUL, RCL])
    assert s.armed and s.acc == 4 and s.mem == 21
    for tool, value in ((SUB, 21 - 4), (ADD, 21 + 4), (MUL, 21 * 4)):
        t = apply_tool(s, tool, DIGITS)
        assert (t.acc, t.mem, t.armed, t.cursor) == (value, None, False, s.cursor)  # no digit read


def test_armed_tool_with_empty_acc_uses_identity_for_the_right_operand():
    s = run([MUL, STO, RCL])
    assert s.acc is None and s.armed
    assert apply_tool(s, SUB, DIGITS).acc == 7 - 0
    assert apply_tool(s, MUL, DIGITS).acc == 7 * 1


def test_armed_tool_applies_even_with_no_digit_left():
    digits = (2, 3, 4)
    s = run([MUL, MUL, STO, MUL, RCL], digits)
    assert s.cursor == 3
    assert apply_tool(s, ADD, digits).acc == 6 + 4


@pytest.mark.parametrize(
    "program, tool",
    [
        ([MUL, MUL, MUL], MUL),  # no digit left, not armed (3-digit context)
        ([ADD, ADD, ADD], SUB),
        ([], STO),  # empty acc
        ([MUL, STO], STO),
        ([], RCL),  # empty memory
        ([MUL, STO, RCL, ADD], RCL),  # memory was emptied by the armed ADD
    ],
)
def test_inapplicable_tools_change_nothing(program, tool):
    digits = (2, 3, 4)
    s = run(program, digits)
    assert apply_tool(s, tool, digits) == s


def test_ans_submits_the_accumulator():
    assert run_program([MUL, MUL, ADD, ANS], (2, 3, 4), max_steps=12) == 10
    assert run_program([ANS], (2, 3, 4), max_steps=12) is None


def test_stage_targets():
    a, b, c, d, e = DIGITS
    assert stage_target(0, DIGITS[:3]) == a * b + c
    assert stage_target(1, DIGITS[:4]) == (a * b + c) - d
    assert stage_target(2, DIGITS) == (a * b + c) - (d * e)
    assert stage_target(3, DIGITS[:3]) == a - b * c  # memory drills
    assert stage_target(4, DIGITS[:4]) == a * b - c * d
    assert stage_target(10, DIGITS[:3]) == a + b * c
    assert stage_target(11, DIGITS[:4]) == a * b + c * d
    assert stage_target(12, DIGITS[:4]) == a + b - c * d
    assert stage_target(13, DIGITS[:4]) == a - b + c * d
    with pytest.raises(ValueError, match="stage"):
        stage_target(14, DIGITS)
    # expression stages: the usual precedence, left to right
    assert stage_target(5, (2, 3, 4), (ADD, MUL)) == 2 + 3 * 4
    assert stage_target(6, (2, 3, 4, 5), (SUB, MUL, SUB)) == 2 - 3 * 4 - 5
    assert stage_target(9, (9, 9, 9, 9, 9, 9, 9), (MUL,) * 6) == 9**7
    with pytest.raises(ValueError, match="one digit more than operators"):
        stage_target(5, DIGITS)


# -- the env --------------------------------------------------------------------------

def play(env, program, stage, digits):
    obs, info = env.reset(seed=0, options={"stage": stage, "digits": digits})
    total = 0.0
    for t, tool in enumerate(program):
        obs, r, term, trunc, info = env.step(tool)
        total += r
        if term or trunc:
            return total, info, t + 1, term, trunc
    raise AssertionError("episode did not end")


@pytest.mark.parametrize(
    "stage, program",
    [(0, [MUL, MUL, ADD, ANS]), (1, [MUL, MUL, ADD, SUB, ANS]), (2, [MUL, MUL, ADD, STO, MUL, MUL, RCL, SUB, ANS])],
)
def test_correct_answer_pays_one_and_info_says_so(stage, program):
    env = ToolMachineEnv()
    digits = DIGITS[: 3 + stage]
    total, info, steps, term, trunc = play(env, program, stage, digits)
    assert (total, term, trunc, steps) == (1.0, True, False, len(program))
    assert info["correct"] and info["answered"]
    assert info["answer"] == info["target"] == stage_target(stage, digits)
    assert info["stage"] == stage


def test_wrong_answer_pays_zero():
    total, info, *_ = play(ToolMachineEnv(), [MUL, ANS], 0, (2, 3, 4))
    assert total == 0.0 and not info["correct"] and info["answer"] == 2 and info["target"] == 10


def test_truncated_after_max_steps_without_ans():
    env = ToolMachineEnv({"max_steps": 5})
    total, info, steps, term, trunc = play(env, [STO] * 10, 0, (2, 3, 4))
    assert (total, steps, term, trunc) == (0.0, 5, False, True)
    assert not info["answered"] and not info["correct"]


def test_step_limit_can_be_reported_as_termination():
    env = ToolMachineEnv({"max_steps": 5, "step_limit_terminates": True})
    total, info, steps, term, trunc = play(env, [STO] * 10, 0, (2, 3, 4))
    assert (total, steps, term, trunc) == (0.0, 5, True, False)
    assert not info["answered"] and not info["correct"]
    # answering is unchanged
    total, info, steps, term, trunc = play(env, [MUL, MUL, ADD, ANS], 0, (2, 3, 4))
    assert (total, term, trunc, info["correct"]) == (1.0, True, False, True)


def test_default_max_steps_is_12():
    _, _, steps, _, trunc = play(ToolMachineEnv(), [RCL] * 20, 2, DIGITS)
    assert steps == 12 and trunc


def test_observation_holds_context_stage_previous_action_and_no_registers():
    env = ToolMachineEnv({"action_mask": True})
    lay = observation_layout()
    obs, _ = env.reset(seed=0, options={"stage": 0, "digits": (2, 3, 4)})
    assert env.observation_space.contains(obs)
    assert list(obs[:CONTEXT_LEN]) == [2, 3, 4] + [PAD_TOKEN] * (CONTEXT_LEN - 3)
    assert obs[lay["stage_index"]] == 0 and obs[lay["prev_action_index"]] == START_ACTION
    # only ADD-like tools and ANS can apply at the start
    assert list(obs[lay["mask_index"] :]) == [1, 1, 1, 0, 0, 1]
    obs, *_ = env.step(MUL)
    assert obs[lay["prev_action_index"]] == MUL
    assert list(obs[lay["mask_index"] :]) == [1, 1, 1, 1, 0, 1]
    obs, *_ = env.step(STO)
    assert list(obs[lay["mask_index"] :]) == [1, 1, 1, 0, 1, 1]
    assert list(obs[:CONTEXT_LEN]) == [2, 3, 4] + [PAD_TOKEN] * (CONTEXT_LEN - 3)  # context does not move


def test_every_observation_reads_back_as_its_task():
    from envs.machine import STAGES
    from envs.tool_machine import read_task

    for stage in STAGES:
        env = ToolMachineEnv({"stage": stage})
        for seed in range(50):
            obs, _ = env.reset(seed=seed)
            task = (stage, env.digits, env.operators)
            assert read_task(obs) == task
            obs, *_ = env.step(MUL)  # later steps show the same context
            assert read_task(obs) == task


def test_mask_is_all_ones_when_off():
    env = ToolMachineEnv()
    obs, _ = env.reset(seed=0)
    assert list(obs[observation_layout()["mask_index"] :]) == [1] * NUM_ACTIONS


def test_reset_seed_is_deterministic_and_set_stage_applies_next_episode():
    a, b = ToolMachineEnv(), ToolMachineEnv()
    assert np.array_equal(a.reset(seed=42)[0], b.reset(seed=42)[0])
    a.set_stage(2)
    assert a.stage == 0  # the current episode keeps its stage
    obs, info = a.reset()
    assert a.stage == 2 and info["stage"] == 2 and len(a.digits) == 5


def test_stage_weights_mix_stages():
    env = ToolMachineEnv()
    env.set_stage_weights([0.5, 0.0, 0.5] + [0.0] * (NUM_STAGES - 3))
    env.reset(seed=1)
    stages = {env.reset()[1]["stage"] for _ in range(200)}
    assert stages == {0, 2}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"stage": 14}, "stage must be in 0..13, got 14"),
        ({"stage": "1"}, "stage must be an integer"),
        ({"variant": "tutorial"}, "variant must be one of"),
        ({"max_steps": 0}, "max_steps must be an integer >= 1"),
        ({"stages": 1}, "unknown env config key"),
        ({"hard_min_digit": 10}, "hard_min_digit must be an integer in 0..9, got 10"),
        ({"hard_min_digit": 2.0}, "hard_min_digit must be an integer"),
    ],
)
def test_bad_env_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        ToolMachineEnv(config)


def test_bad_stage_weights_are_refused():
    with pytest.raises(ValueError, match="stage weights"):
        ToolMachineEnv().set_stage_weights([1, 1])
    with pytest.raises(ValueError, match="stage must be in"):
        ToolMachineEnv().set_stage(-1)


def test_seed_variant_refuses_the_memory_drills():
    with pytest.raises(ValueError, match="seed variant has stages"):
        ToolMachineEnv({"variant": "seed", "stage": 3})
    env = ToolMachineEnv({"variant": "seed"})
    with pytest.raises(ValueError, match="got 4"):
        env.set_stage_weights([1, 0, 0, 0, 1] + [0] * (NUM_STAGES - 5))


@pytest.mark.parametrize("stage", MEMORY_STAGES)
def test_hard_contexts_come_from_the_stages_memory_required_subset(stage):
    from envs.analysis import memory_required_contexts

    env = ToolMachineEnv({"hard_fraction": 1.0, "stage": stage})
    required = {tuple(map(int, row)) for row in memory_required_contexts(stage)}
    for i in range(50):
        env.reset(seed=i)
        assert env.digits in required


@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_shaping_is_potential_based_and_never_changes_correctness(stage):
    from envs.oracle import general_program

    gamma = 0.9
    rng = np.random.default_rng(stage)
    for digits in rng.integers(0, 10, size=(20, STAGE_DIGITS[stage])):
        digits = tuple(int(x) for x in digits)
        for program, want in (
            (general_program(stage), True),
            (general_program(stage)[:-2] + (ANS,), None),  # stops one tool short
            ((MUL,) * 12, False),  # truncated
        ):
            env = ToolMachineEnv({"shaping": 0.5, "shaping_gamma": gamma})
            env.reset(seed=0, options={"stage": stage, "digits": digits})
            rewards, info = [], {}
            for tool in program:
                _, r, term, trunc, info = env.step(tool)
                rewards.append(r)
                if term or trunc:
                    break
            discounted = sum(gamma**t * r for t, r in enumerate(rewards))
            # Phi = 0 at the start and at the end: the shaping telescopes away
            unshaped = float(info["correct"]) * gamma ** (len(rewards) - 1)
            assert discounted == pytest.approx(unshaped, abs=1e-12)
            if want is not None:
                assert info["correct"] is want
            if want:
                assert all(r > 0 for r in rewards)  # each general step makes progress


def test_bad_shaping_is_refused():
    with pytest.raises(ValueError, match="shaping must be a number"):
        ToolMachineEnv({"shaping": -1})
    with pytest.raises(ValueError, match="shaping_gamma"):
        ToolMachineEnv({"shaping": 1.0, "shaping_gamma": 1.5})
    with pytest.raises(ValueError, match="exact variant only"):
        ToolMachineEnv({"variant": "seed", "shaping": 1.0})


def test_pattern_numbers_cover_every_operator_sequence_once():
    from itertools import product

    from envs.machine import ARITHMETIC, NO_PATTERN, NUM_PATTERNS, pattern_code, pattern_operators

    codes = [pattern_code(ops) for k in range(1, 7) for ops in product(ARITHMETIC, repeat=k)]
    assert sorted(codes) == list(range(NUM_PATTERNS))
    assert all(pattern_code(pattern_operators(c)) == c for c in range(NUM_PATTERNS))
    assert pattern_code(()) == NO_PATTERN


def test_pattern_weights_choose_the_operators_of_their_counts():
    """Weights on two 2-operator patterns: every 2-operator task has one of them, in
    proportion; 1-operator tasks (no weights) stay uniform; every end info names the
    pattern; and ``None`` restores uniform draws."""
    from envs.machine import ADD, MUL, NO_PATTERN, NUM_PATTERNS, SUB, needs_memory, pattern_code

    env = ToolMachineEnv({"stage": 5})
    weights = np.zeros(NUM_PATTERNS)
    weights[pattern_code((MUL, SUB))] = 3.0
    weights[pattern_code((ADD, ADD))] = 1.0
    env.set_pattern_weights(weights)
    seen: dict[tuple, int] = {}
    env.reset(seed=0)
    for _ in range(4000):
        env.reset()
        seen[env.operators] = seen.get(env.operators, 0) + 1
        *_, info = env.step(ANS)
        assert info["pattern"] == pattern_code(env.operators)
    two = {ops: n for ops, n in seen.items() if len(ops) == 2}
    assert set(two) == {(MUL, SUB), (ADD, ADD)}
    assert two[(MUL, SUB)] / sum(two.values()) == pytest.approx(0.75, abs=0.03)
    assert {ops for ops in seen if len(ops) == 1} == {(MUL,), (ADD,), (SUB,)}
    env.set_pattern_weights(None)
    assert len({env.reset()[0].tobytes() and env.operators for _ in range(500)} - {(MUL, SUB), (ADD, ADD)}) > 5
    # hard draws take the weighted patterns that need memory, or any that does if none is weighted
    hard = ToolMachineEnv({"stage": 5, "hard_fraction": 1.0})
    weights[pattern_code((ADD, MUL))] = 1.0
    hard.set_pattern_weights(weights)
    hard.reset(seed=1)
    assert {hard.reset()[0].tobytes() and hard.operators for _ in range(200)} == {(ADD, MUL)}
    weights[pattern_code((ADD, MUL))] = 0.0
    hard.set_pattern_weights(weights)
    drawn = {hard.reset()[0].tobytes() and hard.operators for _ in range(300)}
    assert drawn == {(ADD, MUL), (SUB, MUL)} and all(needs_memory(ops) for ops in drawn)  # a + b*c, a - b*c
    digit_env = ToolMachineEnv({"stage": 1})
    digit_env.reset(seed=0)
    assert digit_env.step(ANS)[-1]["pattern"] == NO_PATTERN


def test_bad_pattern_weights_are_refused():
    with pytest.raises(ValueError, match="pattern weights must be 1092 non-negative"):
        ToolMachineEnv().set_pattern_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="pattern weights"):
        ToolMachineEnv().set_pattern_weights([-1.0] * 1092)


def test_expression_hard_fraction_sets_the_expressions_share_apart_from_the_digit_stages():
    """Stage 2 keeps --hard-fraction's memory-required contexts while the expression
    stages take their own share (by default the same)."""
    from envs.analysis import memory_required_contexts
    from envs.machine import needs_memory

    def memory_share(config, stage, n=400):
        env = ToolMachineEnv({**config, "stage": stage})
        env.reset(seed=3)
        needed = {tuple(map(int, row)) for row in memory_required_contexts(2)} if stage == 2 else None
        hits = 0
        for _ in range(n):
            env.reset()
            hits += needs_memory(env.operators) if needed is None else tuple(env.digits) in needed
        return hits / n

    split = {"hard_fraction": 1.0, "expression_hard_fraction": 0.0}
    assert memory_share(split, 2) == 1.0
    uniform = memory_share({}, 6)
    assert uniform < 0.9 and memory_share(split, 6) == pytest.approx(uniform, abs=0.08)
    assert memory_share({"hard_fraction": 0.0, "expression_hard_fraction": 1.0}, 6) == 1.0
    assert memory_share({"hard_fraction": 1.0}, 6) == 1.0  # the default follows hard_fraction
    with pytest.raises(ValueError, match="expression_hard_fraction must be a number in"):
        ToolMachineEnv({"expression_hard_fraction": 1.5})


def test_hard_min_digit_applies_to_the_hard_expression_draws_only():
    """The hard draws (memory-needing operators) take digits from hard_min_digit up; the
    others, and every draw with the default 0, are what they were."""
    from envs.machine import needs_memory

    plain, low = (ToolMachineEnv({"stage": 7, "hard_fraction": 0.5, "hard_min_digit": m}) for m in (0, 2))
    plain.reset(seed=4)
    low.reset(seed=4)
    digits = {True: set(), False: set()}
    for _ in range(600):
        plain.reset()
        low.reset()
        hard = low.digits != plain.digits  # the same stream; only a hard draw's digits differ
        if not hard:
            assert low.operators == plain.operators
        else:
            assert needs_memory(low.operators)
        digits[hard] |= set(low.digits)
    assert min(digits[True]) == 2 and min(digits[False]) == 0


def test_pattern_text_writes_the_expression_over_letters():
    from envs.machine import pattern_code, pattern_operators, pattern_text

    assert pattern_text((ADD, MUL)) == "a + b*c"
    assert pattern_text((MUL, SUB, MUL, ADD)) == "a*b - c*d + e"
    assert pattern_text(()) == "a"
    # one text per pattern number
    texts = {pattern_text(pattern_operators(c)) for c in range(pattern_code((MUL,)), pattern_code((SUB,) * 6) + 1)}
    assert len(texts) == pattern_code((SUB,) * 6) + 1 - pattern_code((MUL,))
