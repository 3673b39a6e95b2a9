"""``toolagent bench``: where the env steps per second go, and how we compare with the baseline.

One run measures, side by side (``DIR/bench.json``, and a table on stdout):

1. ``raw_env``: env steps/s of the env alone, random actions: one ``ToolMachineEnv``,
   gymnasium's ``SyncVectorEnv`` over 32 of them (what RLlib's default env loop
   steps), and the numpy ``ToolMachineVectorEnv`` with N=256.
2. ``inference``: ``ToolAgentGRUModule.forward_inference`` on a batch of 256
   observations (one env step each), in env steps/s, with one torch thread (as in an
   env runner) and with torch's default.
2b. ``learner``: the learner alone (``rllib_app.experiments.learner_speed``): A2C's and
   IMPALA's ``Learner.update`` on a recorded batch of 1k, 4k and 16k env steps (batch
   building and self-imitation included), one CPU thread, and CUDA where torch sees a GPU.
3. ``rllib_sampling``: sampled env steps/s of one env runner while IMPALA, A2C and
   PPO train (``num_env_steps_sampled_lifetime`` over wall time, after a warm-up
   iteration), each with gymnasium's env loop, with ``--native-vector-env`` and with
   ``--fast-env-runner`` (``BatchedEnvRunner`` over the native vector env), for a
   couple of ``--num-envs-per-env-runner`` values. A2C and PPO take batches of
   ``max(256, 8 x envs)`` (8 steps per env) so that a big env count still makes
   whole rollouts. The full run adds one row per algorithm with the driver's torch
   limited to one thread (the learner runs on the driver; Ray's workers get one).
4. ``rllib_training``: env steps and seconds to each milestone (greedy accuracy
   >= 0.99 on stage 0; on stages 0 and 1; on stages 0, 1, 2 and 2m) for IMPALA and
   A2C, each with ``toolagent train --algo ALGO``'s defaults (``rllib_app.training.loop.train``,
   milestones read from its ``on_iteration`` hook, i.e. at its evaluations). A2C
   evaluates after every update (1,024 env steps: one training step per iteration,
   ``--min-iteration-seconds 0 --eval-interval 1``), as the baseline does (2,048),
   IMPALA every iteration (>= 1 s, 2-4k env steps). Milestone times and the budget
   (``--minutes-per-training``) exclude evaluations and checkpoints. The table's last column compares the best of them
   (most milestones, the last one soonest) with the baseline.
5. ``baseline``: the same for the hand-written batched A2C (``rllib_app.experiments.baseline``),
   with the same budget of training seconds, plus its sampling rate alone.

Milestones not reached within the budget are reported as not reached (``null``).
``--seeds 0,1,2`` runs the baseline and the trainings once per seed (``seed_runs`` in
the JSON, each seed's logs in ``DIR/seed_S``; the other sections run once, with the
first seed) and adds a table of each seed's times and the medians: one seed's
time to a milestone is noisy (a baseline's first update can solve stage 0 by luck).
``--quick`` uses tiny budgets (one env count, ~2 s per sampling row, each of the
three loops with the first algorithm and ``BatchedEnvRunner`` with the others, 25 s
of training each) and finishes in about four minutes on 2 cores; the full run takes
about 5 x ``--minutes-per-training`` (A2C's evaluation after every update costs about
twice its training time; IMPALA's much less) plus 8-10 minutes (21 sampling rows of 15 s,
each with its algorithm build and warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

from rllib_app.config.arguments import UsageError, parse_seeds
from rllib_app.config.train_config import SYNCHRONOUS_ALGOS, TrainConfig

ALGOS = ("impala", "a2c", "ppo")
#: The algorithms whose milestones are compared with the baseline's: IMPALA (the scale-out
#: recipe) and A2C (``toolagent train``'s default, and the baseline's own method).
TRAINING_ALGOS = ("impala", "a2c")
#: The sections of bench.json, in the order they run.
SECTIONS = ("raw_env", "inference", "learner", "baseline", "rllib_sampling", "rllib_training")
#: Sections run only when named (``--sections scaling``): a training per resource setting.
OPT_IN_SECTIONS = ("scaling",)
#: ``rllib_app.experiments.baseline.MILESTONES`` (not imported here: it would load torch for every CLI command).
MILESTONE_ROWS = {"stage 0": ("0",), "stages 0-1": ("0", "1"), "stages 0-2": ("0", "1", "2", "2m")}


@dataclasses.dataclass
class BenchSettings:
    output: pathlib.Path
    quick: bool = False
    minutes_per_training: float = 15.0
    sampling_seconds: float = 15.0
    num_envs: tuple[int, ...] = (32, 256)
    algos: tuple[str, ...] = ALGOS
    seed: int = 0
    #: which of ``SECTIONS`` to run (the milestones alone: baseline and rllib_training)
    sections: tuple[str, ...] = SECTIONS
    #: the milestone sections once per seed (``seed`` is the first; the others run the
    #: baseline and the trainings only); empty: ``seed`` alone
    seeds: tuple[int, ...] = ()

    @classmethod
    def make(cls, output: str, quick: bool, minutes: float | None, seed: int,
             sections: tuple[str, ...] = SECTIONS, algos: tuple[str, ...] = ALGOS,
             seeds: tuple[int, ...] = ()) -> BenchSettings:
        seed = seeds[0] if seeds else seed
        if quick:
            return cls(pathlib.Path(output), quick=True, minutes_per_training=minutes or 25 / 60,
                       sampling_seconds=2.0, num_envs=(32,), seed=seed, sections=sections, algos=algos, seeds=seeds)
        return cls(pathlib.Path(output), minutes_per_training=15.0 if minutes is None else minutes, seed=seed,
                   sections=sections, algos=algos, seeds=seeds)

    def per_seed(self) -> list[tuple[BenchSettings, pathlib.Path]]:
        """The settings and output directory of each seed's milestone sections."""
        if len(self.seeds) < 2:
            return [(self, self.output)]
        return [(dataclasses.replace(self, seed=s), self.output / f"seed_{s}") for s in self.seeds]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rate(fn, seconds: float, steps_per_call: int) -> dict[str, Any]:
    """Call ``fn`` for about ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return {"steps_per_second": calls * steps_per_call / elapsed, "env_steps": calls * steps_per_call,
            "seconds": round(elapsed, 3)}


# -- 1. the env alone --------------------------------------------------------------------------
def bench_raw_env(seconds: float, seed: int) -> dict[str, Any]:
    import gymnasium as gym

    from envs import NUM_ACTIONS, ToolMachineEnv, ToolMachineVectorEnv

    config = TrainConfig().env_config()  # the env RLlib trains on: mask, hard contexts, shaping
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, NUM_ACTIONS, size=(4096, 256))
    out: dict[str, Any] = {"env_config": config}

    env = ToolMachineEnv(config)
    env.reset(seed=seed)
    flat = actions.ravel().tolist()
    cursor = [0]

    def single_step():
        for _ in range(256):
            a = flat[cursor[0] % len(flat)]
            cursor[0] += 1
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()

    out["single_env"] = {"num_envs": 1, **_rate(single_step, seconds, 256)}

    for name, n, make in (
        ("sync_vector_env", 32, lambda n: gym.vector.SyncVectorEnv([lambda: ToolMachineEnv(config)] * n)),
        ("numpy_vector_env", 256, lambda n: ToolMachineVectorEnv(config, num_envs=n)),
    ):
        venv = make(n)
        venv.reset(seed=seed)
        row = [0]

        def vector_step(venv=venv, n=n, row=row):
            venv.step(actions[row[0] % len(actions), :n])
            row[0] += 1

        out[name] = {"num_envs": n, **_rate(vector_step, seconds, n)}
    return out


# -- 2. module inference ---------------------------------------------------------------------------
def bench_inference(seconds: float, seed: int, batch: int = 256) -> dict[str, Any]:
    import torch
    from ray.rllib.core.columns import Columns

    from envs import ToolMachineVectorEnv
    from rllib_app.training.algorithms import module_spec

    cfg = TrainConfig(seed=seed)
    module = module_spec(cfg).build()
    module.eval()
    env = ToolMachineVectorEnv(cfg.env_config(), num_envs=batch)
    obs, _ = env.reset(seed=seed)
    obs_t = torch.as_tensor(obs)[:, None]
    state = {k: torch.as_tensor(np.asarray(v))[None].repeat(batch, 1) for k, v in module.get_initial_state().items()}

    def forward():
        with torch.no_grad():
            module.forward_inference({Columns.OBS: obs_t, Columns.STATE_IN: state})

    # 1 thread: what a Ray env runner gets (Ray sets OMP_NUM_THREADS=1 in its workers);
    # torch's default: what the driver (and the learner on it) uses.
    default = torch.get_num_threads()
    out = {"module": "ToolAgentGRUModule.forward_inference", "batch": batch}
    try:
        for threads in dict.fromkeys((1, default)):
            torch.set_num_threads(threads)
            result = _rate(forward, seconds, batch)
            out[f"threads_{threads}"] = {"torch_threads": threads, **result,
                                         "ms_per_call": 1000 * result["seconds"] * batch / max(result["env_steps"], 1)}
    finally:
        torch.set_num_threads(default)
    out["steps_per_second"] = out["threads_1"]["steps_per_second"]
    return out


# -- 3. RLlib sampling ------------------------------------------------------------------------------
def _sampling_config(algo: str, native: bool, num_envs: int, seed: int, output: pathlib.Path,
                     fast: bool = False) -> TrainConfig:
    extra = {} if algo == "impala" else {"train_batch_size_per_learner": max(256, 8 * num_envs)}
    # one remote runner for every algorithm (A2C's default samples on the driver instead):
    # these rows compare how one runner steps its envs
    return TrainConfig(algo=algo, native_vector_env=native or fast, fast_env_runner=fast, num_env_runners=1,
                       num_envs_per_env_runner=num_envs, seed=seed, output=str(output), **extra).validate()


def _lifetime_steps(result: dict) -> int:
    from rllib_app.outputs.history import finite_metric

    return int(finite_metric(result.get("env_runners", {}).get("num_env_steps_sampled_lifetime")) or 0)


def bench_rllib_sampling_row(cfg: TrainConfig, seconds: float, driver_threads: int | None = None) -> dict[str, Any]:
    """Sampled env steps/s of the run's one env runner, over ``seconds`` of training.
    ``driver_threads``: torch threads of the driver, where the learner runs (default: torch's)."""
    import torch

    default = torch.get_num_threads()
    torch.set_num_threads(driver_threads or default)
    try:
        row = _sampling_row(cfg, seconds)
    finally:
        torch.set_num_threads(default)
    return {**row, "driver_torch_threads": driver_threads or default}


def _sampling_row(cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    from rllib_app.training.algorithms import build_config

    t0 = time.perf_counter()
    algo = build_config(cfg).build_algo()
    build = time.perf_counter() - t0
    try:
        warm = time.perf_counter()
        steps0 = _lifetime_steps(algo.train())
        while steps0 == 0 and time.perf_counter() - warm < 60:  # IMPALA: the first samples may lag
            steps0 = _lifetime_steps(algo.train())
        start, steps, iterations = time.perf_counter(), steps0, 0
        # at least `seconds`, and (up to a minute) until a sample came back: IMPALA's
        # asynchronous samples can all land after a short window on a busy machine
        while (elapsed := time.perf_counter() - start) < seconds or (steps == steps0 and elapsed < 60):
            steps = _lifetime_steps(algo.train())
            iterations += 1
    finally:
        algo.stop()
    return {
        "algo": cfg.algo, "native_vector_env": cfg.native_vector_env, "fast_env_runner": cfg.fast_env_runner,
        "num_envs_per_env_runner": cfg.num_envs_per_env_runner,
        "num_env_runners": cfg.num_env_runners, "train_batch_size_per_learner": cfg.train_batch_size_per_learner,
        "iterations": iterations, "env_steps": steps - steps0, "seconds": round(elapsed, 2),
        "steps_per_second": (steps - steps0) / elapsed, "build_seconds": round(build, 2),
    }


def bench_rllib_sampling(settings: BenchSettings, logdir: pathlib.Path) -> list[dict[str, Any]]:
    # (native vector env, fast env runner): gymnasium's loop, the numpy vector env, BatchedEnvRunner on it
    loops = ((False, False), (True, False), (True, True))
    runs = [(algo, native, fast, num_envs, None) for algo in settings.algos for num_envs in settings.num_envs
            for native, fast in loops
            # --quick: every loop once (with the first algorithm) and every algorithm once (with
            # BatchedEnvRunner, the default's loop): each row costs an algorithm build
            if not settings.quick or algo == settings.algos[0] or fast]
    if not settings.quick:
        # the learner shares the driver's torch threads with nothing else, but the box with the
        # runner: one thread each (as Ray gives its workers) vs torch's default
        runs += [(algo, True, False, settings.num_envs[-1], 1) for algo in settings.algos]
    rows = []
    for algo, native, fast, num_envs, threads in runs:
        loop = "fast" if fast else "native" if native else "gym"
        name = f"{algo}-{loop}-{num_envs}" + (f"-driver{threads}" if threads else "")
        cfg = _sampling_config(algo, native, num_envs, settings.seed, logdir / name, fast=fast)
        try:
            with _quiet(logdir / f"{name}.log"):
                row = bench_rllib_sampling_row(cfg, settings.sampling_seconds, threads)
        except Exception as err:  # one broken row must not lose the others
            row = {"algo": algo, "native_vector_env": native, "fast_env_runner": fast,
                   "num_envs_per_env_runner": num_envs, "error": repr(err)}
        rows.append(row)
        _log(f"  rllib sampling {name}: " + (f"{row['steps_per_second']:,.0f} env steps/s"
                                             if "error" not in row else row["error"]))
    # The runner alone, without a learner sharing the cores: what one runner can feed a
    # learner on another machine (on 2 cores the learner, not the runner, bounds training).
    num_envs = 256
    for fast in (False, True):
        name = f"runner-alone-{'fast' if fast else 'native'}-{num_envs}"
        try:
            row = runner_alone_row(_sampling_config("impala", True, num_envs, settings.seed, logdir / name, fast=fast),
                                   settings.sampling_seconds)
        except Exception as err:
            row = {"native_vector_env": True, "fast_env_runner": fast, "num_envs_per_env_runner": num_envs,
                   "error": repr(err)}
        rows.append({"algo": None, "runner_alone": True, **row})
        _log(f"  {name}: " + (f"{row['steps_per_second']:,.0f} env steps/s" if "error" not in row else row["error"]))
    return rows


def runner_alone_row(cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    """One env runner as a Ray actor, sampling as IMPALA asks it to (sample, hand over the
    episodes, connector states and metrics), with no learner: env steps/s."""
    import ray
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from rllib_app.rl.batched_env_runner import BatchedEnvRunner
    from rllib_app.training.algorithms import build_config

    cls = BatchedEnvRunner if cfg.fast_env_runner else SingleAgentEnvRunner
    runner = ray.remote(num_cpus=1)(cls).remote(config=build_config(cfg), worker_index=1)
    try:
        for _ in range(3):  # warm-up (the fast runner freezes the GC after its first call)
            ray.get(runner.sample_get_state_and_metrics.remote())
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            _, _, metrics = ray.get(runner.sample_get_state_and_metrics.remote())
            steps += int(metrics["num_env_steps_sampled"].peek())
    finally:
        ray.kill(runner)
    return {"native_vector_env": True, "fast_env_runner": cfg.fast_env_runner,
            "num_envs_per_env_runner": cfg.num_envs_per_env_runner, "num_env_runners": 1,
            "rollout_fragment_length": cfg.rollout_fragment_length, "env_steps": steps,
            "seconds": round(elapsed, 2), "steps_per_second": steps / elapsed}


# -- 4./5. milestones ---------------------------------------------------------------------------------
def _milestones(points: list[dict[str, Any]], target: float) -> dict[str, dict[str, Any]]:
    """The first point (``{env_steps, wall_seconds, eval_seconds, accuracy: {row: acc}}``) at
    which each milestone's rows all reach ``target``; ``reached: False`` and nulls otherwise.
    ``training_seconds``: the wall seconds less those spent evaluating and checkpointing."""
    out = {}
    for name, rows in MILESTONE_ROWS.items():
        hit = next((p for p in points if all((p["accuracy"].get(r) or 0.0) >= target for r in rows)), None)
        out[name] = {"reached": hit is not None, "env_steps": hit and hit["env_steps"],
                     "wall_seconds": hit and hit["wall_seconds"],
                     "training_seconds": hit and round(hit["wall_seconds"] - hit["eval_seconds"], 2)}
    return out


def point_after_evaluation(metrics: dict[str, Any], eval_before: float) -> dict[str, Any]:
    """A ``train()`` iteration's ``{env_steps, wall_seconds, eval_seconds}`` as of the end of
    its evaluation, as the baseline reports its points. ``metrics["wall_seconds"]`` is read
    before the iteration evaluates and ``metrics["eval_seconds"]`` counts that evaluation
    too (``eval_before``: the count before it), so wall less eval alone would leave this
    evaluation out of the wall time but not out of the time subtracted."""
    spent = metrics["eval_seconds"] - eval_before
    return {"env_steps": metrics["env_steps"], "wall_seconds": round(metrics["wall_seconds"] + spent, 2),
            "eval_seconds": metrics["eval_seconds"]}


def bench_rllib_training(settings: BenchSettings, output: pathlib.Path) -> list[dict[str, Any]]:
    """One training per algorithm of ``TRAINING_ALGOS``, each with ``toolagent train --algo
    ALGO``'s defaults; a failed one is an ``error`` row and does not lose the others."""
    rows = []
    for algo in (a for a in TRAINING_ALGOS if a in settings.algos):
        _log(f"  rllib training: {algo} ({settings.minutes_per_training * 60:.0f} s) ...")
        try:
            rows.append(bench_rllib_training_row(algo, settings, output / algo))
        except Exception as err:
            rows.append({"algo": algo, "error": repr(err)})
            _log(f"  rllib training {algo}: failed: {err!r}")
    return rows


#: A training's wall-clock cap, in training budgets (evaluations and checkpoints are not
#: in the budget: see bench_rllib_training_row).
WALL_CAP_FACTOR = 5


def bench_rllib_training_row(algo: str, settings: BenchSettings, output: pathlib.Path,
                             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``toolagent train --algo ALGO`` (its defaults, ``overrides`` on top) to the budget,
    with the milestones it reached."""
    from rllib_app.training.loop import train

    budget = settings.minutes_per_training * 60
    # the budget is training seconds, as the baseline's (evaluating after every update costs
    # A2C about twice its training time); the wall-clock cap only guards against a hang
    cfg = TrainConfig(algo=algo, max_minutes=settings.minutes_per_training * WALL_CAP_FACTOR, seed=settings.seed,
                      output=str(output), **_evaluation_flags(algo), **(overrides or {})).validate()
    points: list[dict[str, Any]] = []
    evaluated = [0.0]  # eval_seconds as of the previous iteration
    trained = [0.0]  # training seconds as of the last iteration

    def on_iteration(metrics: dict[str, Any], checkpoint) -> bool:
        # train() evaluates (and checkpoints) every eval_interval iterations; in between, its
        # metrics repeat the last evaluation's accuracy
        accuracy = {row: metrics[f"accuracy_{row}"] for row in ("0", "1", "2", "2m") if f"accuracy_{row}" in metrics}
        point = point_after_evaluation(metrics, evaluated[0])
        evaluated[0] = metrics["eval_seconds"]
        if accuracy and checkpoint is not None:
            points.append({**point, "accuracy": accuracy})
        trained[0] = point["wall_seconds"] - point["eval_seconds"]
        return trained[0] >= budget

    with _quiet(output / "train.log"):
        summary = train(cfg, on_iteration=on_iteration)
    if summary["stopped_by"]:  # train() turned Ctrl-C/SIGTERM into an early end: end the bench too
        raise KeyboardInterrupt(summary["stopped_by"])
    seconds = summary["wall_seconds"]
    return {
        "algo": cfg.algo, "config": f"toolagent train --algo {cfg.algo} defaults, " + " ".join(
            f"--{k.replace('_', '-')} {v:g}" for k, v in _evaluation_flags(algo).items()),
        "num_env_runners": cfg.num_env_runners, "num_learners": cfg.num_learners,
        "num_gpus_per_learner": cfg.num_gpus_per_learner, "train_batch_size_per_learner": cfg.train_batch_size_per_learner,
        "num_envs_per_env_runner": cfg.num_envs_per_env_runner, "fast_env_runner": cfg.fast_env_runner,
        "native_vector_env": cfg.native_vector_env, "budget_minutes": settings.minutes_per_training,
        "stopped_by": "budget" if trained[0] >= budget else "target" if summary["target_reached"] else "wall cap",
        "milestones": _milestones(points, cfg.target_accuracy),
        "target_reached": summary["target_reached"], "accuracy": summary["accuracy"],
        "env_steps": summary["env_steps"], "wall_seconds": seconds, "eval_seconds": summary["eval_seconds"],
        "steps_per_second": _training_rate(summary["env_steps"], seconds, summary["eval_seconds"]),
        "iterations": summary["iterations"], "evaluations": len(points),
    }


def scaling_settings(cpus: int, gpus: int) -> list[tuple[str, dict[str, Any]]]:
    """The resource settings a machine with ``cpus`` CPUs and ``gpus`` GPUs can host, one
    process first: 1, 2, 4, ... env runners (one CPU each, one left for the driver), the
    GPU learner with the most runners, two CPU learners (DDP) where they fit."""
    settings: list[tuple[str, dict[str, Any]]] = [("one process (driver samples)", {"num_env_runners": 0})]
    runners, most = 1, 0
    while 1 + runners <= cpus:
        settings.append((f"{runners} env runner(s)", {"num_env_runners": runners}))
        most, runners = runners, runners * 2
    if gpus:
        settings.append((f"{most} env runner(s), GPU learner", {"num_env_runners": most, "num_gpus_per_learner": 1}))
    if cpus >= 4:
        fit = min(most, cpus - 3)
        settings.append((f"{fit} env runner(s), 2 CPU learners (DDP)", {"num_env_runners": fit, "num_learners": 2}))
    return settings


def bench_scaling(settings: BenchSettings, output: pathlib.Path) -> list[dict[str, Any]]:
    """Each training algorithm on every setting of ``scaling_settings`` for this machine."""
    import torch

    rows = []
    for algo in (a for a in TRAINING_ALGOS if a in settings.algos):
        for i, (label, overrides) in enumerate(scaling_settings(os.cpu_count() or 1, torch.cuda.device_count())):
            _log(f"  scaling: {algo}, {label} ({settings.minutes_per_training * 60:.0f} s) ...")
            try:
                row = bench_rllib_training_row(algo, settings, output / f"{algo}-{i}", overrides)
            except KeyboardInterrupt:
                raise
            except Exception as err:
                row = {"algo": algo, "error": repr(err)}
                _log(f"  scaling {algo}, {label}: failed: {err!r}")
            rows.append({"setting": label, "overrides": overrides, **row})
    return rows


def scaling_table(rows: list[dict[str, Any]]) -> str:
    """One line a setting: env steps/s while training, time and env steps to stages 0-2,
    and the ratios to the same algorithm's one-process setting."""
    lines = ["| algo | setting | batch per learner | env steps/s | stages 0-2 (2m): training s, env steps | "
             "env steps/s vs one process | time vs one process |", "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['algo']} | {r['setting']} | - | failed: {r['error'][:60]} | - | - | - |")
            continue
        base = first.setdefault(r["algo"], r)
        done = r["milestones"]["stages 0-2"]
        base_done = base["milestones"]["stages 0-2"]
        reached = f"{done['training_seconds']:.1f} s, {done['env_steps']:,}" if done["reached"] else "not reached"
        time_ratio = (f"{done['training_seconds'] / base_done['training_seconds']:.2f}x"
                      if done["reached"] and base_done["reached"] else "-")
        lines.append(f"| {r['algo']} | {r['setting']} | {r['train_batch_size_per_learner']:,} | "
                     f"{r['steps_per_second']:,.0f} | {reached} | {_ratio(r['steps_per_second'], base['steps_per_second'])} "
                     f"| {time_ratio} |")
    return "\n".join(lines)


def _evaluation_flags(algo: str) -> dict[str, Any]:
    """The ``TrainConfig`` fields with which ``algo``'s training evaluates after every update
    (a synchronous algorithm: one training step per iteration), as the baseline does, so a
    milestone is seen as soon as either side's policy reaches it; IMPALA, asynchronous,
    evaluates every iteration (>= 1 s, 2-4k env steps)."""
    if algo not in SYNCHRONOUS_ALGOS:
        return {"eval_interval": 1}
    return {"min_iteration_seconds": 0, "eval_interval": 1}


def bench_baseline(settings: BenchSettings, output: pathlib.Path) -> dict[str, Any]:
    from rllib_app.experiments import baseline

    args = baseline.Args(seed=settings.seed, max_seconds=settings.minutes_per_training * 60, verbose=False,
                         output=str(output / "baseline.json"))
    # evaluated after every update, as the RLlib trainings are (_evaluation_flags)
    args = dataclasses.replace(args, eval_every_steps=args.num_envs * args.rollout_steps)
    sampling = baseline.sampling_rate(args, seconds=min(settings.sampling_seconds, 5.0))
    with _quiet(output / "baseline.log"):
        result = baseline.train(args)
    return {
        "algo": "batched A2C (rllib_app.experiments.baseline)", "num_envs": args.num_envs, "rollout_steps": args.rollout_steps,
        "budget_minutes": settings.minutes_per_training, "sampling_steps_per_second": sampling,
        "milestones": {name: {k: m[k] for k in ("reached", "env_steps", "wall_seconds", "training_seconds")}
                       for name, m in result["milestones"].items()},
        "target_reached": result["solved"], "accuracy": result["accuracy"],
        "env_steps": result["env_steps"], "wall_seconds": result["wall_seconds"],
        "eval_seconds": result["eval_seconds"],
        "steps_per_second": _training_rate(result["env_steps"], result["wall_seconds"], result["eval_seconds"]),
        "updates": result["updates"],
    }


def _training_rate(env_steps: int, wall_seconds: float, eval_seconds: float) -> float:
    """Env steps per second of training: evaluations and checkpoints not counted."""
    seconds = wall_seconds - eval_seconds
    return env_steps / seconds if seconds > 0 else 0.0


# -- the run ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(path: pathlib.Path):
    """Send what a section prints (RLlib's and train()'s lines) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f, contextlib.redirect_stdout(f):
        yield


def _section(report: dict[str, Any], key: str, fn, *args, into: dict[str, Any] | None = None) -> None:
    """``into[key] = fn(*args)`` (``into``: the report itself by default), or its error;
    the seconds it took add to ``report["section_seconds"][key]``."""
    t0 = time.perf_counter()
    into = report if into is None else into
    try:
        into[key] = fn(*args)
    except Exception as err:
        into[key] = {"error": repr(err)}
        _log(f"{key}: failed: {err!r}")
    seconds = report["section_seconds"]
    seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - t0, 1)


def run(settings: BenchSettings, command: str = "") -> dict[str, Any]:
    import ray
    import torch

    from rllib_app.outputs.checkpoints import write_json_atomic

    out = settings.output
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    report: dict[str, Any] = {
        "command": command,
        "quick": settings.quick,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
                    "driver_torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(settings).items()},
        "section_seconds": {},
    }
    short = 0.5 if settings.quick else 5.0
    wanted = set(settings.sections)
    if "raw_env" in wanted:
        _log("raw env ...")
        _section(report, "raw_env", bench_raw_env, short, settings.seed)
    if "inference" in wanted:
        _log("module inference ...")
        _section(report, "inference", bench_inference, short, settings.seed)
    runs = settings.per_seed()
    seed_runs: list[dict[str, Any]] = [{"seed": one.seed} for one, _ in runs]
    if "baseline" in wanted:
        for (one, where), into in zip(runs, seed_runs):
            _log(f"baseline ({settings.minutes_per_training * 60:.0f} s, seed {one.seed}) ...")
            _section(report, "baseline", bench_baseline, one, where, into=into)
    if wanted & {"learner", "rllib_sampling", "rllib_training", "scaling"}:
        # one local Ray of our own for every RLlib section; runner output stays out of our table
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
        try:
            if "learner" in wanted:
                from rllib_app.experiments.learner_speed import bench_learner

                _log("learner alone ...")
                _section(report, "learner", bench_learner, settings.algos, settings.quick, settings.seed, out / "learner")
            if "rllib_sampling" in wanted:
                _log("rllib sampling ...")
                _section(report, "rllib_sampling", bench_rllib_sampling, settings, out / "rllib_sampling")
            if "rllib_training" in wanted:
                for (one, where), into in zip(runs, seed_runs):
                    _log(f"rllib training (seed {one.seed}) ...")
                    _section(report, "rllib_training", bench_rllib_training, one, where / "rllib_training", into=into)
            if "scaling" in wanted:
                _log("scaling ...")
                _section(report, "scaling", bench_scaling, settings, out / "scaling")
        finally:
            ray.shutdown()
    # the main table is the first seed's; the table over seeds adds the others
    report.update({k: v for k, v in seed_runs[0].items() if k != "seed"})
    if len(seed_runs) > 1:
        report["seed_runs"] = seed_runs
    report["load_average_at_end"] = list(os.getloadavg())
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    report["table"] = bench_table(report)
    if isinstance(report.get("scaling"), list):
        report["table"] += "\n\nScaling: every resource setting this machine hosts\n\n" + scaling_table(report["scaling"])
    write_json_atomic(out / "bench.json", report)
    return report


# -- the table --------------------------------------------------------------------------------------
def best_training(trainings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The RLlib training that reached the most milestones, the last of them soonest."""
    def key(t):
        reached = [m for m in t["milestones"].values() if m["reached"]]
        return (-len(reached), reached[-1]["training_seconds"] if reached else 0.0)

    ranked = sorted((t for t in trainings if "milestones" in t), key=key)
    return ranked[0] if ranked else None


def _loop_label(row: dict[str, Any]) -> str:
    """How a row's env runner steps its envs."""
    if row.get("fast_env_runner"):
        return "BatchedEnvRunner, native vector env"
    return "native vector env" if row["native_vector_env"] else "gymnasium loop"


def _runners_label(row: dict[str, Any]) -> str:
    """Where a row sampled: its remote runners, or the driver's own (0 runners)."""
    n = row.get("num_env_runners", 1)
    return "driver" if n == 0 else f"{n} runner{'s' if n > 1 else ''}"


def _ratio(value, base) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def bench_table(report: dict[str, Any]) -> str:
    base = report.get("baseline", {})
    base_rate = base.get("steps_per_second")
    lines = ["| what | setting | env steps/s | vs baseline training |", "| --- | --- | ---: | ---: |"]

    def add(what, setting, rate):
        lines.append(f"| {what} | {setting} | {rate:,.0f} | {_ratio(rate, base_rate)} |" if rate
                     else f"| {what} | {setting} | - | - |")

    raw = report.get("raw_env", {})
    for key, what in (("single_env", "env alone: ToolMachineEnv"), ("sync_vector_env", "env alone: SyncVectorEnv"),
                      ("numpy_vector_env", "env alone: ToolMachineVectorEnv")):
        if key in raw:
            add(what, f"{raw[key]['num_envs']} envs", raw[key]["steps_per_second"])
    inf = report.get("inference", {})
    for key, row in inf.items():
        if key.startswith("threads_"):
            add("module forward_inference", f"batch {inf['batch']}, {row['torch_threads']} torch thread(s) "
                f"({row['ms_per_call']:.2f} ms/call)", row["steps_per_second"])
    learner = report.get("learner")
    for row in learner if isinstance(learner, list) else []:
        what = f"RLlib {row['algo']} learner alone (batch + update)"
        setting = (f"{row['batch_env_steps']:,}-step batch, {row.get('learners', 1)} x {row['device']} "
                   f"({row['torch_threads']} thread(s) each)")
        if "error" in row:
            lines.append(f"| {what} | {setting} | error | - |")
        else:
            add(what, f"{setting}, {row['ms_per_update']:,.1f} ms/update", row["env_steps_per_s"])
    if "sampling_steps_per_second" in base:
        add("baseline sampling (policy + env)", f"{base['num_envs']} envs", base["sampling_steps_per_second"])
    if base_rate:
        add("**baseline training** (sample + learn)", f"{base['num_envs']} envs x {base['rollout_steps']} steps",
            base_rate)
    sampling = report.get("rllib_sampling")
    for row in sampling if isinstance(sampling, list) else []:
        setting = f"{_runners_label(row)} x {row['num_envs_per_env_runner']} envs, {_loop_label(row)}"
        if row.get("runner_alone"):
            what = "RLlib env runner alone (no learner)"
            if "error" in row:
                lines.append(f"| {what} | {setting} | error | - |")
            else:
                add(what, setting, row["steps_per_second"])
            continue
        if row.get("driver_torch_threads") == 1:
            setting += ", driver torch threads 1"
        if "error" in row:
            lines.append(f"| RLlib {row['algo']} sampling | {setting} | error | - |")
        else:
            add(f"RLlib {row['algo']} sampling", setting, row["steps_per_second"])
    trainings = report.get("rllib_training")
    trainings = [t for t in trainings if "error" not in t] if isinstance(trainings, list) else []
    for t in trainings:
        add(f"RLlib {t['algo']} training (defaults)",
            f"{_runners_label(t)} x {t['num_envs_per_env_runner']} envs, {_loop_label(t)}", t["steps_per_second"])

    def cell(m):
        if not m:
            return "-"
        if not m["reached"]:
            return "not reached"
        return f"{m['env_steps']:,}, {m['training_seconds']:.1f} s ({m['wall_seconds']:.1f} s)"

    best = best_training(trainings)
    lines += ["", "| milestone (greedy >= 0.99) | baseline: env steps, training s (wall s) | "
              + " | ".join(f"RLlib {t['algo']}: env steps, training s (wall s)" for t in trainings)
              + (f" | best RLlib ({best['algo']}) / baseline: env steps, time |" if best else " |"),
              "| --- | --- | " + "--- | " * len(trainings) + ("--- |" if best else "")]
    for name, rows in MILESTONE_ROWS.items():
        b = base.get("milestones", {}).get(name)
        cells = [cell(b)] + [cell(t["milestones"].get(name)) for t in trainings]
        if best:
            r = best["milestones"].get(name)
            both = b and r and b["reached"] and r["reached"]
            cells.append(f"{_ratio(r['env_steps'], b['env_steps'])}, "
                         f"{_ratio(r['training_seconds'], b['training_seconds'])}"
                         if both else "-")
        lines.append(f"| {name} ({', '.join(rows)}) | " + " | ".join(cells) + " |")
    if report.get("seed_runs"):
        lines += ["", format_seed_table(report["seed_runs"])]
    budgets = [f"{x.get('budget_minutes', 0) * 60:.0f} s" for x in (base, *trainings) if x.get("budget_minutes")]
    if budgets:
        lines.append(f"\nBudget per training: {budgets[0]}. Machine load average at start: "
                     f"{', '.join(f'{v:.1f}' for v in report.get('machine', {}).get('load_average_at_start', []))}.")
    return "\n".join(lines)


def _median_milestones(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per milestone, the median env steps and training seconds over ``runs`` (a run that
    did not reach it counts as infinitely late, so the median is reached only if more
    than half the runs reached it)."""
    out = {}
    for name in MILESTONE_ROWS:
        hits = [r.get("milestones", {}).get(name) or {"reached": False} for r in runs]
        med = {k: float(np.median([m[k] if m["reached"] else np.inf for m in hits]))
               for k in ("env_steps", "training_seconds")}
        reached = bool(np.isfinite(med["training_seconds"]))
        out[name] = {"reached": reached, "env_steps": med["env_steps"] if reached else None,
                     "training_seconds": med["training_seconds"] if reached else None,
                     "seeds_reached": sum(m["reached"] for m in hits)}
    return out


def format_seed_table(seed_runs: list[dict[str, Any]]) -> str:
    """Training time to each milestone per seed, baseline against the RLlib algorithm
    whose medians are best, and the medians' ratio."""
    def ok(x):
        return isinstance(x, dict) and "milestones" in x

    def training(run, algo):  # one seed's training of algo ({} if it failed or did not run)
        trainings = run.get("rllib_training")
        return next((t for t in trainings if ok(t) and t["algo"] == algo), {}) if isinstance(trainings, list) else {}

    bases = [r.get("baseline") for r in seed_runs]
    algos = dict.fromkeys(t["algo"] for r in seed_runs if isinstance(r.get("rllib_training"), list)
                          for t in r["rllib_training"] if ok(t))
    medians = [{"algo": a, "milestones": _median_milestones([training(r, a) for r in seed_runs])} for a in algos]
    best = best_training(medians)
    if best is None or not all(ok(b) for b in bases):
        return "(no milestones over seeds: a baseline or every RLlib training failed)"
    algo = best["algo"]
    base_median = _median_milestones(bases)

    def seconds(m):
        return f"{m['training_seconds']:.1f} s" if m and m["reached"] else "not reached"

    def pair(b, r):
        both = b and r and b["reached"] and r["reached"]
        return f"{seconds(b)} / {seconds(r)}" + (f" ({_ratio(r['training_seconds'], b['training_seconds'])})"
                                                  if both else "")

    lines = [f"| milestone: training s, baseline / RLlib {algo} | "
             + " | ".join(f"seed {r['seed']}" for r in seed_runs)
             + f" | median over {len(seed_runs)} seeds | median env steps, baseline / RLlib {algo} |",
             "|" + " --- |" * (len(seed_runs) + 3)]
    for name, rows in MILESTONE_ROWS.items():
        cells = []
        for r, b in zip(seed_runs, bases):
            cells.append(pair(b["milestones"].get(name), training(r, algo).get("milestones", {}).get(name)))
        b, m = base_median[name], best["milestones"][name]
        cells.append(f"**{pair(b, m)}**")
        cells.append(f"{b['env_steps']:,.0f} / {m['env_steps']:,.0f}" if b["reached"] and m["reached"] else "-")
        lines.append(f"| {name} ({', '.join(rows)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (~2 minutes on 2 cores); milestones may be unreached")
    parser.add_argument("--output", metavar="DIR", default="runs/bench",
                        help="directory for bench.json and the runs' logs (default: runs/bench)")
    parser.add_argument("--minutes-per-training", type=float, default=None,
                        help="budget of each training (the baseline, IMPALA, A2C) in training minutes: wall time less "
                             "evaluations and checkpoints (default: 15; --quick: 25 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trainings (default: 0)")
    parser.add_argument("--seeds", default=None, metavar="A,B",
                        help="train the baseline and the RLlib algorithms once per seed (the other sections run "
                             "with the first) and add a table of the milestones per seed and their medians")
    parser.add_argument("--sections", default=",".join(SECTIONS), metavar="A,B",
                        help=f"which sections to run, of {', '.join(SECTIONS)} (default: these), and scaling "
                             "(only when named: a2c and impala trained on every resource setting this machine hosts; "
                             "the milestones alone: baseline,rllib_training)")
    parser.add_argument("--algos", default=",".join(ALGOS), metavar="A,B",
                        help=f"which RLlib algorithms to sample and train, of {', '.join(ALGOS)} (default: all; "
                             f"the milestones are trained for {' and '.join(TRAINING_ALGOS)})")


def main(args: argparse.Namespace) -> int:
    if args.minutes_per_training is not None and not args.minutes_per_training > 0:
        raise UsageError(f"--minutes-per-training must be > 0, got {args.minutes_per_training}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    seeds: tuple[int, ...] = ()
    if args.seeds is not None:
        if args.seed:
            raise UsageError("give --seed or --seeds, not both")
        seeds = tuple(parse_seeds(args.seeds))
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS + OPT_IN_SECTIONS]
    if unknown or not sections:
        raise UsageError(f"--sections {args.sections!r}: each must be one of {', '.join(SECTIONS + OPT_IN_SECTIONS)}")
    algos = tuple(a.strip() for a in args.algos.split(",") if a.strip())
    if not algos or any(a not in ALGOS for a in algos):
        raise UsageError(f"--algos {args.algos!r}: each must be one of {', '.join(ALGOS)}")
    out = pathlib.Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {args.output!r} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise UsageError(f"--output {args.output!r} is not writable ({err.strerror or err})") from None
    command = " ".join(["toolagent bench", *(["--quick"] if args.quick else []), "--output", args.output,
                        *([f"--minutes-per-training {args.minutes_per_training:g}"] if args.minutes_per_training else []),
                        *([f"--seed {args.seed}"] if args.seed else []),
                        *([f"--seeds {','.join(map(str, seeds))}"] if seeds else []),
                        *([f"--sections {','.join(sections)}"] if sections != SECTIONS else []),
                        *([f"--algos {','.join(algos)}"] if algos != ALGOS else [])])
    report = run(BenchSettings.make(args.output, args.quick, args.minutes_per_training, args.seed, sections, algos,
                                    seeds), command)
    print(report["table"])
    print(f"\nwrote {out / 'bench.json'} ({report['total_seconds']:.0f} s)")
    failed = [k for k in ("raw_env", "inference", "rllib_sampling")
              if isinstance(report.get(k), dict) and "error" in report[k]]
    if isinstance(report.get("rllib_sampling"), list):
        failed += [f"rllib_sampling {r['algo']} {r['num_envs_per_env_runner']}" for r in report["rllib_sampling"]
                   if "error" in r]
    for one in report.get("seed_runs") or [report]:  # the milestone sections, of every seed
        where = f" (seed {one['seed']})" if "seed" in one else ""
        if isinstance(one.get("baseline"), dict) and "error" in one["baseline"]:
            failed.append(f"baseline{where}")
        if isinstance(one.get("rllib_training"), dict) and "error" in one["rllib_training"]:
            failed.append(f"rllib_training{where}")
        if isinstance(one.get("rllib_training"), list):
            failed += [f"rllib_training {r['algo']}{where}" for r in one["rllib_training"] if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
