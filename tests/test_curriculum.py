"""The curriculum's decisions, without Ray."""

import pytest

from envs import NUM_STAGES
from rllib_app.curriculum.schedule import Curriculum, CurriculumSettings


def test_threshold_promotes_after_a_full_window_at_the_threshold():
    cur = Curriculum(CurriculumSettings(promotion_accuracy=0.9, window=100, replay_probability=0.2))
    assert cur.stage_weights() == [1.0] + [0.0] * (NUM_STAGES - 1)
    assert not cur.update({0: (60, 60)})  # accurate, but the window is not full yet
    assert cur.update({0: (60, 55)})  # 115/120 episodes >= 0.9 -> stage 1
    assert cur.stage == 1 and cur.promotions == [(2, 1)]
    assert cur.stage_weights() == pytest.approx([0.2, 0.8] + [0.0] * (NUM_STAGES - 2))
    assert not cur.update({0: (20, 20), 1: (100, 50)})
    assert not cur.update({1: (50, 50)})  # window: 150 most recent episodes at 0.67
    assert cur.update({1: (50, 50)})  # the failing iteration left the window
    assert cur.stage == 2 and cur.stage_weights() == pytest.approx([0.1, 0.1, 0.8] + [0.0] * (NUM_STAGES - 3))
    assert not cur.update({2: (1000, 1000)})  # last stage: stays
    assert cur.stage == 2


def test_threshold_follows_the_stage_path_through_the_drills():
    cur = Curriculum(CurriculumSettings(path=(0, 1, 3, 4, 2), window=10, replay_probability=0.3))
    visited = [cur.stage]
    for _ in range(4):
        assert cur.update({cur.stage: (10, 10)})
        visited.append(cur.stage)
    assert visited == [0, 1, 3, 4, 2]
    # replay spreads over every stage trained before the current one
    assert cur.stage_weights() == pytest.approx([0.075, 0.075, 0.7, 0.075, 0.075] + [0.0] * (NUM_STAGES - 5))
    assert not cur.update({2: (10, 10)})


def test_greedy_promotion_waits_for_the_evaluation_of_the_current_stage():
    cur = Curriculum(CurriculumSettings(path=(0, 5, 2), promote_on="greedy", promotion_accuracy=0.9, window=10))
    assert not cur.update({0: (100, 100)})  # sampled accuracy alone does not promote
    assert cur.stage == 0
    assert not cur.observe_greedy({"0": 0.85, "5": 1.0})  # another stage's row does not count
    assert cur.observe_greedy({"0": 0.9})
    assert cur.stage == 5 and cur.promotions == [(1, 5)]
    assert cur.stage_weights()[:1] == pytest.approx([0.2]) and cur.stage_weights()[5] == pytest.approx(0.8)
    cur.update({5: (10, 1)})
    assert cur.observe_greedy({"0": 1.0, "5": 0.95, "2": 0.0, "2m": 0.0})
    assert cur.stage == 2 and cur.promotions == [(1, 5), (2, 2)]
    assert not cur.observe_greedy({"2": 1.0, "2m": 1.0})  # the last stage stays


def test_a_stage_stalls_after_evaluations_without_a_new_best_and_bumps_wait_for_the_last_to_end():
    cur = Curriculum(CurriculumSettings(path=(0, 5), promote_on="greedy", promotion_accuracy=0.99,
                                        stall_evaluations=3, stall_min_gain=0.01, stall_decay_steps=1000))
    assert not cur.observe_stall({"0": 0.50}, 100)  # the stage's first evaluation sets its best
    assert not cur.observe_stall({"0": 0.51}, 200)  # 1: +0.01 over the best is a new best
    assert not cur.observe_stall({"0": 0.515}, 300)  # 1 without
    assert not cur.observe_stall({"5": 0.1}, 400)  # 1: another stage's row does not count
    assert not cur.observe_stall({"0": 0.40}, 500)  # 2
    assert cur.observe_stall({"0": 0.519}, 600)  # 3 without a new best: a stall
    assert cur.entropy_bumps == [(0, 600, 0)] and cur.bump_starts() == [600]
    for steps in (700, 800, 900, 1000, 1500):  # counted afresh; the bump runs until 1600
        assert not cur.observe_stall({"0": 0.5}, steps)
    assert cur.observe_stall({"0": 0.5}, 1600)
    assert cur.observe_greedy({"0": 0.99}) and cur.stage == 5
    assert not any(cur.observe_stall({"5": 0.2}, 3000 + i) for i in range(3))  # the new stage starts afresh
    assert cur.observe_stall({"5": 0.2}, 3100)
    assert cur.bump_starts() == [600, 1600, 3100]
    other = Curriculum(cur.settings)
    other.set_state(cur.get_state())
    assert other.entropy_bumps == cur.entropy_bumps and other._stall == cur._stall


def test_no_stall_without_stall_evaluations():
    cur = Curriculum(CurriculumSettings())
    assert not any(cur.observe_stall({"0": 0.1}, i) for i in range(50)) and cur.entropy_bumps == []


def test_review_draws_every_stage_of_the_path_once_the_last_passes_greedy():
    cur = Curriculum(CurriculumSettings(path=(5, 0, 2), promote_on="greedy", promotion_accuracy=0.99,
                                        replay_probability=0.2, review=True, review_focus=0.5, window=100))
    assert cur.observe_greedy({"5": 0.995}) and cur.observe_greedy({"0": 1.0}) and cur.stage == 2
    before = cur.stage_weights()
    assert before[2] == pytest.approx(0.8) and before[5] == before[0] == pytest.approx(0.1)
    assert not cur.observe_greedy({"2": 0.98}) and cur.review_from is None  # not passed yet
    cur.update({5: (98, 96), 0: (98, 98), 2: (98, 48)})  # sampled errors 3/100, 1/100, 51/100
    assert cur.observe_greedy({"2": 0.99}) and cur.review_from == 1 and cur.stage == 2
    weights = cur.stage_weights()
    assert weights[5] == pytest.approx(0.5 / 3 + 0.5 * 3 / 55)
    assert weights[0] == pytest.approx(0.5 / 3 + 0.5 * 1 / 55)
    assert weights[2] == pytest.approx(0.5 / 3 + 0.5 * 51 / 55)
    assert sum(weights) == pytest.approx(1.0) and not any(w for s, w in enumerate(weights) if s not in (5, 0, 2))
    assert not cur.observe_greedy({"2": 1.0}) and cur.review_from == 1  # begins once
    other = Curriculum(cur.settings)
    other.set_state(cur.get_state())
    assert other.review_from == 1 and other.stage_weights() == weights


def test_review_begins_on_the_sampled_test_and_only_when_asked():
    on = Curriculum(CurriculumSettings(path=(0, 1), window=10, review=True, review_focus=0.0))
    assert on.update({0: (10, 10)}) and on.stage == 1 and on.review_from is None
    assert not on.update({1: (10, 9)})  # 0.9 < 0.95
    assert on.update({1: (10, 10)}) and on.review_from == 3
    assert on.stage_weights()[:2] == [0.5, 0.5]
    off = Curriculum(CurriculumSettings(path=(0, 1), window=10))
    for counts in ({0: (10, 10)}, {1: (10, 10)}, {1: (10, 10)}):
        off.update(counts)
    assert off.review_from is None and off.stage_weights()[:2] == [pytest.approx(0.2), pytest.approx(0.8)]


def test_greedy_accuracy_does_not_promote_on_the_sampled_setting():
    cur = Curriculum(CurriculumSettings(window=10))
    assert not cur.observe_greedy({"0": 1.0})
    assert cur.stage == 0
    assert cur.update({0: (10, 10)}) and cur.stage == 1


def test_window_uses_the_most_recent_episodes():
    cur = Curriculum(CurriculumSettings(window=50))
    cur.update({0: (100, 0)})
    cur.update({0: (60, 60)})
    acc, n = cur.windowed_accuracy(0)
    assert (acc, n) == (1.0, 60)


def test_fixed_schedule_follows_the_tutorials_blocks():
    cur = Curriculum(CurriculumSettings(schedule="fixed", fixed_stages=(0, 0, 0, 1, 1, 2), iterations_per_stage_entry=10))
    stages = [cur.stage]
    for _ in range(80):
        cur.update({})
        stages.append(cur.stage)
    assert stages[:30] == [0] * 30 and stages[30:50] == [1] * 20 and set(stages[50:]) == {2}
    assert cur.promotions == [(30, 1), (50, 2)]


def test_state_round_trips():
    cur = Curriculum(CurriculumSettings(window=10))
    cur.update({0: (20, 20)})
    other = Curriculum(CurriculumSettings(window=10))
    other.set_state(cur.get_state())
    assert other.stage == 1 and other.iteration == 1 and other.promotions == [(1, 1)]
    assert other.windowed_accuracy(0) == cur.windowed_accuracy(0)


def test_callback_treats_missing_or_nan_counts_as_no_episodes():
    from rllib_app.curriculum.callback import CurriculumCallback

    cb = CurriculumCallback(CurriculumSettings(window=10))
    result = {"env_runners": {"curriculum/stage_0_episodes": float("nan"), "curriculum/stage_0_correct": None}}
    cb.on_train_result(algorithm=None, result=result)
    assert result["curriculum"]["stage"] == 0 and cb.curriculum.windowed_accuracy(0) == (None, 0)
    result = {"env_runners": {"curriculum/stage_0_episodes": 4.0, "curriculum/stage_0_correct": 3.0}}
    cb.on_train_result(algorithm=None, result=result)
    assert result["curriculum"]["stage_0_sampled_accuracy"] == 0.75


def _progress(**kw):
    return Curriculum(CurriculumSettings(schedule="progress", progress_episodes=10, progress_window=4,
                                         progress_floor=0.1, **kw))


def test_progress_teacher_starts_uniform_over_the_path():
    cur = _progress(path=(0, 1, 2))
    assert cur.stage_weights() == pytest.approx([1 / 3, 1 / 3, 1 / 3] + [0.0] * (NUM_STAGES - 3))
    assert cur.learning_progress(0) is None


def test_progress_teacher_samples_by_absolute_slope_with_a_floor():
    cur = _progress(path=(0, 1, 2))
    # stage 0 climbs 0.1 per iteration, stage 1 is flat, stage 2 is being forgotten at 0.05
    for i in range(4):
        changed = cur.update({0: (10, 1 + i), 1: (10, 5), 2: (10, 9 - i // 2 * 1)})
    assert changed
    assert cur.learning_progress(0) == pytest.approx(0.1)
    assert cur.learning_progress(1) == pytest.approx(0.0)
    # stage 2's points 0.9 0.9 0.8 0.8: least-squares slope -0.04, hand-computed
    assert cur.learning_progress(2) == pytest.approx(0.04)
    w = cur.stage_weights()
    assert w[0] == pytest.approx(0.1 / 3 + 0.9 * 0.1 / 0.14)
    assert w[1] == pytest.approx(0.1 / 3)  # no progress: only the floor
    assert w[2] == pytest.approx(0.1 / 3 + 0.9 * 0.04 / 0.14)  # forgetting is re-sampled
    assert sum(w) == pytest.approx(1.0) and w[3] == w[4] == 0.0
    assert cur.stage == 0  # the favoured stage, for progress lines


def test_progress_teacher_tries_unmeasured_stages_and_keeps_a_window():
    cur = _progress(path=(0, 1, 2))
    for i in range(6):
        cur.update({0: (10, min(10, 2 * i)), 1: (10, 3)})
    # stage 2 has no points: it counts as the most promising one
    assert cur.learning_progress(2) is None
    w = cur.stage_weights()
    assert w[2] == pytest.approx(max(w))
    assert len(cur._points[0]) == 4  # window of 4 points
    # points of 5 episodes each iteration: one point every two iterations
    cur2 = _progress(path=(0, 1))
    for _ in range(4):
        cur2.update({0: (5, 5)})
    assert len(cur2._points[0]) == 2


def test_progress_state_round_trips():
    cur = _progress(path=(0, 1, 2))
    for i in range(3):
        cur.update({0: (10, 3 + 2 * i), 1: (7, 1)})
    other = _progress(path=(0, 1, 2))
    other.set_state(cur.get_state())
    assert other.stage_weights() == pytest.approx(cur.stage_weights())
    assert other._pending == cur._pending and other._points == cur._points
    # and through JSON, as checkpoints and Tune see it
    import json
    third = _progress(path=(0, 1, 2))
    third.set_state(json.loads(json.dumps(cur.get_state())))
    assert third.stage_weights() == pytest.approx(cur.stage_weights())


def test_pattern_focus_weights_patterns_by_their_recent_error():
    from envs.machine import NUM_PATTERNS, PATTERN_OFFSET

    assert Curriculum(CurriculumSettings(path=(0, 5))).pattern_weights() is None  # focus off
    assert Curriculum(CurriculumSettings(pattern_focus=0.5)).pattern_weights() is None  # no expression stage
    cur = Curriculum(CurriculumSettings(path=(0, 5, 6), pattern_focus=0.5, pattern_window=10))
    unseen = cur.pattern_weights()
    assert len(unseen) == NUM_PATTERNS
    for k in (1, 2, 3):  # the counts of stages 5 and 6, each a distribution; unseen: uniform
        block = unseen[PATTERN_OFFSET[k]: PATTERN_OFFSET[k] + 3**k]
        assert sum(block) == pytest.approx(1.0) and block == pytest.approx([1 / 3**k] * 3**k)
    assert sum(unseen[PATTERN_OFFSET[4]:]) == 0  # 4 operators are not trained
    solved, failing = PATTERN_OFFSET[2], PATTERN_OFFSET[2] + 1
    cur.update_patterns({solved: (30, 30), failing: (30, 0)})
    w = cur.pattern_weights()
    assert cur.pattern_error(solved) == pytest.approx(1 / 12, abs=0.01)  # the window keeps ~10 episodes
    unseen_2 = PATTERN_OFFSET[2] + 2
    assert w[failing] > w[unseen_2] > w[solved] >= 0.5 / 9  # failing (~0.9) > unseen (0.5) > solved (~0.08)
    assert sum(w[PATTERN_OFFSET[2]: PATTERN_OFFSET[3]]) == pytest.approx(1.0)
    cur.update_patterns({failing: (40, 40)})  # learnt: its error decays with the window
    assert cur.pattern_error(failing) < 0.1
    other = Curriculum(cur.settings)
    other.set_state(cur.get_state())
    assert other.pattern_weights() == pytest.approx(cur.pattern_weights())


def test_callback_counts_patterns_only_with_the_focus_on():
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from rllib_app.curriculum.callback import CurriculumCallback

    class Episode:
        def get_infos(self, index):
            return {"stage": 6, "correct": True, "pattern": 20}

    for focus, logged in ((0.0, set()), (0.5, {"curriculum/pattern_20_episodes", "curriculum/pattern_20_correct"})):
        cb, logger = CurriculumCallback(CurriculumSettings(path=(0, 6), pattern_focus=focus)), MetricsLogger()
        cb.on_episode_end(episode=Episode(), metrics_logger=logger)
        keys = set(logger.reduce())
        assert {k for k in keys if "pattern" in k} == logged
    result = {"env_runners": {"curriculum/pattern_20_episodes": 4.0, "curriculum/pattern_20_correct": 1.0}}
    cb.on_train_result(algorithm=type("Algo", (), {"env_runner_group": type("G", (), {
        "foreach_env_runner": staticmethod(lambda fn, **kw: [])})()})(), result=result)
    assert cb.curriculum.pattern_error(20) == pytest.approx(4 / 6, abs=0.01)  # 3 of 4 failed, within the window
