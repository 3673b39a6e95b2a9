"""Where a run's processes go: the Ray it joins or starts, the resources it needs checked
(or waited for, on a cluster) before anything is built, and the nodes its parts landed on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import ray

from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import SYNCHRONOUS_ALGOS, TrainConfig


def missing_resources(cfg: TrainConfig, available: dict[str, float]) -> list[str]:
    """What the run's learners and env runners ask for that ``available`` lacks."""
    need: dict[str, float] = {}
    if cfg.num_gpus_per_learner:
        need["GPU"] = cfg.num_gpus_per_learner * max(1, cfg.num_learners)
    if cfg.env_runner_resource and cfg.num_env_runners:
        need[cfg.env_runner_resource] = cfg.num_env_runners
    if cfg.learner_resource:
        need[cfg.learner_resource] = cfg.num_learners
    return [f"{name} {amount:g} (has {available.get(name, 0.0):g})" for name, amount in need.items()
            if available.get(name, 0.0) < amount]


def _resource_error(cfg: TrainConfig, missing: list[str], where: str) -> UsageError:
    return UsageError(
        f"{where} cannot host this run: it needs {', '.join(missing)}. GPUs: --num-gpus-per-learner 0 learns on "
        "CPU; custom resources (--env-runner-resource, --learner-resource) must be declared by some node "
        "(cluster.yaml, or `ray start --resources`)"
    )


def check_resources(cfg: TrainConfig, available: dict[str, float], where: str) -> None:
    """Fail now, not after Ray has waited forever for resources that will never come."""
    missing = missing_resources(cfg, available)
    if missing:
        raise _resource_error(cfg, missing, where)


def run_bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """What the run's remote processes take, one bundle each: every env runner and every
    remote learner (the driver is already running)."""
    runner = {"CPU": float(cfg.num_cpus_per_env_runner),
              **({cfg.env_runner_resource: 1.0} if cfg.env_runner_resource else {})}
    learner = {"CPU": 1.0, **({"GPU": float(cfg.num_gpus_per_learner)} if cfg.num_gpus_per_learner else {}),
               **({cfg.learner_resource: 1.0} if cfg.learner_resource else {})}
    return [dict(runner) for _ in range(cfg.num_env_runners)] + [dict(learner) for _ in range(cfg.num_learners)]


#: Whether this process asked the autoscaler for resources (cleared when the run ends).
_requested = False


def request_run_resources(cfg: TrainConfig) -> None:
    """Tell Ray's autoscaler what the run needs, so it starts the nodes: waiting alone
    creates no demand (cluster.yaml's learner nodes start from zero)."""
    global _requested
    from ray.autoscaler.sdk import request_resources

    bundles = run_bundles(cfg)
    request_resources(bundles=bundles)
    _requested = True
    print(f"asked the autoscaler for {len(bundles)} bundle(s): {cfg.num_env_runners} env runner(s), "
          f"{cfg.num_learners} learner(s)", flush=True)


def release_requested_resources() -> None:
    """Withdraw ``request_run_resources``' request (the autoscaler may scale down again)."""
    global _requested
    if _requested and ray.is_initialized():
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
    _requested = False


def wait_for_cluster_resources(cfg: TrainConfig) -> None:
    """On a cluster an autoscaler may still add the nodes (cluster.yaml's min_workers 0):
    ask it for them, wait up to --resource-wait-minutes, then fail with what is missing."""
    deadline = time.time() + cfg.resource_wait_minutes * 60
    next_note = 0.0
    if missing_resources(cfg, ray.cluster_resources()):
        request_run_resources(cfg)
    while missing := missing_resources(cfg, ray.cluster_resources()):
        if time.time() >= deadline:
            raise _resource_error(cfg, missing, f"the Ray cluster (after {cfg.resource_wait_minutes:g} min)")
        if time.time() >= next_note:
            print(f"waiting for the cluster to offer {', '.join(missing)} (up to "
                  f"{cfg.resource_wait_minutes:g} min: --resource-wait-minutes)", flush=True)
            next_note = time.time() + 30
        time.sleep(2)


def auto_resources(cfg: TrainConfig, cpus: float, gpus: float, *, local: bool) -> dict[str, Any]:
    """``--resources auto``: runners, learners and GPUs for a Ray that offers ``cpus`` CPUs
    and ``gpus`` GPUs in all. One CPU stays with the driver and one goes to each remote
    learner; the rest become env runners (with fewer than two left, the algorithm's own
    defaults stand: on 2 cores A2C samples on the driver). One GPU learns on the driver
    when it is local; on a cluster, or with several GPUs, each GPU gets a remote learner
    (DDP). Envs per runner keep the algorithm's default; A2C's and PPO's batch follows
    (the batch rule), so each env's chunk keeps its length."""
    gpus = int(gpus)
    learners = 0 if gpus == 0 or (gpus == 1 and local) else gpus
    spare = int(cpus) - 1 - learners
    choice: dict[str, Any] = {
        "num_learners": learners,
        "num_gpus_per_learner": 1.0 if gpus else 0.0,
        "num_env_runners": spare if spare >= 2 else TrainConfig(algo=cfg.algo).num_env_runners,
    }
    resolved = dataclasses.replace(cfg, **choice)
    if cfg.algo in SYNCHRONOUS_ALGOS:
        choice["train_batch_size_per_learner"] = resolved.batch_rule()
    return choice


def _resolve_auto(cfg: TrainConfig, cpus: float, gpus: float, *, local: bool, where: str) -> TrainConfig:
    if cfg.resources != "auto":
        return cfg
    choice = auto_resources(cfg, cpus, gpus, local=local)
    resolved = dataclasses.replace(cfg, **choice).validate()
    learner = (f"{resolved.num_learners} remote learner(s)" if resolved.num_learners else "the learner on the driver")
    each = " each" if resolved.num_learners > 1 else ""
    device = f" on {resolved.num_gpus_per_learner:g} GPU{each}" if resolved.num_gpus_per_learner else " on CPU"
    runners = (f"{resolved.num_env_runners} env runners x {resolved.num_envs_per_env_runner} envs"
               if resolved.num_env_runners else f"sampling on the driver ({resolved.num_envs_per_env_runner} envs)")
    print(f"--resources auto ({where}: {cpus:g} CPU, {gpus:g} GPU): {runners}, {learner}{device}, "
          f"{resolved.train_batch_size_per_learner:,} env steps per learner and update, "
          f"learning rate {resolved.learning_rate():.3g}", flush=True)
    return resolved


def init_ray(cfg: TrainConfig) -> TrainConfig:
    """Join the cluster (``--address``, or a ``ray job submit`` job's) or start a local Ray
    sized for the run; the config with ``--resources auto`` resolved for what it offers."""
    # RAY_ADDRESS: set by `ray job submit` for its entrypoint, so a job joins its cluster.
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        offered = ray.cluster_resources()
        cfg = _resolve_auto(cfg, offered.get("CPU", 0), offered.get("GPU", 0), local=False, where="the cluster")
        wait_for_cluster_resources(cfg)
        return cfg
    import torch

    cfg = _resolve_auto(cfg, os.cpu_count() or 1, torch.cuda.device_count(), local=True, where="this machine")
    check_resources(cfg, {"GPU": torch.cuda.device_count()}, "this machine (an embedded local Ray)")
    # One logical CPU per Ray process (driver, each runner, each remote learner).
    needed = 1 + cfg.num_env_runners * cfg.num_cpus_per_env_runner + cfg.num_learners
    # address="local": never attach to some other Ray already running here.
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus or max(2, needed),
        num_gpus=None,
        include_dashboard=False,
        configure_logging=True,
        logging_level="WARNING",
    )
    return cfg


def resolve_on_running_ray(cfg: TrainConfig) -> TrainConfig:
    """``--resources auto`` on a Ray someone else started (a test's, a Tune trial's)."""
    offered = ray.cluster_resources()
    return _resolve_auto(cfg, offered.get("CPU", 0), offered.get("GPU", 0), local=True, where="the running Ray")


def _node_id(*_args) -> str:
    return ray.get_runtime_context().get_node_id()


def placement(algo) -> dict[str, Any]:
    """The Ray node each part of the run is on: where --env-runner-resource and
    --learner-resource put them (the learner is the driver's when --num-learners is 0)."""
    driver = _node_id()
    runners = algo.env_runner_group.foreach_env_runner(_node_id, local_env_runner=False) if algo.env_runner_group.num_remote_env_runners() else []
    learners = [r.get() for r in algo.learner_group.foreach_learner(_node_id)]
    return {"driver": driver, "env_runners": list(runners) or [driver], "learners": learners}
