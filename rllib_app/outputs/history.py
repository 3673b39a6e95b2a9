"""A run's training history: ``DIR/metrics.parquet`` and TensorBoard events.

One row per training iteration (``METRICS_SCHEMA``). Parquet files cannot be
appended to, so each write rewrites the whole file through a temporary file and
``os.replace``: a crash mid-write leaves the previous file, never a torn one.
``toolagent train`` writes it with every checkpoint and at the end (rewriting it every
iteration grows costly over a long run). A resumed run keeps the rows before its checkpoint's
iteration and goes on from there.

TensorBoard events go to ``DIR/tensorboard`` (tensorboardX, which Ray's own
``TBXLoggerCallback`` uses too), every numeric column as a scalar against env
steps: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from envs import MEMORY_STAGES, NUM_STAGES
from rllib_app.outputs.checkpoints import versioned, write_parquet_atomic, write_text_atomic

GREEDY_ROWS = tuple(r for s in range(NUM_STAGES) for r in ((str(s), f"{s}m") if s in MEMORY_STAGES else (str(s),)))
LOSSES = ("policy_loss", "vf_loss", "entropy", "entropy_coeff", "sil_policy_loss", "sil_replay_size")

METRICS_SCHEMA = pa.schema(
    [
        ("iteration", pa.int64()),
        ("wall_seconds", pa.float64()),
        ("env_steps", pa.int64()),
        ("steps_per_second", pa.float64()),
        ("stage", pa.int64()),
        ("stage_weights", pa.list_(pa.float64())),
        # env runners Ray recreated after a crash, since this process started
        ("env_runner_restarts", pa.int64()),
        *[(f"sampled_accuracy_{s}", pa.float64()) for s in range(NUM_STAGES)],
        *[(f"greedy_accuracy_{r}", pa.float64()) for r in GREEDY_ROWS],
        *[(name, pa.float64()) for name in LOSSES],
    ]
)


def finite_metric(value) -> float | None:
    """A reported metric as a float, or None where RLlib reported nothing
    (missing, or NaN for an iteration without any values)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metrics_row(
    *, iteration: int, wall_seconds: float, env_steps: int, steps_per_second: float, curriculum: dict,
    learner: dict, greedy: dict[str, float] | None,
) -> dict[str, Any]:
    """One row of ``METRICS_SCHEMA`` from what an iteration reported."""
    row: dict[str, Any] = {
        "iteration": iteration,
        "wall_seconds": round(wall_seconds, 3),
        "env_steps": env_steps,
        "steps_per_second": round(steps_per_second, 1),
        "stage": curriculum.get("stage"),
        "stage_weights": [float(w) for w in curriculum.get("stage_weights", [])] or None,
        "env_runner_restarts": int(curriculum.get("env_runner_restarts", 0) or 0),
    }
    for s in range(NUM_STAGES):
        row[f"sampled_accuracy_{s}"] = finite_metric(curriculum.get(f"stage_{s}_sampled_accuracy"))
    for r in GREEDY_ROWS:
        row[f"greedy_accuracy_{r}"] = finite_metric((greedy or {}).get(r))
    for name in LOSSES:
        row[name] = finite_metric(learner.get(name))
    return row


class MetricsHistory:
    def __init__(self, output: pathlib.Path, *, resume_after: int | None = None):
        self.path = output / "metrics.parquet"
        self.rows: list[dict[str, Any]] = []
        if resume_after is not None and self.path.is_file():
            self.rows = [r for r in pq.read_table(self.path).to_pylist() if r["iteration"] <= resume_after]
        # Opened with the run (importing tensorboardX takes a while), not in its first iteration's time.
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(output / "tensorboard"), flush_secs=10)
        self._written = len(self.rows)

    def append(self, row: dict[str, Any], *, write: bool = True) -> None:
        """Add an iteration's row; ``write=False`` keeps it for the next write (a long
        run's whole table rewritten every iteration costs more than the iteration)."""
        self.rows.append(row)
        self._tensorboard(row)
        if write:
            self.write()

    def write(self) -> None:
        if self._written != len(self.rows):
            write_parquet_atomic(self.path, pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA))
            self._written = len(self.rows)

    def _tensorboard(self, row: dict[str, Any]) -> None:
        step = row["env_steps"]
        for name, value in row.items():
            if name not in ("iteration", "env_steps") and isinstance(value, (int, float)) and not isinstance(value, bool):
                group = "accuracy" if "accuracy" in name else "loss" if name in LOSSES else "run"
                self._tb.add_scalar(f"{group}/{name}", value, global_step=step)

    def close(self) -> None:
        self.write()
        self._tb.close()


#: RLlib's whole result of every iteration, one JSON object a line (what Tune keeps as
#: ``result.json``), beside ``metrics.parquet``'s chosen columns.
RESULT_LOG = "result.jsonl"


def _jsonable(value: Any) -> Any:
    """``json.dumps``' fallback for what an RLlib result holds besides plain Python."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    return str(value)


class ResultLog:
    """``OUTPUT/result.jsonl``: each iteration's RLlib result, appended and flushed as it
    comes (a killed run keeps every iteration it finished). A resumed run drops the lines
    after its checkpoint's iteration first, as ``metrics.parquet`` does."""

    def __init__(self, path: pathlib.Path, *, resume_after: int | None = None):
        self.path = path
        if resume_after is None or not path.is_file():
            kept = []
        else:
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("training_iteration", 0) <= resume_after]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a")

    def append(self, result: dict[str, Any]) -> None:
        self._file.write(json.dumps(versioned(result), default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
