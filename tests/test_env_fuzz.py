"""Property-based checks of ``ToolMachineEnv``: random valid configs, seeds and action
sequences (inapplicable tools included) keep every promise of the env's API, and
invalid configs are refused with a ValueError that names the bad value."""

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs import (
    ADD,
    ANS,
    CONTEXT_LEN,
    MUL,
    NUM_ACTIONS,
    NUM_STAGES,
    PAD_TOKEN,
    RCL,
    SPEC_STAGES,
    START_ACTION,
    STO,
    SUB,
    VARIANTS,
    ToolMachineEnv,
    observation_layout,
)
from envs.machine import pattern_code
from envs.tool_machine import _CONFIG_KEYS, stage_max_steps

# Derandomized and without an example database: the same examples on every run, and no
# failures replayed from earlier runs. (Hypothesis still keeps a small cache in
# .hypothesis/, which carries its own .gitignore.)
# no timing checks: on a loaded machine "data generation is extremely slow" is about the
# machine, not the env (seen with two trainings on the 2 cores)
_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
FUZZ = settings(max_examples=300, derandomize=True, database=None, **_UNTIMED)
REFUSE = settings(max_examples=40, derandomize=True, database=None, **_UNTIMED)

LAYOUT = observation_layout()
MASK = LAYOUT["mask_index"]
#: Keeps stepping after the drawn actions run out, never with ANS, so that every
#: episode reaches either an ANS or the step limit.
FILLER = (MUL, ADD, SUB, STO, RCL)
END_INFO_TYPES = {"stage": int, "target": int, "answered": bool, "answer": int, "correct": bool, "steps": int,
                  "pattern": int}
#: The seed variant's largest reward per stage, from ``seed_reward`` (spec table):
#: ``1.0*(last == checked) + 0.2*shaped``, ``shaped`` at most the sum of its terms
#: (0.25+0.5 at stage 0, 0.25+0.5+0.75 at stage 1, 0.2+0.4+0.6+0.6 at stage 2).
SEED_MAX_REWARD = {0: 1 + 0.2 * 0.75, 1: 1 + 0.2 * 1.5, 2: 1 + 0.2 * 1.8}
EPS = 1e-12


# -- strategies -------------------------------------------------------------------------

@st.composite
def valid_configs(draw, variants=VARIANTS, shaped=False):
    """A config the env accepts; keys other than variant and stage are sometimes left
    out so that the defaults are fuzzed too. ``shaped``: exact variant, shaping > 0."""
    variant = draw(st.sampled_from(variants))
    config = {
        "variant": variant,
        "stage": draw(st.sampled_from(range(NUM_STAGES) if variant == "exact" else SPEC_STAGES)),
    }
    optional = {
        "action_mask": st.booleans(),
        "hard_fraction": st.floats(0.0, 1.0) | st.sampled_from([0, 1]),
        "step_limit_terminates": st.booleans(),
    }
    if variant == "exact":
        optional.update(
            max_steps=st.integers(1, 20),
            shaping=st.just(0.0) | st.floats(0.0, 1.0, exclude_min=True),
            shaping_gamma=st.floats(0.0, 1.0),
        )
    for key, values in optional.items():
        if draw(st.booleans()):
            config[key] = draw(values)
    if shaped:
        config["shaping"] = draw(st.floats(0.0, 1.0, exclude_min=True))
    return config


#: Every tool, masked or not, as a plain int or as the numpy int RLlib sends.
actions = st.sampled_from(range(NUM_ACTIONS)) | st.sampled_from(range(NUM_ACTIONS)).map(np.int64)
episodes = st.lists(st.lists(actions, max_size=25), min_size=1, max_size=3)
seeds = st.integers(0, 2**32 - 1)


# -- helpers ----------------------------------------------------------------------------

def check_observation(env, obs, prev_action):
    assert env.observation_space.contains(obs)
    shown = list(env.context)
    assert list(obs[:CONTEXT_LEN]) == shown + [PAD_TOKEN] * (CONTEXT_LEN - len(shown))
    assert obs[LAYOUT["stage_index"]] == env.stage
    assert obs[LAYOUT["prev_action_index"]] == prev_action
    mask = obs[MASK:]
    if env.use_action_mask:
        assert list(mask) == list(env.action_mask())
        assert mask[ANS] == 1  # submitting always applies
    else:
        assert list(mask) == [1] * NUM_ACTIONS


def check_reward(env, action, reward, done, info):
    """The reward bounds, per variant and step."""
    assert isinstance(reward, float) and math.isfinite(reward)
    if env.variant == "seed":
        # Only ANS pays (seed_reward is >= 0 and at most SEED_MAX_REWARD); any other
        # token, and running out of tokens, pays 0.
        assert 0.0 <= reward <= SEED_MAX_REWARD[env.stage] + EPS
        if action != ANS:
            assert reward == 0.0
        return
    outcome = float(info["correct"]) if done else 0.0  # the unshaped reward: 1 iff ANS hits the target
    s, gamma = env.shaping, env.shaping_gamma
    if not s:
        assert reward == outcome
    elif done:
        # shaping * (gamma * 0 - Phi(s)) with Phi = progress in [0, 1] and Phi = 0 at the end
        assert -s - EPS <= reward - outcome <= EPS
    else:
        # shaping * (gamma * Phi(s') - Phi(s)), both potentials in [0, 1]
        assert -s - EPS <= reward <= s * gamma + EPS


def play(env, actions, seed=None):
    """One episode: reset, then the drawn actions followed by FILLER. Checks every
    step and returns ``(rewards, steps, terminated, truncated, final info)``."""
    obs, info = env.reset(seed=seed)
    assert info == {"stage": env.stage}
    check_observation(env, obs, START_ACTION)
    rewards = []
    for action in itertools.chain(actions, itertools.cycle(FILLER)):
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
        check_observation(env, obs, int(action))
        check_reward(env, action, reward, done, info)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert not (terminated and truncated)
        assert info["stage"] == env.stage
        if done:
            return rewards, len(rewards), terminated, truncated, info
        assert set(info) == {"stage"}
        assert len(rewards) < env.max_steps, "episode ran past max_steps"
    raise AssertionError("unreachable")


# -- valid configs: the API's promises ----------------------------------------------------

@FUZZ
@given(config=valid_configs(), seed=seeds, episodes=episodes)
def test_random_episodes_stay_in_the_spaces_and_bounds_and_end_by_max_steps(config, seed, episodes):
    env = ToolMachineEnv(config)
    # the stage's own limit (12 for stages 0-4), unless the config sets one for all
    max_steps = config.get("max_steps", stage_max_steps(config["stage"])) if config["variant"] == "exact" else 6
    assert env.max_steps >= max_steps
    for i, drawn in enumerate(episodes):
        _, steps, terminated, truncated, info = play(env, drawn, seed=seed if i == 0 else None)
        assert env.step_limit == max_steps
        assert env.stage == info["stage"] == config["stage"]  # one-hot stage weights
        # Ends at the first ANS, or after exactly max_steps actions without one.
        first_ans = next((t + 1 for t, a in enumerate(drawn) if a == ANS), math.inf)
        answered_by_ans = first_ans <= max_steps
        assert steps == min(first_ans, max_steps)
        if answered_by_ans:
            assert (terminated, truncated) == (True, False)
        else:
            limit_terminates = bool(config.get("step_limit_terminates", False))
            assert (terminated, truncated) == (limit_terminates, not limit_terminates)
        # What the env puts in info at the end: plain scalars of a fixed type.
        assert {k: type(v) for k, v in info.items()} == END_INFO_TYPES
        assert info["steps"] == steps
        assert info["target"] == env.target
        assert info["pattern"] == pattern_code(env.operators)  # NO_PATTERN (-1) at a digit stage
        # "answered" means a value was submitted: ANS with a non-empty register.
        if not answered_by_ans:
            assert not info["answered"]
        if not info["answered"]:
            assert info["answer"] == 0 and not info["correct"]
        assert info["correct"] == (info["answered"] and info["answer"] == info["target"])


@FUZZ
@given(
    config=valid_configs(variants=("exact",), shaped=True),
    seed=seeds,
    drawn=st.lists(actions, max_size=25),
)
def test_shaping_never_changes_the_discounted_return(config, seed, drawn):
    """Potential-based with Phi = 0 at the start and the end: the shaping telescopes
    away from the discounted return, whatever the actions."""
    env = ToolMachineEnv(config)
    rewards, steps, _, _, info = play(env, drawn, seed=seed)
    gamma = env.shaping_gamma
    discounted = sum(gamma**t * r for t, r in enumerate(rewards))
    assert discounted == pytest.approx(float(info["correct"]) * gamma ** (steps - 1), abs=1e-9)


@FUZZ
@given(stage=st.sampled_from(range(NUM_STAGES)), seed=seeds, drawn=st.lists(actions, max_size=25))
def test_tools_the_mask_rules_out_change_nothing_but_use_a_step(stage, seed, drawn):
    env = ToolMachineEnv({"stage": stage, "action_mask": True, "max_steps": 30})
    obs, _ = env.reset(seed=seed)
    for t, action in enumerate(drawn, start=1):
        before, mask = env._state, obs[MASK:]  # the machine's registers (hidden from the agent)
        obs, _, terminated, truncated, info = env.step(action)
        if not mask[action]:
            assert env._state == before
        if terminated or truncated:
            assert info["steps"] == t
            break


@FUZZ
@given(config=valid_configs(), seed=seeds, episodes=episodes)
def test_same_config_seed_and_actions_replay_the_same_episodes(config, seed, episodes):
    a, b = ToolMachineEnv(config), ToolMachineEnv(config)
    for i, drawn in enumerate(episodes):
        obs_a, _ = a.reset(seed=seed if i == 0 else None)
        obs_b, _ = b.reset(seed=seed if i == 0 else None)
        assert np.array_equal(obs_a, obs_b)
        for action in itertools.chain(drawn, itertools.cycle(FILLER)):
            *out_a, info_a = a.step(action)
            *out_b, info_b = b.step(action)
            assert np.array_equal(out_a[0], out_b[0]) and out_a[1:] == out_b[1:] and info_a == info_b
            if out_a[2] or out_a[3]:
                break


# -- invalid configs: refused, naming the bad value ---------------------------------------

def refused(config, value):
    """Constructing the env raises a ValueError whose message shows ``value``."""
    with pytest.raises(ValueError, match=re.escape(value)):
        ToolMachineEnv(config)


@REFUSE
@given(variant=st.sampled_from(VARIANTS), stage=st.integers().filter(lambda s: not 0 <= s < NUM_STAGES))
def test_stage_out_of_range_is_refused(variant, stage):
    refused({"variant": variant, "stage": stage}, f"stage must be in 0..{NUM_STAGES - 1}, got {stage}")


@REFUSE
@given(stage=st.floats() | st.text() | st.booleans() | st.none() | st.just([0]))
def test_stage_that_is_not_an_integer_is_refused(stage):
    refused({"stage": stage}, f"stage must be an integer in 0..{NUM_STAGES - 1}, got {stage!r}")


@pytest.mark.parametrize("stage", sorted(set(range(NUM_STAGES)) - set(SPEC_STAGES)))
def test_seed_variant_refuses_the_drill_stages_in_config_reset_and_set_stage(stage):
    refused({"variant": "seed", "stage": stage}, f"only, got {stage}")
    env = ToolMachineEnv({"variant": "seed"})
    with pytest.raises(ValueError, match=f"only, got {stage}"):
        env.reset(seed=0, options={"stage": stage})
    with pytest.raises(ValueError, match=f"only, got {stage}"):
        env.set_stage(stage)


@REFUSE
@given(variant=st.text().filter(lambda v: v not in VARIANTS) | st.none() | st.integers())
def test_unknown_variant_is_refused(variant):
    refused({"variant": variant}, f"variant must be one of {list(VARIANTS)}, got {variant!r}")


@REFUSE
@given(max_steps=st.integers(max_value=0) | st.floats() | st.booleans() | st.text() | st.none())
def test_max_steps_that_is_not_a_positive_integer_is_refused(max_steps):
    refused({"variant": "exact", "max_steps": max_steps}, f"max_steps must be an integer >= 1, got {max_steps!r}")


@REFUSE
@given(fraction=st.floats().filter(lambda x: not 0 <= x <= 1) | st.booleans() | st.text() | st.none())
def test_hard_fraction_outside_0_1_is_refused(fraction):
    refused({"hard_fraction": fraction}, f"hard_fraction must be a number in [0, 1], got {fraction!r}")


@REFUSE
@given(shaping=st.floats().filter(lambda x: not 0 <= x <= 1) | st.booleans() | st.text() | st.none())
def test_shaping_outside_0_1_or_non_numeric_is_refused(shaping):
    # potential-based shaping is scaled by lambda <= 1 (the spec); NaN and inf included
    refused({"shaping": shaping}, f"shaping must be a number in [0, 1], got {shaping!r}")


@REFUSE
@given(gamma=st.floats().filter(lambda g: not 0 <= g <= 1) | st.booleans() | st.text())
def test_shaping_gamma_outside_0_1_is_refused(gamma):
    refused({"shaping": 0.5, "shaping_gamma": gamma}, f"shaping_gamma must be a number in [0, 1], got {gamma!r}")


@REFUSE
@given(shaping=st.floats(0, 1, exclude_min=True))
def test_shaping_on_the_seed_variant_is_refused(shaping):
    refused({"variant": "seed", "shaping": shaping}, "shaping is defined for the exact variant only")


@REFUSE
@given(key=st.text().filter(lambda k: k not in _CONFIG_KEYS))
def test_unknown_config_key_is_refused(key):
    refused({key: 1}, f"unknown env config key(s) {[key]!r}")
