import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Small enough for a few quick iterations on 2 cores; real RLlib all the same.
SMALL = {
    "num_envs_per_env_runner": 4,
    "rollout_fragment_length": 16,
    "train_batch_size_per_learner": 128,
    "hidden_size": 32,
    "eval_episodes": 50,
}


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray of our own (address="local": never someone else's)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def train_in_process(output, resume_from=None, **fields):
    """``toolagent train`` in this process on the session's Ray (``local_ray``): a fixture's
    checkpoint without a subprocess's import and Ray start (~10 s each on 2 cores);
    ``resume_from``: a checkpoint to continue, as ``--resume`` does."""
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.loop import train

    return train(TrainConfig(output=str(output), **fields), resume_from=resume_from)


def run_cli(*args, timeout=600):
    """``python -m rllib_app ARGS``; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "rllib_app", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
