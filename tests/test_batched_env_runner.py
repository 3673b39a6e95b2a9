"""``BatchedEnvRunner``: the same episode chunks, callbacks and metrics as RLlib's
``SingleAgentEnvRunner`` (both over the native vector env), and training with it."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from conftest import SMALL
from envs.machine import ANS
from rllib_app.config.train_config import TrainConfig
from rllib_app.rl.batched_env_runner import BatchedEnvRunner, PickledEpisodes, PlainInfoToList
from rllib_app.training.algorithms import MODULE_ID, build_config


def _runners(num_envs=6, fragment=5, lookback=1, smoothing=100):
    cfg = TrainConfig(native_vector_env=True, num_envs_per_env_runner=num_envs, hidden_size=32,
                      rollout_fragment_length=fragment, seed=3).validate()
    config = (build_config(cfg).env_runners(episode_lookback_horizon=lookback)
              .reporting(metrics_num_episodes_for_smoothing=smoothing))
    # worker_index 1: a remote runner's seed (config seed + 1), the same for both
    stock = SingleAgentEnvRunner(config=config, worker_index=1)
    fast = BatchedEnvRunner(config=config, worker_index=1)
    fast.module.set_state(stock.module.get_state())
    return stock, fast


def _same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for j, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{j}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, (where, a, b)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def _plain(infos):
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in info.items()} for info in infos]


def _same_chunks(stock_chunks, fast_chunks, ids):
    """Chunk by chunk, in order: data, lookback buffers, flags; ``ids`` maps stock ids to
    fast ids across calls (a continued chunk keeps its episode's id in both)."""
    assert len(stock_chunks) == len(fast_chunks)
    for x, y in zip(stock_chunks, fast_chunks):
        assert ids.setdefault(x.id_, y.id_) == y.id_
        assert (x.t_started, x.t, len(x), x.is_terminated, x.is_truncated, x.is_numpy) == (
            y.t_started, y.t, len(y), y.is_terminated, y.is_truncated, y.is_numpy)
        for name in ("observations", "infos", "actions", "rewards"):
            bx, by = getattr(x, name), getattr(y, name)
            assert (bx.lookback, bx.finalized, bx.space) == (by.lookback, by.finalized, by.space), name
            # the fast runner's infos hold the Python scalars of the stock runner's numpy ones
            _same(_plain(bx.data) if name == "infos" else bx.data, by.data, name)
        assert x.extra_model_outputs.keys() == y.extra_model_outputs.keys()
        for key, bx in x.extra_model_outputs.items():
            by = y.extra_model_outputs[key]
            assert (bx.lookback, bx.finalized) == (by.lookback, by.finalized), key
            _same(bx.data, by.data, key)
        y.validate()


METRICS = ("num_env_steps_sampled", "num_env_steps_sampled_lifetime", "num_episodes", "num_episodes_lifetime",
           "episode_return_mean", "episode_return_min", "episode_return_max", "episode_len_mean",
           "episode_len_min", "episode_len_max", "curriculum/stage_0_episodes", "curriculum/stage_0_correct")


def _peek(metrics, key):
    value = metrics[key]
    return value.peek() if hasattr(value, "peek") else value


@pytest.mark.parametrize("mode", ["greedy", "explore", "answer_first", "lookback_2"])
def test_same_episodes_states_and_metrics_as_rllibs_runner(mode):
    """``greedy``: ``explore=False``; ``explore``: sampled actions, the same torch seed before
    each call (both draw one categorical sample over all envs per step from the same
    logits); ``answer_first``: a policy that answers at once (1-step episodes: a reset every
    other step, episodes ending at a call's last step); ``lookback_2``: a 2-step lookback
    buffer. Every case: 4 calls, chunks continued across calls and episodes ending inside
    them; metrics windowed over 7 episodes (fewer than a call finishes)."""
    stock, fast = _runners(lookback=2 if mode == "lookback_2" else 1, smoothing=7)
    explore = mode != "greedy"
    if mode == "answer_first":
        for runner in (stock, fast):
            with torch.no_grad():
                runner.module.policy_head[-1].bias[ANS] += 50.0
    ids, ended, continued, truncated, pending = {}, 0, 0, 0, 0
    for call in range(4):
        torch.manual_seed(call)
        a = stock.sample(explore=explore)
        torch.manual_seed(call)
        b = fast.sample(explore=explore)
        _same_chunks(a, b, ids)
        ended += sum(e.is_terminated for e in b)
        truncated += sum(e.is_truncated for e in b)
        continued += sum(e.t_started > 0 for e in b)
        pending += int(fast._fast.pending_reset.sum())  # episodes that ended at the call's last step
        for e in b:
            if e.is_done:  # the env's end-of-episode info, for the curriculum
                assert {"stage", "correct", "steps"} <= set(e.get_infos(-1))
            if e.t_started > 0:  # the previous chunk's last state, for the learner's STATE_IN
                assert e.get_extra_model_outputs(Columns.STATE_OUT, -1, neg_index_as_lookback=True)["h"].shape == (32,)
    assert ended + truncated > 0
    if mode == "answer_first":  # 1-step episodes: none continues, but some end a call
        assert pending > 0 and ended > 0
    else:
        assert continued > 0
    if mode == "explore":
        assert ended > 0
    assert fast._fast_unsupported is None and fast._fast_episodes is True  # the fast paths ran
    ms, mf = stock.get_metrics(), fast.get_metrics()
    for key in METRICS:
        assert _peek(ms, key) == pytest.approx(_peek(mf, key)), key


def test_state_out_feeds_the_next_step_and_resets_at_episode_start():
    """STATE_OUT of a chunk's step t is the state the module continues from at t+1
    (checked by recomputing the chunk with one forward over its observations from the
    chunk's initial state, as the learner does)."""
    _, fast = _runners(num_envs=4, fragment=6)
    module = fast.module
    for _ in range(3):
        for chunk in fast.sample(explore=True):
            if len(chunk) < 2:
                continue
            init = (module.get_initial_state()["h"] if chunk.t_started == 0 else
                    chunk.get_extra_model_outputs(Columns.STATE_OUT, -1, neg_index_as_lookback=True)["h"])
            obs = torch.as_tensor(chunk.get_observations(slice(0, len(chunk))))[None]
            with torch.no_grad():
                out = module.forward_inference({Columns.OBS: obs, Columns.STATE_IN: {"h": torch.as_tensor(init)[None]}})
            logits = chunk.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)
            np.testing.assert_allclose(out[Columns.ACTION_DIST_INPUTS][0].numpy(), logits, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(out[Columns.STATE_OUT]["h"][0].numpy(),
                                       chunk.get_extra_model_outputs(Columns.STATE_OUT, -1)["h"], rtol=1e-4, atol=1e-5)
            logp = torch.log_softmax(torch.as_tensor(logits), -1)[torch.arange(len(chunk)),
                                                                   torch.as_tensor(chunk.get_actions()).long()]
            np.testing.assert_allclose(chunk.get_extra_model_outputs(Columns.ACTION_LOGP), logp.numpy(), rtol=1e-4,
                                       atol=1e-5)


def test_num_episodes_and_random_actions_take_rllibs_paths():
    stock, fast = _runners(num_envs=3)
    fast.sample(explore=True)
    # complete episodes (evaluation-style): RLlib's own loop, then the fast loop again from a reset
    episodes = fast.sample(num_episodes=4, explore=False)
    assert len(episodes) >= 4 and all(e.is_done and e.t_started == 0 for e in episodes)
    chunks = fast.sample(explore=True)
    assert chunks and all(e.t_started == 0 for e in chunks)  # fresh episodes after the reset
    # random actions: no model outputs but the weights' sequence number, as RLlib stores them
    a, b = stock.sample(random_actions=True), fast.sample(random_actions=True)
    assert {k for e in b for k in e.extra_model_outputs} == {k for e in a for k in e.extra_model_outputs}
    assert sum(len(e) for e in b) >= 3 * 5
    assert all(e.t_started == 0 for e in b)  # switching to random actions starts new episodes
    b = fast.sample(explore=True)  # ... and back
    assert all(e.t_started == 0 for e in b) and all(Columns.STATE_OUT in e.extra_model_outputs for e in b)


def test_per_step_episode_hooks_fall_back_to_rllibs_loop():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class Steps(RLlibCallback):
        seen = 0

        def on_episode_step(self, *, episode, **kwargs):
            Steps.seen += 1

    cfg = TrainConfig(native_vector_env=True, num_envs_per_env_runner=2, hidden_size=32).validate()
    runner = BatchedEnvRunner(config=build_config(cfg).callbacks(Steps), worker_index=1)
    assert "on_episode_step" in runner._fast_unsupported
    runner.sample(num_timesteps=10)
    assert Steps.seen >= 10 and runner._fast is None


def test_pickled_episodes_unpickle_as_the_same_chunks(local_ray):
    """What a remote runner sends (``ray.put`` of its ``sample()``): a plain list of the
    same chunks on the other side, lookback buffers included."""
    import ray

    _, fast = _runners()
    fast.sample(explore=True)
    chunks = fast.sample(explore=True)
    assert any(e.t_started > 0 for e in chunks) and any(e.is_done for e in chunks)
    received = ray.get(ray.put(PickledEpisodes(chunks)))
    assert type(received) is list
    _same_chunks(chunks, received, {})
    assert [e.id_ for e in received] == [e.id_ for e in chunks]
    # a runner outside a Ray actor (the driver's) hands its list over as it is
    assert type(fast.sample(explore=True)) is list


@pytest.mark.integration
@pytest.mark.parametrize("algo", ["impala", "a2c", "ppo", "appo"])
def test_algorithms_train_with_the_fast_runner(local_ray, algo):
    cfg = TrainConfig(algo=algo, fast_env_runner=True, num_epochs=1, num_env_runners=1, **SMALL).validate()
    assert not cfg.native_vector_env  # implied by --fast-env-runner in build_config
    built = build_config(cfg)
    assert built.env_runner_cls is BatchedEnvRunner and built.gym_env_vectorize_mode == "vector_entry_point"
    trained = built.build_algo()
    try:
        episodes, steps = 0, 0
        # two iterations; on a loaded machine an asynchronous algorithm's first ones may
        # bring no runner results yet, so up to 8 until some episodes came back
        for i in range(8):
            if i >= 2 and episodes > 0:
                break
            result = trained.train()
            runners = result.get("env_runners", {})  # IMPALA/APPO's first iteration may lack them
            episodes += int(runners.get("curriculum/stage_0_episodes", 0))
            steps = runners.get("num_env_steps_sampled_lifetime", steps)
        assert episodes > 0 and steps > 0
        assert np.isfinite(result["curriculum"]["stage_0_sampled_accuracy"])
        remote = trained.env_runner_group.foreach_env_runner(
            lambda er: (type(er).__name__, er._fast_unsupported, er._fast is not None), local_env_runner=False)
        assert remote == [("BatchedEnvRunner", None, True)]
        assert MODULE_ID in trained.learner_group.get_weights()
    finally:
        trained.stop()


def test_plain_infos_are_gymnasiums_lists_with_python_scalars():
    from gymnasium.wrappers.vector import DictInfoToList

    from envs.vector_tool_machine import ToolMachineVectorEnv

    stock = DictInfoToList(ToolMachineVectorEnv({"stage": 0}, num_envs=16))
    plain = PlainInfoToList(ToolMachineVectorEnv({"stage": 0}, num_envs=16))
    _, a = stock.reset(seed=5)
    _, b = plain.reset(seed=5)
    _same(_plain(a), b, "reset")
    rng = np.random.default_rng(0)
    ended = 0
    for t in range(40):
        actions = rng.integers(0, 6, 16)
        a, b = stock.step(actions)[4], plain.step(actions)[4]
        _same(_plain(a), b, f"step {t}")
        ended += sum("correct" in info for info in b)
    assert ended > 0  # the end-of-episode keys (on some envs only) were compared too
    # a nested info dict goes gymnasium's way
    assert plain._convert_info_to_list({"k": {"x": np.arange(16)}, "_k": np.ones(16, bool)})[3] == {"k": {"x": 3}}
