"""``--resources auto``: what it picks for made-up machines and clusters (no Ray started)."""

import pytest

from rllib_app.config.train_config import TrainConfig
from rllib_app.training.resources import _resolve_auto, auto_resources


@pytest.mark.parametrize(
    ("algo", "cpus", "gpus", "local", "runners", "learners", "gpus_per_learner", "batch"),
    [
        # 2 cores: each algorithm's own defaults (A2C samples on the driver, IMPALA one runner)
        ("a2c", 2, 0, True, 0, 0, 0.0, 1024),
        ("impala", 2, 0, True, 1, 0, 0.0, 256),
        # the GPU machine: 15 runners, the learner on the driver's GPU; A2C's chunk stays 16
        ("a2c", 16, 1, True, 15, 0, 1.0, 15 * 64 * 16),
        ("impala", 16, 1, True, 15, 0, 1.0, 256),
        # a cluster's GPU is on another node: a remote learner there
        ("impala", 16, 1, False, 14, 1, 1.0, 256),
        # several GPUs: a learner each (DDP), the batch split over them
        ("a2c", 64, 4, False, 59, 4, 1.0, 59 * 64 * 16 // 4),
        ("ppo", 8, 0, True, 7, 0, 0.0, 7 * 32 * 8),
    ],
)
def test_auto_picks_runners_learners_and_gpus_from_what_is_offered(algo, cpus, gpus, local, runners, learners,
                                                                  gpus_per_learner, batch):
    cfg = TrainConfig(algo=algo, resources="auto")
    choice = auto_resources(cfg, cpus, gpus, local=local)
    assert (choice["num_env_runners"], choice["num_learners"], choice["num_gpus_per_learner"]) == (
        runners, learners, gpus_per_learner)
    resolved = _resolve_auto(cfg, cpus, gpus, local=local, where="test")
    assert resolved.train_batch_size_per_learner == batch
    # every remote process has its CPU, and the driver one
    assert 1 + resolved.num_env_runners + resolved.num_learners <= max(cpus, 2)


def test_manual_leaves_the_flags_alone_and_auto_says_what_it_chose(capsys):
    manual = TrainConfig(num_env_runners=3)
    assert _resolve_auto(manual, 64, 8, local=True, where="test") is manual
    _resolve_auto(TrainConfig(resources="auto"), 16, 1, local=True, where="this machine")
    assert capsys.readouterr().out.strip() == (
        "--resources auto (this machine: 16 CPU, 1 GPU): 15 env runners x 64 envs, the learner on the driver "
        "on 1 GPU, 15,360 env steps per learner and update, learning rate 0.004")  # 2e-3 x min(2, sqrt(15))


def test_the_bundles_asked_of_the_autoscaler_are_the_runs_remote_processes():
    from rllib_app.training.resources import run_bundles

    cfg = TrainConfig(algo="impala", num_env_runners=2, env_runner_resource="rollout_node", num_learners=1,
                      num_gpus_per_learner=1, learner_resource="learner_node")
    assert run_bundles(cfg) == [{"CPU": 1.0, "rollout_node": 1.0}] * 2 + [{"CPU": 1.0, "GPU": 1.0, "learner_node": 1.0}]
    assert run_bundles(TrainConfig()) == []  # A2C on the driver: nothing remote to start
