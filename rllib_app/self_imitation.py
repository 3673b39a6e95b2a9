"""Self-imitation learning (Oh et al. 2018) as a learner-side loss term.

The learner keeps a replay of *successful* episodes harvested from the batches
it trains on, and adds to the algorithm's own loss

    L_sil = mean_t[ -log pi(a_t|s_t) * max(R_t - V(s_t), 0) ]
            + sil_value_coeff * mean_t[ 0.5 * max(R_t - V(s_t), 0)^2 ]

over a sample of replayed episodes (uniform, or prioritised by ``(R - V)+``).
``R_t`` is the discounted return
from step ``t``. Only episodes whose every step is inside one batch row are kept:
a row that begins at the episode's first step (previous action == the start
token; the module resets its state there, so no recurrent state needs storing)
and contains the rewarded final step.

Why it matters here: at stage 2 the memory program is a 5-action detour that a
policy almost never finishes by chance; once it does, SIL replays that episode
until the policy has learned it instead of letting one gradient step forget it.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.impala_torch_learner import IMPALATorchLearner
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns

from rllib_app.a2c import A2CLearner

#: Fallbacks for a learner built without these keys in ``learner_config_dict``
#: (SIL off). The product's defaults live in ``rllib_app.config.TrainConfig``.
SIL_DEFAULTS = {
    "sil_coeff": 0.0,  # 0 turns SIL off
    "sil_value_coeff": 0.01,
    "sil_capacity": 20_000,
    "sil_batch_episodes": 256,
    # Oh et al. replay in proportion to (R - V)+ ** alpha; 0 samples uniformly.
    "sil_priority_alpha": 0.0,
}


class SuccessReplay:
    """A FIFO ring of successful episodes, padded to ``max_len`` steps.

    With ``alpha`` > 0, episodes are drawn in proportion to ``priority ** alpha``,
    where the priority is the episode's mean clipped advantage ``(R - V)+`` when it
    was last replayed (new episodes get the highest priority seen). Episodes the
    policy has already mastered (V close to R) then stop crowding out rare ones.
    """

    def __init__(self, capacity: int, max_len: int, obs_dim: int, seed: int = 0, alpha: float = 0.0):
        self.obs = np.zeros((capacity, max_len, obs_dim), dtype=np.int64)
        self.actions = np.zeros((capacity, max_len), dtype=np.int64)
        self.returns = np.zeros((capacity, max_len), dtype=np.float32)
        self.lengths = np.zeros(capacity, dtype=np.int64)
        self.priorities = np.zeros(capacity, dtype=np.float64)
        self.alpha, self.max_priority = alpha, 1.0
        self.capacity, self.max_len = capacity, max_len
        self.size = self.cursor = self.added = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray, length: int) -> None:
        i = self.cursor
        self.obs[i] = 0
        self.actions[i] = 0
        self.returns[i] = 0
        self.obs[i, :length] = obs[:length]
        self.actions[i, :length] = actions[:length]
        self.returns[i, :length] = returns[:length]
        self.lengths[i] = length
        self.priorities[i] = self.max_priority
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def sample(self, n: int):
        """``(indices, obs, actions, returns, steps)`` of ``n`` episodes."""
        if self.alpha > 0:
            weights = self.priorities[: self.size] ** self.alpha
            idx = self.rng.choice(self.size, size=n, p=weights / weights.sum())
        else:
            idx = self.rng.integers(0, self.size, size=n)
        steps = np.arange(self.max_len)[None, :] < self.lengths[idx, None]
        return idx, self.obs[idx], self.actions[idx], self.returns[idx], steps

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.maximum(priorities, 1e-6)
        self.priorities[idx] = priorities
        self.max_priority = max(self.max_priority, float(priorities.max()))


def harvest_successes(batch, *, prev_action_index: int, start_action: int, answer_action: int, gamma: float):
    """Yield ``(obs, actions, returns, length)`` for every whole successful episode
    in a ``[B, T]`` learner batch (numpy arrays).

    An episode is whole when its row starts at the episode's first step and it
    ends (with ``ANS``) inside the row; it succeeded when its discounted return
    from the first step is positive. That holds with potential-based shaping too:
    the shaping terms telescope to ``-Phi(s_0) = 0``, so a wrong answer returns
    exactly 0 and a right one ``gamma ** (length - 1)``.
    """
    obs = batch[Columns.OBS].detach().cpu().numpy()
    if obs.ndim != 3:
        return
    rewards = batch[Columns.REWARDS].detach().cpu().numpy()
    actions = batch[Columns.ACTIONS].detach().cpu().numpy()
    mask = batch[Columns.LOSS_MASK].detach().cpu().numpy().astype(bool)
    starts = (obs[:, 0, prev_action_index] == start_action) & mask[:, 0]
    for b in np.flatnonzero(starts):
        answered = np.flatnonzero((actions[b] == answer_action) & mask[b])
        if len(answered) == 0:
            continue
        end = int(answered[0]) + 1
        ret = np.zeros(end, dtype=np.float32)
        running = 0.0
        for t in range(end - 1, -1, -1):
            running = rewards[b, t] + gamma * running
            ret[t] = running
        if ret[0] > 0.5 * gamma ** (end - 1):
            yield obs[b, :end], actions[b, :end], ret, end


def self_imitation_loss(module, obs, actions, returns, steps, *, value_coeff: float, device="cpu"):
    """(total, policy term, value term, per-episode mean advantage) of the SIL loss on replayed episodes
    ``[N, T]`` (``steps`` marks real steps; every episode starts at its first step,
    so the module starts from its own context-derived state)."""
    obs_t = torch.as_tensor(obs, device=device)
    state_in = {
        k: torch.zeros((len(obs),) + tuple(np.shape(v)), device=device)
        for k, v in module.get_initial_state().items()
    }
    out = module.forward_train({Columns.OBS: obs_t, Columns.STATE_IN: state_in})
    dist = module.get_train_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    logp = dist.logp(torch.as_tensor(actions, device=device))
    values = module.compute_values({}, embeddings=out[Columns.EMBEDDINGS])
    steps_t = torch.as_tensor(steps, device=device, dtype=torch.float32)
    advantage = (torch.as_tensor(returns, device=device) - values).clamp(min=0.0)
    n = steps_t.sum().clamp(min=1.0)
    policy_loss = -(logp * advantage.detach() * steps_t).sum() / n
    value_loss = 0.5 * (advantage.pow(2) * steps_t).sum() / n
    per_episode = ((advantage.detach() * steps_t).sum(1) / steps_t.sum(1).clamp(min=1.0)).cpu().numpy()
    return policy_loss + value_coeff * value_loss, policy_loss, value_loss, per_episode


class SelfImitationMixin:
    """Adds the self-imitation term (when ``sil_coeff`` > 0) to the loss of the
    torch learner it is mixed into (IMPALA's V-trace loss, A2C's loss, ...)."""

    def build(self) -> None:
        super().build()
        # One replay per module, created at the first batch (it needs the obs width).
        self._sil_replays: dict[str, SuccessReplay] = {}

    def _sil_settings(self, config) -> dict:
        return {**SIL_DEFAULTS, **{k: v for k, v in config.learner_config_dict.items() if k in SIL_DEFAULTS}}

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        sil = self._sil_settings(config)
        if sil["sil_coeff"] <= 0:
            return loss
        module = self.module[module_id].unwrapped()
        layout = module.model_config
        replay = self._replays(module_id, batch, sil, layout, config.seed)
        for episode in harvest_successes(
            batch,
            prev_action_index=layout["prev_action_index"],
            start_action=layout["start_action"],
            answer_action=layout["answer_action"],
            gamma=config.gamma,
        ):
            replay.add(*episode)
        if len(replay) == 0:
            return loss
        idx, *episodes = replay.sample(sil["sil_batch_episodes"])
        sil_loss, policy_loss, value_loss, advantages = self_imitation_loss(
            module, *episodes, value_coeff=sil["sil_value_coeff"], device=batch[Columns.OBS].device
        )
        replay.update_priorities(idx, advantages)
        self.metrics.log_dict(
            {
                "sil_policy_loss": policy_loss,
                "sil_value_loss": value_loss,
                "sil_replay_size": float(len(replay)),
                "sil_episodes_added": float(replay.added),
            },
            key=module_id,
            window=1,
        )
        return loss + sil["sil_coeff"] * sil_loss

    def _replays(self, module_id, batch, sil, layout, seed) -> SuccessReplay:
        replays = self._sil_replays
        if module_id not in replays:
            obs_dim = batch[Columns.OBS].shape[-1]
            replays[module_id] = SuccessReplay(
                sil["sil_capacity"], int(layout["max_seq_len"]), obs_dim, seed=seed or 0,
                alpha=sil["sil_priority_alpha"],
            )
        return replays[module_id]


class SelfImitationIMPALALearner(SelfImitationMixin, IMPALATorchLearner):
    """IMPALA's V-trace loss plus the self-imitation term."""


class SelfImitationA2CLearner(SelfImitationMixin, A2CLearner):
    """A2C's loss plus the self-imitation term."""


class SelfImitationPPOLearner(SelfImitationMixin, PPOTorchLearner):
    """PPO's clipped loss plus the self-imitation term."""


class SelfImitationAPPOLearner(SelfImitationMixin, APPOTorchLearner):
    """APPO's clipped V-trace loss plus the self-imitation term."""
