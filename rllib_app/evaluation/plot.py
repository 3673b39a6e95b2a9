"""``toolagent plot DIR``: what a run learned, as one PNG (matplotlib's Agg backend: no display).

    toolagent plot runs/train                     # writes runs/train/curves.png
    toolagent plot runs/train --out seed0.png --action-episodes 500

Left, the learning curves against env steps: each trained stage's *sampled* accuracy
during training (a line; the curriculum's window over the episodes the env runners
played), its *greedy* accuracy on the evaluation iterations (dots; hollow diamonds for
a memory stage's memory-required contexts, "2m"), the target accuracy (dotted), and
the curriculum's promotions (dashed vertical lines). Right, the action-token mix: the
tool tokens ``MUL ADD SUB STO RCL ANS`` the final checkpoint emits per episode, on
``--action-episodes`` fresh greedy episodes of each trained stage (stacked bars, the
same episodes as the first N of ``toolagent eval --episodes N``), with each stage's
most common program written under the plot. A solved stage 2 reads as 9 tokens an
episode with one ``STO`` and one ``RCL``; a policy on a memory-free shortcut has none.

Input: ``DIR/summary.json`` (required: written at a run's first checkpoint with
``"status": "running"`` and again at every checkpoint and at the end, so a run still
going or killed plots as far as it got), ``DIR/metrics.parquet`` (one row per iteration,
``rllib_app.outputs.history.METRICS_SCHEMA``) and ``DIR/checkpoint``. A run from before
``metrics.parquet`` existed still plots: its final greedy accuracy only, with a note
on the figure saying why there are no curves; a run without a checkpoint gets a note
instead of the token mix. The PNG is written atomically (temporary file, then
``os.replace``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from envs import ACTION_NAMES, MEMORY_STAGES, NUM_STAGES, SPEC_STAGES
from envs.machine import EXPRESSION_OPERATORS, program_text
from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import TrainConfig
from rllib_app.evaluation.evaluate import EVAL_SEED_OFFSET, load_module, rollout
from rllib_app.outputs.checkpoints import CheckpointError, resolve_checkpoint
from rllib_app.outputs.history import GREEDY_ROWS

#: The stated target of each stage, for legends and headings.
STAGE_TARGETS = {0: "a·b+c", 1: "(a·b+c)−d", 2: "(a·b+c)−(d·e)", 3: "a−b·c", 4: "a·b−c·d", 10: "a+b·c", 11: "a·b+c·d",
                 12: "a+b−c·d", 13: "a−b+c·d",
                 **{s: f"{'-'.join(map(str, (k[0], k[-1]) if len(k) > 1 else k))} operators"
                    for s, k in EXPRESSION_OPERATORS.items()}}
#: Stage colours (matplotlib's tab10, then four of tab20: one per stage) and token colours
#: (Set2: a different palette, so a token is never mistaken for a stage).
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896")
TOKEN_COLORS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#b3b3b3")
DEFAULT_PNG = "curves.png"
assert len(STAGE_COLORS) == len(STAGE_TARGETS) == NUM_STAGES


@dataclasses.dataclass
class Run:
    """A ``toolagent train`` output directory, read."""

    path: pathlib.Path
    summary: dict[str, Any]
    #: metrics.parquet as {column: values}, or None when the run has none
    metrics: dict[str, list] | None
    #: the stages the run trained (and evaluated), ascending
    stages: tuple[int, ...]

    @property
    def target_accuracy(self) -> float:
        return float(self.summary.get("config", {}).get("target_accuracy", 0.99))


def trained_stages(summary: dict[str, Any]) -> tuple[int, ...]:
    """The stages a run trained: from its config; else the rows it evaluated."""
    config = summary.get("config") or {}
    try:
        return TrainConfig.from_saved(config).trained_stages()
    except (TypeError, ValueError, UsageError):
        evaluated = sorted({int(row.rstrip("m")) for row in summary.get("accuracy") or {}})
        return tuple(evaluated) or SPEC_STAGES


def load_run(run_dir: str | pathlib.Path) -> Run:
    """Read ``run_dir``; ``UsageError`` (one line) when it is not a run directory."""
    path = pathlib.Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist")
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        raise UsageError(
            f"{str(run_dir)!r} has no summary.json; pass a directory written by 'toolagent train --output DIR' "
            "(the summary is written at the run's first checkpoint)"
        )
    try:
        summary = json.loads(summary_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{str(summary_file)!r} is not JSON ({err})") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{str(summary_file)!r} is not a toolagent summary (not a JSON object)")
    metrics = None
    if (path / "metrics.parquet").is_file():
        try:
            metrics = pq.read_table(path / "metrics.parquet").to_pydict()
        except (pa.ArrowException, OSError) as err:
            raise UsageError(f"{str(path / 'metrics.parquet')!r} is not readable ({err})") from None
    return Run(path=path, summary=summary, metrics=metrics, stages=trained_stages(summary))


def eval_rows(stages: tuple[int, ...]) -> list[str]:
    """The rows ``toolagent eval`` reports for these stages ("0", "1", "2", "2m")."""
    return [r for r in GREEDY_ROWS if int(r.rstrip("m")) in stages]


# -- the action-token mix ------------------------------------------------------------------------
def action_mix(run: Run, episodes: int = 200) -> dict[int, dict[str, Any]] | None:
    """Per trained stage, on ``episodes`` greedy episodes of the run's checkpoint:
    ``{"tokens": {name: count}, "episodes", "accuracy", "programs": Counter}``.
    None when the run has no checkpoint."""
    try:
        resolve_checkpoint(run.path)
    except CheckpointError:
        return None
    module, info = load_module(run.path)
    mix = {}
    for stage in run.stages:
        # the seeds of 'toolagent eval's uniform row of this stage
        eps = rollout(module, stage, episodes, env_config=info.get("env_config"), seed=EVAL_SEED_OFFSET * (stage + 1))
        tokens = Counter(ACTION_NAMES[a] for e in eps for a in e.actions)
        mix[stage] = {
            "tokens": {name: tokens.get(name, 0) for name in ACTION_NAMES},
            "episodes": len(eps),
            "accuracy": sum(e.correct for e in eps) / len(eps),
            "programs": Counter(program_text(e.actions) for e in eps),
        }
    return mix


# -- the figure ----------------------------------------------------------------------------------
def _steps_label(x: float, _pos=None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    return f"{x / 1e3:g}k" if abs(x) >= 1e3 else f"{x:g}"


def _none_to_nan(values: list) -> list[float]:
    # matplotlib breaks a line at NaN: a stage with no data yet has no line there
    return [math.nan if v is None else float(v) for v in values]


def _title(run: Run) -> str:
    s = run.summary
    if s.get("target_reached"):
        outcome = f"every row reached {run.target_accuracy:g}"
    elif s.get("stopped_by"):
        outcome = f"stopped by {s['stopped_by']}"
    elif s.get("status") in ("running", "failed"):
        outcome = "as of its last checkpoint (running or killed)" if s["status"] == "running" else "failed"
    else:
        outcome = "target not reached"
    steps = s.get("env_steps")
    wall = s.get("wall_seconds")
    parts = [
        f"{run.path.resolve().name}: {s.get('algo', '?')}, {s.get('variant', '?')} variant, seed {s.get('seed', '?')}",
        outcome,
        f"{steps:,} env steps" if isinstance(steps, int) else None,
        f"{wall:.0f} s" if isinstance(wall, (int, float)) else None,
    ]
    return " · ".join(p for p in parts if p)


def _draw_curves(ax, run: Run) -> None:
    from matplotlib.lines import Line2D

    summary, metrics = run.summary, run.metrics
    target = run.target_accuracy
    ax.axhline(target, color="0.4", lw=0.8, ls=":")
    if metrics is not None and metrics.get("env_steps"):
        steps = metrics["env_steps"]
        for s in run.stages:
            ax.plot(steps, _none_to_nan(metrics.get(f"sampled_accuracy_{s}", [None] * len(steps))),
                    color=STAGE_COLORS[s], lw=1.6, alpha=0.85)
        for row in eval_rows(run.stages):
            points = [(x, y) for x, y in zip(steps, metrics.get(f"greedy_accuracy_{row}", [])) if y is not None]
            if points:
                _greedy_marker(ax, row, *zip(*points))
        # a promotion at iteration i: the curriculum trained the new stage from the next one on
        at = dict(zip(metrics["iteration"], steps))
        for p in summary.get("promotions") or []:
            if p.get("iteration") in at:
                x = at[p["iteration"]]
                ax.axvline(x, color="0.35", lw=1, ls="--")
                ax.annotate(f"→ stage {p['stage']}", (x, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.25")
        ax.set_xlim(left=0)
    else:
        # no per-iteration history: the final greedy accuracy, and say why there is no more
        x = summary.get("env_steps") or 0
        for row in eval_rows(run.stages):
            y = (summary.get("accuracy") or {}).get(row)
            if y is not None:
                _greedy_marker(ax, row, [x], [y])
        promotions = ", ".join(f"stage {p['stage']} at iteration {p['iteration']}" for p in summary.get("promotions") or [])
        note = ("no metrics.parquet in this run directory (a run from before per-iteration\n"
                "metrics were recorded): no learning curves, only the final greedy accuracy")
        if promotions:
            note += f"\npromotions: {promotions}"
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "#fff6d5", "ec": "0.6"})
        ax.set_xlim(0, max(x, 1) * 1.1)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("env steps")
    ax.set_ylabel("exact-answer accuracy")
    ax.xaxis.set_major_formatter(_steps_label)
    ax.grid(alpha=0.25)
    ax.set_title("learning curves", fontsize=11)
    # one colour per stage, one style per kind of measurement: a short legend
    handles = [Line2D([], [], color=STAGE_COLORS[s], lw=6, label=f"stage {s}: {STAGE_TARGETS[s]}") for s in run.stages]
    handles += [
        Line2D([], [], color="0.3", lw=1.6, label="sampled, training contexts"),
        Line2D([], [], color="0.3", marker="o", ls="", label="greedy, evaluation"),
    ]
    if any(s in MEMORY_STAGES for s in run.stages):
        handles.append(Line2D([], [], color="0.3", marker="D", mfc="white", ls="",
                              label="greedy, memory-required contexts"))
    handles += [
        Line2D([], [], color="0.35", lw=1, ls="--", label="promotion"),
        Line2D([], [], color="0.4", lw=0.8, ls=":", label=f"target {target:g}"),
    ]
    # below the axes: inside, it would hide the curves of whichever stage is still low
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8, frameon=False)


def _greedy_marker(ax, row: str, xs, ys) -> None:
    stage = int(row.rstrip("m"))
    # later stages smaller and on top: dots of solved stages that coincide at 1.0 stay visible as rings
    ms = max(3.0, 8.5 - 1.3 * stage)
    if row.endswith("m"):
        ax.plot(xs, ys, ls="", marker="D", ms=ms - 1, mfc="white", mec=STAGE_COLORS[stage], mew=1.5, zorder=3 + stage)
    else:
        ax.plot(xs, ys, ls="", marker="o", ms=ms, color=STAGE_COLORS[stage], mec="white", mew=0.6, zorder=3 + stage)


def _draw_mix(ax, run: Run, mix: dict[int, dict[str, Any]] | None) -> str:
    """Stacked bars of tokens per episode; returns the 'most common program' lines."""
    ax.set_title("tool tokens per greedy episode, final checkpoint", fontsize=11)
    if not mix:
        ax.text(0.5, 0.5, "no checkpoint in this run directory:\nno action-token mix", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": "#fff6d5", "ec": "0.6"})
        ax.set_xticks([])
        ax.set_yticks([])
        return ""
    stages = sorted(mix)
    xs = list(range(len(stages)))
    bottom = [0.0] * len(stages)
    for name, color in zip(ACTION_NAMES, TOKEN_COLORS):
        heights = [mix[s]["tokens"][name] / mix[s]["episodes"] for s in stages]
        ax.bar(xs, heights, bottom=bottom, color=color, edgecolor="white", lw=0.5, width=0.6, label=name)
        for x, b, h in zip(xs, bottom, heights):
            if h >= 0.35:  # label segments tall enough to hold text
                ax.text(x, b + h / 2, f"{name} {h:.1f}", ha="center", va="center", fontsize=7)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, s, total in zip(xs, stages, bottom):
        ax.text(x, total + 0.15, f"greedy acc {mix[s]['accuracy']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [f"stage {s}\n{STAGE_TARGETS[s]}" for s in stages], fontsize=9)
    ax.set_ylabel(f"tokens per episode (mean of {mix[stages[0]]['episodes']})")
    ax.set_ylim(0, max(bottom) * 1.15 + 0.5)
    ax.legend(loc="upper left", fontsize=8, ncol=3, framealpha=0.9)
    ax.grid(axis="y", alpha=0.25)
    lines = []
    for s in stages:
        program, count = mix[s]["programs"].most_common(1)[0]
        lines.append(f"{s}: {program} ({count / mix[s]['episodes']:.0%})")
    return "most common program per stage (share of episodes)\n" + "\n".join(lines)


def make_figure(run: Run, mix: dict[int, dict[str, Any]] | None):
    """The figure (a matplotlib ``Figure`` on an Agg canvas: no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    curves, tokens = fig.subplots(1, 2, width_ratios=[1.6, 1])
    _draw_curves(curves, run)
    programs = _draw_mix(tokens, run, mix)
    if programs:
        tokens.set_xlabel(programs, fontsize=8, family="monospace", loc="left", labelpad=8)
    fig.suptitle(_title(run), fontsize=12)
    return fig


def plot_run(run: Run, out: str | pathlib.Path | None = None, *, action_episodes: int = 200) -> pathlib.Path:
    """Draw ``run`` to ``out`` (default ``DIR/curves.png``); returns the path."""
    out = pathlib.Path(out) if out is not None else run.path / DEFAULT_PNG
    fig = make_figure(run, action_mix(run, action_episodes))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    except OSError as err:
        raise UsageError(f"cannot write {str(out)!r} ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
