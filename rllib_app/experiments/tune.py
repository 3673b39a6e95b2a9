"""``toolagent tune``: Ray Tune over curriculum schedules.

How to run::

    toolagent tune --num-samples 2 --max-concurrent 2 --num-env-runners 0 --max-minutes 30
    toolagent tune --search-space my_space.yaml --output runs/tune
    toolagent tune --output runs/tune --resume        # continue an interrupted sweep

Each trial is one ``toolagent train`` run (``rllib_app.training.loop.train``) inside a Tune
trial, with the trial's parameters over the base config that the other train flags
give (``--num-env-runners 0 --trial-minutes 10``...). A trial stops when every trained
stage reaches the target accuracy or its budget (``--trial-minutes``) runs out; ASHA
stops the trials whose ``score`` lags behind at equal env steps (``score``: the sum
over the trained stages of their sampled accuracy, see ``train.iteration_metrics``).

The default search space (``DEFAULT_SEARCH_SPACE``) is a grid over the three
schedules, so ``--num-samples N`` gives 3N trials, with the promotion threshold,
the replay probability of earlier stages and the learning rate sampled per trial. A
search-space file (YAML or JSON) maps ``toolagent train`` option names
(``lr``, ``schedule``, ...) to a constant or to one of::

    {choice: [a, b, ...]}   {grid: [a, b, ...]}   {uniform: [lo, hi]}
    {loguniform: [lo, hi]}  {randint: [lo, hi]}   # randint: hi exclusive

It is checked whole before any trial starts. At the end the table (one row per
trial, best first) is printed and written to ``OUTPUT/results.parquet`` and
``OUTPUT/results.csv``.

Results to expect: on 2 cores with ``--num-env-runners 0 --max-concurrent 2``,
each trial gets about one core; stages 0 and 1 are solved within a few minutes by
every schedule that reaches them, stage 2 needs much longer per trial. A measured
sweep and its command: docs/benchmarks.md; how to run one: docs/cli.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
from typing import Any, Optional, get_type_hints

from rllib_app.config import recipes
from rllib_app.config.arguments import UsageError, output_dir, positive
from rllib_app.config.train_config import TrainConfig
from rllib_app.outputs.checkpoints import write_json_atomic, write_parquet_atomic, write_text_atomic

DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "schedule": {"grid": ["fixed", "threshold", "progress"]},
    "promotion_accuracy": {"uniform": [0.85, 0.98]},
    "replay_probability": {"uniform": [0.05, 0.4]},
    "lr": {"loguniform": [1e-3, 4e-3]},
}
KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
#: Options a trial may not set: the sweep owns where things go, which Ray it uses and
#: what each trial reserves (its placement group).
NOT_TUNABLE = (
    "output", "address", "num_cpus", "num_env_runners", "num_cpus_per_env_runner", "num_learners",
    "num_gpus_per_learner", "env_runner_resource", "learner_resource",
)
EXPERIMENT = "sweep"
SWEEP_FILE = "sweep.json"


# -- search space ------------------------------------------------------------------------------
def load_search_space(path: str | None) -> dict[str, Any]:
    if path is None:
        return dict(DEFAULT_SEARCH_SPACE)
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError(f"--search-space {path!r}: no such file")
    try:
        text = p.read_text()
    except (UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"--search-space {path!r} cannot be read as text: {exc}") from None
    try:
        if p.suffix.lower() == ".json":
            space = json.loads(text)
        else:
            import yaml

            space = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(
            f"--search-space {path!r} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"--search-space {path!r} must map option names to values or ranges, e.g. lr: {{loguniform: [1e-3, 4e-3]}}")
    return space


def _check_type(where: str, name: str, kind, value) -> None:
    base = {Optional[int]: int, Optional[str]: str}.get(kind, kind)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
    }.get(base, True)
    if not ok:
        raise UsageError(f"{where}: {name} wants {base.__name__} values, got {value!r}")


def validate_search_space(space: dict[str, Any], base: TrainConfig, where: str = "search space") -> None:
    """Every key a tunable train option, every value of the right type and allowed by
    ``TrainConfig.validate()``, every range non-empty; one ``UsageError`` otherwise."""
    hints = get_type_hints(TrainConfig)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_TUNABLE]
    for name, spec in space.items():
        if name not in names:
            raise UsageError(f"{where}: unknown option {name!r}; tunable options: {', '.join(names)}")
        kind = hints[name]
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise UsageError(f"{where}: {name}: {spec!r} must be a value or one of {{{': [...]}, {'.join(KINDS)}: [...]}}")
            how, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise UsageError(f"{where}: {name}: {how} needs a non-empty list, got {args!r}")
            if how in ("uniform", "loguniform", "randint"):
                if len(args) != 2:
                    raise UsageError(f"{where}: {name}: {how} needs [low, high], got {args!r}")
                lo, hi = args
                for v in args:
                    _check_type(where, name, int if how == "randint" else kind, v)
                if not lo < hi:
                    raise UsageError(f"{where}: {name}: {how} range [{lo}, {hi}] is empty; low must be < high")
                if how == "loguniform" and lo <= 0:
                    raise UsageError(f"{where}: {name}: loguniform needs low > 0, got {lo}")
                values = [lo, hi - 1] if how == "randint" else [lo, hi]
            else:
                values = args
        else:
            values = [spec]
        for v in values:
            _check_type(where, name, kind, v)
            try:
                dataclasses.replace(base, **{name: v}).validate()
            except UsageError as err:
                raise UsageError(f"{where}: {name}: {err}") from None


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    makers = {
        "choice": tune.choice, "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    out = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            how, args = next(iter(spec.items()))
            out[name] = makers[how](args)
        else:
            out[name] = spec
    return out


# -- one trial -----------------------------------------------------------------------------------
def run_trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    """A Tune function trainable: ``toolagent train`` with ``params`` over ``base``,
    reporting every iteration and each checkpoint, resuming from Tune's checkpoint."""
    from ray import tune
    from ray.tune import Checkpoint

    from rllib_app.training.loop import train

    trial_dir = pathlib.Path(tune.get_context().get_trial_dir())
    cfg = TrainConfig(**{**base, **params, "output": str(trial_dir / "run")})

    def report(metrics: dict, checkpoint: pathlib.Path | None) -> None:
        clean = {k: v for k, v in metrics.items() if v is not None}
        tune.report(clean, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)

    restored = tune.get_checkpoint()
    if restored is None:
        train(cfg, on_iteration=report)
    else:
        with restored.as_directory() as ckpt:
            train(cfg, resume_from=pathlib.Path(ckpt), on_iteration=report)


def trial_resources(cfg: TrainConfig):
    """One bundle for the trial's driver (and its local learner), one per env runner
    and per remote learner: RLlib's actors land inside the trial's placement group."""
    from ray.tune import PlacementGroupFactory

    def bundle(cpus, gpus=0.0, resource=None):
        return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **({resource: 1} if resource else {})}

    local_gpu = cfg.num_gpus_per_learner if cfg.num_learners == 0 else 0
    bundles = [bundle(1, local_gpu)]
    bundles += [bundle(cfg.num_cpus_per_env_runner, resource=cfg.env_runner_resource)] * cfg.num_env_runners
    bundles += [bundle(1, cfg.num_gpus_per_learner, cfg.learner_resource)] * cfg.num_learners
    return PlacementGroupFactory(bundles, strategy="PACK")


# -- the sweep -------------------------------------------------------------------------------------
def run_sweep(sweep: dict[str, Any], output: pathlib.Path, resume: bool) -> list[dict[str, Any]]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = TrainConfig(**sweep["base"])
    # Multi-node sweeps need storage every node reaches (s3://..., gs://..., NFS).
    storage = sweep.get("storage_path") or str(output.resolve())
    experiment = f"{storage.rstrip('/')}/{EXPERIMENT}"
    if not ray.is_initialized():
        if base.address:
            ray.init(address=base.address)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     logging_level="WARNING", configure_logging=True)
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=sweep["base"]), trial_resources(base))
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(sweep["search_space"]),
            tune_config=tune.TuneConfig(
                metric="score", mode="max",
                num_samples=sweep["num_samples"],
                max_concurrent_trials=sweep["max_concurrent"],
                time_budget_s=sweep["max_minutes"] * 60 if sweep["max_minutes"] else None,
                scheduler=ASHAScheduler(
                    time_attr="env_steps", grace_period=sweep["grace_env_steps"],
                    reduction_factor=2, max_t=10**12,
                ),
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max"
                ),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return results_table(grid, list(sweep["search_space"]), base.target_accuracy)


def results_table(grid, searched: list[str], target: float) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        best = None
        if result.best_checkpoints:
            best = max(result.best_checkpoints, key=lambda cm: cm[1].get("score", -1))[0].path
        solved = bool(metrics.get("target_reached"))
        row = {
            "trial": metrics.get("trial_id") or pathlib.Path(result.path).name,
            **{name: config.get(name) for name in searched},
            "solved": solved,
            "stages_solved": metrics.get("stages_solved", 0),
            "iterations": metrics.get("iteration"),
            "env_steps": metrics.get("env_steps"),
            "wall_seconds": metrics.get("wall_seconds"),
            "env_steps_to_solve": metrics.get("env_steps") if solved else None,
            "score": metrics.get("score"),
            **{k: v for k, v in sorted(metrics.items()) if k.startswith("accuracy_")},
            "error": str(result.error).splitlines()[0][:200] if result.error else None,
            "best_checkpoint": best,
        }
        rows.append(row)
    return sort_rows(rows)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: solved before not, then fewer env steps to solve; unsolved by more
    stages solved, then higher score."""
    def key(r):
        if r["solved"]:
            return (0, r["env_steps_to_solve"] or 0, 0.0)
        return (1, -(r["stages_solved"] or 0), -(r["score"] or 0.0))
    return sorted(rows, key=key)


def write_tables(rows: list[dict[str, Any]], output: pathlib.Path) -> None:
    """``results.parquet`` and ``results.csv``, each written whole or not at all."""
    import pyarrow as pa

    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    write_parquet_atomic(output / "results.parquet", table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(output / "results.csv", buf.getvalue())


def sweep_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    shown = [c for c in rows[0] if c not in ("best_checkpoint", "error")] + ["best_checkpoint"]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    table = [shown] + [[cell(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


# -- command line ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-samples", type=positive, default=1,
                        help="samples of the search space; a grid multiplies them (default: 1, x3 schedules)")
    parser.add_argument("--max-concurrent", type=positive, default=1,
                        help="trials running at once; each takes 1 CPU plus 1 per env runner (default: 1)")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="wall-clock budget of the whole sweep (default: 60)")
    parser.add_argument("--trial-minutes", type=float, default=15.0,
                        help="wall-clock budget of each trial (default: 15)")
    parser.add_argument("--grace-env-steps", type=positive, default=100_000,
                        help="ASHA: env steps every trial gets before it can be stopped early (default: 100000)")
    parser.add_argument("--search-space", default=None,
                        help="YAML or JSON file: train option -> value or {choice|grid|uniform|loguniform|randint: [...]} "
                             "(default: schedule grid, promotion threshold, replay probability, lr)")
    parser.add_argument("--output", default="runs/tune", help="sweep directory (default: runs/tune)")
    parser.add_argument("--storage-path", default=None,
                        help="where Tune keeps trials and checkpoints: a path or URI every node reaches "
                             "(s3://bucket/dir for a multi-node sweep; default: OUTPUT)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --output")


def parse(args: argparse.Namespace, train_args: list[str]) -> dict[str, Any]:
    """The whole sweep as data, checked before anything runs; on --resume, the saved one."""
    output = output_dir(args.output)
    if args.resume:
        saved = output / SWEEP_FILE
        if not saved.is_file():
            raise UsageError(f"--resume: {str(output)!r} holds no sweep to resume (no {SWEEP_FILE}); start one without --resume")
        if train_args:
            raise UsageError(f"--resume continues the saved sweep as it was; drop {' '.join(train_args)}")
        return json.loads(saved.read_text())
    if (output / SWEEP_FILE).exists():
        raise UsageError(f"--output {str(output)!r} already holds a sweep; use --resume, or another --output")
    for name, value in (("--max-minutes", args.max_minutes), ("--trial-minutes", args.trial_minutes)):
        if not value > 0:
            raise UsageError(f"{name} must be > 0, got {value}")
    base = recipes.from_flags(train_args, "tune")
    base = dataclasses.replace(base, max_minutes=args.trial_minutes).validate()
    space = load_search_space(args.search_space)
    validate_search_space(space, base, where=f"search space {args.search_space or '(default)'}")
    return {
        "base": dataclasses.asdict(base),
        "search_space": space,
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "max_minutes": args.max_minutes,
        "grace_env_steps": args.grace_env_steps,
        "storage_path": args.storage_path,
    }


def main(args: argparse.Namespace, train_args: list[str]) -> int:
    sweep = parse(args, train_args)
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_json_atomic(output / SWEEP_FILE, sweep)
    rows = run_sweep(sweep, output, resume=args.resume)
    write_tables(rows, output)
    print(sweep_table(rows))
    print(f"\nwritten: {output / 'results.parquet'}, {output / 'results.csv'}")
    return 0 if rows and not all(r["error"] for r in rows) else 1
