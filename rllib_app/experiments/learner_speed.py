"""``toolagent bench --sections learner``: how fast the learner alone learns, in env steps/s.

Each setting (algorithm x batch size x learners) builds the algorithm as ``toolagent
train`` would (the algorithm's defaults, self-imitation on), samples one batch of
episodes once on the driver's env runner, then times only the learners: ``Learner.update``
on those episodes, batch building (the learner connectors, self-imitation's harvest)
and gradient steps included, as A2C's training step and IMPALA's learner thread call
it. Env steps/s = the batch's env steps x updates / seconds. CPU rows run with one
torch thread per learner (what a learner on a busy machine gets); CUDA rows run where
torch sees a GPU. With two CPU learners (where the machine has two cores for them) the
same batch is split between two learner processes that average their gradients (DDP,
RLlib's ``LearnerGroup``): what adding a learner adds. The replay is warmed by the
first updates, so the timed ones replay as a run does.

How to run::

    toolagent bench --sections learner                 # a2c and impala; 1k, 4k, 16k env steps
    toolagent bench --sections learner --quick         # 1k only, a few updates (one learner)

Results to expect: docs/benchmarks.md, "The learner alone".
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from rllib_app.config.train_config import TrainConfig

#: The algorithms whose learner is timed (issue 30's pair: the default and the scale-out one).
LEARNER_ALGOS = ("a2c", "impala")
BATCH_SIZES = (1024, 4096, 16384)
QUICK_BATCH_SIZES = (1024,)
#: env steps each env contributes to one batch (A2C's default chunk: 64 envs x 16 = 1,024)
CHUNK = 16


def learner_config(algo: str, batch: int, device: str, seed: int, output: pathlib.Path,
                   learners: int = 1) -> TrainConfig:
    """The algorithm's ``toolagent train`` defaults with a batch of ``batch`` env steps
    sampled by the driver's env runner (A2C: ``batch / CHUNK`` envs, one chunk each) and
    learned by ``learners`` learners (1: on the driver; more: remote, DDP), each taking its share."""
    envs = max(1, batch // CHUNK)
    return TrainConfig(
        algo=algo, num_env_runners=0, num_envs_per_env_runner=envs, fast_env_runner=True,
        train_batch_size_per_learner=max(1, batch // learners), rollout_fragment_length=CHUNK,
        num_learners=0 if learners == 1 else learners,
        num_gpus_per_learner=1 if device == "cuda" else 0, seed=seed, output=str(output),
    ).validate()


def time_learner(cfg: TrainConfig, updates: int, warmup: int) -> dict[str, Any]:
    """Sample one batch, then ``warmup`` untimed and ``updates`` timed learner updates on it."""
    from ray.rllib.core.learner.learner import Learner
    from ray.rllib.core.learner.training_data import TrainingData
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    from rllib_app.training.algorithms import build_config

    algo = build_config(cfg).build_algo()
    try:
        runner = algo.env_runner_group.local_env_runner
        learners = max(1, cfg.num_learners)
        episodes = runner.sample(num_timesteps=cfg.train_batch_size_per_learner * learners, random_actions=False)
        env_steps = sum(len(e) for e in episodes)
        group = algo.learner_group
        # A2C's training step passes its batch size; IMPALA's learner takes what it is given,
        # except that RLlib's split between remote learners needs a size: one share each
        minibatch = cfg.train_batch_size_per_learner if cfg.algo == "a2c" or not group.is_local else None

        def update(i: int) -> None:
            timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: (i + 1) * env_steps}
            if group.is_local:  # the learner in this process: nothing but its update
                Learner.update(group._learner, training_data=TrainingData(episodes=episodes), timesteps=timesteps,
                               num_epochs=1, minibatch_size=minibatch, _no_metrics_reduce=True)
            else:  # remote learners: the group splits the episodes between them, as in training
                group.update(episodes=episodes, timesteps=timesteps, num_epochs=1, minibatch_size=minibatch)

        for i in range(warmup):
            update(i)
        start = time.perf_counter()
        for i in range(updates):
            update(warmup + i)
        seconds = time.perf_counter() - start
        replay = getattr(group._learner, "_sil_replays", {}) if group.is_local else {}
        return {
            "env_steps_per_update": env_steps, "updates": updates, "seconds": round(seconds, 3),
            "ms_per_update": round(1000 * seconds / updates, 2),
            "env_steps_per_s": round(env_steps * updates / seconds, 1),
            **({"sil_replay_episodes": sum(len(r) for r in replay.values())} if group.is_local else {}),
        }
    finally:
        algo.stop()


def learner_settings(cpus: int, cuda: bool) -> list[tuple[str, int]]:
    """``(device, learners)`` to time: one CPU learner; one GPU learner where torch sees a
    GPU; two CPU learners where the machine has a core for each."""
    return [("cpu", 1)] + ([("cuda", 1)] if cuda else []) + ([("cpu", 2)] if cpus >= 2 else [])


def bench_learner(algos: tuple[str, ...], quick: bool, seed: int, output: pathlib.Path) -> list[dict[str, Any]]:
    """One row per algorithm, batch size and setting (``learner_settings``); quick: one
    learner on the CPU only."""
    import os

    import torch

    from rllib_app.experiments.baseline import torch_threads

    settings = [("cpu", 1)] if quick else learner_settings(os.cpu_count() or 1, torch.cuda.is_available())
    rows = []
    for algo in [a for a in algos if a in LEARNER_ALGOS]:
        for batch in QUICK_BATCH_SIZES if quick else BATCH_SIZES:
            for device, learners in settings:
                cfg = learner_config(algo, batch, device, seed, output / f"{algo}-{batch}-{device}-x{learners}", learners)
                # remote learners take their torch threads from Ray (OMP_NUM_THREADS=1 in its workers)
                threads = 1 if device == "cpu" else torch.get_num_threads()
                row = {"algo": algo, "batch_env_steps": batch, "device": device, "learners": learners,
                       "torch_threads": threads}
                try:
                    with torch_threads(threads):
                        row.update(time_learner(cfg, updates=3 if quick else 10, warmup=2 if quick else 5))
                except Exception as err:  # one setting failing leaves the others' figures
                    row["error"] = repr(err)
                rows.append(row)
    return rows


def learner_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| learner | batch (env steps) | learners x device | ms per update | env steps/s |",
             "| --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        n = r.get("learners", 1)
        threads = r["torch_threads"]
        where = f"{n} x {r['device']} ({threads} thread{'s' if threads > 1 else ''}{' each' if n > 1 else ''})"
        if "error" in r:
            lines.append(f"| {r['algo']} | {r['batch_env_steps']:,} | {where} | failed: {r['error'][:60]} | - |")
        else:
            lines.append(f"| {r['algo']} | {r['env_steps_per_update']:,} | {where} | {r['ms_per_update']:,.1f} | "
                         f"{r['env_steps_per_s']:,.0f} |")
    return "\n".join(lines)
