"""``toolagent tune``: search-space checks, the results table, and a real sweep."""

import csv
import json
import pathlib

import pytest

from conftest import run_cli
from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import TrainConfig
from rllib_app.experiments.tune import DEFAULT_SEARCH_SPACE, sort_rows, sweep_table, validate_search_space


def test_default_search_space_is_valid_and_covers_the_schedules():
    validate_search_space(DEFAULT_SEARCH_SPACE, TrainConfig())
    assert DEFAULT_SEARCH_SPACE["schedule"] == {"grid": ["fixed", "threshold", "progress"]}
    assert {"promotion_accuracy", "replay_probability", "lr"} <= set(DEFAULT_SEARCH_SPACE)


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"lrr": 0.1}, "unknown option 'lrr'"),
        ({"output": "x"}, "unknown option 'output'"),  # the sweep owns it
        ({"num_env_runners": {"choice": [0, 2]}}, "unknown option 'num_env_runners'"),  # resources are per sweep
        ({"lr": {"choice": ["fast"]}}, "lr wants float values, got 'fast'"),
        ({"hidden_size": {"choice": [16.5]}}, "hidden_size wants int values, got 16.5"),
        ({"lr": {"uniform": [0.01, 0.001]}}, "uniform range [0.01, 0.001] is empty"),
        ({"lr": {"randint": [1, 1]}}, "randint range [1, 1] is empty"),
        ({"lr": {"loguniform": [0, 0.1]}}, "loguniform needs low > 0"),
        ({"lr": {"choice": []}}, "choice needs a non-empty list"),
        ({"lr": {"between": [1, 2]}}, "must be a value or one of"),
        ({"schedule": {"grid": ["fixed", "bogus"]}}, "--schedule 'bogus' is not one of"),
        ({"replay_probability": {"uniform": [0.1, 1.5]}}, "--replay-probability must be <= 0.99, got 1.5"),
    ],
)
def test_bad_search_spaces_are_refused_with_one_clear_error(space, expected):
    with pytest.raises(UsageError) as err:
        validate_search_space(space, TrainConfig())
    assert expected in str(err.value)


def test_a_bad_search_space_file_stops_the_sweep_before_any_trial(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("schedule: {grid: [fixed, progress]}\npromotion_accuracy: {uniform: [0.9, 0.8]}\n")
    out = tmp_path / "sweep"
    proc = run_cli("tune", "--search-space", str(space), "--output", str(out), timeout=120)
    assert proc.returncode == 2
    assert "promotion_accuracy: uniform range [0.9, 0.8] is empty" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    space.write_text("lr: [unclosed\n")
    proc = run_cli("tune", "--search-space", str(space), "--output", str(out), timeout=120)
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr and not out.exists()


def test_rows_sort_solved_first_by_env_steps_then_by_progress():
    rows = [
        {"trial": "a", "solved": False, "stages_solved": 2, "env_steps_to_solve": None, "score": 2.1},
        {"trial": "b", "solved": True, "stages_solved": 4, "env_steps_to_solve": 900_000, "score": 3.0},
        {"trial": "c", "solved": False, "stages_solved": 2, "env_steps_to_solve": None, "score": 2.5},
        {"trial": "d", "solved": True, "stages_solved": 4, "env_steps_to_solve": 500_000, "score": 3.0},
        {"trial": "e", "solved": False, "stages_solved": 3, "env_steps_to_solve": None, "score": 2.0},
    ]
    assert [r["trial"] for r in sort_rows(rows)] == ["d", "b", "e", "c", "a"]
    lines = sweep_table(sort_rows(rows)).splitlines()
    assert lines[0].split()[0] == "trial" and lines[1].split()[0] == "d" and len(lines) == 6


def test_a_real_sweep_writes_its_table_and_resumes(tmp_path):
    """2 trials (threshold, progress) x 2 iterations on a real local Ray."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"schedule": {"grid": ["threshold", "progress"]}, "lr": {"loguniform": [1e-3, 4e-3]}}))
    out = tmp_path / "sweep"
    flags = ["--output", str(out), "--max-concurrent", "2", "--max-minutes", "8"]
    proc = run_cli(
        "tune", "--search-space", str(space), *flags,
        "--num-env-runners", "0", "--max-iterations", "2", "--eval-interval", "1", "--eval-episodes", "20",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["schedule"] for r in rows) == ["progress", "threshold"]
    for r in rows:
        assert r["iterations"] == 2 and r["env_steps"] > 0 and r["error"] is None
        assert 1e-3 <= r["lr"] <= 4e-3
        assert set(r) >= {"accuracy_0", "accuracy_1", "accuracy_2", "accuracy_2m", "stages_solved", "score"}
        assert 0 <= r["accuracy_2m"] <= 1
        best = pathlib.Path(r["best_checkpoint"])
        info = json.loads((best / "toolagent.json").read_text())
        assert info["train_config"]["schedule"] == r["schedule"]
        assert info["progress"]["iteration"] in (1, 2)
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["trial"] for r in csv_rows] == [r["trial"] for r in rows]
    # the printed table is the same, best first
    assert rows[0]["trial"] in proc.stdout and "results.parquet" in proc.stdout

    # Starting again in the same directory is refused; --resume picks the sweep up (here:
    # both trials already finished, so the same table comes back).
    again = run_cli("tune", *flags, timeout=120)
    assert again.returncode == 2 and "already holds a sweep; use --resume" in again.stderr
    resumed = run_cli("tune", "--resume", *flags, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(r["trial"] for r in pq.read_table(out / "results.parquet").to_pylist()) == sorted(
        r["trial"] for r in rows
    )
