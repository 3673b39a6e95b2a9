"""metrics.parquet: one row per iteration, rewritten whole at each write, continued on resume."""

import pyarrow.parquet as pq

from rllib_app.outputs.history import METRICS_SCHEMA, MetricsHistory, metrics_row


def _row(i, greedy=None, restarts=0):
    curriculum = {"stage": 2, "stage_weights": [0.1, 0.1, 0.8, 0, 0], "stage_0_sampled_accuracy": 1.0,
                  "stage_2_sampled_accuracy": float("nan"), "env_runner_restarts": restarts}
    return metrics_row(iteration=i, wall_seconds=1.5 * i, env_steps=1000 * i, steps_per_second=666.6,
                       curriculum=curriculum, learner={"vf_loss": 0.25, "entropy": "n/a"}, greedy=greedy)


def test_rows_follow_the_schema_and_nan_becomes_null(tmp_path):
    history = MetricsHistory(tmp_path)
    history.append(_row(1))
    history.append(_row(2, greedy={"2": 0.5, "2m": 0.25}, restarts=1))
    history.close()
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    first, second = table.to_pylist()
    assert first["sampled_accuracy_2"] is None and first["sampled_accuracy_0"] == 1.0
    assert first["entropy"] is None and first["vf_loss"] == 0.25 and first["greedy_accuracy_2"] is None
    assert second["greedy_accuracy_2m"] == 0.25 and second["env_runner_restarts"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    history = MetricsHistory(tmp_path)
    for i in range(1, 6):
        history.append(_row(i))
    history.close()
    resumed = MetricsHistory(tmp_path, resume_after=3)  # the checkpoint was at iteration 3
    resumed.append(_row(4))
    resumed.close()
    assert [r["iteration"] for r in pq.read_table(tmp_path / "metrics.parquet").to_pylist()] == [1, 2, 3, 4]


def test_rows_kept_for_the_next_write_reach_the_file_by_close(tmp_path):
    history = MetricsHistory(tmp_path)
    history.append(_row(1), write=False)
    assert not (tmp_path / "metrics.parquet").exists()
    history.append(_row(2))  # a checkpoint's iteration writes what is kept too
    assert [r["iteration"] for r in pq.read_table(tmp_path / "metrics.parquet").to_pylist()] == [1, 2]
    history.append(_row(3), write=False)
    history.close()
    assert [r["iteration"] for r in pq.read_table(tmp_path / "metrics.parquet").to_pylist()] == [1, 2, 3]
