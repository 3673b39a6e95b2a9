"""``toolagent``: train, evaluate and inspect the tool-using agent.

    toolagent train [flags]            train until every stage is solved or time runs out
    toolagent train --config RECIPE    ... from a recipe (a shipped name or a YAML file); flags override it
    toolagent recipes                  the shipped recipes, one a line
    toolagent eval CHECKPOINT          greedy accuracy and mean return per stage
                                       (--episodes-out FILE.parquet: every episode as a row)
    toolagent explain CHECKPOINT       a few trajectories as readable rows
    toolagent explain --episodes FILE  ... read from an --episodes-out file instead
    toolagent export CHECKPOINT        the policy as a .pt2 file that torch alone loads and steps
    toolagent plot DIR                 learning curves and action-token mix, DIR/curves.png
    toolagent report DIR               a one-page Markdown summary of a run, DIR/report.md
    toolagent ablate [flags]           the default recipe with each lever removed, over seeds
    toolagent tune [flags]             Ray Tune over curriculum schedules, best trial first
    toolagent bench [--quick]          env steps/s and time to each milestone: RLlib vs the baseline

``python -m rllib_app ...`` is the same program. Usage errors print one line
and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys

from envs import NUM_STAGES, SPEC_STAGES
from envs.machine import EXPRESSION_OPERATORS, MAX_OPERATORS
from rllib_app.config import recipes
from rllib_app.config.arguments import (
    UsageError,
    operators,
    output_dir,
    positive,
    seed,
    stage,
    stage_list,
    writable_file,
)
from rllib_app.config.train_config import TrainConfig
from rllib_app.experiments import ablate, bench
from rllib_app.experiments import tune as sweep
from rllib_app.outputs.checkpoints import CheckpointError, read_run_info, resolve_checkpoint, saved_stage_rows

TRAIN_DESCRIPTION = """Train with RLlib until greedy accuracy on every stage reaches --target-accuracy, or a budget
runs out. Settings come from the defaults (the digits-a2c recipe), then --config, then the
flags typed: `toolagent train --config digits-impala --seed 3`. Shipped recipes: `toolagent
recipes`. Every setting, the research knobs too: --help-all. docs/cli.md has the details."""


def build_parser(*, show_all: bool = False) -> argparse.ArgumentParser:
    """The ``toolagent`` parser; ``show_all``: ``train --help`` lists the research flags too."""
    parser = argparse.ArgumentParser(
        prog="toolagent", description="Train a recurrent agent to use tools, with Ray RLlib.", allow_abbrev=False,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,recipes,eval,explain,export,plot,report,ablate,tune,bench}"
    )

    train = sub.add_parser("train", help="train with RLlib until every stage is solved", allow_abbrev=False,
                           usage="toolagent train [--config RECIPE] [--print-config] [--resume DIR] [FLAGS]",
                           description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    how = train.add_argument_group("recipe and resume")
    how.add_argument("--config", metavar="RECIPE", default=None,
                     help="start from a recipe: a shipped name (toolagent recipes) or a YAML file of settings; "
                     "the flags typed override it")
    how.add_argument("--print-config", action="store_true",
                     help="print the resolved settings as a recipe file and exit without training")
    how.add_argument("--help-all", action="store_true", help="show every flag, the research knobs too, and exit")
    how.add_argument(
        "--resume", metavar="DIR", default=None,
        help="continue the run in DIR (a 'toolagent train' output directory) from its latest checkpoint: same "
        "config, iteration, env steps, curriculum; flags given here override the saved ones (e.g. --max-minutes)",
    )
    TrainConfig.add_arguments(train, show_all=show_all)
    parser.train_parser = train  # for --help-all

    sub.add_parser("recipes", help="list the shipped recipes: the name, then what it is for", allow_abbrev=False)

    ev = sub.add_parser("eval", allow_abbrev=False, help="greedy accuracy and mean return per stage on fresh episodes")
    ev.add_argument("checkpoint", help="a checkpoint directory, or a 'toolagent train' output directory")
    ev.add_argument("--episodes", type=positive, default=1000, help="fresh episodes per stage (default: 1000)")
    ev.add_argument("--stages", type=stage_list, default=list(SPEC_STAGES),
                    help="comma-separated stages; 3, 4 and 10-13 are the memory drills, 5-9 the expression stages "
                    "(default: 0,1,2)")
    ev.add_argument("--max-operators", type=operators, default=0, metavar="K",
                    help=f"also evaluate expressions of exactly 1, 2, ..., K operators (K in 1..{MAX_OPERATORS}), "
                    "rows 1op..Kop, each marked trained or held out: the length-generalisation report")
    ev.add_argument("--seed", type=seed, default=0, help="seed of the evaluation episodes (default: 0)")
    ev.add_argument("--by-pattern", action="store_true",
                    help="also give each expression row's accuracy per operator pattern ('a + b*c'), worst first, "
                    "marking the patterns whose program needs STO/RCL")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--episodes-out", metavar="FILE.parquet", default=None,
                    help="also write every evaluated episode as a row of a Parquet file (schema: "
                    "docs/outputs.md)")

    ex = sub.add_parser("explain", allow_abbrev=False, help="show trajectories as readable rows, fresh from a checkpoint or from a file")
    ex.add_argument("checkpoint", nargs="?", default=None,
                    help="a checkpoint directory, or a 'toolagent train' output directory")
    ex.add_argument("--episodes", metavar="FILE.parquet", default=None,
                    help="read the trajectories from a 'toolagent eval --episodes-out' file instead")
    ex.add_argument("--stage", type=stage, default=None,
                    help="stage to show (default: 2 from a checkpoint, every stage in --episodes)")
    ex.add_argument("-n", type=positive, default=5, help="episodes to show (per eval row with --episodes; default: 5)")
    ex.add_argument("--seed", type=seed, default=0, help="seed of the episodes (default: 0)")
    ex.add_argument("--sample", action="store_true", help="sample actions instead of taking the greedy one")

    xp = sub.add_parser("export", allow_abbrev=False,
                        help="the trained policy as a .pt2 file (torch.export) that torch alone loads and steps")
    xp.add_argument("checkpoint", help="a checkpoint directory, or a 'toolagent train' output directory")
    xp.add_argument("--out", metavar="FILE.pt2", default="policy.pt2", help="where to write it (default: policy.pt2)")

    pl = sub.add_parser("plot", allow_abbrev=False, help="learning curves and the action-token mix of a run, as a PNG")
    pl.add_argument("run_dir", metavar="DIR", help="a 'toolagent train' output directory")
    pl.add_argument("--out", metavar="FILE.png", default=None, help="where to write the PNG (default: DIR/curves.png)")
    pl.add_argument("--action-episodes", type=positive, default=200,
                    help="greedy episodes per trained stage for the action-token mix (default: 200)")

    rp = sub.add_parser("report", allow_abbrev=False, help="a one-page Markdown summary of a run: DIR/report.md")
    rp.add_argument("run_dir", metavar="DIR", help="a 'toolagent train' output directory")
    rp.add_argument("-n", type=positive, default=3, help="greedy trajectories shown per eval row (default: 3)")

    ab = sub.add_parser(
        "ablate", allow_abbrev=False, help="train the default recipe and the recipe with each lever removed, over seeds",
        description="Any other 'toolagent train' flag is passed to every run (e.g. --max-minutes 5).",
    )
    ablate.add_arguments(ab)

    tu = sub.add_parser(
        "tune", allow_abbrev=False, help="Ray Tune over curriculum schedules (ASHA), with a results table",
        description="Each trial is a 'toolagent train' run; any other 'toolagent train' flag sets the "
        "base config of every trial (e.g. --num-env-runners 0 --algo a2c). Search-space file: "
        "train option -> value or {choice|grid|uniform|loguniform|randint: [...]}.",
    )
    sweep.add_arguments(tu)

    be = sub.add_parser(
        "bench", allow_abbrev=False, help="env steps/s (env, module, RLlib runners) and time to each milestone, RLlib vs the "
        "hand-written baseline: DIR/bench.json",
    )
    bench.add_arguments(be)
    return parser


def _resumed_config(run_dir: str, typed: dict) -> tuple[TrainConfig, pathlib.Path]:
    """The saved config of the run in ``run_dir``, with the flags ``typed`` on top."""
    checkpoint, _ = resolve_checkpoint(run_dir)
    saved = read_run_info(checkpoint).get("train_config")
    if saved is None:
        raise UsageError(f"--resume {run_dir!r}: its checkpoint has no saved config ({checkpoint})")
    # the run directory, also when given the checkpoint itself (DIR/checkpoints/iter_N)
    output = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else pathlib.Path(run_dir)
    rows = saved_stage_rows(checkpoint)
    if rows is not None and len(rows) != NUM_STAGES:
        # its stage embedding has a row per stage it knew: the weights would not load
        raise UsageError(f"--resume {run_dir!r}: its module reads stages 0..{len(rows) - 1}, this toolagent's "
                         f"0..{NUM_STAGES - 1} (stages were added since), so its weights do not load here; "
                         "start the run anew, or resume it with the toolagent version that trained it")
    return TrainConfig.from_saved(saved, **{"output": str(output), **typed}).validate(), checkpoint


def _cmd_train(args) -> int:
    # before the heavy imports: usage errors come fast
    typed = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    if args.resume:
        if args.config:
            raise UsageError(f"--resume continues {args.resume!r} with its saved settings; drop --config "
                             f"{args.config!r} (flags typed with --resume override the saved ones)")
        cfg, checkpoint = _resumed_config(args.resume, typed)
    else:
        recipe = recipes.load(args.config) if args.config else {}
        cfg, checkpoint = recipes.merge(recipe, typed, source=args.config), None
    if args.print_config:
        print(recipes.print_config(cfg), end="")
        return 0
    from rllib_app.training.loop import train

    summary = train(cfg, resume_from=checkpoint)
    print(outcome_table(summary, pathlib.Path(cfg.output)))
    # stopped by a signal: the shell's convention, 128 + the signal's number
    return 128 + signal.Signals[summary["stopped_by"]].value if summary["stopped_by"] else 0


def outcome_table(summary: dict, output: pathlib.Path) -> str:
    """A finished run in a few lines: how it ended, greedy accuracy and mean return per
    evaluated row, where its checkpoint and summary are."""
    if summary["target_reached"]:
        ended = f"target reached (greedy accuracy >= {summary['config']['target_accuracy']:g} on every row)"
    elif summary["stopped_by"]:
        ended = f"stopped by {summary['stopped_by']} (--resume {output} continues it)"
    else:
        ended = "budget spent, target not reached"
    lines = [f"{summary['algo']}: {ended}: {summary['wall_seconds']:,.1f} s, {summary['env_steps']:,} env steps, "
             f"{summary['iterations']} iterations", "", f"  {'row':<5} {'accuracy':>8} {'mean return':>11}"]
    for row, accuracy in summary["accuracy"].items():
        lines.append(f"  {row:<5} {accuracy:8.3f} {summary['mean_return'][row]:11.3f}")
    if not summary["accuracy"]:
        lines.append("  (not evaluated)")
    lines += ["", f"checkpoint  {summary['checkpoint']}"]
    if summary.get("best_checkpoint"):
        lines.append(f"best        {summary['best_checkpoint']['path']}")
    lines.append(f"summary     {output / 'summary.json'} (every figure, as JSON)")
    return "\n".join(lines)


def _cmd_recipes(args) -> int:
    for name, path in recipes.shipped().items():
        mark = " (the default)" if name == recipes.DEFAULT_RECIPE else ""
        print(f"{name:<16} {recipes.describe(path)}{mark}")
    return 0


def trained_operator_counts(train_config: dict) -> set[int]:
    """The operator counts of the expression stages a run trained on (its stage path or
    fixed stages, as saved in the checkpoint's run info)."""
    try:
        stages = TrainConfig.from_saved(train_config).trained_stages()
    except Exception:  # an old or partial run info: nothing known to be trained
        return set()
    return {k for s in stages for k in EXPRESSION_OPERATORS.get(s, ())}


def _check_stages(stages, env_config, module=None) -> None:
    """The checkpoint's task rules decide which stages exist (the seed variant: 0-2), and
    its module which it can read (one trained before the later drills existed: fewer)."""
    known = len((getattr(module, "model_config", None) or {}).get("stage_embedding_rows", ())) or NUM_STAGES
    if any(s >= known for s in stages):
        raise UsageError(f"this checkpoint's module reads stages 0..{known - 1} (it predates the later ones); "
                         f"got {sorted(s for s in set(stages) if s >= known)}")
    variant = (env_config or {}).get("variant", "exact")
    if variant == "seed" and any(s not in SPEC_STAGES for s in stages):
        raise UsageError(
            f"this checkpoint was trained on the seed variant, which has stages {list(SPEC_STAGES)} only; "
            f"got {sorted(set(stages) - set(SPEC_STAGES))}"
        )


def _cmd_eval(args) -> int:
    resolve_checkpoint(args.checkpoint)
    episodes_out = writable_file(args.episodes_out, "--episodes-out", ".parquet") if args.episodes_out else None
    from rllib_app.evaluation.evaluate import (
        accuracy_report,
        evaluate_rows,
        load_module,
        operator_rows,
        pattern_report,
        write_episodes,
    )

    module, info = load_module(args.checkpoint)
    env_config = info.get("env_config")
    _check_stages(args.stages, env_config, module)
    if args.max_operators and (env_config or {}).get("variant", "exact") == "seed":
        raise UsageError("--max-operators: this checkpoint was trained on the seed variant, which has no expressions")
    rows = evaluate_rows(module, args.stages, args.episodes, env_config=env_config, seed=args.seed)
    if args.max_operators:
        rows.update(operator_rows(module, args.max_operators, args.episodes, env_config=env_config, seed=args.seed))
    report = accuracy_report(rows)
    trained = trained_operator_counts(info.get("train_config", {}))
    for row, r in report.items():
        if row.endswith("op"):
            r["trained"] = int(row[:-2]) in trained
    if episodes_out is not None:
        meta = {"checkpoint": str(resolve_checkpoint(args.checkpoint)[0]), "episodes_per_row": args.episodes,
                "seed": args.seed, "env_config": env_config or {}}
        try:
            written = write_episodes(episodes_out, rows, metadata=meta)
        except OSError as err:
            raise UsageError(f"--episodes-out {args.episodes_out!r}: cannot write it ({err.strerror or err})") from None
        # stderr: with --json, stdout stays one JSON document
        print(f"wrote {written} episodes to {episodes_out}", file=sys.stderr)
    patterns = pattern_report(rows) if args.by_pattern else None
    if args.by_pattern and not patterns:
        print("(--by-pattern: no expression rows evaluated; add an expression stage or --max-operators)",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"stages": report, **({"patterns": patterns} if args.by_pattern else {})}))
    else:
        print(f"{'stage':>5}  {'accuracy':>8}  {'programs':>8}  {'mean return':>11}  {'episodes':>8}")
        for row, r in report.items():
            mark = "" if "trained" not in r else "  trained" if r["trained"] else "  held out"
            programs = f"{r['program_accuracy']:8.3f}" if "program_accuracy" in r else f"{'-':>8}"
            print(f"{row:>5}  {r['accuracy']:8.3f}  {programs}  {r['mean_return']:11.3f}  {r['episodes']:8d}{mark}")
        if any("program_accuracy" in r for r in report.values()):
            print("(programs: right with tools that answer every context of the row's stage and operator pattern, "
                  "not a shortcut that hit this target)")
        if any(row.endswith("m") for row in report):
            print("(2m: stage 2 on its memory-required contexts, the ones no program without STO/RCL solves)")
        if args.max_operators:
            print("(Kop: expressions of exactly K operators; trained = a stage on the run's curriculum draws K, "
                  "whether or not the curriculum got there; held out = none does)")
        for row, entries in (patterns or {}).items():
            print(f"\nrow {row} by operator pattern (worst first; * = needs STO/RCL; the oracle's program, "
                  "and the policy's most frequent tools when wrong, with how many of the pattern's episodes)")
            for r in entries:
                mark = "*" if r["needs_memory"] else " "
                wrong = f"   wrong: {r['wrong_tools']} ({r['wrong_count']})" if r["wrong_tools"] else ""
                print(f"  {r['pattern']:<28} {mark} {r['accuracy']:6.3f}  {r['episodes']:6d}   {r['program']}{wrong}")
    return 0


def _cmd_explain(args) -> int:
    if args.episodes is not None:
        return _explain_file(args)
    if args.checkpoint is None:
        raise UsageError("give a CHECKPOINT to sample fresh episodes from, or --episodes FILE.parquet")
    resolve_checkpoint(args.checkpoint)
    from rllib_app.evaluation.evaluate import load_module, rollout, trajectory_table

    stage = 2 if args.stage is None else args.stage
    module, info = load_module(args.checkpoint)
    _check_stages([stage], info.get("env_config"), module)
    episodes = rollout(module, stage, args.n, env_config=info.get("env_config"), seed=args.seed, greedy=not args.sample)
    print(f"stage {stage}, {'sampled' if args.sample else 'greedy'} actions")
    print(trajectory_table([e.record() for e in episodes]))
    return 0


def _explain_file(args) -> int:
    """``explain --episodes FILE``: the first ``-n`` episodes of each eval row in the file."""
    if args.checkpoint is not None:
        raise UsageError(f"give a CHECKPOINT ({args.checkpoint!r}) or --episodes, not both")
    if args.sample:
        raise UsageError("--sample applies to fresh episodes from a checkpoint, not to --episodes")
    from rllib_app.evaluation.evaluate import read_episodes, trajectory_table

    records, meta = read_episodes(args.episodes)
    if args.stage is not None:
        records = [r for r in records if r["stage"] == args.stage]
        if not records:
            raise UsageError(f"--episodes {args.episodes!r} has no episode of stage {args.stage}")
    by_row: dict[str, list[dict]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    source = f" (greedy, from {meta['checkpoint']})" if meta.get("checkpoint") else ""
    print(f"{args.episodes}: {len(records)} episodes{source}")
    for row, rows in by_row.items():
        what = "memory-required contexts" if row.endswith("m") else "uniform contexts"
        correct = sum(r["correct"] for r in rows)
        print(f"\nrow {row}: stage {rows[0]['stage']}, {what}, {correct}/{len(rows)} correct"
              + (f", the first {args.n}" if len(rows) > args.n else ""))
        print(trajectory_table(rows[: args.n]))
    return 0


def _cmd_export(args) -> int:
    resolve_checkpoint(args.checkpoint)
    out = writable_file(args.out, "--out", ".pt2")
    from envs import ACTION_NAMES
    from models.export import export_policy
    from rllib_app.evaluation.evaluate import load_module

    module, info = load_module(args.checkpoint)
    try:
        export_policy(module, out, metadata={
            "checkpoint": str(resolve_checkpoint(args.checkpoint)[0]), "env_config": info.get("env_config") or {},
            "action_names": list(ACTION_NAMES)})
    except ValueError as err:  # a module the export does not cover
        raise UsageError(f"{args.checkpoint!r}: {err}") from None
    print(f"wrote {out} (load: torch.export.load(path).module(); docs/outputs.md, 'An exported policy')")
    return 0


def _cmd_plot(args) -> int:
    from rllib_app.evaluation.plot import load_run, plot_run

    run = load_run(args.run_dir)
    out = writable_file(args.out, "--out", ".png") if args.out else None
    path = plot_run(run, out, action_episodes=args.action_episodes)
    print(f"wrote {path}")
    return 0


def _cmd_report(args) -> int:
    from rllib_app.evaluation.plot import load_run
    from rllib_app.evaluation.report import write_report

    path = write_report(load_run(args.run_dir), trajectories_per_row=args.n)
    print(f"wrote {path}")
    return 0


def _cmd_ablate(args, train_args: list[str]) -> int:
    levers, seeds = ablate.parse(args, train_args)
    records = ablate.run_ablation(train_args, levers, seeds, output_dir(args.output))
    print(ablate.ablation_table(records, levers))
    return 0 if all(r["summary"] for r in records) else 1


def _cmd_bench(args) -> int:
    return bench.main(args)


COMMANDS = {"train": _cmd_train, "recipes": _cmd_recipes, "eval": _cmd_eval, "export": _cmd_export, "explain": _cmd_explain, "plot": _cmd_plot, "report": _cmd_report, "bench": _cmd_bench}
#: Commands that pass the flags they do not know on to 'toolagent train'.
PASSTHROUGH = {"ablate": _cmd_ablate, "tune": sweep.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(show_all="--help-all" in argv)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASSTHROUGH:
        parser.parse_args(argv)  # reports the unknown flags, exit code 2
    if args.command == "train" and args.help_all:
        parser.train_parser.print_help()
        return 0
    try:
        if args.command in PASSTHROUGH:
            return PASSTHROUGH[args.command](args, extra)
        return COMMANDS[args.command](args)
    except (UsageError, CheckpointError) as err:
        parser.exit(2, f"toolagent {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
