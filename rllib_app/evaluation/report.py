"""``toolagent report DIR``: a one-page Markdown summary of a run, written to ``DIR/report.md``.

    toolagent report runs/train          # runs/train/report.md (and runs/train/curves.png)
    toolagent report runs/train -n 5     # five trajectories per eval row instead of three

The page: one paragraph on the run (algorithm, outcome, env steps, time, promotions),
the final greedy accuracy per eval row (from ``summary.json``), the learning curves
and action-token mix (``DIR/curves.png``, drawn by ``rllib_app.evaluation.plot`` when missing or
older than the run's ``summary.json``/``metrics.parquet``), a few greedy trajectories
per eval row from the final checkpoint (the first ``-n`` episodes ``toolagent eval``
plays, so ``toolagent eval DIR --episodes-out`` finds the same ones), and the run's
config (values that differ from ``toolagent train``'s defaults in bold). Written
atomically; the image is linked relatively, so the directory can be moved or
rendered as is (GitHub, VS Code, ``pandoc report.md``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import TrainConfig
from rllib_app.evaluation.evaluate import TRAJECTORY_HEADERS, evaluate_rows, load_module, readable
from rllib_app.evaluation.plot import DEFAULT_PNG, STAGE_TARGETS, Run, plot_run
from rllib_app.outputs.checkpoints import CheckpointError, resolve_checkpoint, write_text_atomic

REPORT_FILE = "report.md"


def _cell(value: Any) -> str:
    # a '|' inside a cell would end it
    return str(value).replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _what(row: str) -> str:
    return "memory-required" if row.endswith("m") else "uniform"


def overview(run: Run) -> str:
    s = run.summary
    if s.get("target_reached"):
        outcome = f"**Target reached**: every eval row at or above {run.target_accuracy:g}"
    else:
        outcome = f"**Target not reached** (target: every eval row at or above {run.target_accuracy:g})"
        if s.get("stopped_by"):
            outcome += f"; stopped by {s['stopped_by']}"
    if s.get("status") in ("running", "failed"):
        # written at its last checkpoint: the run is still going, or was killed or failed there
        outcome += (f"; **{s['status']}** (summary.json as of its last checkpoint: the run was still going, "
                    "or it was killed or failed after it)" if s["status"] == "running" else f"; **{s['status']}**")
    numbers = []
    if s.get("iterations") is not None:
        numbers.append(f"{s['iterations']} iterations")
    if isinstance(s.get("env_steps"), int):
        numbers.append(f"{s['env_steps']:,} env steps")
    if s.get("wall_seconds") is not None:
        numbers.append(f"{s['wall_seconds']:.0f} s")
    promotions = ", ".join(f"stage {p['stage']} at iteration {p['iteration']}" for p in s.get("promotions") or [])
    text = (
        f"`toolagent train` run in `{run.path}`: {s.get('algo', '?')}, {s.get('variant', '?')} variant, "
        f"seed {s.get('seed', '?')}, stages {', '.join(map(str, run.stages))}. {outcome}, after {', '.join(numbers)}."
    )
    if promotions:
        text += f" Promotions: {promotions}."
    return text


def accuracy_table(run: Run) -> str:
    accuracy = run.summary.get("accuracy") or {}
    if not accuracy:
        return "The run ended before its first evaluation: no greedy accuracy yet."
    mean_return = run.summary.get("mean_return") or {}
    rows = []
    for row in sorted(accuracy, key=lambda r: (int(r.rstrip("m")), r)):  # 0, 1, 2, 2m
        acc = accuracy[row]
        ret = mean_return.get(row) if isinstance(mean_return, dict) else None
        stage = int(row.rstrip("m"))
        rows.append([
            f"**{row}**", _what(row), f"`{STAGE_TARGETS.get(stage, '?')}`", f"{acc:.3f}",
            "-" if ret is None else f"{ret:.3f}", "yes" if acc >= run.target_accuracy else "no",
        ])
    episodes = (run.summary.get("config") or {}).get("eval_episodes")
    note = (f"Greedy exact-answer accuracy on {episodes:,} fresh episodes per row" if isinstance(episodes, int)
            else "Greedy exact-answer accuracy per row")
    note += (", as `toolagent eval` measures it; a row ending in `m` (`2m`) is that memory stage on its "
             "memory-required contexts, the ones no program without `STO`/`RCL` solves. Mean return is on the "
             "unshaped task (the `seed` variant pays its own reward, one stage behind).")
    return markdown_table(
        ["row", "contexts", "target", "accuracy", "mean return", f"≥ {run.target_accuracy:g}"], rows
    ) + "\n\n" + note


def trajectories(run: Run, n: int) -> str:
    try:
        checkpoint, _ = resolve_checkpoint(run.path)
    except CheckpointError:
        return "No checkpoint in the run directory: no trajectories."
    module, info = load_module(run.path)
    rows = evaluate_rows(module, run.stages, n, env_config=info.get("env_config"), seed=0)
    iteration = (info.get("progress") or {}).get("iteration")
    which = f"iteration {iteration}" if iteration is not None else f"`{checkpoint.name}`"
    parts = [
        f"Greedy actions of the final checkpoint ({which}) on the first {n} episodes of each row "
        f"`toolagent eval` plays (`toolagent explain {run.path} --stage S -n 10` shows more)."
    ]
    for row, episodes in rows.items():
        stage = int(row.rstrip("m"))
        correct = sum(e.correct for e in episodes)
        parts.append(
            f"**Row {row}**: stage {stage}, `{STAGE_TARGETS.get(stage, '?')}`, {_what(row)} contexts "
            f"({correct} of {len(episodes)} correct)."
        )
        table = [readable(e.record()) for e in episodes]
        parts.append(markdown_table(list(TRAJECTORY_HEADERS), [[r[h] for h in TRAJECTORY_HEADERS] for r in table]))
    return "\n\n".join(parts)


def config_table(run: Run) -> str:
    config = run.summary.get("config") or {}
    if not config:
        return "summary.json has no config."
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    cells = []
    for name, value in config.items():
        # floats Tune sampled (0.1482974676811959) read better cut to 4 significant digits
        shown = f"`{value:.4g}`" if isinstance(value, float) else f"`{value}`"
        cells.append([f"`{name}`", f"**{shown}**" if name in defaults and value != defaults[name] else shown])
    # two settings per line: half the height of a one-column table
    half = (len(cells) + 1) // 2
    left, right = cells[:half], cells[half:] + [["", ""]] * (2 * half - len(cells))
    table = markdown_table(["setting", "value", "setting", "value"], [a + b for a, b in zip(left, right)])
    return table + "\n\nIn bold: values that differ from `toolagent train`'s defaults."


def curves_image(run: Run) -> pathlib.Path:
    """``DIR/curves.png``, drawn if missing or older than the data it shows."""
    png = run.path / DEFAULT_PNG
    sources = [p for p in (run.path / "summary.json", run.path / "metrics.parquet") if p.is_file()]
    if not png.is_file() or any(p.stat().st_mtime > png.stat().st_mtime for p in sources):
        plot_run(run, png)
    return png


def build_report(run: Run, *, trajectories_per_row: int = 3) -> str:
    png = curves_image(run)
    sections = [
        f"# Run report: {run.path.resolve().name}",
        overview(run),
        "## Final greedy accuracy",
        accuracy_table(run),
        "## Learning curves and action-token mix",
        f"![learning curves and action-token mix]({png.name})",
        "Left: sampled accuracy during training (lines, on the training contexts), greedy accuracy on the "
        "evaluation iterations (dots; diamonds: memory-required contexts), promotions (dashed). Right: the tool "
        "tokens the final checkpoint emits per greedy episode, per stage.",
        "## What the agent does",
        trajectories(run, trajectories_per_row),
        "## Config",
        config_table(run),
    ]
    return "\n\n".join(sections) + "\n"


def write_report(run: Run, *, trajectories_per_row: int = 3) -> pathlib.Path:
    out = run.path / REPORT_FILE
    text = build_report(run, trajectories_per_row=trajectories_per_row)
    try:
        write_text_atomic(out, text)
    except OSError as err:
        raise UsageError(f"cannot write {str(out)!r} ({err.strerror or err})") from None
    return out
