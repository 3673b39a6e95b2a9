"""A2C (advantage actor-critic) on RLlib's new API stack.

RLlib deprecated A2C in 2.8 and deleted it in 2.11; this is A2C for the new stack
(``RLModule``, ``Learner``, ``EnvRunner``, connectors), usable with any env and any
module that implements ``ValueFunctionAPI``::

    from rllib_app.rl.a2c import A2CConfig

    config = (
        A2CConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
        .training(lr=1e-3, lambda_=1.0, train_batch_size_per_learner=512)
    )
    algo = config.build_algo()
    algo.train()

One iteration: sample ``train_batch_size_per_learner * max(1, num_learners)`` env
steps synchronously from every env runner with the current weights; add n-step
bootstrapped value targets (``lambda_=1.0``, the classic A2C) or GAE targets
(``lambda_ < 1``) in the learner connector (RLlib's pieces, or the same batch built in
bulk by ``rllib_app.rl.learner_batch.BulkLearnerBatch``, the default); take gradient steps on minibatches of
``train_batch_size_per_learner`` rows of the batch (for a recurrent module RLlib counts
the zero-padded ``[B, T]`` rows, so a full batch is usually two minibatches, the second
wrapping around to the first sequences; one step per batch instead stalled stage 2 in
a measured run: docs/algorithms.md) on

    L = -log pi(a|s) * A  +  vf_loss_coeff * (V(s) - R)^2  -  entropy_coeff * H(pi(.|s))

averaged over the real (unpadded) steps, with ``A = R - V(s)`` (optionally
standardised over the batch); then sync the weights to the env runners.

``overlap_sampling=True`` (with remote env runners): the runners sample the next batch
while the learner learns on this one, so the learner's weights are one update ahead of
the ones that sampled its batch (no importance correction: one update is a small step).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.connectors.learner import (
    AddOneTsToEpisodesAndTruncate,
    GeneralAdvantageEstimation,
    LearnerConnectorPipeline,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.rllib.utils.schedules.scheduler import Scheduler

from rllib_app.rl.learner_batch import BulkLearnerBatch

ADVANTAGE_STD_KEY = "advantage_std"


class A2CConfig(AlgorithmConfig):
    """Settings of ``A2C``; ``.training()`` takes the A2C-specific ones below."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or A2C)
        self.lr = 1e-3
        self.train_batch_size_per_learner = 512
        self.grad_clip = 40.0
        # 1.0: n-step returns bootstrapped from V at the end of each sampled chunk.
        self.lambda_ = 1.0
        self.vf_loss_coeff = 0.5
        # A number, or a schedule [[timestep, value], ...] interpolated linearly.
        self.entropy_coeff = 0.01
        self.standardize_advantages = True
        # Build the learner batch in bulk (rllib_app.rl.learner_batch): the same batch as
        # RLlib's per-item pipeline, in a fraction of the time.
        self.bulk_learner_batch = True
        # Remote env runners sample the next batch while the learner learns on this one.
        self.overlap_sampling = False

    @override(AlgorithmConfig)
    def training(
        self,
        *,
        lambda_: float = NotProvided,
        vf_loss_coeff: float = NotProvided,
        entropy_coeff: Any = NotProvided,
        standardize_advantages: bool = NotProvided,
        bulk_learner_batch: bool = NotProvided,
        overlap_sampling: bool = NotProvided,
        **kwargs,
    ) -> A2CConfig:
        """``lambda_``: GAE lambda (1.0 = n-step returns); ``vf_loss_coeff``;
        ``entropy_coeff`` (number or schedule); ``standardize_advantages``: scale
        the batch's advantages to zero mean and unit std before the policy term;
        ``bulk_learner_batch``: build the learner batch with ``BulkLearnerBatch``
        (the same batch as RLlib's pipeline, faster; RLlib's for what it does not handle);
        ``overlap_sampling``: remote env runners sample the next batch while the learner
        learns on the last one, so each batch comes from the weights one update before
        the learner's (without remote runners, sampling stays synchronous)."""
        super().training(**kwargs)
        for name, value in (
            ("lambda_", lambda_),
            ("vf_loss_coeff", vf_loss_coeff),
            ("entropy_coeff", entropy_coeff),
            ("standardize_advantages", standardize_advantages),
            ("bulk_learner_batch", bulk_learner_batch),
            ("overlap_sampling", overlap_sampling),
        ):
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.lambda_ <= 1.0:
            self._value_error(f"`lambda_` ({self.lambda_}) must be in [0, 1]")
        if self.vf_loss_coeff < 0:
            self._value_error(f"`vf_loss_coeff` ({self.vf_loss_coeff}) must be >= 0")
        Scheduler.validate(fixed_value_or_schedule=self.entropy_coeff, setting_name="entropy_coeff",
                           description="entropy coefficient")

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        return A2CLearner

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

        # PPO's default actor-critic module fits A2C exactly (policy + value heads).
        return RLModuleSpec(module_class=DefaultPPOTorchRLModule)


class A2C(Algorithm):
    """Synchronous advantage actor-critic: sample, gradient steps on the batch, sync weights."""

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> A2CConfig:
        return A2CConfig()

    @override(Algorithm)
    def training_step(self) -> None:
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            overlap = self.config.overlap_sampling and self.env_runner_group.num_healthy_remote_workers() > 0
            episodes, env_runner_results = self._overlapped_sample() if overlap else self._sample()
            if overlap:
                # Each runner takes it after the last update's weights and before this
                # one's: the next iteration learns on a batch one update stale.
                self.env_runner_group.foreach_env_runner_async(
                    lambda runner: (runner.sample(), runner.get_metrics()), tag=_OVERLAPPED_SAMPLE
                )
            if not episodes:
                return
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)

        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                },
                # Minibatches count padded rows: about two gradient steps per batch (module
                # docstring); the recipe in docs/algorithms.md was measured with them.
                num_epochs=1,
                minibatch_size=self.config.train_batch_size_per_learner,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=set(learner_results[0].keys()) - {ALL_MODULES},
                inference_only=True,
            )

    def _sample(self) -> tuple[list, list]:
        return synchronous_parallel_sample(
            worker_set=self.env_runner_group,
            max_env_steps=self.config.total_train_batch_size,
            sample_timeout_s=self.config.sample_timeout_s,
            _uses_new_env_runners=True,
            _return_metrics=True,
        )

    def _overlapped_sample(self) -> tuple[list, list]:
        """The batch the runners sampled during the last update; the first iteration's,
        or one after a runner was lost (its request gone), sampled now."""
        results = self.env_runner_group.fetch_ready_async_reqs(
            tags=_OVERLAPPED_SAMPLE, timeout_seconds=self.config.sample_timeout_s
        )
        if len(results) < self.env_runner_group.num_healthy_remote_workers():
            return self._sample()  # the episodes that did come back are one update staler: dropped
        return [e for _, (eps, _) in results for e in eps], [m for _, (_, m) in results]


_OVERLAPPED_SAMPLE = "a2c_overlapped_sample"


def a2c_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    value_targets: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    vf_loss_coeff: float,
    entropy_coeff: float,
    standardize_advantages: bool,
) -> dict[str, torch.Tensor]:
    """The A2C loss and its parts, averaged over the steps where ``mask`` is true
    (padding of recurrent sequences and the bootstrap step are false)."""
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.bool()
    n = mask.sum().clamp(min=1)

    def mean(x):
        return torch.where(mask, x, torch.zeros_like(x)).sum() / n

    advantages = (value_targets - values).detach()
    std = torch.sqrt(mean((advantages - mean(advantages)) ** 2))
    if standardize_advantages:
        advantages = (advantages - mean(advantages)) / std.clamp(min=1e-4)
    policy_loss = -mean(logp * advantages)
    vf_loss = mean((values - value_targets) ** 2)
    mean_entropy = mean(entropy)
    total = policy_loss + vf_loss_coeff * vf_loss - entropy_coeff * mean_entropy
    return {
        "total": total,
        POLICY_LOSS_KEY: policy_loss,
        VF_LOSS_KEY: vf_loss,
        ENTROPY_KEY: mean_entropy,
        ADVANTAGE_STD_KEY: std,
    }


def bumped_entropy(base: float, timestep: int, starts: list[int], peak: float, decay_steps: int) -> float:
    """The entropy coefficient ``base`` (the schedule's), raised to ``peak`` at each bump's
    start env step and decaying linearly back to ``base`` over ``decay_steps``."""
    value = base
    for start in starts:
        if start <= timestep < start + decay_steps:
            value = max(value, peak - (peak - base) * (timestep - start) / decay_steps)
    return value


class A2CLearner(TorchLearner):
    """Adds value targets in the learner connector; computes ``a2c_loss``."""

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        self._entropy_schedulers: dict[str, Scheduler] = {}
        #: env steps sampled at the last update, and where entropy bumps started
        #: (``set_entropy_bumps``, from the driver's curriculum)
        self._timestep = 0
        self._entropy_bump_starts: list[int] = []
        if self._learner_connector is not None and self.config.add_default_connectors_to_learner_pipeline:
            # One artificial step per episode chunk so V can bootstrap the return of a
            # chunk that did not end; the loss mask excludes it.
            self._learner_connector.prepend(AddOneTsToEpisodesAndTruncate())
            self._learner_connector.append(
                GeneralAdvantageEstimation(gamma=self.config.gamma, lambda_=self.config.lambda_)
            )
            if self.config.bulk_learner_batch and self._only_default_pieces():
                self._learner_connector = LearnerConnectorPipeline(connectors=[BulkLearnerBatch(
                    gamma=self.config.gamma, lambda_=self.config.lambda_, fallback=self._learner_connector,
                )])

    def _only_default_pieces(self) -> bool:
        """The bulk batch does what RLlib's default pieces do; a user's own piece needs theirs."""
        return self.config._learner_connector is None

    def _entropy_coeff(self, module_id) -> float:
        if module_id not in self._entropy_schedulers:
            self._entropy_schedulers[module_id] = Scheduler(
                fixed_value_or_schedule=self.config.get_config_for_module(module_id).entropy_coeff,
                framework=self.framework,
                device=self._device,
            )
        return self._bumped(float(self._entropy_schedulers[module_id].get_current_value()))

    def set_entropy_bumps(self, starts: list[int], timestep: int) -> None:
        """Entropy bumps start at these env steps (``learner_config_dict``'s
        ``entropy_bump`` peak, ``entropy_bump_steps`` long); ``timestep``: env steps
        sampled so far (a restored learner has not seen an update yet)."""
        self._entropy_bump_starts = [int(s) for s in starts]
        self._timestep = max(self._timestep, int(timestep))

    def _bumped(self, base: float) -> float:
        if not self._entropy_bump_starts:
            return base
        extra = self.config.learner_config_dict
        return bumped_entropy(base, self._timestep, self._entropy_bump_starts,
                              extra["entropy_bump"], extra["entropy_bump_steps"])

    @override(TorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        self._timestep = int(timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
        for module_id, scheduler in self._entropy_schedulers.items():
            value = self._bumped(scheduler.update(timestep=self._timestep))
            self.metrics.log_value((module_id, "entropy_coeff"), value, window=1)

    @override(TorchLearner)
    def _uncompiled_update(self, batch, **kwargs):
        return super()._uncompiled_update({mid: _without_bootstrap_steps(b) for mid, b in batch.items()}, **kwargs)

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config: A2CConfig, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        dist = module.get_train_action_dist_cls().from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        parts = a2c_loss(
            dist.logp(batch[Columns.ACTIONS]),
            dist.entropy(),
            values,
            batch[Postprocessing.VALUE_TARGETS],
            batch.get(Columns.LOSS_MASK),
            vf_loss_coeff=config.vf_loss_coeff,
            entropy_coeff=self._entropy_coeff(module_id),
            standardize_advantages=config.standardize_advantages,
        )
        total = parts.pop("total")
        self.metrics.log_dict(parts, key=module_id, window=1)
        return total


def _without_bootstrap_steps(batch):
    """The minibatch with each row's sequence ending before its bootstrap step.

    The step added to each chunk so V could bootstrap its return is out of the loss, and
    its value target is already in the batch: the forward pass need not step it. It is a
    chunk's last step, so the last real step of its row (often a row of its own), and
    the loss mask is then a prefix of every row: its length is the row's new sequence
    length. Anything else (no mask, a mask with gaps) is left as it came."""
    mask, seq_lens = batch.get(Columns.LOSS_MASK), batch.get(Columns.SEQ_LENS)
    if mask is None or seq_lens is None or mask.dim() != 2:
        return batch
    lengths = mask.sum(1)
    if not torch.equal(torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None], mask.bool()):
        return batch
    return {**batch, Columns.SEQ_LENS: lengths.to(seq_lens.dtype)}
