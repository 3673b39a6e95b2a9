"""``ToolMachineVectorEnv`` is bit for bit ``SyncVectorEnv`` over ``ToolMachineEnv``s."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers.vector import DictInfoToList

from envs import (
    ADD,
    ANS,
    CONTEXT_LEN,
    GYM_ENV_ID,
    MUL,
    NUM_ACTIONS,
    NUM_STAGES,
    STAGE_DIGITS,
    START_ACTION,
    SUB,
    MachineState,
    ToolMachineEnv,
    ToolMachineVectorEnv,
    batched_rng,
    make_tool_machine,
    vector_tool_machine,
)
from envs.machine import EXPRESSION_STAGES, NUM_PATTERNS, PATTERN_OFFSET, TOKEN_OPERATOR
from envs.oracle import general_path, oracle_program

PREV = CONTEXT_LEN + 1
# Programs that hit the stated target of the seed variant's stages 0-1 (and its
# rewarded one at stage 2), so that runs see correct answers, not only random ones.
SEED_PLANS = {0: (MUL, ADD, ANS), 1: (MUL, ADD, SUB, ANS), 2: (MUL, ADD, SUB, ANS)}


def assert_identical(a, b, where):
    """Same type, keys (in order), dtypes, shapes and bytes (so 0.0 != -0.0)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    else:
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (where, a.dtype, b.dtype, a.shape, b.shape)
        assert a.tobytes() == b.tobytes(), (where, a, b)


def both(config, num_envs):
    return (
        ToolMachineVectorEnv(config, num_envs=num_envs),
        SyncVectorEnv([lambda: ToolMachineEnv(config)] * num_envs),
    )


def policy(rng, obs, t, seed_variant):
    """Mostly the stage's plan, else any action (inapplicable and masked ones too)."""
    n = len(obs)
    actions = rng.integers(0, NUM_ACTIONS, size=n)
    for i in np.flatnonzero(rng.random(n) < 0.65):
        stage = int(obs[i, CONTEXT_LEN])
        operators = [TOKEN_OPERATOR[tok] for tok in obs[i, 1:CONTEXT_LEN:2] if tok in TOKEN_OPERATOR]
        plan = SEED_PLANS[stage] if seed_variant else oracle_program(stage, operators)
        actions[i] = plan[t[i]] if t[i] < len(plan) else ANS
    return actions


def run_both(config, *, num_envs=8, seed=0, steps=150, weights=None, new_weights=None, pattern_weights=None):
    """Reset and step both with the same actions; every output must be identical."""
    vec, sync = both(config, num_envs)
    if weights is not None:
        vec.set_stage_weights(weights)
        sync.call("set_stage_weights", weights)
    if pattern_weights is not None:
        vec.set_pattern_weights(pattern_weights)
        sync.call("set_pattern_weights", pattern_weights)
    rng = np.random.default_rng(seed + 1000)
    seed_variant = config.get("variant") == "seed"
    stats = {"episodes": 0, "correct": 0, "truncated": 0, "shaped": 0, "stages": set()}
    obs, info = vec.reset(seed=seed)
    sync_obs, sync_info = sync.reset(seed=seed)
    assert_identical(obs, sync_obs, "reset obs")
    assert_identical(info, sync_info, "reset info")
    t = np.zeros(num_envs, dtype=np.int64)
    for step in range(steps):
        if step == steps // 3 and new_weights is not None:  # mid-run curriculum move
            vec.set_stage_weights(new_weights)
            sync.call("set_stage_weights", new_weights)
        if step == steps // 2:  # an explicit reset that continues each env's stream
            obs, info = vec.reset()
            sync_obs, sync_info = sync.reset()
            assert_identical(obs, sync_obs, "mid reset obs")
            assert_identical(info, sync_info, "mid reset info")
        t = np.where(obs[:, PREV] == START_ACTION, 0, t + 1)
        actions = policy(rng, obs, t, seed_variant)
        out = vec.step(actions)
        sync_out = sync.step(actions)
        for name, a, b in zip(("obs", "reward", "terminated", "truncated", "info"), out, sync_out):
            assert_identical(a, b, f"step {step} {name}")
        obs, reward, terminated, truncated, info = out
        stats["episodes"] += int((terminated | truncated).sum())
        stats["truncated"] += int(((terminated | truncated) & (actions != ANS)).sum())  # out of steps
        stats["correct"] += int(info.get("correct", np.zeros(1, bool)).sum())
        stats["shaped"] += int(((reward != 0) & (reward != 1)).sum())
        stats["stages"] |= set(obs[:, CONTEXT_LEN].tolist())
    # Every env's random stream (PCG64 state and 32-bit buffer) stands where its twin's does.
    assert [g.bit_generator.state for g in vec.np_random] == [g.bit_generator.state for g in sync.np_random]
    assert vec.np_random_seed == sync.np_random_seed
    return stats


CONFIGS = [
    *({"stage": s} for s in range(5)),
    *({"variant": "seed", "stage": s} for s in range(3)),
    {"stage": 2, "action_mask": True},
    {"stage": 4, "action_mask": True, "shaping": 0.5},
    {"variant": "seed", "stage": 2, "action_mask": True},
    {"stage": 2, "shaping": 0.5},
    {"stage": 3, "shaping": 1, "shaping_gamma": 1},
    {"stage": 2, "hard_fraction": 0.8, "action_mask": True, "shaping": 0.5},
    {"variant": "seed", "stage": 2, "hard_fraction": 0.8},
    {"stage": 3, "max_steps": 4, "step_limit_terminates": True, "shaping": 0.5},
    {"variant": "seed", "stage": 1, "step_limit_terminates": True},
    {"stage": 1, "max_steps": 5},
    *({"stage": s} for s in EXPRESSION_STAGES),
    {"stage": 9, "action_mask": True, "shaping": 0.5},
    {"stage": 6, "shaping": 1, "shaping_gamma": 1, "hard_fraction": 0.8},
    {"stage": 7, "hard_fraction": 0.8, "hard_min_digit": 2, "action_mask": True},
    {"stage": 8, "max_steps": 9, "step_limit_terminates": True},
]


@pytest.mark.parametrize("seed", [0, 12345])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_sync_vector_env(config, seed):
    stats = run_both(config, seed=seed)
    assert stats["episodes"] > 50 and stats["correct"] > 0
    if config.get("shaping"):
        assert stats["shaped"] > 0
    if config.get("max_steps"):
        assert stats["truncated"] > 0


@pytest.mark.parametrize(
    "config, weights, new_weights",
    [
        ({"hard_fraction": 0.8, "shaping": 0.5}, [1, 1, 2, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 3, 0, 1, 0, 1, 0, 1, 0, 2, 1, 0]),
        ({"hard_fraction": 0.8, "expression_hard_fraction": 0.3, "hard_min_digit": 2},
         [0, 0, 2, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 1]),
        ({"action_mask": True}, [0.5, 0, 0, 0.25, 0.25] + [0] * (NUM_STAGES - 5), [1] * NUM_STAGES),
        ({"variant": "seed", "hard_fraction": 0.8}, [1, 1, 1] + [0] * (NUM_STAGES - 3), [0, 1, 3] + [0] * (NUM_STAGES - 3)),
        ({"shaping": 0.5, "action_mask": True}, [0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 2, 0, 3, 1, 1, 0, 2]),
    ],
)
def test_matches_sync_vector_env_with_mixed_stages(config, weights, new_weights):
    stats = run_both(config, num_envs=12, seed=7, weights=weights, new_weights=new_weights)
    assert len(stats["stages"]) >= 3


def test_matches_sync_vector_env_with_pattern_weights():
    """Focused operator patterns (two counts weighted, one uniform) draw the same tasks,
    with and without hard draws; every episode's end info names its pattern."""
    weights = np.zeros(NUM_PATTERNS)
    weights[PATTERN_OFFSET[2]: PATTERN_OFFSET[2] + 9] = np.arange(9) ** 2
    weights[PATTERN_OFFSET[4]] = 1.0
    for config in ({"shaping": 0.5}, {"hard_fraction": 0.8, "action_mask": True}):
        stats = run_both(config, num_envs=12, seed=5, weights=[0, 0, 0, 0, 0, 1, 1, 1] + [0] * (NUM_STAGES - 8), pattern_weights=weights)
        assert {5, 6, 7} <= stats["stages"]


@pytest.mark.parametrize("num_envs", [1, 3, 64])
def test_matches_sync_vector_env_for_any_num_envs(num_envs):
    run_both({"stage": 2, "shaping": 0.5, "action_mask": True, "hard_fraction": 0.8}, num_envs=num_envs, seed=3,
             steps=60 if num_envs > 8 else 200)


def test_rejected_draws_are_redone_with_numpys_generator(monkeypatch):
    """Lemire rejections are too rare to meet in a test: pretend half the rows were
    rejected, so their draws go through the per-env Generator path."""
    coin = np.random.default_rng(0)

    def lemire_rejecting_half(words, bound, count):
        values, rejected = batched_rng.lemire(words, bound, count)
        return values, rejected | (coin.random(len(words)) < 0.5)

    monkeypatch.setattr(vector_tool_machine, "lemire", lemire_rejecting_half)
    run_both({"hard_fraction": 0.8, "shaping": 0.5}, seed=4, steps=80,
             weights=[1, 1, 2, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0], new_weights=[1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1])


def test_streams_draw_what_numpy_generators_draw():
    n = 64
    streams = batched_rng.PCG64Streams(n)
    generators = [seeding.np_random(100 + i)[0] for i in range(n)]
    for i, g in enumerate(generators):
        g.integers(0, 10, size=i % 2)  # half the streams start with a buffered word
        streams.store(i, g)
    rng = np.random.default_rng(1)
    for bound, count in ((10, 5), (20_000, 1), (2**31 + 1, 3)):  # the last rejects half the words
        for _ in range(5):
            idx = np.sort(rng.choice(n, size=20, replace=False))
            out, hi, lo = streams.peek(idx)
            doubles = batched_rng.to_double(out[:, 0])
            counts = np.full(len(idx), count)
            words, used, has, buf = batched_rng.take_uint32(out, np.ones(len(idx), np.int64), streams.has32[idx],
                                                           streams.buf32[idx], counts, 5)
            values, rejected = batched_rng.lemire(words, np.full(len(idx), bound), counts)
            rows = np.arange(len(idx))
            streams.commit(idx, hi[rows, used], lo[rows, used], has, buf)
            for j, i in enumerate(idx):
                g = generators[i]
                assert g.random() == doubles[j]
                expected = g.integers(0, bound, size=count)
                if rejected[j]:
                    streams.store(i, g)  # what callers do: numpy redoes the draw
                else:
                    assert expected.tolist() == values[j, :count].tolist()
                assert streams.generator(i).bit_generator.state == g.bit_generator.state
        if bound > 2**31:
            assert 0 < rejected.sum() < len(idx)


def test_shaping_paths_are_the_oracles():
    offset, place, (acc_set, mem_set, cursor, armed), acc, mem = vector_tool_machine._path_tables()
    rng = np.random.default_rng(0)
    for stage in STAGE_DIGITS:
        for _ in range(100):
            digits = np.zeros(5, np.int64)
            digits[: STAGE_DIGITS[stage]] = rng.integers(0, 10, size=STAGE_DIGITS[stage])
            row = offset[stage] + digits @ place[stage]
            path = general_path(stage, tuple(digits[: STAGE_DIGITS[stage]].tolist()))
            got = [
                MachineState(int(acc[row, t]) if acc_set[stage, t] else None,
                             int(mem[row, t]) if mem_set[stage, t] else None, int(cursor[stage, t]),
                             bool(armed[stage, t]))
                for t in range(len(path))
            ]
            assert tuple(got) == path
            assert (cursor[stage, len(path):] == -1).all()


def test_reseeding_and_reset_options_match():
    config = {"stage": 2, "shaping": 0.5, "action_mask": True}
    vec, sync = both(config, 4)
    mask = np.array([True, False, True, False])
    calls = [
        dict(seed=5),
        dict(seed=[1, None, 3, 4]),
        dict(seed=9, options={"stage": 4}),
        dict(options={"digits": (1, 2, 3, 4, 5)}),
        dict(options={"stage": 0, "digits": (9, 8, 7)}),
        dict(seed=[11, 12, 13, 14], options={"reset_mask": mask}),
        dict(options={"reset_mask": mask, "stage": 3}),
    ]
    rng = np.random.default_rng(0)
    for call in calls:
        # SyncVectorEnv pops reset_mask from the options it is given: a copy each.
        out = vec.reset(**{**call, "options": dict(call.get("options", {}))})
        sync_out = sync.reset(**{**call, "options": dict(call.get("options", {}))})
        for name, a, b in zip(("obs", "info"), out, sync_out):
            assert_identical(a, b, f"{call} {name}")
        for step in range(20):
            actions = rng.integers(0, NUM_ACTIONS, size=4)
            for name, a, b in zip(("obs", "reward", "terminated", "truncated", "info"),
                                  vec.step(actions), sync.step(actions)):
                assert_identical(a, b, f"{call} step {step} {name}")


def test_next_step_autoreset():
    vec = ToolMachineVectorEnv({"stage": 0}, num_envs=2)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = vec.reset(seed=0)
    obs, reward, terminated, truncated, info = vec.step([ANS, MUL])  # env 0 answers an empty acc
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert info["_answered"].tolist() == [True, False] and not info["answered"][0]
    assert obs[0, PREV] == ANS
    # The next step resets env 0, whatever its action; env 1 steps on.
    obs, reward, terminated, truncated, info = vec.step([ANS, MUL])
    assert reward[0] == 0.0 and not terminated[0] and not truncated[0]
    assert obs[:, PREV].tolist() == [START_ACTION, MUL]
    assert list(info) == ["stage", "_stage"] and info["_stage"].all()


def test_spaces_match_the_single_env():
    for config in ({}, {"variant": "seed"}, {"action_mask": True, "max_steps": 20}):
        vec = ToolMachineVectorEnv(config, num_envs=5)
        single = ToolMachineEnv(config)
        assert vec.single_observation_space == single.observation_space
        assert vec.single_action_space == single.action_space
        assert vec.observation_space == batch_space(single.observation_space, 5)
        assert vec.action_space == gym.spaces.MultiDiscrete([NUM_ACTIONS] * 5)
        obs, _ = vec.reset(seed=0)
        assert obs in vec.observation_space
        assert vec.step(vec.action_space.sample())[0] in vec.observation_space


def test_set_stage_weights_applies_to_all_envs():
    vec = ToolMachineVectorEnv({}, num_envs=16)
    vec.reset(seed=0)
    assert vec.stages.tolist() == [0] * 16
    vec.set_stage_weights([0, 0, 0, 2] + [0] * (NUM_STAGES - 4))
    assert vec.stage_weights.tolist() == [0, 0, 0, 1] + [0] * (NUM_STAGES - 4)
    assert vec.stages.tolist() == [0] * 16  # episodes in flight finish on their stage
    vec.step([ANS] * 16)
    obs, _, _, _, info = vec.step([ANS] * 16)  # every env resets here
    assert obs[:, CONTEXT_LEN].tolist() == info["stage"].tolist() == vec.stages.tolist() == [3] * 16
    vec.set_stage(1)
    vec.step([ANS] * 16)
    assert vec.step([ANS] * 16)[4]["stage"].tolist() == [1] * 16
    with pytest.raises(ValueError, match="stage weights"):
        vec.set_stage_weights([1, 2])
    with pytest.raises(ValueError, match="seed variant"):
        ToolMachineVectorEnv({"variant": "seed"}, num_envs=2).set_stage_weights([0, 0, 0, 1] + [0] * (NUM_STAGES - 4))


def test_config_is_the_single_envs_plus_num_envs():
    assert ToolMachineVectorEnv({"num_envs": 3}).num_envs == 3
    assert ToolMachineVectorEnv().num_envs == 1
    with pytest.raises(ValueError, match="unknown env config"):
        ToolMachineVectorEnv({"stages": 1}, num_envs=2)
    with pytest.raises(ValueError, match="num_envs"):
        ToolMachineVectorEnv({"num_envs": 3}, num_envs=4)
    with pytest.raises(ValueError, match="num_envs"):
        ToolMachineVectorEnv({}, num_envs=0)
    with pytest.raises(RuntimeError, match="reset"):
        ToolMachineVectorEnv({}, num_envs=2).step([0, 0])
    with pytest.raises(ValueError, match="digits"):
        ToolMachineVectorEnv({"stage": 2}, num_envs=2).reset(options={"digits": (1, 2, 3)})
    with pytest.raises(ValueError, match="digits"):
        ToolMachineVectorEnv({}, num_envs=2).reset(options={"digits": (1, 2, 12)})


def test_rllib_creator_and_gymnasium_registration():
    config = {"stage": 1, "action_mask": True}
    assert isinstance(make_tool_machine(config), ToolMachineEnv)
    vec = make_tool_machine({**config, "num_envs": 4})
    assert isinstance(vec, ToolMachineVectorEnv) and vec.num_envs == 4
    # What RLlib's SingleAgentEnvRunner does with a registered creator under
    # gym_env_vectorize_mode="vector_entry_point".
    env_id = "test-rllib-like-tool-machine-v0"
    gym.register(env_id, entry_point=lambda: make_tool_machine(config),
                 vector_entry_point=lambda num_envs: make_tool_machine(config | {"num_envs": num_envs}))
    try:
        env = DictInfoToList(gym.make_vec(env_id, num_envs=4, vectorization_mode=gym.VectorizeMode("vector_entry_point")))
        assert isinstance(env.unwrapped, ToolMachineVectorEnv) and env.num_envs == 4
        _, infos = env.reset(seed=0)
        assert infos == [{"stage": 1}] * 4
        env.step([ANS] * 4)
        _, _, _, _, infos = env.step([ANS] * 4)
        assert infos == [{"stage": 1}] * 4
    finally:
        gym.registry.pop(env_id)
    # The gymnasium id ``envs`` registers on import.
    assert isinstance(gym.make("envs:" + GYM_ENV_ID, **config).unwrapped, ToolMachineEnv)
    vec = gym.make_vec(GYM_ENV_ID, num_envs=3, **config)
    sync = SyncVectorEnv([lambda: ToolMachineEnv(config)] * 3)
    for name, a, b in zip(("obs", "info"), vec.reset(seed=2), sync.reset(seed=2)):
        assert_identical(a, b, name)
