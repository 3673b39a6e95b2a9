"""Self-imitation: joining the chunks of successful episodes, the replay, and the loss."""

import numpy as np
import pytest
import torch
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from envs import ADD, ANS, MUL, ToolMachineEnv, general_program, observation_layout
from envs.analysis import ProgramCheck
from envs.oracle import oracle_program
from models import ToolAgentGRUModule
from rllib_app.rl.self_imitation import EpisodeStitcher, SuccessReplay, self_imitation_loss
from rllib_app.training.learners import keep_programs

LAYOUT = observation_layout()
T = 16


def played(stage, digits, program, operators=None, **config):
    env = ToolMachineEnv({"action_mask": True, **config})
    options = {"stage": stage, "digits": digits, **({"operators": operators} if operators else {})}
    obs, _ = env.reset(seed=0, options=options)
    rows = {"obs": [], "actions": [], "rewards": []}
    terminated = truncated = False
    for tool in program:
        rows["obs"].append(obs)
        obs, r, terminated, truncated, _ = env.step(tool)
        rows["actions"].append(tool)
        rows["rewards"].append(r)
        if terminated or truncated:
            break
    return {**{k: np.array(v) for k, v in rows.items()}, "last_obs": obs, "terminated": terminated,
            "truncated": truncated}


def chunks(ep, cuts=()):
    """The ``SingleAgentEpisode`` chunks an env runner would send of ``ep``, cut (as a
    rollout fragment ends) after each step count in ``cuts``."""
    episode = SingleAgentEpisode()
    episode.add_env_reset(observation=ep["obs"][0])
    out = []
    n = len(ep["actions"])
    for t in range(n):
        last = t == n - 1
        episode.add_env_step(
            observation=ep["last_obs"] if last else ep["obs"][t + 1], action=ep["actions"][t],
            reward=float(ep["rewards"][t]), terminated=last and ep["terminated"], truncated=last and ep["truncated"],
        )
        if t + 1 in cuts and not last:
            out.append(episode)
            episode = episode.cut()
    return out + [episode]


def test_successes_are_joined_across_chunks_and_failures_dropped():
    good = played(2, (1, 2, 3, 4, 5), general_program(2))
    wrong = played(2, (1, 2, 3, 4, 5), [MUL, ANS])
    stitcher = EpisodeStitcher(gamma=0.5, max_len=T)
    first, second, third = chunks(good, cuts=(3, 7))
    w1, w2 = chunks(wrong, cuts=(1,))
    assert stitcher.feed([first, w1]) == [] and len(stitcher) == 2  # two open episodes
    assert stitcher.feed([second, w2]) == [] and len(stitcher) == 1  # the wrong one ended
    (obs, actions, returns, length), = stitcher.feed([third])
    assert length == 9 and list(actions) == list(general_program(2)) and stitcher.stitched == 1
    np.testing.assert_allclose(returns, [0.5 ** (8 - t) for t in range(9)])
    np.testing.assert_array_equal(obs, good["obs"])
    assert len(stitcher) == 0


def test_a_chunk_whose_start_was_not_seen_is_not_replayed():
    good = played(0, (1, 2, 3), general_program(0))
    first, rest = chunks(good, cuts=(1,))
    stitcher = EpisodeStitcher(gamma=0.5, max_len=T)
    assert stitcher.feed([rest]) == []  # joined mid-episode (e.g. the learner started late)
    assert len(stitcher.feed([first, rest])) == 1  # whole: replayed
    # the step limit is not an answer, and the oldest open episodes make room
    limited = played(0, (1, 2, 3), [MUL] * 40)
    assert limited["truncated"] and not limited["terminated"]
    assert stitcher.feed(chunks(limited)) == []
    small = EpisodeStitcher(gamma=0.5, max_len=T, max_pending=1)
    a, b = chunks(played(2, (1, 2, 3, 4, 5), general_program(2)), cuts=(2,)), chunks(good, cuts=(1,))
    small.feed([a[0], b[0]])
    assert small.feed([a[1]]) == [] and len(small.feed([b[1]])) == 1
    # not joining (the ablation): only episodes inside one chunk
    unjoined = EpisodeStitcher(gamma=0.5, max_len=T, join=False)
    assert unjoined.feed(chunks(good, cuts=(1,))) == [] and len(unjoined) == 0
    assert len(unjoined.feed(chunks(good))) == 1


def test_the_program_check_keeps_programs_and_drops_coincidental_wins():
    # d*e = 0: the memory-free a*b+c is right here, and on 19% of stage-2 contexts only
    lucky = played(2, (1, 2, 3, 4, 0), [MUL, MUL, ADD, ANS])
    good = played(2, (1, 2, 3, 4, 0), general_program(2))
    expression = played(7, (2, 3, 4, 5, 6), oracle_program(7, (ADD, MUL, ADD, MUL)), operators=(ADD, MUL, ADD, MUL))
    assert lucky["rewards"][-1] == good["rewards"][-1] == expression["rewards"][-1] == 1.0
    found = EpisodeStitcher(gamma=0.5, max_len=T).feed(chunks(lucky) + chunks(good, cuts=(4,)) + chunks(expression))
    assert len(found) == 3
    kept = keep_programs(found, ProgramCheck(trials=64))
    assert [list(actions) for _, actions, _, _ in kept] == [
        list(general_program(2)), list(oracle_program(7, (ADD, MUL, ADD, MUL)))
    ]


def test_shaped_episodes_are_replayed_by_outcome_not_by_shaping():
    shaped = {"shaping": 1.0, "shaping_gamma": 0.5}
    good = played(2, (1, 2, 3, 4, 5), general_program(2), **shaped)
    # right up to RCL, then a wrong answer: positive shaping rewards on the way
    wrong = played(2, (1, 2, 3, 4, 5), list(general_program(2)[:7]) + [ADD, ANS], **shaped)
    assert (wrong["rewards"] > 0).any()
    found = EpisodeStitcher(gamma=0.5, max_len=T).feed(chunks(good) + chunks(wrong))
    assert len(found) == 1 and list(found[0][1]) == list(general_program(2))
    # the shaping telescopes: the return from the first step is the unshaped one
    assert found[0][2][0] == pytest.approx(0.5 ** 8)


def test_replay_is_a_ring_and_samples_real_steps():
    replay = SuccessReplay(capacity=3, max_len=T, obs_dim=4, seed=0)
    for n in (2, 3, 4, 5):
        replay.add(np.full((n, 4), n), np.full(n, n), np.ones(n), n)
    assert len(replay) == 3 and replay.added == 4
    _, obs, actions, returns, steps = replay.sample(50)
    assert set(steps.sum(1)) <= {3, 4, 5}  # the first episode was overwritten
    assert all((actions[i, : steps[i].sum()] == steps[i].sum()).all() for i in range(len(actions)))


def make_module():
    env = ToolMachineEnv({"action_mask": True})
    torch.manual_seed(0)
    return ToolAgentGRUModule(observation_space=env.observation_space, action_space=env.action_space,
                              model_config={**LAYOUT, "max_seq_len": T, "hidden_size": 32})


def test_the_replay_state_brings_back_the_same_episodes_and_draws():
    replay = SuccessReplay(capacity=4, max_len=T, obs_dim=observation_layout()["mask_index"] + 6, seed=3, alpha=0.6)
    rng = np.random.default_rng(0)
    for n in (9, 4, 5, 9, 12):  # one more than the capacity: the ring has turned
        ep = played(2, tuple(int(x) for x in rng.integers(0, 10, 5)), general_program(2) if n == 9 else [MUL] * n)
        m = len(ep["actions"])
        replay.add(ep["obs"], ep["actions"], np.linspace(0, 1, m, dtype=np.float32), m)
    replay.update_priorities(np.array([0, 2]), np.array([0.3, 2.0]))
    state = replay.get_state()
    assert state["obs"].dtype == np.int8  # observations are small integers
    again = SuccessReplay.from_state(state)
    for name in ("obs", "actions", "returns", "lengths", "priorities"):
        np.testing.assert_array_equal(getattr(again, name), getattr(replay, name), err_msg=name)
    assert (len(again), again.cursor, again.added, again.max_priority) == (4, 1, 5, 2.0)
    for a, b in zip(replay.sample(8), again.sample(8)):  # the same draws from here on
        np.testing.assert_array_equal(a, b)


def test_a_resumed_replay_takes_the_new_capacity_and_alpha_and_keeps_the_newest():
    obs_dim = observation_layout()["mask_index"] + 6
    replay = SuccessReplay(capacity=4, max_len=T, obs_dim=obs_dim, seed=3)
    for n in range(1, 7):  # six episodes of n steps (MULs; the sixth ends with ANS): the ring turned, lengths name them
        ep = played(2, (2, 3, 4, 5, 6), [MUL] * min(n, 5) + [ANS] * (n > 5))
        replay.add(ep["obs"], ep["actions"], np.ones(len(ep["actions"]), dtype=np.float32), n)
    state = replay.get_state()
    assert list(replay.lengths) == [5, 6, 3, 4]  # ring order: slots 0-1 were overwritten
    smaller = SuccessReplay.from_state(state, capacity=3, alpha=0.5)
    assert (smaller.capacity, smaller.alpha, len(smaller), smaller.cursor) == (3, 0.5, 3, 0)
    assert list(smaller.lengths) == [4, 5, 6]  # the newest three, oldest first
    np.testing.assert_array_equal(smaller.obs[2], replay.obs[1])
    smaller.add(np.zeros((T, obs_dim)), np.zeros(T), np.zeros(T, dtype=np.float32), 2)
    assert list(smaller.lengths) == [2, 5, 6]  # and the next add overwrites the oldest
    larger = SuccessReplay.from_state(state, capacity=10)
    assert (larger.capacity, len(larger), larger.cursor, larger.alpha) == (10, 4, 4, 0.0)
    assert list(larger.lengths[:4]) == [3, 4, 5, 6]
    same = SuccessReplay.from_state(state, capacity=4)
    np.testing.assert_array_equal(same.lengths, replay.lengths)
    assert same.cursor == replay.cursor


def test_sil_policy_term_teaches_the_replayed_program():
    module = make_module()
    replay = SuccessReplay(capacity=100, max_len=T, obs_dim=played(0, (1, 2, 3), [ANS])["obs"].shape[1])
    rng = np.random.default_rng(0)
    for _ in range(20):
        ep = played(2, tuple(int(x) for x in rng.integers(0, 10, 5)), general_program(2))
        n = len(ep["actions"])
        replay.add(ep["obs"], ep["actions"], np.ones(n, dtype=np.float32), n)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(150):
        # value term off: the advantage stays near R, so this is imitation of the replay
        _, *episodes = replay.sample(20)
        loss, policy_loss, value_loss, _ = self_imitation_loss(module, *episodes, value_coeff=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # the greedy policy now plays the memory program on fresh contexts
    from rllib_app.evaluation.evaluate import rollout

    episodes = rollout(module, 2, 50, env_config={"action_mask": True}, seed=1)
    assert all(e.actions == list(general_program(2)) for e in episodes)
    assert all(e.correct for e in episodes)


def test_distinct_draws_weighted_by_their_counts_give_the_loss_and_gradient_of_all_draws():
    module = make_module()
    replay = SuccessReplay(capacity=10, max_len=T, obs_dim=played(0, (1, 2, 3), [ANS])["obs"].shape[1], seed=4, alpha=0.6)
    rng = np.random.default_rng(1)
    for i in range(6):
        program = general_program(2) if i % 2 else [MUL, MUL, ADD, ANS]
        ep = played(2, tuple(int(x) for x in rng.integers(0, 10, 5)), program)
        n = len(ep["actions"])
        replay.add(ep["obs"], ep["actions"], np.linspace(1.0, 0.2, n, dtype=np.float32), n)
    replay.update_priorities(np.arange(6), np.array([0.1, 0.5, 1.0, 2.0, 0.3, 0.7]))
    again = SuccessReplay.from_state(replay.get_state())
    idx, *draws = replay.sample(64)
    distinct, counts, *episodes = again.sample_distinct(64)  # the same draws, each episode once
    assert len(distinct) <= 6 and counts.sum() == 64
    np.testing.assert_array_equal(distinct, np.unique(idx))
    np.testing.assert_array_equal(counts, np.bincount(idx, minlength=10)[distinct])

    def loss_and_grads(*args, **kwargs):
        module.zero_grad()
        out = self_imitation_loss(module, *args, value_coeff=0.5, **kwargs)
        out[0].backward()
        return out, [p.grad.clone() for p in module.parameters() if p.grad is not None]

    (loss, policy, value, advantage), grads = loss_and_grads(*draws)
    (loss_d, policy_d, value_d, advantage_d), grads_d = loss_and_grads(*episodes, counts=counts)
    for a, b in ((loss, loss_d), (policy, policy_d), (value, value_d)):
        assert b.item() == pytest.approx(a.item(), rel=1e-5)
    assert len(grads) == len(grads_d)
    for g, g_d in zip(grads, grads_d):
        torch.testing.assert_close(g_d, g, rtol=1e-4, atol=1e-6)
    # each episode's advantage (its next priority) as it was for every draw of it
    first_draw = np.array([np.flatnonzero(idx == i)[0] for i in distinct])
    np.testing.assert_allclose(advantage_d, advantage[first_draw], rtol=1e-5)


def test_sil_ignores_steps_whose_value_already_exceeds_the_return():
    module = make_module()
    ep = played(2, (1, 2, 3, 4, 5), general_program(2))
    n = len(ep["actions"])
    replay = SuccessReplay(capacity=1, max_len=T, obs_dim=ep["obs"].shape[1])
    replay.add(ep["obs"], ep["actions"], np.full(n, -100.0, dtype=np.float32), n)  # R far below any V
    loss, policy_loss, value_loss, advantage = self_imitation_loss(module, *replay.sample(1)[1:], value_coeff=1.0)
    assert loss.item() == 0.0 and policy_loss.item() == 0.0 and value_loss.item() == 0.0
    assert advantage.tolist() == [0.0]
    # and with R above V, the value term pulls V up towards R
    replay.add(ep["obs"], ep["actions"], np.full(n, 100.0, dtype=np.float32), n)
    _, _, value_loss, advantage = self_imitation_loss(module, *replay.sample(1)[1:], value_coeff=1.0)
    assert value_loss.item() > 1000 and advantage[0] > 90


def test_prioritised_replay_prefers_episodes_with_large_advantage():
    replay = SuccessReplay(capacity=10, max_len=T, obs_dim=2, seed=0, alpha=1.0)
    for n in range(1, 11):
        replay.add(np.zeros((n, 2)), np.zeros(n), np.ones(n), n)
    assert np.all(replay.priorities == 1.0)  # new episodes: the highest priority seen
    replay.update_priorities(np.arange(10), np.array([0.0] * 9 + [1.0]))
    idx, *_ = replay.sample(1000)
    assert (idx == 9).mean() > 0.99  # mastered episodes (advantage 0) are all but never drawn
    replay.add(np.zeros((3, 2)), np.zeros(3), np.ones(3), 3)  # overwrites slot 0
    assert replay.priorities[0] == 1.0
