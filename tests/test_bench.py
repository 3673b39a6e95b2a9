"""``toolagent bench`` and the hand-written baseline: correctness, not speed."""

import json
import os

import pytest

from conftest import run_cli
from envs import CONTEXT_LEN
from rllib_app.experiments import baseline, bench

MILESTONES = ("stage 0", "stages 0-1", "stages 0-2")


def _check_milestones(milestones):
    assert set(milestones) == set(MILESTONES)
    steps = []
    for name in MILESTONES:
        m = milestones[name]
        assert isinstance(m["reached"], bool)
        if m["reached"]:
            assert m["env_steps"] > 0 and m["wall_seconds"] >= m["training_seconds"] > 0
            steps.append(m["env_steps"])
        else:  # never faked: no numbers for a milestone not reached
            assert m["env_steps"] is None and m["wall_seconds"] is None and m["training_seconds"] is None
    # a later milestone needs the earlier rows too, so it never comes first
    assert steps == sorted(steps)
    reached = [milestones[name]["reached"] for name in MILESTONES]
    assert reached == sorted(reached, reverse=True)


@pytest.mark.integration
def test_bench_quick_writes_every_section(tmp_path):
    # two seeds: the milestone sections run once per seed, the others once; 6 s per
    # training (the sections' wiring is what is tested, not what a training reaches)
    out = tmp_path / "bench"
    proc = run_cli("bench", "--quick", "--minutes-per-training", "0.1", "--seeds", "3,1", "--output", str(out),
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert not list(out.glob(".bench.json.tmp*"))  # written atomically
    assert report["quick"] is True and report["command"].startswith("toolagent bench --quick")
    assert report["command"].endswith("--seeds 3,1")

    raw = report["raw_env"]
    for key, n in (("single_env", 1), ("sync_vector_env", 32), ("numpy_vector_env", 256)):
        assert raw[key]["num_envs"] == n and raw[key]["steps_per_second"] > 0
    assert report["inference"]["batch"] == 256 and report["inference"]["steps_per_second"] > 0

    # the learner alone: each algorithm's update on a recorded 1,024-step batch, one CPU thread
    learner = report["learner"]
    assert sorted((r["algo"], r["batch_env_steps"], r["device"]) for r in learner if r["device"] == "cpu") == [
        ("a2c", 1024, "cpu"), ("impala", 1024, "cpu")]
    for r in learner:
        assert "error" not in r, r
        assert r["env_steps_per_s"] > 0 and r["env_steps_per_update"] >= 1024 and r["updates"] >= 3
        assert r["env_steps_per_s"] == pytest.approx(r["env_steps_per_update"] * r["updates"] / r["seconds"], rel=0.01)

    rows = report["rllib_sampling"]
    alone = [r for r in rows if r.get("runner_alone")]
    assert sorted(r["fast_env_runner"] for r in alone) == [False, True]
    rows = [r for r in rows if not r.get("runner_alone")]
    # --quick: the three loops with the first algorithm, BatchedEnvRunner with the others
    assert sorted((r["algo"], r["native_vector_env"], r["fast_env_runner"]) for r in rows) == sorted(
        [("impala", False, False), ("impala", True, False), ("impala", True, True), ("a2c", True, True),
         ("ppo", True, True)]
    )
    for r in rows + alone:
        assert "error" not in r, r
        assert r["env_steps"] > 0 and r["seconds"] > 0 and r["steps_per_second"] > 0
        assert r["num_env_runners"] == 1

    assert [r["seed"] for r in report["seed_runs"]] == [3, 1]
    # the main table is the first seed's
    assert (report["baseline"], report["rllib_training"]) == (
        report["seed_runs"][0]["baseline"], report["seed_runs"][0]["rllib_training"])
    for run in report["seed_runs"]:
        assert (out / f"seed_{run['seed']}" / "baseline.json").exists()
        trainings = run["rllib_training"]
        assert [t["algo"] for t in trainings] == ["impala", "a2c"]
        for t in trainings:
            assert (out / f"seed_{run['seed']}" / "rllib_training" / t["algo"]).is_dir()
        for section in [run["baseline"], *trainings]:
            assert "error" not in section, section
            assert section["env_steps"] > 0 and section["wall_seconds"] > section["eval_seconds"] > 0
            assert section["steps_per_second"] > section["env_steps"] / section["wall_seconds"]  # evaluations excluded
            _check_milestones(section["milestones"])
            # the budget (6 s) is training time: wall time less evaluations and checkpoints
            if not section["target_reached"]:
                assert section["wall_seconds"] - section["eval_seconds"] >= 6.0 - 0.2, section
        for t in trainings:
            assert t["stopped_by"] in ("budget", "target"), t
        assert run["baseline"]["sampling_steps_per_second"] > 0

    # the table printed and stored: every section, ratios against the baseline
    for text in (proc.stdout, report["table"]):
        assert "ToolMachineVectorEnv" in text and "forward_inference" in text and "baseline training" in text
        assert "RLlib a2c learner alone" in text and "RLlib impala learner alone" in text
        assert "RLlib impala sampling" in text and "RLlib ppo sampling" in text and "stages 0-2" in text
        assert "vs baseline" in text
        assert "RLlib impala: env steps, training s (wall s)" in text and "RLlib a2c: env steps, training s" in text
        assert "median over 2 seeds" in text and "| seed 3 | seed 1 |" in text


@pytest.mark.parametrize("seed", [0, 1])
def test_baseline_learns_stage_0(seed):
    # 20-41k env steps to 0.99 (seeds 0-7, 1.3-3 s on 2 busy cores); the budget is in env steps, so
    # a busy machine makes it slower, not different.
    args = baseline.Args(seed=seed, stage_path="0", max_env_steps=200_000, max_seconds=120,
                         eval_every_steps=20_480, verbose=False)
    result = baseline.train(args)
    assert result["accuracy"]["0"] >= 0.9, result["accuracy"]
    assert result["milestones"]["stage 0"]["reached"]
    assert set(result["milestones"]) == {"stage 0"}  # stage 1 and 2 are not trained here


def test_baseline_greedy_evaluation_matches_the_rows_of_toolagent_eval():
    """Fresh, uniform contexts of the stage for "1"; only memory-required ones for "2m"."""
    from envs.analysis import memory_required_contexts

    args = baseline.Args(eval_episodes=300)
    evaluator = baseline.GreedyEvaluator(args)
    for row, stage in (("1", 1), ("2m", 2)):
        env, _ = evaluator._env(row)
        obs, _ = env.reset(seed=5)
        assert (obs[:, CONTEXT_LEN] == stage).all()
    hard = {tuple(c) for c in memory_required_contexts(2).tolist()}
    env, _ = evaluator._env("2m")
    obs, _ = env.reset(seed=5)
    assert all(tuple(o[:5]) in hard for o in obs.tolist())
    model = baseline.GRUActorCritic()
    accuracy = evaluator.evaluate(model, baseline.milestones_for((0, 1, 2)))
    assert 0 <= accuracy["0"] < 0.9  # an untrained policy; later rows only once "0" passes
    assert list(accuracy) == ["0"]


def test_milestones_are_first_reached_and_never_faked():
    points = [
        {"env_steps": 10, "wall_seconds": 1.0, "eval_seconds": 0.25, "accuracy": {"0": 0.5, "1": 0.1, "2": 0.0, "2m": 0.0}},
        {"env_steps": 20, "wall_seconds": 2.0, "eval_seconds": 0.5, "accuracy": {"0": 0.995, "1": 0.2, "2": 0.0, "2m": 0.0}},
        {"env_steps": 30, "wall_seconds": 3.0, "eval_seconds": 0.75, "accuracy": {"0": 1.0, "1": 0.99, "2": 0.99, "2m": 0.5}},
    ]
    assert bench.MILESTONE_ROWS == baseline.MILESTONES  # both sides report the same milestones
    m = bench._milestones(points, 0.99)
    assert m["stage 0"] == {"reached": True, "env_steps": 20, "wall_seconds": 2.0, "training_seconds": 1.5}
    assert m["stages 0-1"] == {"reached": True, "env_steps": 30, "wall_seconds": 3.0, "training_seconds": 2.25}
    assert m["stages 0-2"] == {"reached": False, "env_steps": None, "wall_seconds": None, "training_seconds": None}
    _check_milestones(m)


def test_a_milestone_counts_the_training_before_its_evaluation_not_minus_it():
    # train() reads wall_seconds (10.0) before iteration 3 evaluates for 0.8 s; eval_seconds
    # (2.3) already counts that evaluation: the training time is 10.0 - 1.5, never 10.0 - 2.3
    point = bench.point_after_evaluation({"env_steps": 3072, "wall_seconds": 10.0, "eval_seconds": 2.3}, 1.5)
    assert point == {"env_steps": 3072, "wall_seconds": 10.8, "eval_seconds": 2.3}
    m = bench._milestones([{**point, "accuracy": {"0": 1.0}}], 0.99)["stage 0"]
    assert m["training_seconds"] == 8.5 and m["wall_seconds"] == 10.8


def test_synchronous_trainings_evaluate_after_every_update_as_the_baseline_does():
    """A2C's iteration is then one batch, and every iteration evaluates."""
    assert bench._evaluation_flags("a2c") == {"min_iteration_seconds": 0, "eval_interval": 1}
    assert bench._evaluation_flags("impala") == {"eval_interval": 1}


def test_the_table_compares_the_best_rllib_training_with_the_baseline():
    def run(algo, *reached):  # reached: (env steps, training seconds) per milestone, None = not reached
        milestones = {name: {"reached": r is not None, "env_steps": r and r[0], "wall_seconds": r and r[1] + 1,
                             "training_seconds": r and r[1]}
                      for name, r in zip(MILESTONES, reached)}
        return {"algo": algo, "milestones": milestones, "fast_env_runner": algo == "a2c", "native_vector_env": True,
                "num_envs_per_env_runner": 64, "steps_per_second": 1000.0, "budget_minutes": 1.0}

    impala = run("impala", (10_000, 6.0), (40_000, 20.0), None)
    a2c = run("a2c", (12_000, 5.0), (30_000, 12.0), (110_000, 55.0))
    slow = run("ppo", (12_000, 5.0), (30_000, 12.0), (110_000, 99.0))
    assert bench.best_training([impala, a2c]) is a2c  # more milestones wins
    assert bench.best_training([slow, a2c, impala]) is a2c  # then the last one sooner
    assert bench.best_training([{"algo": "a2c", "error": "boom"}]) is None
    base = {**run("baseline", (20_000, 1.0), (80_000, 4.0), (500_000, 27.5)), "num_envs": 256, "rollout_steps": 16}
    table = bench.bench_table({"baseline": base, "rllib_training": [impala, a2c, {"algo": "x", "error": "boom"}]})
    assert "| best RLlib (a2c) / baseline: env steps, time |" in table
    assert ("| stages 0-2 (0, 1, 2, 2m) | 500,000, 27.5 s (28.5 s) | not reached | 110,000, 55.0 s (56.0 s) "
            "| 0.22x, 2.00x |") in table
    assert "| stage 0 (0) | 20,000, 1.0 s (2.0 s) | 10,000, 6.0 s (7.0 s) | 12,000, 5.0 s (6.0 s) | 0.60x, 5.00x |" in table


def test_the_seed_table_gives_each_seeds_times_and_the_medians():
    def side(algo, *seconds):  # training seconds per milestone, None = not reached
        return {"algo": algo, "milestones": {
            name: {"reached": t is not None, "env_steps": t and int(t * 1000), "wall_seconds": t and t + 1,
                   "training_seconds": t} for name, t in zip(MILESTONES, seconds)}}

    runs = [
        {"seed": 0, "baseline": side("baseline", 1.0, 6.0, 55.0),
         "rllib_training": [side("a2c", 1.5, 8.0, 50.0), side("impala", 3.0, 20.0, None)]},
        {"seed": 1, "baseline": side("baseline", 0.2, 8.0, None),
         "rllib_training": [side("a2c", 2.5, 7.0, 90.0), {"algo": "impala", "error": "boom"}]},
        {"seed": 2, "baseline": side("baseline", 0.8, 7.0, 80.0),
         "rllib_training": [side("a2c", 1.2, 12.0, 60.0), side("impala", 2.0, None, None)]},
    ]
    med = bench._median_milestones([r["baseline"] for r in runs])
    assert med["stage 0"] == {"reached": True, "env_steps": 800.0, "training_seconds": 0.8, "seeds_reached": 3}
    # one seed not reached counts as latest: the median of 3 is still the middle one, 80 s
    assert med["stages 0-2"]["training_seconds"] == 80.0 and med["stages 0-2"]["seeds_reached"] == 2
    impala = bench._median_milestones([runs[0]["rllib_training"][1], {}, runs[2]["rllib_training"][1]])
    assert impala["stage 0"]["training_seconds"] == 3.0  # a failed run counts as never reaching it
    assert not impala["stages 0-1"]["reached"] and impala["stages 0-1"]["env_steps"] is None

    table = bench.format_seed_table(runs)
    assert "| milestone: training s, baseline / RLlib a2c | seed 0 | seed 1 | seed 2 | median over 3 seeds |" in table
    assert "| stage 0 (0) | 1.0 s / 1.5 s (1.50x) | 0.2 s / 2.5 s (12.50x) | 0.8 s / 1.2 s (1.50x) " \
           "| **0.8 s / 1.5 s (1.88x)** | 800 / 1,500 |" in table
    assert "| 8.0 s / 7.0 s (0.88x) |" in table
    assert "| not reached / 90.0 s |" in table and "**80.0 s / 60.0 s (0.75x)**" in table
    # and the main table carries it when the report has runs over seeds
    assert table in bench.bench_table({"baseline": runs[0]["baseline"], "seed_runs": runs})


@pytest.mark.parametrize("args, expected", [
    (["--minutes-per-training", "0"], "--minutes-per-training must be > 0, got 0.0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--output", "pyproject.toml"], "--output 'pyproject.toml' is not a directory"),
    (["--sections", "baseline,gpu"], "--sections 'baseline,gpu': each must be one of raw_env, inference"),
    (["--algos", "a2c,dqn"], "--algos 'a2c,dqn': each must be one of impala, a2c, ppo"),
    (["--seeds", "0,x"], "--seeds '0,x': give distinct integers >= 0, comma-separated"),
    (["--seeds", "1,1"], "--seeds '1,1': give distinct integers >= 0"),
    (["--seed", "2", "--seeds", "0,1"], "give --seed or --seeds, not both"),
])
def test_bench_usage_errors(args, expected):
    proc = run_cli("bench", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_a_training_ended_by_a_signal_ends_the_bench(tmp_path, monkeypatch):
    """train() turns Ctrl-C/SIGTERM into an early, checkpointed end; the bench must not go
    on to its next training (nor write a table from a cut-short one)."""
    import rllib_app.training.loop
    from rllib_app.experiments.bench import BenchSettings, bench_rllib_training_row

    monkeypatch.setattr(rllib_app.training.loop, "train", lambda cfg, on_iteration: {"stopped_by": "SIGTERM"})
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        bench_rllib_training_row("a2c", BenchSettings(output=tmp_path), tmp_path)


def test_the_scaling_settings_are_what_a_machine_hosts():
    labels = [label for label, _ in bench.scaling_settings(2, 0)]
    assert labels == ["one process (driver samples)", "1 env runner(s)"]
    sixteen = dict(bench.scaling_settings(16, 1))
    assert [o.get("num_env_runners") for o in sixteen.values()] == [0, 1, 2, 4, 8, 8, 8]
    assert sixteen["8 env runner(s), GPU learner"] == {"num_env_runners": 8, "num_gpus_per_learner": 1}
    assert sixteen["8 env runner(s), 2 CPU learners (DDP)"] == {"num_env_runners": 8, "num_learners": 2}
    assert "1 env runner(s), 2 CPU learners (DDP)" in dict(bench.scaling_settings(4, 0))


@pytest.mark.integration
def test_bench_scaling_trains_each_algorithm_on_each_setting(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli("bench", "--sections", "scaling", "--algos", "a2c,impala", "--minutes-per-training", "0.1",
                   "--output", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "bench.json").read_text())["scaling"]
    settings = [label for label, _ in bench.scaling_settings(os.cpu_count(), 0)]
    assert [(r["algo"], r["setting"]) for r in rows] == [(a, s) for a in ("impala", "a2c") for s in settings]
    for r in rows:
        assert "error" not in r, r
        assert r["num_env_runners"] == r["overrides"]["num_env_runners"] and r["steps_per_second"] > 0
    # A2C's batch follows its runners (the batch rule); IMPALA's stays 256
    assert {r["train_batch_size_per_learner"] for r in rows if r["algo"] == "impala"} == {256}
    assert "Scaling: every resource setting" in proc.stdout and "vs one process" in proc.stdout


def test_the_learner_settings_are_what_a_machine_hosts():
    from rllib_app.experiments.learner_speed import learner_settings

    assert learner_settings(1, False) == [("cpu", 1)]
    assert learner_settings(2, False) == [("cpu", 1), ("cpu", 2)]
    assert learner_settings(16, True) == [("cpu", 1), ("cuda", 1), ("cpu", 2)]


@pytest.mark.integration
@pytest.mark.parametrize("algo", ["a2c", "impala"])
def test_the_learner_bench_times_two_cpu_learners_sharing_the_batch(local_ray, tmp_path, algo):
    """The learner bench's DDP row: RLlib's LearnerGroup splits the sampled batch between two
    remote learners; each takes its share (the batch rule per learner) and the timing counts
    the whole batch."""
    from rllib_app.experiments.learner_speed import learner_config, time_learner

    cfg = learner_config(algo, 512, "cpu", 0, tmp_path, learners=2)
    assert cfg.num_learners == 2 and cfg.train_batch_size_per_learner == 256
    row = time_learner(cfg, updates=2, warmup=1)
    assert row["env_steps_per_update"] >= 512 and row["updates"] == 2
    assert row["env_steps_per_s"] == pytest.approx(row["env_steps_per_update"] * 2 / row["seconds"], rel=0.01)
