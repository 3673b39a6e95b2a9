"""See what the agent learned: episodes as Parquet, explain from a file, plot, report, and their bad input.

The integration tests share one real tiny training run (made once for this module,
~35 s); the rest use a synthesized run directory (summary.json + metrics.parquet
with the columns ``toolagent train`` writes) and need no Ray.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_cli, train_in_process
from envs import ADD, ANS, MEMORY_STAGES, MUL, NUM_STAGES, ToolMachineEnv
from envs.analysis import memory_required_contexts
from envs.machine import ACTION_NAMES, MachineState, apply_tool, stage_target

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPISODE_COLUMNS = [
    ("row", pa.string()), ("stage", pa.int64()), ("context", pa.list_(pa.int64())), ("target", pa.int64()),
    ("tools", pa.list_(pa.string())), ("answer", pa.int64()), ("correct", pa.bool_()), ("return", pa.float64()),
    ("length", pa.int64()), ("seed", pa.int64()), ("variant", pa.string()),
]


def run_quiet(*args, timeout=600):
    """``python -m rllib_app ARGS`` with no display at all: plots must not need one."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    return subprocess.run([sys.executable, "-m", "rllib_app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_usage_error(proc, command, *expected):
    """Exit code 2 and one line, ``toolagent COMMAND: error: ...``, naming the problem."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"toolagent {command}: error: "), proc.stderr[-2000:]
    assert all(e in lines[0] for e in expected), lines[0]


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # two panels with text and bars, not an empty canvas


# -- a synthesized run directory (no Ray) ---------------------------------------------------------
GREEDY_ROWS = ("0", "1", "2", "2m", "3", "3m", "4", "4m", "5", "6", "7", "8", "9", "10", "10m", "11", "11m", "12", "12m", "13", "13m")
#: exactly the columns of DIR/metrics.parquet, as 'toolagent train' writes them
METRICS_COLUMNS = [
    ("iteration", pa.int64()), ("wall_seconds", pa.float64()), ("env_steps", pa.int64()),
    ("steps_per_second", pa.float64()), ("stage", pa.int64()), ("stage_weights", pa.list_(pa.float64())),
    ("env_runner_restarts", pa.int64()),
    *[(f"sampled_accuracy_{s}", pa.float64()) for s in range(NUM_STAGES)],
    *[(f"greedy_accuracy_{r}", pa.float64()) for r in GREEDY_ROWS],
    *[(name, pa.float64()) for name in ("policy_loss", "vf_loss", "entropy", "entropy_coeff", "sil_policy_loss", "sil_replay_size")],
]
ITERATIONS, STEPS_PER_ITER, EVAL_EVERY = 30, 1000, 5
PROMOTIONS = [{"iteration": 8, "stage": 1}, {"iteration": 16, "stage": 2}]


def synthetic_metrics() -> pa.Table:
    rows = []
    for i in range(1, ITERATIONS + 1):
        stage = 0 if i <= 8 else 1 if i <= 16 else 2
        row = {"iteration": i, "wall_seconds": 2.0 * i, "env_steps": STEPS_PER_ITER * i, "steps_per_second": 500.0,
               "stage": stage, "stage_weights": [1.0 if s == stage else 0.0 for s in range(NUM_STAGES)],
               "env_runner_restarts": 0}
        for s in range(NUM_STAGES):
            # a stage has no sampled accuracy before the curriculum reaches it
            row[f"sampled_accuracy_{s}"] = min(1.0, 0.1 * (i - 8 * s)) if s <= stage else None
        for r in GREEDY_ROWS:
            s = int(r[0])
            row[f"greedy_accuracy_{r}"] = (
                min(1.0, max(0.0, 0.12 * (i - 8 * s))) if i % EVAL_EVERY == 0 and s <= 2 else None
            )
        row.update(policy_loss=0.1, vf_loss=0.2, entropy=1.5, entropy_coeff=0.01, sil_policy_loss=None, sil_replay_size=None)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=pa.schema(METRICS_COLUMNS))


@pytest.fixture
def synthetic_run(tmp_path):
    import dataclasses

    from rllib_app.config.train_config import TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    metrics = synthetic_metrics()
    pq.write_table(metrics, out / "metrics.parquet")
    last = metrics.to_pylist()[-1]
    accuracy = {r: last[f"greedy_accuracy_{r}"] for r in ("0", "1", "2", "2m")}
    config = dataclasses.asdict(TrainConfig(output=str(out), hidden_size=64))
    summary = {
        "target_reached": False, "stopped_by": None, "accuracy": accuracy, "mean_return": accuracy,
        "env_steps": last["env_steps"], "wall_seconds": last["wall_seconds"], "iterations": ITERATIONS,
        "checkpoint": None, "algo": "impala", "variant": "exact", "seed": 0, "promotions": PROMOTIONS,
        "placement": {}, "config": config,
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_the_synthesized_metrics_match_what_train_writes():
    from rllib_app.outputs.history import METRICS_SCHEMA

    assert synthetic_metrics().schema.equals(METRICS_SCHEMA)


def test_plot_draws_curves_greedy_points_and_promotions(synthetic_run):
    from rllib_app.evaluation.plot import STAGE_COLORS, load_run, make_figure

    run = load_run(synthetic_run)
    assert run.stages == (0, 1, 2) and run.metrics is not None
    fig = make_figure(run, mix=None)
    curves, tokens = fig.axes[:2]
    steps = [STEPS_PER_ITER * i for i in range(1, ITERATIONS + 1)]
    lines = [line for line in curves.get_lines() if len(line.get_xdata()) == ITERATIONS]
    # one sampled-accuracy line per trained stage, in its colour, along env steps
    assert [line.get_color() for line in lines] == list(STAGE_COLORS[:3])
    assert all(list(line.get_xdata()) == steps for line in lines)
    # greedy points on the evaluation iterations only (rows 0, 1, 2, 2m)
    markers = [line for line in curves.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata())]
    assert len(markers) == 4
    assert all(set(m.get_xdata()) <= {STEPS_PER_ITER * i for i in range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY)}
               for m in markers)
    # promotions: vertical lines at the env steps of their iterations
    vertical = sorted(line.get_xdata()[0] for line in curves.get_lines()
                      if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1])
    assert vertical == [STEPS_PER_ITER * p["iteration"] for p in PROMOTIONS]
    # no checkpoint: the token panel says so instead of drawing bars
    assert "no checkpoint" in " ".join(t.get_text() for t in tokens.texts)


def test_plot_bars_are_the_tokens_per_episode(synthetic_run):
    from collections import Counter

    from rllib_app.evaluation.plot import load_run, make_figure

    programs = {0: ["MUL MUL ADD ANS"] * 3 + ["ADD MUL ADD ANS"], 1: ["MUL MUL ADD SUB ANS"] * 4,
                2: ["MUL MUL ADD STO MUL MUL RCL SUB ANS"] * 2 + ["MUL MUL ANS"] * 2}
    mix = {}
    for s, progs in programs.items():
        tokens = Counter(t for p in progs for t in p.split())
        mix[s] = {"tokens": {n: tokens.get(n, 0) for n in ACTION_NAMES}, "episodes": len(progs), "accuracy": 0.5,
                  "programs": Counter(progs)}
    fig = make_figure(load_run(synthetic_run), mix)
    tokens = fig.axes[1]
    bars = {name: [] for name in ACTION_NAMES}
    for container in tokens.containers:
        bars[container.get_label()] = [round(p.get_height(), 6) for p in container.patches]
    assert bars["MUL"] == [1.75, 2.0, 3.0] and bars["STO"] == [0, 0, 0.5] and bars["ANS"] == [1, 1, 1]
    assert "MUL MUL ADD STO MUL MUL RCL SUB ANS" in tokens.get_xlabel()


def test_plot_and_report_of_a_run_without_checkpoint(synthetic_run):
    proc = run_quiet("plot", str(synthetic_run), "--out", str(synthetic_run / "other.png"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_png(synthetic_run / "other.png")
    assert not (synthetic_run / "curves.png").exists()
    assert not list(synthetic_run.glob(".*tmp*"))  # the atomic write left nothing behind

    proc = run_quiet("report", str(synthetic_run), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (synthetic_run / "report.md").read_text()
    check_png(synthetic_run / "curves.png")  # drawn because it was missing
    assert "![learning curves and action-token mix](curves.png)" in report
    assert "| **2m** | memory-required | `(a·b+c)−(d·e)` |" in report
    assert "No checkpoint in the run directory" in report
    assert "`hidden_size` | **`64`**" in report  # not the default (128): in bold


def test_plot_without_metrics_parquet_says_so_on_the_figure(synthetic_run):
    from rllib_app.evaluation.plot import load_run, make_figure

    (synthetic_run / "metrics.parquet").unlink()
    run = load_run(synthetic_run)
    curves = make_figure(run, mix=None).axes[0]
    assert "no metrics.parquet" in " ".join(t.get_text() for t in curves.texts)
    # the final greedy accuracy from summary.json is still there, at the run's env steps
    points = sorted(line.get_ydata()[0] for line in curves.get_lines() if line.get_linestyle() == "None")
    assert points == sorted(json.loads((synthetic_run / "summary.json").read_text())["accuracy"].values())


@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_refuse_what_is_not_a_run_directory(command, tmp_path):
    assert_usage_error(run_cli(command, str(tmp_path / "missing"), timeout=60), command,
                       f"run directory '{tmp_path / 'missing'}' does not exist")
    assert_usage_error(run_cli(command, str(tmp_path), timeout=60), command,
                       f"'{tmp_path}' has no summary.json; pass a directory written by 'toolagent train --output DIR'")
    (tmp_path / "summary.json").write_text("{not json")
    assert_usage_error(run_cli(command, str(tmp_path), timeout=60), command, "summary.json' is not JSON")


def test_plot_refuses_an_out_it_cannot_write(synthetic_run, tmp_path):
    for out, expected in [
        (tmp_path / "nowhere" / "a.png", f"directory '{tmp_path / 'nowhere'}' does not exist"),
        (synthetic_run / "summary.json" / "a.png", f"'{synthetic_run / 'summary.json'}' is not a directory"),
        (synthetic_run, "must name a .png file"),
        (tmp_path / "a.jpg", "must name a .png file"),
    ]:
        assert_usage_error(run_cli("plot", str(synthetic_run), "--out", str(out), timeout=60), "plot",
                           f"--out '{out}'", expected)
    assert not list(tmp_path.glob("**/*.png"))


def test_explain_refuses_files_that_are_not_episodes(synthetic_run, tmp_path):
    cases = [
        (synthetic_run / "summary.json", "is not a Parquet file"),
        (synthetic_run / "metrics.parquet", "is not an episodes file (no column row, context"),
        (tmp_path / "missing.parquet", "no such file"),
    ]
    for path, expected in cases:
        assert_usage_error(run_cli("explain", "--episodes", str(path), timeout=60), "explain",
                           f"--episodes '{path}'", expected)
    assert_usage_error(run_cli("explain", timeout=60), "explain", "give a CHECKPOINT")


# -- a real tiny training run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    train_in_process(out, max_iterations=2, eval_interval=2, eval_episodes=20, num_envs_per_env_runner=4,
                     train_batch_size_per_learner=128, hidden_size=32)
    return out


@pytest.fixture(scope="module")
def episodes_file(trained_run):
    """``toolagent eval --episodes-out`` on the run: (the file, the printed accuracy report)."""
    path = trained_run.parent / "episodes.parquet"
    proc = run_cli("eval", str(trained_run), "--episodes", "20", "--episodes-out", str(path), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote 80 episodes to {path}" in proc.stderr
    return path, json.loads(proc.stdout.strip().splitlines()[-1])["stages"]


def replay(record):
    """What the env did in this episode, recomputed: (context, target, answer)."""
    env = ToolMachineEnv({"variant": record["variant"], "hard_fraction": 1.0 if record["row"].endswith("m") else 0.0})
    env.reset(seed=record["seed"], options={"stage": record["stage"]})
    context = list(env.shown_digits)
    state, answer = MachineState(), None
    for name in record["tools"]:
        tool = ACTION_NAMES.index(name)
        state = apply_tool(state, tool, context)
        if tool == ANS:
            answer = state.acc
    return context, stage_target(record["stage"], context), answer


@pytest.mark.integration
def test_episodes_parquet_is_what_the_env_did(trained_run, episodes_file):
    path, report = episodes_file
    table = pq.read_table(path)
    assert [(f.name, f.type) for f in table.schema] == EPISODE_COLUMNS
    meta = json.loads(table.schema.metadata[b"toolagent"])
    assert meta["episodes_per_row"] == 20 and meta["checkpoint"] == str((trained_run / "checkpoint").resolve())
    records = table.to_pylist()
    assert [r["row"] for r in records] == [row for row in ("0", "1", "2", "2m") for _ in range(20)]
    hard = {tuple(c) for c in memory_required_contexts(2).tolist()}
    for r in records:
        context, target, answer = replay(r)
        assert r["context"] == context and r["target"] == target, r
        assert r["stage"] == int(r["row"].rstrip("m")) and r["variant"] == "exact"
        # the answer the machine gives for these tokens, ANS only ever last, within the step limit
        assert r["answer"] == answer and r["correct"] == (answer == target), r
        assert r["length"] == len(r["tools"]) <= 12 and ANS not in [ACTION_NAMES.index(t) for t in r["tools"][:-1]]
        assert r["return"] == float(r["correct"])  # evaluation is unshaped
        if r["row"].endswith("m"):
            assert r["stage"] in MEMORY_STAGES and tuple(context) in hard
    # the file and the printed report are the same episodes, and training's own evaluation (same seeds)
    summary = json.loads((trained_run / "summary.json").read_text())
    for row, stats in report.items():
        correct = [r["correct"] for r in records if r["row"] == row]
        assert stats["accuracy"] == sum(correct) / len(correct) == summary["accuracy"][row]


@pytest.mark.integration
def test_every_json_and_parquet_file_a_run_writes_carries_its_schema_version(trained_run, episodes_file):
    from rllib_app.outputs.checkpoints import RUN_INFO_FILE, SCHEMA_VERSION

    jsons = [trained_run / "summary.json", *sorted(trained_run.glob(f"checkpoints/*/{RUN_INFO_FILE}"))]
    assert len(jsons) >= 2
    for path in jsons:
        assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION, path
    for path in (trained_run / "metrics.parquet", episodes_file[0]):
        assert pq.read_schema(path).metadata[b"schema_version"] == str(SCHEMA_VERSION).encode(), path


@pytest.mark.integration
def test_tensorboard_reads_the_runs_curves(trained_run):
    """The README's `tensorboard --logdir OUTPUT/tensorboard`: what `make setup` installs
    reads every iteration's scalars, at their env steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"run/wall_seconds", "run/steps_per_second", "accuracy/greedy_accuracy_2m"} <= set(tags), tags
    rows = pq.read_table(trained_run / "metrics.parquet").to_pylist()
    assert [e.step for e in events.Scalars("run/wall_seconds")] == [r["env_steps"] for r in rows]


def play_exported(path, stage, episodes, env_config, seed):
    """docs/outputs.md's example: the exported policy, torch alone, greedy on a vector env."""
    import torch

    from envs import ToolMachineVectorEnv

    policy = torch.export.load(str(path)).module()
    hidden = json.loads(_extra(path)["toolagent.json"])["hidden_size"]
    env = ToolMachineVectorEnv(env_config, num_envs=episodes)
    obs, _ = env.reset(seed=seed, options={"stage": stage})
    h = torch.zeros(episodes, hidden)
    actions = [[] for _ in range(episodes)]
    active = np.ones(episodes, dtype=bool)
    while active.any():
        with torch.no_grad():
            logits, h = policy(torch.as_tensor(obs), h)
        chosen = logits.argmax(-1).numpy()
        for i in np.flatnonzero(active):
            actions[i].append(int(chosen[i]))
        obs, _, terminated, truncated, _ = env.step(chosen)
        active &= ~(terminated | truncated)
    return actions


def _extra(path):
    import torch

    files = {"toolagent.json": ""}
    torch.export.load(str(path), extra_files=files)
    return files


@pytest.mark.integration
def test_the_exported_policy_plays_the_greedy_actions_eval_plays(trained_run, tmp_path):
    from rllib_app.evaluation.evaluate import load_module, rollout

    path = tmp_path / "policy.pt2"
    proc = run_cli("export", str(trained_run), "--out", str(path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(_extra(path)["toolagent.json"])
    assert meta["export_version"] == 1 and meta["action_names"][-1] == "ANS" and meta["hidden_size"] == 32
    module, info = load_module(trained_run)
    for stage in (0, 1, 2):
        theirs = [e.actions for e in rollout(module, stage, 1000, env_config=info["env_config"], seed=11)]
        assert play_exported(path, stage, 1000, info["env_config"], seed=11) == theirs, stage
    bad = run_cli("export", str(trained_run), "--out", str(tmp_path / "policy.onnx"), timeout=120)
    assert bad.returncode == 2 and "--out" in bad.stderr and "must name a .pt2 file" in bad.stderr


@pytest.mark.integration
def test_explain_reads_the_episodes_file(episodes_file):
    path, _ = episodes_file
    records = pq.read_table(path).to_pylist()
    proc = run_cli("explain", "--episodes", str(path), "-n", "2", "--stage", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "row 2: stage 2, uniform contexts" in out and "row 2m: stage 2, memory-required contexts" in out
    assert "row 0:" not in out and "row 1:" not in out
    for row in ("2", "2m"):
        block = out.split(f"row {row}: ")[1].split("\n\n")[0].strip().splitlines()
        assert block[1].split() == ["context", "target", "tools", "answer", "correct"] and len(block) == 4
        first = [r for r in records if r["row"] == row][:2]
        for line, r in zip(block[2:], first):
            assert line.startswith(" ".join(map(str, r["context"]))) and " ".join(r["tools"]) in line
            assert line.split()[-1] == ("yes" if r["correct"] else "no")
    proc = run_cli("explain", "--episodes", str(path), timeout=120)
    assert proc.returncode == 0 and all(f"row {row}: " in proc.stdout for row in ("0", "1", "2", "2m"))


@pytest.mark.integration
def test_eval_refuses_an_episodes_out_it_cannot_write(trained_run, tmp_path):
    out = tmp_path / "nowhere" / "e.parquet"
    assert_usage_error(run_cli("eval", str(trained_run), "--episodes-out", str(out), timeout=120), "eval",
                       f"--episodes-out '{out}': directory '{out.parent}' does not exist")
    assert_usage_error(run_cli("eval", str(trained_run), "--episodes-out", str(tmp_path / "e.csv"), timeout=120),
                       "eval", "must name a .parquet file")


@pytest.mark.integration
def test_plot_and_report_of_a_trained_run(trained_run):
    proc = run_quiet("plot", str(trained_run), "--action-episodes", "50", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_png(trained_run / "curves.png")

    (trained_run / "curves.png").unlink()
    proc = run_quiet("report", str(trained_run), "-n", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_png(trained_run / "curves.png")  # made again: it was missing
    report = (trained_run / "report.md").read_text()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert report.startswith("# Run report: run")
    assert "| row | contexts | target | accuracy | mean return | ≥ 0.99 |" in report
    for row, acc in summary["accuracy"].items():
        assert f"| **{row}** |" in report and f"| {acc:.3f} |" in report
    assert "![learning curves and action-token mix](curves.png)" in report
    # two explained greedy trajectories per eval row, from the checkpoint
    for row in ("0", "1", "2", "2m"):
        section = report.split(f"**Row {row}**")[1].split("**Row")[0].split("## Config")[0]
        assert section.count("\n| ") == 2 + 2  # header, separator, two episodes
    assert "| setting | value | setting | value |" in report and "`hidden_size` | **`32`**" in report


def test_the_report_tells_answers_by_a_program_from_lucky_ones():
    from envs import ADD, MUL, RCL, STO, SUB
    from rllib_app.evaluation.evaluate import Episode, accuracy_report

    def episode(stage, context, tools, correct, variant="exact"):
        return Episode(stage=stage, digits=context, target=0, actions=list(tools), answered=True, answer=0,
                       correct=correct, episode_return=float(correct), variant=variant)

    memory = (MUL, MUL, ADD, STO, MUL, MUL, RCL, SUB, ANS)
    rows = {
        # d*e = 0: a*b+c is right here, but it is no program for stage 2
        "2": [episode(2, (1, 2, 3, 4, 0), (MUL, MUL, ADD, ANS), True), episode(2, (1, 2, 3, 4, 5), memory, True),
              episode(2, (1, 2, 3, 4, 5), (MUL, ANS), False), episode(2, (5, 6, 7, 8, 9), memory, True)],
        # the program of a + b*c*d + e is right on a + b*c + d*e only by luck, as when d = 1
        "4op": [episode(7, (2, 11, 3, 10, 4, 11, 5, 10, 6), (ADD, STO, MUL, MUL, RCL, ADD, STO, MUL, MUL, RCL, ADD, ANS),
                        True),
                episode(7, (2, 11, 3, 10, 4, 11, 1, 10, 6), (ADD, STO, MUL, MUL, MUL, ADD, RCL, ADD, ANS), True)],
        "seed": [episode(2, (1, 2, 3, 4, 5), (MUL, ADD, ANS), True, variant="seed")],
    }
    report = accuracy_report(rows)
    assert (report["2"]["accuracy"], report["2"]["program_accuracy"]) == (0.75, 0.5)
    assert (report["4op"]["accuracy"], report["4op"]["program_accuracy"]) == (1.0, 0.5)
    assert "program_accuracy" not in report["seed"]  # other rules: the check does not apply


def test_pattern_report_names_the_oracle_program_and_the_most_frequent_wrong_tools():
    from envs.oracle import compile_expression
    from rllib_app.evaluation.evaluate import Episode, pattern_report

    def episode(tokens, tools, correct):
        return Episode(stage=5, digits=tokens, target=0, actions=tools, answered=True, answer=0, correct=correct,
                       episode_return=float(correct))

    store = list(compile_expression((ADD, MUL)))  # a + b*c: MUL STO MUL MUL RCL ADD ANS
    fold = [MUL, ADD, MUL, ANS]  # (a + b)*c, the left fold
    rows = {"2op": [episode((2, 11, 3, 10, 4), store, True), episode((5, 11, 6, 10, 7), fold, False),
                    episode((1, 11, 2, 10, 3), fold, False), episode((1, 11, 2, 10, 9), [ADD, ANS], False),
                    episode((2, 10, 3, 11, 4), [MUL, MUL, ADD, ANS], True)]}
    first, second = pattern_report(rows)["2op"]
    assert first == {"pattern": "a + b*c", "needs_memory": True, "accuracy": 0.25, "episodes": 4,
                     "program": "MUL STO MUL MUL RCL ADD ANS", "wrong_tools": "MUL ADD MUL ANS", "wrong_count": 2}
    assert second["pattern"] == "a*b + c" and second["accuracy"] == 1.0
    assert second["wrong_tools"] is None and second["wrong_count"] == 0
