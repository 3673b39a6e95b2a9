"""``toolagent bench --sections learner``: how fast the learner alone learns, in env steps/s.

Each setting (algorithm x batch size x device) builds the algorithm as ``toolagent train``
would (the algorithm's defaults, self-imitation on), samples one batch of episodes
once on the driver's env runner, then times only the learner: ``Learner.update`` on
those episodes, batch building (the learner connectors, self-imitation's harvest)
and gradient steps included, as A2C's training step and IMPALA's learner thread call
it. Env steps/s = the batch's env steps x updates / seconds. CPU rows run with one
torch thread (what a learner on a busy machine gets); CUDA rows run where torch sees
a GPU. The replay is warmed by the first updates, so the timed ones replay as a run
does.

How to run::

    toolagent bench --sections learner                 # a2c and impala; 1k, 4k, 16k env steps
    toolagent bench --sections learner --quick         # 1k only, a few updates

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


def learner_config(algo: str, batch: int, device: str, seed: int, output: pathlib.Path) -> TrainConfig:
    """The algorithm's ``toolagent train`` defaults with a learner batch of ``batch`` env
    steps sampled by the driver's env runner (A2C: ``batch / CHUNK`` envs, one chunk each)."""
    envs = max(1, batch // CHUNK)
    return TrainConfig(
        algo=algo, num_env_runners=0, num_envs_per_env_runner=envs, fast_env_runner=True,
        train_batch_size_per_learner=batch, rollout_fragment_length=CHUNK,
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
        episodes = runner.sample(num_timesteps=cfg.train_batch_size_per_learner, random_actions=False)
        env_steps = sum(len(e) for e in episodes)
        learner = algo.learner_group._learner  # num_learners=0: the learner in this process
        minibatch = cfg.train_batch_size_per_learner if cfg.algo == "a2c" else None

        def update(i: int) -> None:
            Learner.update(learner, training_data=TrainingData(episodes=episodes),
                           timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: (i + 1) * env_steps},
                           num_epochs=1, minibatch_size=minibatch, _no_metrics_reduce=True)

        for i in range(warmup):
            update(i)
        start = time.perf_counter()
        for i in range(updates):
            update(warmup + i)
        seconds = time.perf_counter() - start
        replay = getattr(learner, "_sil_replays", {})
        return {
            "env_steps_per_update": env_steps, "updates": updates, "seconds": round(seconds, 3),
            "ms_per_update": round(1000 * seconds / updates, 2),
            "env_steps_per_s": round(env_steps * updates / seconds, 1),
            "sil_replay_episodes": sum(len(r) for r in replay.values()),
        }
    finally:
        algo.stop()


def bench_learner(algos: tuple[str, ...], quick: bool, seed: int, output: pathlib.Path) -> list[dict[str, Any]]:
    """One row per algorithm, batch size and device (``cpu`` with one thread; ``cuda``
    where torch sees a GPU)."""
    import torch

    from rllib_app.experiments.baseline import torch_threads

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for algo in [a for a in algos if a in LEARNER_ALGOS]:
        for batch in QUICK_BATCH_SIZES if quick else BATCH_SIZES:
            for device in devices:
                cfg = learner_config(algo, batch, device, seed, output / f"{algo}-{batch}-{device}")
                row = {"algo": algo, "batch_env_steps": batch, "device": device,
                       "torch_threads": 1 if device == "cpu" else torch.get_num_threads()}
                try:
                    with torch_threads(1 if device == "cpu" else torch.get_num_threads()):
                        row.update(time_learner(cfg, updates=3 if quick else 10, warmup=2 if quick else 5))
                except Exception as err:  # one setting failing leaves the others' figures
                    row["error"] = repr(err)
                rows.append(row)
    return rows


def learner_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| learner | batch (env steps) | device | ms per update | env steps/s |", "| --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['algo']} | {r['batch_env_steps']:,} | {r['device']} | failed: {r['error'][:60]} | - |")
        else:
            device = f"{r['device']} ({r['torch_threads']} thread{'s' if r['torch_threads'] > 1 else ''})"
            lines.append(f"| {r['algo']} | {r['env_steps_per_update']:,} | {device} | {r['ms_per_update']:,.1f} | "
                         f"{r['env_steps_per_s']:,.0f} |")
    return "\n".join(lines)
