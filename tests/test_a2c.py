"""A2C's loss against a hand computation, padding included."""

import math

import pytest
import torch

from rllib_app.rl.a2c import a2c_loss, bumped_entropy


def test_a2c_loss_matches_a_hand_computation_and_ignores_padding():
    # two sequences: 3 real steps, and 1 real step followed by 2 padded ones
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -7.0, -9.0]])
    entropy = torch.tensor([[1.0, 0.5, 0.25], [1.5, 9.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.0, 5.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.5, -3.0, 8.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])

    out = a2c_loss(logp, entropy, values, targets, mask,
                   vf_loss_coeff=0.5, entropy_coeff=0.01, standardize_advantages=False)
    # real steps only: A = R - V = 0.8, -0.4, 0.4, 0.5
    adv = [0.8, -0.4, 0.4, 0.5]
    lp = [-0.5, -1.0, -2.0, -0.1]
    policy = -sum(a * g for a, g in zip(adv, lp)) / 4
    vf = sum(a * a for a in adv) / 4
    ent = (1.0 + 0.5 + 0.25 + 1.5) / 4
    assert out["policy_loss"].item() == pytest.approx(policy)
    assert out["vf_loss"].item() == pytest.approx(vf)
    assert out["entropy"].item() == pytest.approx(ent)
    assert out["total"].item() == pytest.approx(policy + 0.5 * vf - 0.01 * ent)

    # standardised: the same advantages scaled to zero mean, unit (population) std
    out = a2c_loss(logp, entropy, values, targets, mask,
                   vf_loss_coeff=0.5, entropy_coeff=0.01, standardize_advantages=True)
    mean = sum(adv) / 4
    std = math.sqrt(sum((a - mean) ** 2 for a in adv) / 4)
    policy = -sum((a - mean) / std * g for a, g in zip(adv, lp)) / 4
    assert out["policy_loss"].item() == pytest.approx(policy, rel=1e-5)
    assert out["advantage_std"].item() == pytest.approx(std, rel=1e-5)
    assert out["vf_loss"].item() == pytest.approx(vf)  # the critic's target is never standardised


def test_a2c_gradient_flows_to_policy_and_value_but_not_through_the_advantage():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    values = torch.tensor([[0.0, 0.5]], requires_grad=True)
    out = a2c_loss(logp, torch.zeros(1, 2), values, torch.tensor([[1.0, 1.0]]), None,
                   vf_loss_coeff=1.0, entropy_coeff=0.0, standardize_advantages=False)
    out["total"].backward()
    # d/dlogp = -A / n ; d/dV = 2 (V - R) / n only from the value term
    assert logp.grad[0].tolist() == pytest.approx([-0.5, -0.25])
    assert values.grad[0].tolist() == pytest.approx([-1.0, -0.5])


def test_a2c_takes_its_measured_defaults_unless_a_flag_overrides_them():
    from rllib_app.cli.main import build_parser
    from rllib_app.config.train_config import TrainConfig

    def parsed(*argv):
        return TrainConfig.from_namespace(build_parser().parse_args(["train", *argv]))

    impala, a2c = parsed("--algo", "impala"), parsed()  # A2C is the default recipe
    assert (impala.num_envs_per_env_runner, impala.train_batch_size_per_learner) == (32, 256)
    assert not impala.step_limit_terminates and impala.entropy() == 0.03
    # docs/algorithms.md: the A2C recipe that solved stage 2 on every seed tried
    assert (a2c.num_envs_per_env_runner, a2c.train_batch_size_per_learner) == (64, 1024)
    assert a2c.step_limit_terminates and a2c.entropy() == [[0, 0.08], [500000, 0.02]]
    assert a2c.fast_env_runner and not impala.fast_env_runner
    assert (a2c.num_env_runners, impala.num_env_runners) == (0, 1)  # A2C samples on the driver
    given = parsed("--algo", "a2c", "--num-envs-per-env-runner", "8", "--no-step-limit-terminates",
                   "--entropy-schedule", "", "--no-fast-env-runner")
    assert given.num_envs_per_env_runner == 8 and not given.step_limit_terminates and given.entropy() == 0.03
    assert not given.fast_env_runner
    assert TrainConfig(algo="a2c").num_envs_per_env_runner == 64  # in Python too


def test_an_entropy_bump_jumps_to_its_peak_and_decays_back_to_the_schedule():
    starts = [1000, 5000]
    assert bumped_entropy(0.02, 999, starts, 0.08, 2000) == 0.02
    assert bumped_entropy(0.02, 1000, starts, 0.08, 2000) == pytest.approx(0.08)
    assert bumped_entropy(0.02, 2000, starts, 0.08, 2000) == pytest.approx(0.05)
    assert bumped_entropy(0.02, 3000, starts, 0.08, 2000) == 0.02
    assert bumped_entropy(0.1, 1500, starts, 0.08, 2000) == 0.1  # never below the schedule
    assert bumped_entropy(0.02, 5500, starts, 0.08, 2000) == pytest.approx(0.065)


@pytest.mark.parametrize(
    ("algo", "runners", "envs", "learners", "batch", "chunk"),
    [("a2c", 0, 64, 0, 1024, 16), ("a2c", 1, 64, 0, 1024, 16), ("a2c", 4, 64, 0, 4096, 16),
     ("a2c", 12, 64, 2, 6144, 16), ("a2c", 3, 10, 0, 480, 16), ("ppo", 1, 32, 0, 256, 8), ("ppo", 6, 32, 0, 1536, 8)],
)
def test_the_batch_keeps_each_envs_chunk_when_runners_envs_or_learners_are_added(algo, runners, envs, learners,
                                                                                  batch, chunk):
    from rllib_app.config.train_config import TrainConfig

    cfg = TrainConfig(algo=algo, num_env_runners=runners, num_envs_per_env_runner=envs, num_learners=learners)
    assert cfg.validate().train_batch_size_per_learner == batch
    # what each env then contributes to one batch (RLlib's "auto" fragment), the same at every scale
    total = batch * max(1, learners)
    assert total / (max(1, runners) * envs) == cfg.rollout_fragment_length == chunk


def test_an_explicit_batch_and_the_asynchronous_algorithms_keep_their_own():
    from rllib_app.config.train_config import TrainConfig

    assert TrainConfig(algo="a2c", num_env_runners=4, train_batch_size_per_learner=512).train_batch_size_per_learner == 512
    for algo in ("impala", "appo"):
        assert TrainConfig(algo=algo, num_env_runners=8).train_batch_size_per_learner == 256


@pytest.mark.parametrize(
    ("algo", "fields", "factor"),
    [("a2c", {}, 1.0), ("a2c", {"num_envs_per_env_runner": 256}, 2.0),
     ("a2c", {"num_envs_per_env_runner": 128}, 2 ** 0.5),
     ("a2c", {"num_env_runners": 12, "num_learners": 2}, 2.0),  # 12,288 in all, whatever the learners: at most 2x
     ("a2c", {"num_envs_per_env_runner": 16}, 1.0),  # a smaller batch keeps --lr
     ("a2c", {"num_envs_per_env_runner": 256, "lr_scaling": "none"}, 1.0),
     ("ppo", {"num_env_runners": 4}, 2.0), ("impala", {"num_env_runners": 8, "train_batch_size_per_learner": 4096}, 1.0)],
)
def test_the_learning_rate_follows_the_square_root_of_a_bigger_synchronous_batch_up_to_twice(algo, fields, factor):
    from rllib_app.config.train_config import TrainConfig
    from rllib_app.training.algorithms import build_config

    cfg = TrainConfig(algo=algo, lr=1e-3, **fields).validate()
    assert cfg.learning_rate() == pytest.approx(1e-3 * factor)
    assert build_config(cfg).lr == pytest.approx(1e-3 * factor)  # what the learners get
