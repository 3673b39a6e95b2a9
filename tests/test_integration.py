"""Real Ray, real RLlib: training, the curriculum on every env, checkpoints, eval."""

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import ROOT, SMALL, run_cli, train_in_process
from envs import MEMORY_STAGES, NUM_STAGES

pytestmark = pytest.mark.integration



def test_train_then_eval_and_explain_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--algo", "impala", "--max-iterations", "3", "--eval-interval", "3", "--eval-episodes", "50",
        "--num-envs-per-env-runner", "8", "--train-batch-size-per-learner", "256",
        "--seed", "3", "--output", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("iter ") >= 3 and "greedy accuracy" in proc.stdout
    # IMPALA's batch and rate are its own (the square-root rule is A2C's and PPO's)
    assert "batch: 256 env steps per learner and update, learning rate 0.002" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"target_reached", "accuracy", "env_steps", "wall_seconds", "checkpoint", "algo"}
    assert summary["algo"] == "impala" and summary["iterations"] == 3 and summary["env_steps"] > 0
    assert set(summary["accuracy"]) == {"0", "1", "2", "2m"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert (out / "checkpoint").resolve() == (out / "checkpoints" / "iter_000003").resolve()
    # the history: one row per iteration, greedy accuracy on the evaluation iteration only
    import pyarrow.parquet as pq

    from rllib_app.outputs.history import METRICS_SCHEMA

    history = pq.read_table(out / "metrics.parquet")
    assert history.schema.equals(METRICS_SCHEMA)
    rows = history.to_pylist()
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["greedy_accuracy_2m"] is not None for r in rows] == [False, False, True]
    assert rows[-1]["greedy_accuracy_2m"] == summary["accuracy"]["2m"] and rows[-1]["env_steps"] == summary["env_steps"]
    assert all(r["env_steps"] > 0 and len(r["stage_weights"]) == NUM_STAGES for r in rows)
    # each row's stage is the curriculum's after that iteration: 0 until a promotion (IMPALA's
    # learner may learn stage 0 within these 3 iterations), the promoted stage from then on
    promoted = {p["iteration"]: p["stage"] for p in summary["promotions"]}
    expected = [max([0] + [s for i, s in promoted.items() if i <= r["iteration"]]) for r in rows]
    assert [r["stage"] for r in rows] == expected
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    proc = run_cli("eval", str(out), "--episodes", "50", "--seed", "3", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["stages"]) == {"0", "1", "2", "2m"}
    for stage in report["stages"].values():
        assert stage["episodes"] == 50 and 0.0 <= stage["accuracy"] <= 1.0
    # the checkpoint's greedy accuracy is what training reported for it
    assert {s: v["accuracy"] for s, v in report["stages"].items()} == summary["accuracy"]

    # a relative path works too (RLlib's loader needs it made absolute)
    relative = os.path.relpath(out / "checkpoint", ROOT)
    proc = run_cli("explain", relative, "--stage", "1", "-n", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[1].split() == ["context", "target", "tools", "answer", "correct"]
    assert len(lines) == 5 and all(len(line.split()[0:4]) == 4 for line in lines[2:])


def test_a_module_trained_on_expressions_runs_on_every_stage_and_operator_count(local_ray, tmp_path):
    """Two iterations of A2C through the expression stages with the GRU reader and
    attention; then greedy episodes of every stage 0-9 and of 1-6 operators."""
    out = tmp_path / "run"
    train_in_process(out, algo="a2c", stage_path="0,1,2,5,6,7", context_encoder="gru", context_attention=True,
                     max_iterations=2, eval_interval=2, eval_episodes=20, num_envs_per_env_runner=8,
                     train_batch_size_per_learner=128, hidden_size=32)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"0", "1", "2", "2m", "5", "6", "7"}
    proc = run_cli("eval", str(out), "--stages", ",".join(map(str, range(NUM_STAGES))), "--max-operators", "6",
                   "--episodes", "30", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])["stages"]
    assert set(report) == {*map(str, range(NUM_STAGES)), *(f"{s}m" for s in MEMORY_STAGES), *(f"{k}op" for k in range(1, 7))}
    assert all(r["episodes"] == 30 and 0.0 <= r["accuracy"] <= 1.0 for r in report.values())
    # stages 5-7 draw 1-4 operators: trained; 5 and 6 operators are held out
    assert [report[f"{k}op"]["trained"] for k in range(1, 7)] == [True] * 4 + [False] * 2
    proc = run_cli("eval", str(out), "--max-operators", "7", timeout=60)
    assert proc.returncode == 2 and "'7' is not an operator count; allowed: 1..6" in proc.stderr

    # the plot draws every stage of an expression path (it indexed colours by stage 0-4 only)
    proc = run_cli("plot", str(out), "--out", str(tmp_path / "curves.png"), "--action-episodes", "20", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "curves.png").stat().st_size > 0

    # --by-pattern: each row's episodes split by operator pattern, adding up to the row
    proc = run_cli("eval", str(out), "--stages", "0", "--max-operators", "2", "--episodes", "200", "--by-pattern",
                   "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout.strip().splitlines()[-1])
    report, patterns = document["stages"], document["patterns"]
    assert set(patterns) == {"1op", "2op"}  # stage 0 has no operators
    assert {r["pattern"] for r in patterns["1op"]} == {"a*b", "a + b", "a - b"}
    assert len(patterns["2op"]) == 9 and {r["pattern"] for r in patterns["2op"] if r["needs_memory"]} == {
        "a + b*c", "a - b*c"}
    for row, entries in patterns.items():
        assert sum(r["episodes"] for r in entries) == 200
        right = sum(round(r["accuracy"] * r["episodes"]) for r in entries)
        assert right == round(report[row]["accuracy"] * 200)
        assert [r["accuracy"] for r in entries] == sorted(r["accuracy"] for r in entries)


def test_greedy_promotion_moves_the_stage_at_an_evaluation(local_ray, tmp_path):
    """--promote-on greedy: the stage changes only on evaluation iterations, when the
    evaluated greedy accuracy of the current stage reaches the threshold, and the env
    runners draw the new stage from the next iteration on."""
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    summary = train_in_process(out, algo="a2c", promote_on="greedy", promotion_accuracy=0.5, eval_interval=3,
                               max_iterations=9, eval_episodes=200, seed=0)
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    promotions = summary["promotions"]
    assert promotions, [(r["iteration"], r["greedy_accuracy_0"]) for r in rows]
    first = promotions[0]["iteration"]
    assert all(p["iteration"] % 3 == 0 for p in promotions) and promotions[0]["stage"] == 1
    at = {r["iteration"]: r for r in rows}
    assert at[first]["greedy_accuracy_0"] >= 0.5
    assert all(r["greedy_accuracy_0"] is None or r["greedy_accuracy_0"] < 0.5 for r in rows if r["iteration"] < first)
    assert {r["stage"] for r in rows if r["iteration"] <= first} == {0}
    # the row after the promotion sampled stage 1 (80%) beside stage 0 (20% replay)
    after = at[first + 1]
    assert after["stage"] == 1 and after["stage_weights"][:2] == pytest.approx([0.2, 0.8])
    assert after["sampled_accuracy_1"] is not None and at[first]["sampled_accuracy_1"] is None


def test_review_trains_every_stage_once_the_last_stage_passes(local_ray, tmp_path):
    """--review: when the path's last stage passes its (here sampled) promotion test, the
    stage weights the runners draw from become every stage of the path (evenly, with
    --review-focus 0) instead of the last stage plus a 20% replay."""
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    summary = train_in_process(out, algo="a2c", stage_path="0,1", promotion_accuracy=0.3, accuracy_window=100,
                               review=True, review_focus=0.0, eval_interval=10, max_iterations=7,
                               eval_episodes=100, seed=0)
    rows = {r["iteration"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()}
    promoted, review = summary["promotions"][0]["iteration"], summary["review_from"]
    assert summary["promotions"][0]["stage"] == 1 and review is not None and promoted < review < 7, summary
    assert rows[review]["sampled_accuracy_1"] >= 0.3
    for i, row in rows.items():
        expected = [1.0, 0.0] if i < promoted else [0.2, 0.8] if i < review else [0.5, 0.5]
        assert row["stage_weights"][:2] == pytest.approx(expected), (i, row["stage_weights"])
        assert row["stage"] == (0 if i < promoted else 1)


def test_a_stall_raises_the_learners_entropy_coefficient_and_a_resume_keeps_it(local_ray, tmp_path):
    """--stall-entropy: the evaluation that finds a stall starts a bump on the learner
    (its logged coefficient jumps from the schedule's to the peak), and a resumed run's
    learner gets the bump back from the checkpointed curriculum."""
    import pyarrow.parquet as pq

    fields = dict(algo="a2c", stage_path="2", stall_entropy=0.5, stall_evaluations=1, stall_decay_steps=10**7,
                  entropy_schedule="0:0.01", eval_interval=1, min_iteration_seconds=0, seed=0,
                  num_env_runners=0, **SMALL)
    summary = train_in_process(tmp_path / "a", max_iterations=3, **fields)
    assert summary["entropy_bumps"], summary["accuracy"]
    bump = summary["entropy_bumps"][0]
    # iteration 1's evaluation sets the stage's best (near 0), iteration 2's does not beat it
    assert bump["stage"] == 2 and bump["iteration"] == 2, summary["entropy_bumps"]
    coeff = {r["iteration"]: r["entropy_coeff"] for r in pq.read_table(tmp_path / "a" / "metrics.parquet").to_pylist()}
    assert coeff[1] == coeff[2] == pytest.approx(0.01) and coeff[3] == pytest.approx(0.5, abs=1e-3)
    train_in_process(tmp_path / "b", resume_from=summary["checkpoint"], max_iterations=5, **fields)
    rows = pq.read_table(tmp_path / "b" / "metrics.parquet").to_pylist()
    assert rows[-1]["iteration"] == 5 and rows[-1]["entropy_coeff"] == pytest.approx(0.5, abs=1e-3)


def _build(cfg):
    from rllib_app.training.algorithms import build_config

    return build_config(cfg.validate()).build_algo()


def _env_weights(algo, local=True):
    from rllib_app.curriculum.callback import _tool_machines

    return algo.env_runner_group.foreach_env_runner(
        lambda er: [list(m.stage_weights) for m in _tool_machines(er.env)] if er.env else None,
        local_env_runner=local,
    )


@pytest.mark.parametrize("native_vector_env", [False, True])
def test_curriculum_reaches_every_env_of_every_runner(local_ray, native_vector_env):
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.curriculum.callback import find_curriculum_callback
    from rllib_app.outputs.history import finite_metric

    cfg = TrainConfig(algo="impala", num_env_runners=2, schedule="fixed", fixed_stages="0,2",
                      iterations_per_stage_entry=1, native_vector_env=native_vector_env, **SMALL)
    algo = _build(cfg)
    try:
        per_runner = [w for w in _env_weights(algo) if w is not None]
        # gymnasium's loop: 4 single envs per runner; native: one vector env of 4 machines
        assert len(per_runner) == 2 and all(len(w) == (1 if native_vector_env else 4) for w in per_runner)
        assert all(np.allclose(env, np.eye(NUM_STAGES)[0]) for w in per_runner for env in w)
        result = algo.train()
        assert result["curriculum"]["stage"] == 2
        per_runner = [w for w in _env_weights(algo) if w is not None]
        assert len(per_runner) == 2
        assert all(np.allclose(env, [0.2, 0, 0.8] + [0] * (NUM_STAGES - 3)) for w in per_runner for env in w)
        counts = {}
        for _ in range(3):
            runners = algo.train()["env_runners"]
            for s in range(3):
                # NaN: a stage without episodes in this iteration (as the callback reads it)
                counts[s] = counts.get(s, 0) + int(finite_metric(runners.get(f"curriculum/stage_{s}_episodes")) or 0)
        # the current stage and the replayed one, not the one outside the schedule (how many
        # of each end in 3 iterations depends on their lengths and on the machine's load)
        assert counts[2] > 0 and counts[0] > 0 and counts[1] == 0
        assert find_curriculum_callback(algo).curriculum.stage == 2
    finally:
        algo.stop()


def test_the_program_check_keeps_coincidental_wins_out_of_the_replay(local_ray):
    from envs.analysis import all_contexts, program_answers, targets
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.algorithms import MODULE_ID

    cfg = TrainConfig(algo="a2c", num_env_runners=0, schedule="fixed", fixed_stages="0", sil_coeff=1.0,
                      sil_program_check=64, seed=3, **SMALL)
    algo = _build(cfg)
    try:
        for _ in range(4):
            learner = algo.train()["learners"][MODULE_ID]
        replay = algo.learner_group._learner._sil_replays[MODULE_ID]
    finally:
        algo.stop()
    # a near-random policy wins by coincidence too (a*b when c = 0): those were refused
    assert learner["sil_episodes_rejected"] > 0 and len(replay) > 0
    contexts = all_contexts(3)
    for i in range(len(replay)):
        program = replay.actions[i, : replay.lengths[i]]
        assert np.array_equal(program_answers(program, contexts), targets(0, contexts)), program


def test_checkpoint_restore_keeps_weights_and_stage(local_ray, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_app.config.train_config import TrainConfig
    from rllib_app.curriculum.callback import find_curriculum_callback
    from rllib_app.outputs.checkpoints import save_checkpoint
    from rllib_app.training.algorithms import MODULE_ID

    # no remote runners: the local env runner samples and must follow the stage too;
    # with the stage-2 levers on, so the self-imitation learner is checkpointed as well
    cfg = TrainConfig(num_env_runners=0, schedule="fixed", fixed_stages="0,1",
                      iterations_per_stage_entry=1, sil_coeff=1.0, action_mask=True,
                      hard_fraction=0.8, **SMALL)
    algo = _build(cfg)
    try:
        algo.train()
        learner = algo.train()["learners"][MODULE_ID]
        # successful episodes were harvested from the real batches and replayed
        assert learner["sil_replay_size"] > 0 and np.isfinite(learner["sil_policy_loss"])
        path = save_checkpoint(algo, cfg, tmp_path, 2)
        weights = algo.learner_group.get_weights()[MODULE_ID]
        curriculum = find_curriculum_callback(algo).curriculum.get_state()
        replay = algo.learner_group._learner._sil_replays[MODULE_ID]
        held = (len(replay), replay.cursor, replay.actions[: len(replay)].copy())
    finally:
        algo.stop()
    assert curriculum["stage"] == 1

    restored = Algorithm.from_checkpoint(str(path))
    try:
        cur = find_curriculum_callback(restored).curriculum
        assert (cur.stage, cur.iteration) == (1, 2)
        assert cur.get_state() == curriculum
        again = restored.learner_group.get_weights()[MODULE_ID]
        assert again.keys() == weights.keys()
        for k in weights:
            np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(weights[k]))
        assert all(np.allclose(env, [0.2, 0.8] + [0] * (NUM_STAGES - 2)) for env in _env_weights(restored)[0])
        # the self-imitation replay came back with the learner: a resume goes on imitating
        again_replay = restored.learner_group._learner._sil_replays[MODULE_ID]
        assert (len(again_replay), again_replay.cursor) == held[:2]
        np.testing.assert_array_equal(again_replay.actions[: held[0]], held[2])
        assert restored.train()["curriculum"]["stage"] == 1
    finally:
        restored.stop()

    # a resume (`train --resume`: the new flags' algorithm, then the checkpoint's state)
    # keeps the newest episodes that fit the new --sil-capacity, drawn with the new alpha
    resumed = _build(dataclasses.replace(cfg, sil_capacity=2, sil_priority_alpha=0.5))
    try:
        resumed.restore_from_path(str(path))
        smaller = resumed.learner_group._learner._sil_replays[MODULE_ID]
        assert (smaller.capacity, len(smaller), smaller.alpha) == (2, min(2, held[0]), 0.5)
        assert held[0] < cfg.sil_capacity  # the ring had not turned: slots hold oldest first
        np.testing.assert_array_equal(smaller.actions[: len(smaller)], held[2][-len(smaller):])
    finally:
        resumed.stop()


def test_ablate_runs_each_lever_resumes_and_writes_the_table(tmp_path):
    out = tmp_path / "ablate"
    args = [
        "ablate", "--levers", "none,sil", "--seeds", "4", "--output", str(out),
        "--max-iterations", "2", "--eval-interval", "2", "--eval-episodes", "20",
        "--num-envs-per-env-runner", "4", "--train-batch-size-per-learner", "128", "--hidden-size", "32",
        "--stage-path", "0,3,2",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["lever"], r["seed"]) for r in records] == [("none", 4), ("sil", 4)]
    for r in records:
        assert r["summary"]["iterations"] == 2
        # the drill on the stage path is evaluated, with its memory-required row
        assert set(r["summary"]["accuracy"]) == {"0", "2", "2m", "3", "3m"}
    # each run is the recipe with just its lever removed
    none, sil = (r["summary"]["config"] for r in records)
    assert none["sil_coeff"] > 0 and sil["sil_coeff"] == 0
    assert {k for k in none if none[k] != sil[k]} == {"sil_coeff", "output"}
    table = (out / "ablation.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["none", "sil"]

    # the same command again finds both runs done and starts none
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 0 and "removed, seed" not in proc.stdout
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("algo", ["a2c", "impala"])
def test_two_ddp_learners_train_and_stay_identical(local_ray, algo):
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.algorithms import MODULE_ID

    cfg = TrainConfig(algo=algo, num_env_runners=1, num_learners=2, sil_coeff=1.0, **SMALL)
    algo_ = _build(cfg)
    try:
        before = algo_.learner_group.get_weights()[MODULE_ID]
        # IMPALA is asynchronous: on a loaded machine an iteration may end before any
        # update; train until two iterations have reported learner results.
        updates = 0
        for _ in range(30):
            result = algo_.train()
            learners = result.get("learners", {})
            # (an iteration without an update reports no learner results, or NaN ones)
            updates += bool(MODULE_ID in learners and np.isfinite(learners[MODULE_ID].get("vf_loss", np.nan)))
            if updates >= 2:
                break
        learner = result["learners"][MODULE_ID]
        policy_loss = learner["policy_loss" if algo == "a2c" else "pi_loss"]
        assert np.isfinite(policy_loss) and np.isfinite(learner["vf_loss"]) and np.isfinite(learner["entropy"])
        per_learner = algo_.learner_group.foreach_learner(
            lambda lrn: {k: v.detach().cpu().numpy() for k, v in lrn.module[MODULE_ID].unwrapped().state_dict().items()}
        )
        weights = [r.get() if hasattr(r, "get") else r for r in per_learner]
        assert len(weights) == 2
        for k in weights[0]:
            np.testing.assert_array_equal(weights[0][k], weights[1][k])
        # ... and they did learn something
        assert any(not np.array_equal(np.asarray(before[k]), weights[0][k]) for k in weights[0])
    finally:
        algo_.stop()


def test_a2c_checkpoint_restores_and_keeps_training_and_eval_reads_it(local_ray, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_app.config.train_config import TrainConfig
    from rllib_app.outputs.checkpoints import save_checkpoint
    from rllib_app.training.algorithms import MODULE_ID, ToolAgentA2C

    cfg = TrainConfig(algo="a2c", num_env_runners=1, **SMALL)
    algo = _build(cfg)
    try:
        steps = algo.train()["env_runners"]["num_env_steps_sampled_lifetime"]
        path = save_checkpoint(algo, cfg, tmp_path, 1)
        weights = algo.learner_group.get_weights()[MODULE_ID]
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(str(path))
    try:
        assert isinstance(restored, ToolAgentA2C)
        again = restored.learner_group.get_weights()[MODULE_ID]
        for k in weights:
            np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(weights[k]))
        result = restored.train()
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] > steps
    finally:
        restored.stop()
    proc = run_cli("eval", str(tmp_path), "--episodes", "20", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(proc.stdout.strip().splitlines()[-1])["stages"]) == {"0", "1", "2", "2m"}


def test_train_resumes_iterations_env_steps_and_the_progress_teacher(local_ray, tmp_path):
    """``train(resume_from=...)`` (what Tune's trial restore uses) continues the run."""
    import json as _json

    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.loop import train

    seen = []
    cfg = TrainConfig(num_env_runners=0, schedule="progress", progress_episodes=8, max_iterations=3,
                      eval_interval=3, output=str(tmp_path / "a"), **SMALL)
    first = train(cfg, on_iteration=lambda m, c: seen.append((m, c)))
    assert [m["iteration"] for m, _ in seen] == [1, 2, 3] and seen[-1][1] is not None
    assert all(m["score"] >= 0 for m, _ in seen) and "accuracy_2m" in seen[-1][0]
    checkpoint = seen[-1][1]
    saved = _json.loads((checkpoint / "toolagent.json").read_text())["progress"]
    assert saved["iteration"] == 3 and saved["env_steps"] == first["env_steps"]

    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_app.curriculum.callback import find_curriculum_callback

    algo = Algorithm.from_checkpoint(str(checkpoint))
    try:
        teacher = find_curriculum_callback(algo).curriculum.get_state()
    finally:
        algo.stop()
    assert any(teacher["points"][s] for s in ("0", "1", "2"))  # the teacher's statistics came back

    resumed = []
    cfg2 = TrainConfig(**{**cfg.__dict__, "max_iterations": 5, "output": str(tmp_path / "b")})
    second = train(cfg2, resume_from=checkpoint, on_iteration=lambda m, c: resumed.append(m))
    assert [m["iteration"] for m in resumed] == [4, 5]
    assert resumed[0]["env_steps"] > first["env_steps"] and second["iterations"] == 5
    assert resumed[0]["wall_seconds"] >= saved["wall_seconds"]


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
    """SIGTERM mid-run (``ray job stop``, a pre-empted node): checkpoint, summary, exit
    143; ``train --resume`` then continues iteration, env steps and stage."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    flags = ["--num-env-runners", "0", "--num-envs-per-env-runner", "8", "--train-batch-size-per-learner", "128",
             "--hidden-size", "32", "--eval-interval", "1000", "--max-iterations", "1000", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "rllib_app", "train", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("iter    4 |"):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines)[-2000:] + rest[-2000:]
    assert "SIGTERM: stopping after this iteration" in rest
    summary = json.loads((out / "summary.json").read_text())
    stopped_at = summary["iterations"]
    assert summary["stopped_by"] == "SIGTERM" and stopped_at >= 4
    assert (out / "checkpoint").resolve().name == f"iter_{stopped_at:06d}", rest[-3000:]

    resumed = run_cli("train", "--resume", str(out), "--max-iterations", str(stopped_at + 2), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    iters = [line for line in resumed.stdout.splitlines() if line.startswith("iter ")]
    assert [int(line.split("|")[0].split()[1]) for line in iters] == [stopped_at + 1, stopped_at + 2]
    after = json.loads((out / "summary.json").read_text())
    assert after["iterations"] == stopped_at + 2 and after["env_steps"] > summary["env_steps"]
    assert after["stopped_by"] is None and after["config"]["hidden_size"] == 32  # the saved config
    assert after["config"]["max_iterations"] == stopped_at + 2  # the flag typed now
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["iteration"] for r in rows] == list(range(1, stopped_at + 3))  # continued, not restarted


@pytest.mark.parametrize("num_env_runners", [1, 0])
def test_a2c_with_one_step_iterations_repeats_exactly_from_its_seed(local_ray, num_env_runners):
    """--min-iteration-seconds 0: the curriculum moves after a fixed number of batches, so
    the same seed gives the same run on a busy or a quiet machine (0 runners: --algo a2c's
    default, sampling on the driver beside the learner)."""
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.rl.learner_batch import BulkLearnerBatch
    from rllib_app.training.algorithms import MODULE_ID

    cfg = TrainConfig(algo="a2c", num_env_runners=num_env_runners, min_iteration_seconds=0, seed=3, **SMALL)
    runs = []
    for _ in range(2):
        algo = _build(cfg)
        try:
            steps = [algo.train()["env_runners"]["num_env_steps_sampled_lifetime"] for _ in range(3)]
            runs.append((steps, algo.learner_group.get_weights()[MODULE_ID]))
            # every batch was built in bulk (none fell back to RLlib's pipeline)
            bulk = algo.learner_group._learner._learner_connector.connectors[0]
            assert isinstance(bulk, BulkLearnerBatch) and (bulk.bulk_calls, bulk.fallback_calls) == (3, 0)
        finally:
            algo.stop()
    (steps_a, weights_a), (steps_b, weights_b) = runs
    assert steps_a == steps_b and steps_a[0] < steps_a[1] < steps_a[2]
    for k in weights_a:
        np.testing.assert_array_equal(np.asarray(weights_a[k]), np.asarray(weights_b[k]))


def test_overlapped_sampling_learns_each_batch_once_one_update_behind(local_ray):
    """--overlap-sampling: with the weights held still (lr 0) the overlapped run sees the
    very batches of the synchronous one, iteration by iteration; with learning, its first
    update equals the synchronous one's (both sampled by the initial weights) and its
    second differs (sampled by the initial weights again, not the first update's)."""
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.algorithms import MODULE_ID, build_config

    def run(overlap, lr):
        cfg = TrainConfig(algo="a2c", num_env_runners=1, overlap_sampling=overlap, min_iteration_seconds=0, seed=5,
                          **SMALL).validate()
        algo = build_config(cfg).training(lr=lr).build_algo()
        try:
            out = []
            for _ in range(3):
                result = algo.train()
                out.append((result["env_runners"]["num_env_steps_sampled_lifetime"],
                            result["learners"][MODULE_ID]["policy_loss"],
                            {k: np.asarray(v).copy() for k, v in algo.learner_group.get_weights()[MODULE_ID].items()}))
            return out
        finally:
            algo.stop()

    still_sync, still_overlap = run(False, 0.0), run(True, 0.0)
    assert [(n, loss) for n, loss, _ in still_sync] == [(n, loss) for n, loss, _ in still_overlap]
    sync, overlap = run(False, 2e-3), run(True, 2e-3)
    same = [all(np.array_equal(a[2][k], b[2][k]) for k in a[2]) for a, b in zip(sync, overlap)]
    assert same == [True, False, False]


def test_pattern_focus_counts_patterns_and_reaches_a_remote_runners_envs(local_ray):
    """With --pattern-focus, the remote runners count each expression pattern, the driver
    turns the counts into weights, and every env of every runner draws from them."""
    from envs.machine import PATTERN_OFFSET
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.curriculum.callback import _tool_machines, find_curriculum_callback

    cfg = TrainConfig(num_env_runners=1, stage_path="5", pattern_focus=0.5, native_vector_env=True, **SMALL)
    algo = _build(cfg)
    try:
        for _ in range(2):
            algo.train()
        curriculum = find_curriculum_callback(algo).curriculum
        assert len(curriculum._patterns) >= 6  # of the 3 + 9 patterns of 1-2 operators
        assert all(PATTERN_OFFSET[1] <= code < PATTERN_OFFSET[3] for code in curriculum._patterns)
        expected = np.cumsum(np.array(curriculum.pattern_weights()[PATTERN_OFFSET[2]:PATTERN_OFFSET[3]]))
        cdfs = algo.env_runner_group.foreach_env_runner(
            lambda er: [m.pattern_cdfs[2][0].tolist() for m in _tool_machines(er.env)] if er.env else None,
            local_env_runner=False,
        )
        assert len(cdfs) == 1 and all(np.allclose(cdf, expected) for per_runner in cdfs for cdf in per_runner)
        assert not np.allclose(np.diff(expected, prepend=0), 1 / 9)  # the errors moved the weights off uniform
    finally:
        algo.stop()


RESTORE_IN_A_FRESH_PROCESS = """
import json, sys
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import RLModule

assert not any(m.split(".")[0] in ("envs", "models", "rllib_app") for m in sys.modules), "imported first"
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
checkpoint = sys.argv[1]
algo = Algorithm.from_checkpoint(checkpoint)
restored_iteration = algo.training_iteration
result = algo.train()
module = RLModule.from_checkpoint(checkpoint + "/learner_group/learner/rl_module/default_policy")
print(json.dumps({"restored_iteration": restored_iteration, "iteration": result["training_iteration"],
                  "stage": result["curriculum"]["stage"], "module": type(module).__name__,
                  "env_steps": result["env_runners"]["num_env_steps_sampled_lifetime"]}))
algo.stop()
ray.shutdown()
"""


@pytest.mark.integration
def test_a_checkpoint_restores_and_trains_on_in_a_fresh_process_with_nothing_imported_first(local_ray, tmp_path):
    """``Algorithm.from_checkpoint`` and ``RLModule.from_checkpoint`` as a user's own script
    calls them: RLlib rebuilds the env from the checkpoint's config by its gymnasium id."""
    import subprocess
    import sys

    out = tmp_path / "run"
    summary = train_in_process(out, schedule="fixed", fixed_stages="1", max_iterations=1, eval_interval=1,
                               eval_episodes=10, num_envs_per_env_runner=4, hidden_size=16)
    checkpoint = str((out / "checkpoint").resolve())
    proc = subprocess.run([sys.executable, "-c", RESTORE_IN_A_FRESH_PROCESS, checkpoint], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = json.loads(proc.stdout.strip().splitlines()[-1])
    assert restored["restored_iteration"] == summary["iterations"] == 1 and restored["iteration"] == 2
    assert restored["stage"] == 1 and restored["module"] == "ToolAgentGRUModule"
    assert restored["env_steps"] > summary["env_steps"]
