"""``toolagent ablate``: the default recipe, then the recipe with each lever removed, over seeds.

How to run::

    toolagent ablate --seeds 0,1,2 --output runs/ablate           # every lever, 15 min a run
    toolagent ablate --levers none,sil --seeds 0 --max-minutes 5   # a quick look
    toolagent ablate --seeds 0,1 --lr 1e-3                         # other train flags pass through

Each run is one ``toolagent train`` subprocess (its own local Ray), writing to
``OUTPUT/<lever>/seed_<n>/`` with its log in ``train.log``. Finished runs are
recorded in ``OUTPUT/runs.jsonl``; the same command run again skips them, so an
interrupted ablation resumes. After every run the table (mean and spread over
seeds) is rewritten to ``OUTPUT/ablation.md``.

Results to expect: the lever table in docs/benchmarks.md (each run takes up to its
--max-minutes; the whole default ablation takes hours on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from rllib_app.config import recipes
from rllib_app.config.arguments import UsageError, parse_seeds
from rllib_app.config.train_config import TrainConfig
from rllib_app.outputs.checkpoints import versioned, write_json_atomic, write_text_atomic

#: Each lever as the train-config change that removes it from the default recipe.
LEVERS: dict[str, dict[str, Any]] = {
    "none": {},
    "hard": {"hard_fraction": 0.0},
    "mask": {"action_mask": False},
    "sil": {"sil_coeff": 0.0},
    "sil-priority": {"sil_priority_alpha": 0.0},
    "sil-join": {"sil_join_chunks": False},
    "drills": {"stage_path": "0,1,2"},
    "initial-state-context": {"context_every_step": True},
    "shaping": {"shaping": 0.0},
    "entropy": {"entropy_coeff": 0.01, "entropy_schedule": ""},
}
#: The rows of a run's summary that the table reports.
REPORTED = ("2", "2m")


def lever_flags(overrides: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def active_levers(base: TrainConfig, names: Sequence[str]) -> list[str]:
    """The requested levers whose removal changes ``base`` ("none" always runs)."""
    kept = []
    for name in names:
        changes = LEVERS[name]
        if name == "none" or any(getattr(base, k) != v for k, v in changes.items()):
            kept.append(name)
    return kept


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.3f} ± {sd:.3f}"


def _steps(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{sum(values) / len(values) / 1e3:,.0f}k ({min(values) / 1e3:,.0f}-{max(values) / 1e3:,.0f}k)"


def ablation_table(records: list[dict[str, Any]], levers: Sequence[str]) -> str:
    """A markdown table: one row per lever, mean ± sd over its seeds."""
    lines = [
        "| lever removed | runs | solved | stage 2 (uniform) | stage 2 (memory-required) "
        "| env steps to solve, mean (range) | wall s, mean |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lever in levers:
        runs = [r for r in records if r["lever"] == lever]
        if not runs:
            continue
        done = [r for r in runs if r.get("summary")]
        solved = [r["summary"] for r in done if r["summary"]["target_reached"]]
        uniform = [r["summary"]["accuracy"].get("2") for r in done]
        memory = [r["summary"]["accuracy"].get("2m") for r in done]
        walls = [r["summary"]["wall_seconds"] for r in done]
        if not done:
            lines.append(f"| {lever} | {len(runs)} | 0/{len(runs)} | every run failed | | | |")
            continue
        lines.append(
            f"| {lever} | {len(runs)} | {len(solved)}/{len(runs)} "
            f"| {_mean_sd([v for v in uniform if v is not None])} "
            f"| {_mean_sd([v for v in memory if v is not None])} "
            f"| {_steps([s['env_steps'] for s in solved])} "
            f"| {sum(walls) / len(walls):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _read_records(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_ablation(
    train_args: list[str], levers: Sequence[str], seeds: Sequence[int], output: pathlib.Path
) -> list[dict[str, Any]]:
    output.mkdir(parents=True, exist_ok=True)
    runs_file = output / "runs.jsonl"
    records = _read_records(runs_file)
    done = {(r["lever"], r["seed"]) for r in records}
    for lever in levers:
        for seed in seeds:
            if (lever, seed) in done:
                continue
            run_dir = output / lever / f"seed_{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable, "-m", "rllib_app", "train", *train_args, *lever_flags(LEVERS[lever]),
                "--seed", str(seed), "--output", str(run_dir),
            ]
            print(f"ablate: lever {lever!r} removed, seed {seed}: {' '.join(cmd[2:])}", flush=True)
            with open(run_dir / "train.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            summary_file = run_dir / "summary.json"
            summary = json.loads(summary_file.read_text()) if rc == 0 and summary_file.exists() else None
            record = {"lever": lever, "seed": seed, "returncode": rc, "summary": summary}
            records.append(record)
            with open(runs_file, "a") as f:
                f.write(json.dumps(versioned(record)) + "\n")
            if summary:
                acc = summary["accuracy"]
                print(
                    f"ablate: {lever} seed {seed}: solved {summary['target_reached']}, "
                    f"stage 2 {acc.get('2')}, memory-required {acc.get('2m')}, "
                    f"{summary['env_steps']:,} env steps, {summary['wall_seconds']} s",
                    flush=True,
                )
            else:
                print(f"ablate: {lever} seed {seed} failed (exit code {rc}); see {run_dir / 'train.log'}", flush=True)
            write_text_atomic(output / "ablation.md", ablation_table(records, levers))
    write_json_atomic(output / "ablation.json", {"levers": list(levers), "seeds": list(seeds), "runs": records})
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--levers", default=",".join(LEVERS),
        help=f"comma-separated levers to remove one at a time; 'none' is the recipe itself "
             f"(allowed: {', '.join(LEVERS)}; default: all)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--output", default="runs/ablate", help="directory for the runs and the table (default: runs/ablate)")


def parse(args: argparse.Namespace, train_args: list[str]) -> tuple[list[str], list[int]]:
    """Validate everything before the first run starts; the levers to run and the seeds."""
    levers = [s.strip() for s in args.levers.split(",") if s.strip()]
    unknown = [name for name in levers if name not in LEVERS]
    if not levers or unknown:
        raise UsageError(f"--levers {args.levers!r}: unknown lever(s) {unknown}; allowed: {', '.join(LEVERS)}")
    seeds = parse_seeds(args.seeds)
    if any(a == "--seed" or a.startswith(("--seed=", "--output")) for a in train_args):
        raise UsageError("give seeds with --seeds and the directory with --output; ablate sets each run's own")
    base = recipes.from_flags(train_args, "ablate")
    for lever in levers:
        dataclasses.replace(base, **LEVERS[lever]).validate()
    return active_levers(base, levers), seeds
