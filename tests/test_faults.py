"""Faults: a killed env runner, a process killed mid-save, how many checkpoints are kept.

The unit tests use a stand-in algorithm (no Ray); the integration tests kill real
processes: an env runner actor of a real RLlib algorithm, and a real
``python -m rllib_app train`` in the middle of writing a checkpoint.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, SMALL, run_cli
from envs import NUM_STAGES
from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import TrainConfig
from rllib_app.outputs.checkpoints import (
    KILL_IN_SAVE_ENV,
    MODULE_SUBDIR,
    CheckpointError,
    best_info,
    discard_best,
    keep_best,
    resolve_checkpoint,
    save_checkpoint,
)


class FakeAlgo:
    """Writes what ``resolve_checkpoint`` looks for, like ``Algorithm.save_to_path``."""

    def save_to_path(self, path):
        module = pathlib.Path(path) / MODULE_SUBDIR
        module.mkdir(parents=True)
        (module / "class_and_ctor_args.pkl").write_bytes(b"x")


def _iters(out: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


# -- --keep-checkpoints, leftovers of an interrupted save (no Ray) ----------------------------------
def test_keep_checkpoints_is_a_validated_train_flag(tmp_path):
    assert TrainConfig().keep_checkpoints == 2
    with pytest.raises(UsageError, match="--keep-checkpoints must be >= 1, got 0"):
        TrainConfig(keep_checkpoints=0).validate()
    import argparse

    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    assert TrainConfig.from_namespace(parser.parse_args(["--keep-checkpoints", "5"])).keep_checkpoints == 5
    out = tmp_path / "run"
    proc = run_cli("train", "--keep-checkpoints", "0", "--output", str(out), timeout=120)
    assert proc.returncode == 2 and "--keep-checkpoints must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_save_keeps_the_latest_checkpoints(tmp_path, keep):
    cfg = TrainConfig()
    for iteration in range(1, 6):
        path = save_checkpoint(FakeAlgo(), cfg, tmp_path, iteration, keep=keep)
        assert (tmp_path / "checkpoint").resolve() == path == resolve_checkpoint(tmp_path)[0]
    assert _iters(tmp_path) == [f"iter_{i:06d}" for i in range(6 - keep, 6)]


def test_an_interrupted_save_never_looks_valid_and_the_next_save_cleans_it(tmp_path):
    cfg = TrainConfig()
    save_checkpoint(FakeAlgo(), cfg, tmp_path, 1)
    # what a save killed before its rename leaves: complete-looking, but temporary
    half = tmp_path / "checkpoints" / ".tmp-iter_000007"
    FakeAlgo().save_to_path(half)
    with pytest.raises(CheckpointError, match="unfinished checkpoint"):
        resolve_checkpoint(half)
    assert resolve_checkpoint(tmp_path)[0].name == "iter_000001"
    save_checkpoint(FakeAlgo(), cfg, tmp_path, 2)
    assert _iters(tmp_path) == ["iter_000001", "iter_000002"]


def test_resuming_from_an_earlier_checkpoint_never_deletes_the_current_one(tmp_path):
    """A later iter_N left over (its save was killed before the symlink moved, or the
    user resumed from an older checkpoint) must not push out the one just written."""
    cfg = TrainConfig()
    save_checkpoint(FakeAlgo(), cfg, tmp_path, 10)
    path = save_checkpoint(FakeAlgo(), cfg, tmp_path, 6, keep=1)
    assert resolve_checkpoint(tmp_path)[0] == path and path.is_dir()
    assert _iters(tmp_path) == ["iter_000006", "iter_000010"]


def test_the_best_checkpoint_is_the_best_evaluated_one_and_outlives_rotation(tmp_path):
    """Ranked by the worst row, then the mean; a tie keeps the earlier one; rotation of
    iter_N never touches it; a save interrupted before its rename leaves the old best."""
    cfg = TrainConfig()
    evals = [(1, {"0": 0.90, "1": 0.50}), (2, {"0": 1.00, "1": 0.80}), (3, {"0": 0.81, "1": 0.80}),
             (4, {"0": 0.70, "1": 0.99}), (5, {"0": 1.00, "1": 0.80})]
    kept = []
    for iteration, greedy in evals:
        path = save_checkpoint(FakeAlgo(), cfg, tmp_path, iteration, progress={"greedy": greedy}, keep=1)
        if keep_best(tmp_path, path, greedy):
            kept.append(iteration)
    assert kept == [1, 2]  # 3: same worst row, lower mean; 4: worse worst row; 5: a tie
    assert best_info(tmp_path) == {"iteration": 2, "accuracy": {"0": 1.00, "1": 0.80}}
    assert _iters(tmp_path) == ["best", "iter_000005"]
    assert resolve_checkpoint(tmp_path / "checkpoints" / "best")[0].name == "best"
    # other rows (e.g. a resume that trains more stages): the new evaluation replaces it
    path = save_checkpoint(FakeAlgo(), cfg, tmp_path, 6, progress={"greedy": {"0": 0.1}}, keep=1)
    assert keep_best(tmp_path, path, {"0": 0.1}) and best_info(tmp_path)["iteration"] == 6
    discard_best(tmp_path)
    assert best_info(tmp_path) is None


def test_the_kill_hook_is_inert_unless_its_save_comes(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_IN_SAVE_ENV, "1000000")
    save_checkpoint(FakeAlgo(), TrainConfig(), tmp_path, 1)
    assert _iters(tmp_path) == ["iter_000001"]


# -- bad input: one line, exit code 2, nothing written ----------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
        ({"target_accuracy": float("nan")}, "--target-accuracy must be a finite number, got nan"),
        ({"max_minutes": float("inf")}, "--max-minutes must be a finite number, got inf"),
        ({"num_gpus_per_learner": float("nan")}, "--num-gpus-per-learner must be a finite number"),
        ({"keep_checkpoints": 0}, "--keep-checkpoints must be >= 1, got 0"),
        ({"entropy_schedule": "0:0.05,x"}, "--entropy-schedule '0:0.05,x': 'x' is not STEPS:VALUE"),
        ({"entropy_schedule": "100:0.05"}, "must start at 0 env steps and increase"),
        ({"entropy_schedule": "0:0.05,10:0.02,10:0.01"}, "must start at 0 env steps and increase"),
        ({"entropy_schedule": "0:nan"}, "values must be finite and >= 0, got nan"),
        ({"entropy_schedule": "0:0.05,5:-1"}, "values must be finite and >= 0, got -1.0"),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(overrides, expected):
    with pytest.raises(UsageError, match=expected):
        TrainConfig(**overrides).validate()


def test_an_entropy_schedule_becomes_rllibs_schedule_and_reaches_the_learner():
    assert TrainConfig(algo="impala").entropy() == 0.03
    cfg = TrainConfig(algo="impala", entropy_schedule="0:0.05,300000:0.01").validate()
    assert cfg.entropy() == [[0, 0.05], [300000, 0.01]]
    from rllib_app.training.algorithms import build_config

    assert build_config(cfg).entropy_coeff == [[0, 0.05], [300000, 0.01]]
    # one pair: held from the start (RLlib's scheduler refuses a one-point schedule)
    constant = TrainConfig(entropy_schedule="0:0.06").validate()
    assert constant.entropy() == 0.06 and build_config(constant).entropy_coeff == 0.06


def test_an_output_that_cannot_be_a_directory_is_refused_before_anything_starts(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is a file; it must name a directory"):
        TrainConfig(output=str(a_file)).validate()
    with pytest.raises(UsageError, match="is not a writable directory"):
        TrainConfig(output=str(a_file / "run")).validate()
    TrainConfig(output=str(tmp_path / "new" / "run")).validate()  # made when the run starts
    assert not (tmp_path / "new").exists()
    proc = run_cli("train", "--output", str(a_file / "run"), timeout=120)
    assert proc.returncode == 2 and "is not a writable directory" in proc.stderr and "Traceback" not in proc.stderr


def test_a_damaged_run_info_is_a_checkpoint_error_not_a_traceback(tmp_path):
    from rllib_app.outputs.checkpoints import RUN_INFO_FILE, read_run_info

    path = save_checkpoint(FakeAlgo(), TrainConfig(), tmp_path, 1)
    assert read_run_info(path)["progress"]["iteration"] == 1
    (path / RUN_INFO_FILE).write_text('{"env_config": {"variant": ')  # cut short
    with pytest.raises(CheckpointError, match="is damaged"):
        read_run_info(path)
    (path / RUN_INFO_FILE).write_text('{"env_config": "exact"}')
    with pytest.raises(CheckpointError, match="is damaged"):
        read_run_info(path)
    proc = run_cli("train", "--resume", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "summary.json").exists()


# -- real processes, killed -------------------------------------------------------------------------
def _env_weights(algo):
    """Every env's stage weights, on every env runner that has envs (the local one too)."""
    from rllib_app.curriculum.callback import _tool_machines

    per_runner = algo.env_runner_group.foreach_env_runner(
        lambda er: [list(m.stage_weights) for m in _tool_machines(er.env)] if er.env else None,
        local_env_runner=True,
    )
    return [w for w in per_runner if w is not None]


def _pids(algo) -> list[int]:
    return algo.env_runner_group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)


@pytest.mark.integration
@pytest.mark.parametrize("num_env_runners", [1, 2])
def test_a_killed_env_runner_comes_back_with_the_stage_and_training_goes_on(local_ray, num_env_runners):
    """SIGKILL an env runner mid-run: Ray recreates it, training goes on (with one
    runner IMPALA samples on the driver meanwhile), the new runner's envs get the
    current stage, and the restart shows in the iteration's result."""
    from rllib_app.training.algorithms import build_config

    cfg = TrainConfig(algo="impala", num_env_runners=num_env_runners, schedule="fixed", fixed_stages="0,2",
                      iterations_per_stage_entry=1, **SMALL).validate()
    stage_2 = [0.2, 0, 0.8] + [0] * (NUM_STAGES - 3)  # not what a fresh runner's envs start with ([1, 0, ...])
    algo = build_config(cfg).build_algo()
    try:
        result = algo.train()
        assert result["curriculum"]["stage"] == 2 and result["curriculum"]["env_runner_restarts"] == 0
        assert all(np.allclose(env, stage_2) for w in _env_weights(algo) for env in w)
        pids = _pids(algo)
        assert len(pids) == num_env_runners
        steps_before = result["env_runners"]["num_env_steps_sampled_lifetime"]

        os.kill(pids[-1], signal.SIGKILL)
        deadline = time.time() + 90
        while result["curriculum"]["env_runner_restarts"] == 0:
            assert time.time() < deadline, f"env runner not recreated in 90 s: {result.get('fault_tolerance')}"
            result = algo.train()
        result = algo.train()  # one iteration with the recreated runner sampling

        assert result["curriculum"]["env_runner_restarts"] == 1
        assert result["fault_tolerance"]["num_remote_worker_restarts"] == 1
        assert result["fault_tolerance"]["num_healthy_workers"] == num_env_runners
        assert result["curriculum"]["stage"] == 2
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] > steps_before
        new_pids = _pids(algo)
        assert len(new_pids) == num_env_runners and pids[-1] not in new_pids
        weights = _env_weights(algo)
        # 2 runners, or 1 runner and the driver's envs (IMPALA's fallback while it restarts)
        assert len(weights) == 2
        assert all(np.allclose(env, stage_2) for w in weights for env in w), weights
    finally:
        algo.stop()


@pytest.mark.integration
def test_killed_while_saving_keeps_the_previous_checkpoint_and_resume_goes_on(tmp_path):
    """``train`` SIGKILLed in its 2nd save, after the temporary directory is written and
    before the rename: the 1st checkpoint stays the valid one, evaluates and resumes;
    the half-written one is never taken for a checkpoint and is cleaned up."""
    out = tmp_path / "run"
    flags = ["--num-env-runners", "0", "--num-envs-per-env-runner", "4", "--train-batch-size-per-learner", "128",
             "--hidden-size", "32", "--eval-interval", "1", "--eval-episodes", "20", "--output", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllib_app", "train", *flags, "--max-iterations", "5"], cwd=ROOT,
        env={**os.environ, KILL_IN_SAVE_ENV: "2"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: the embedded Ray it leaves behind goes with it below
    )
    try:
        log, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert "eval @ iter 2" in log and "eval @ iter 3" not in log
    assert (out / "checkpoint").resolve().name == "iter_000001"
    assert _iters(out) == [".tmp-iter_000002", "best", "iter_000001"]  # best: iteration 1, the only one evaluated
    # the live outputs, as of the last checkpoint: plot, report and eval read the killed run
    live = json.loads((out / "summary.json").read_text())
    assert (live["status"], live["iterations"], pathlib.Path(live["checkpoint"]).name) == ("running", 1, "iter_000001")
    results = [json.loads(line) for line in (out / "result.jsonl").read_text().splitlines()]
    assert [r["training_iteration"] for r in results] == [1, 2]  # every iteration it finished, RLlib's whole result
    assert all(r["schema_version"] == 1 and "env_runners" in r and "learners" in r for r in results)
    for command, written in (("plot", "curves.png"), ("report", "report.md")):
        drawn = run_cli(command, str(out), timeout=300)
        assert drawn.returncode == 0, drawn.stderr[-3000:]
        assert (out / written).is_file()
    assert "**running**" in (out / "report.md").read_text()
    with pytest.raises(CheckpointError, match="unfinished checkpoint"):
        resolve_checkpoint(out / "checkpoints" / ".tmp-iter_000002")
    assert resolve_checkpoint(out)[0].name == "iter_000001"

    evaluated = run_cli("eval", str(out), "--episodes", "20", "--json", timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert set(json.loads(evaluated.stdout.strip().splitlines()[-1])["stages"]) == {"0", "1", "2", "2m"}

    resumed = run_cli("train", "--resume", str(out), "--max-iterations", "2", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    iters = [line for line in resumed.stdout.splitlines() if line.startswith("iter ")]
    assert [int(line.split("|")[0].split()[1]) for line in iters] == [2]
    assert _iters(out) == ["best", "iter_000001", "iter_000002"]  # and no .tmp-* left
    assert (out / "checkpoint").resolve().name == "iter_000002"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["status"] == "finished"
    # the killed run's line for iteration 2 gave way to the resumed run's
    results = [json.loads(line) for line in (out / "result.jsonl").read_text().splitlines()]
    assert [r["training_iteration"] for r in results] == [1, 2]
    assert summary["best_checkpoint"]["iteration"] in (1, 2)  # the resumed run kept the best so far or beat it
