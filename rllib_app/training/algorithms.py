"""Build RLlib algorithms for the tool machine from a ``TrainConfig``.

IMPALA, APPO and PPO are RLlib's; A2C is ours (``rllib_app.rl.a2c``). Each algorithm class
here is one of those plus ``CurriculumCheckpointMixin``, which
puts the curriculum's state into the algorithm's checkpoint state (``state.pkl``)
and pushes it back to every env runner on restore. That way the stage survives
``save_to_path`` / ``restore_from_path`` / ``from_checkpoint`` and Tune's restores.
"""

from __future__ import annotations

import functools

from ray.rllib.algorithms.appo import APPO, APPOConfig
from ray.rllib.algorithms.impala import IMPALA, IMPALAConfig
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs import GYM_ENV_ID, ToolMachineEnv, observation_layout
from envs.tool_machine import stage_context_len, stage_max_steps
from models import ToolAgentGRUModule
from rllib_app.config.train_config import TrainConfig
from rllib_app.curriculum.callback import CurriculumCallback, find_curriculum_callback
from rllib_app.rl.a2c import A2C, A2CConfig
from rllib_app.rl.batched_env_runner import BatchedEnvRunner
from rllib_app.training.learners import (
    SelfImitationA2CLearner,
    SelfImitationAPPOLearner,
    SelfImitationIMPALALearner,
    SelfImitationPPOLearner,
)

#: The env as RLlib's env runners make it: a gymnasium id whose module prefix makes
#: ``gym.make_vec`` import ``envs`` (which registers it) in any process, so a checkpoint
#: restores with nothing imported first (``Algorithm.from_checkpoint``, ``Tuner.restore``).
#: Its entry points build ``ToolMachineEnv`` or, in ``vector_entry_point`` mode, the numpy
#: ``ToolMachineVectorEnv``; the env config arrives as keyword arguments.
ENV_NAME = f"envs:{GYM_ENV_ID}"
MODULE_ID = "default_policy"
#: Sequence length of the learner's batches: at least this (what stages 0-2 were measured
#: with), and the longest trained episode plus the extra observation RLlib keeps.
MIN_SEQ_LEN = 16
CURRICULUM_STATE_KEY = "toolagent_curriculum"


def max_seq_len(cfg: TrainConfig) -> int:
    env = ToolMachineEnv(cfg.env_config())
    longest = env.fixed_max_steps or max(stage_max_steps(s) for s in cfg.trained_stages())
    return max(MIN_SEQ_LEN, longest + 1)


def module_spec(cfg: TrainConfig) -> RLModuleSpec:
    env = ToolMachineEnv(cfg.env_config())
    return RLModuleSpec(
        module_class=ToolAgentGRUModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={
            **observation_layout(),
            "hidden_size": cfg.hidden_size,
            "context_every_step": cfg.context_every_step,
            "context_encoder": cfg.context_encoder,
            "context_attention": cfg.context_attention,
            "attention_projections": cfg.attention_projections,
            # what the concat encoder has weights for: the longest trained context (5 for
            # stages 0-2, as before expressions widened the observation to 13)
            "context_read_len": max(stage_context_len(s) for s in cfg.trained_stages()),
            "max_seq_len": max_seq_len(cfg),
        },
    )


class CurriculumCheckpointMixin:
    """Saves and restores the curriculum with the algorithm's own state."""

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if components is None:
            state[CURRICULUM_STATE_KEY] = find_curriculum_callback(self).curriculum.get_state()
        return state

    def set_state(self, state):
        super().set_state(state)
        if CURRICULUM_STATE_KEY in state:
            callback = find_curriculum_callback(self)
            callback.curriculum.set_state(state[CURRICULUM_STATE_KEY])
            callback.push(self)


class ToolAgentIMPALA(CurriculumCheckpointMixin, IMPALA):
    pass


class ToolAgentA2C(CurriculumCheckpointMixin, A2C):
    pass


class ToolAgentPPO(CurriculumCheckpointMixin, PPO):
    pass


class ToolAgentAPPO(CurriculumCheckpointMixin, APPO):
    pass


def _algorithm_config(cfg: TrainConfig):
    """The algorithm's own config class, learner and the settings only it has."""
    if cfg.algo in ("impala", "appo"):
        config_class, algo_class, learner = {
            "impala": (IMPALAConfig, ToolAgentIMPALA, SelfImitationIMPALALearner),
            "appo": (APPOConfig, ToolAgentAPPO, SelfImitationAPPOLearner),
        }[cfg.algo]
        config = config_class(algo_class=algo_class).training(
            vf_loss_coeff=cfg.vf_loss_coeff,
            # The default 0.0 polls nonstop on the driver and starves the runners on 2 cores.
            timeout_s_sampler_manager=0.05,
        )
        return config, learner, cfg.rollout_fragment_length
    if cfg.algo == "a2c":
        config = A2CConfig(algo_class=ToolAgentA2C).training(
            vf_loss_coeff=cfg.vf_loss_coeff, lambda_=cfg.gae_lambda,
            standardize_advantages=cfg.standardize_advantages, overlap_sampling=cfg.overlap_sampling,
        )
        # Synchronous: each iteration samples exactly one batch, split over the envs.
        return config, SelfImitationA2CLearner, "auto"
    if cfg.algo == "ppo":
        config = PPOConfig(algo_class=ToolAgentPPO).training(
            vf_loss_coeff=cfg.vf_loss_coeff, lambda_=cfg.gae_lambda,
            num_epochs=cfg.num_epochs, minibatch_size=cfg.train_batch_size_per_learner,
        )
        return config, SelfImitationPPOLearner, "auto"
    raise ValueError(f"unknown algorithm {cfg.algo!r}")  # validate() refuses it first


def _fault_tolerance(config, cfg: TrainConfig):
    """What happens when an env runner process dies (killed, out of memory, a lost node).

    Ray restarts the actor as a fresh copy (same worker index, the driver's original
    env_config) and RLlib brings it back into service at the top of the next training
    step; ``CurriculumCallback.on_env_runners_recreated`` then re-applies the stage
    weights and counts the restart (``result["curriculum"]["env_runner_restarts"]``;
    RLlib's own count is ``result["fault_tolerance"]["num_remote_worker_restarts"]``).
    """
    config = config.fault_tolerance(
        # RLlib 2.60's defaults, set explicitly because the run depends on them: restart
        # a dead runner (False would end the run at the first failure, since
        # ignore_env_runner_failures is False too) ...
        restart_failed_env_runners=True,
        # ... up to this many times per runner (Ray's max_restarts for the actor).
        max_num_env_runner_restarts=1000,
    )
    if cfg.algo in ("impala", "appo") and cfg.num_env_runners == 1:
        # IMPALA/APPO sample on the driver's local env runner while no remote runner is
        # healthy; without an env there it raises ("doesn't have an env! Can't call
        # sample()") and the run dies while Ray is still restarting its only runner.
        # With one, the driver samples (with the learner's weights once the first
        # fallback update has synced them) until the runner is back. A2C/PPO wait for
        # the restart instead and need nothing. With several runners only all of them
        # dying at once hits this; that case is not covered.
        config = config.env_runners(create_env_on_local_worker=True)
    return config


def build_config(cfg: TrainConfig):
    """The RLlib ``AlgorithmConfig`` for ``cfg`` (not yet built)."""
    config, learner_class, fragment = _algorithm_config(cfg)
    config = _fault_tolerance(config, cfg)
    return (
        config.environment(ENV_NAME, env_config=cfg.env_config())
        .framework("torch")
        .env_runners(
            num_env_runners=cfg.num_env_runners,
            num_envs_per_env_runner=cfg.num_envs_per_env_runner,
            num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
            custom_resources_per_env_runner={cfg.env_runner_resource: 1} if cfg.env_runner_resource else {},
            rollout_fragment_length=fragment,
            **({"gym_env_vectorize_mode": "vector_entry_point"} if cfg.native_vector_env or cfg.fast_env_runner else {}),
            **({"env_runner_cls": BatchedEnvRunner} if cfg.fast_env_runner else {}),
            # ~385 MB for a weight server we do not need on one machine.
            use_env_runner_state_server=False,
        )
        .learners(
            num_learners=cfg.num_learners,
            num_gpus_per_learner=cfg.num_gpus_per_learner,
            custom_resources_per_learner={cfg.learner_resource: 1} if cfg.learner_resource else {},
            learner_class=learner_class,
            learner_config_dict=cfg.learner_config(),
        )
        .rl_module(rl_module_spec=module_spec(cfg))
        .training(
            lr=cfg.learning_rate(),
            gamma=cfg.gamma,
            entropy_coeff=cfg.entropy(),
            train_batch_size_per_learner=cfg.train_batch_size_per_learner,
            grad_clip=40.0,
        )
        .callbacks(functools.partial(CurriculumCallback, settings=cfg.curriculum_settings()))
        # The curriculum moves at iteration ends: with a time floor, how many batches an
        # iteration holds (and so the whole run) depends on the machine's load.
        .reporting(min_time_s_per_iteration=cfg.min_iteration_seconds)
        .debugging(seed=cfg.seed)
    )
