"""Self-imitation learning (Oh et al. 2018) as a learner-side loss term.

The learner keeps a replay of *successful* episodes harvested from the batches
it trains on, and adds to the algorithm's own loss

    L_sil = mean_t[ -log pi(a_t|s_t) * max(R_t - V(s_t), 0) ]
            + sil_value_coeff * mean_t[ 0.5 * max(R_t - V(s_t), 0)^2 ]

over a sample of replayed episodes (uniform, or prioritised by ``(R - V)+``).
``R_t`` is the discounted return
from step ``t``. Successes are harvested from the episode chunks the learner is
given, joined across batches (``EpisodeStitcher``), so each replayed episode starts
at its first step (the module derives its state from the context there, so no
recurrent state needs storing).

Why it matters here: at stage 2 the memory program is a 5-action detour that a
policy almost never finishes by chance; once it does, SIL replays that episode
until the policy has learned it instead of letting one gradient step forget it.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

#: Fallbacks for a learner built without these keys in ``learner_config_dict``
#: (SIL off). The product's defaults live in ``rllib_app.config.train_config.TrainConfig``.
SIL_DEFAULTS = {
    "sil_coeff": 0.0,  # 0 turns SIL off
    "sil_value_coeff": 0.01,
    "sil_capacity": 20_000,
    "sil_batch_episodes": 256,
    # Oh et al. replay in proportion to (R - V)+ ** alpha; 0 samples uniformly.
    "sil_priority_alpha": 0.0,
    "sil_join_chunks": True,
}


#: The learner state key of the replays (one per module).
SIL_COMPONENT = "self_imitation_replay"


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

    def draw(self, n: int) -> np.ndarray:
        """The slots of ``n`` episodes drawn with replacement."""
        if self.alpha > 0:
            weights = self.priorities[: self.size] ** self.alpha
            return self.rng.choice(self.size, size=n, p=weights / weights.sum())
        return self.rng.integers(0, self.size, size=n)

    def episodes(self, idx: np.ndarray):
        """``(obs, actions, returns, steps)`` of the episodes in slots ``idx``."""
        steps = np.arange(self.max_len)[None, :] < self.lengths[idx, None]
        return self.obs[idx], self.actions[idx], self.returns[idx], steps

    def sample(self, n: int):
        """``(indices, obs, actions, returns, steps)`` of ``n`` episodes."""
        idx = self.draw(n)
        return (idx, *self.episodes(idx))

    def sample_distinct(self, n: int):
        """``sample(n)`` with each drawn episode once: ``(indices, counts, obs, actions,
        returns, steps)``, ``counts`` the times each was drawn. A loss weighted by the
        counts is the loss on the ``n`` draws; while the replay is small (a run's first
        updates) most draws repeat, and the module then steps each episode once."""
        idx, counts = np.unique(self.draw(n), return_counts=True)
        return (idx, counts, *self.episodes(idx))

    def get_state(self) -> dict:
        """What a checkpoint keeps: the held episodes (observations as int8 when they
        fit: tool-machine observations are small integers), ring position and priorities."""
        n = self.size
        obs = self.obs[:n]
        small = n == 0 or (obs.min() >= -128 and obs.max() < 128)
        return {
            "capacity": self.capacity, "max_len": self.max_len, "obs_dim": self.obs.shape[-1], "alpha": self.alpha,
            "obs": obs.astype(np.int8) if small else obs.copy(), "actions": self.actions[:n].astype(np.int8),
            "returns": self.returns[:n].copy(), "lengths": self.lengths[:n].copy(),
            "priorities": self.priorities[:n].copy(), "max_priority": self.max_priority,
            "size": n, "cursor": self.cursor, "added": self.added, "rng": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict, capacity: int | None = None, alpha: float | None = None) -> SuccessReplay:
        """The replay ``get_state`` kept. ``capacity`` and ``alpha`` (a resumed run's
        settings) replace the saved ones; a smaller capacity keeps the newest episodes."""
        n, old_capacity, cursor = state["size"], state["capacity"], state["cursor"]
        capacity = old_capacity if capacity is None else capacity
        alpha = state["alpha"] if alpha is None else alpha
        replay = cls(capacity, state["max_len"], state["obs_dim"], alpha=alpha)
        replay.rng.bit_generator.state = state["rng"]
        replay.max_priority, replay.added = state["max_priority"], state["added"]
        if capacity == old_capacity:  # the same ring, slot for slot
            order, replay.cursor = np.arange(n), cursor
        else:  # oldest first (a full ring starts at its cursor), then the newest that fit
            order = (np.roll(np.arange(n), -cursor) if n == old_capacity else np.arange(n))[-capacity:]
            replay.cursor = len(order) % capacity
        m = replay.size = len(order)
        replay.obs[:m], replay.actions[:m] = state["obs"][order], state["actions"][order]
        replay.returns[:m], replay.lengths[:m], replay.priorities[:m] = (
            state["returns"][order], state["lengths"][order], state["priorities"][order])
        return replay

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.maximum(priorities, 1e-6)
        self.priorities[idx] = priorities
        self.max_priority = max(self.max_priority, float(priorities.max()))


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``R_t = sum_k gamma**k r_{t+k}`` for every step of one episode."""
    returns = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


class EpisodeStitcher:
    """Joins the chunks env runners send of each episode and yields the whole
    successful episodes ``(obs, actions, returns, length)``.

    A rollout fragment cuts episodes: an episode that starts near a fragment's end
    arrives as two chunks, in two batches. Replaying only episodes that fit inside one
    chunk loses the long ones first, and stage 2's memory program (9 tools) is the
    longest success: with A2C and short fragments the replay then held only memory-free
    shortcuts and the policy stayed on them (docs/algorithms.md). Here a chunk that starts an
    episode is kept until the chunk that continues it arrives (from the same runner,
    in order), up to ``max_pending`` open episodes (the oldest are dropped: an
    episode of a runner that died never continues).

    Success is judged on the outcome: the discounted return from the first step is
    positive. That holds with potential-based shaping too, since the shaping terms
    telescope to ``-Phi(s_0) = 0``: a wrong answer returns exactly 0 and a right one
    ``gamma ** (length - 1)``.
    """

    def __init__(self, *, gamma: float, max_len: int, max_pending: int = 100_000, join: bool = True):
        # join=False keeps only episodes inside one chunk (the ablation of joining).
        self.gamma, self.max_len, self.max_pending, self.join = gamma, max_len, max_pending, join
        self._open: OrderedDict[str, tuple[list, list, list]] = OrderedDict()
        self.stitched = 0  # successes that spanned more than one chunk

    def feed(self, episodes) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Take a batch of ``SingleAgentEpisode`` chunks; return the successes they complete."""
        found = []
        for chunk in episodes:
            if len(chunk) == 0:
                continue
            key = chunk.id_
            parts = self._open.pop(key, None)
            if chunk.t_started == 0:
                parts = ([], [], [])
            elif parts is None or sum(len(a) for a in parts[1]) != chunk.t_started:
                continue  # its start was never seen (or lost): it cannot be replayed whole
            if (not chunk.is_done and not self.join) or chunk.is_truncated:
                continue  # not kept; or the step limit, which is not an answer
            parts[0].append(np.asarray(chunk.get_observations(slice(0, len(chunk)))))
            parts[1].append(np.asarray(chunk.get_actions()))
            parts[2].append(np.asarray(chunk.get_rewards(), dtype=np.float32))
            if not chunk.is_done:
                self._open[key] = parts
                while len(self._open) > self.max_pending:
                    self._open.popitem(last=False)
                continue
            obs, actions, rewards = (np.concatenate(p) for p in parts)
            length = len(actions)
            returns = discounted_returns(rewards, self.gamma)
            if length <= self.max_len and returns[0] > 0.5 * self.gamma ** (length - 1):
                self.stitched += len(parts[1]) > 1
                found.append((obs, actions, returns, length))
        return found

    def __len__(self) -> int:
        return len(self._open)


def self_imitation_loss(module, obs, actions, returns, steps, *, value_coeff: float, device="cpu", counts=None):
    """(total, policy term, value term, per-episode mean advantage) of the SIL loss on replayed episodes
    ``[N, T]`` (``steps`` marks real steps; every episode starts at its first step,
    so the module starts from its own context-derived state). ``counts``: how many
    times each episode counts in the means (``SuccessReplay.sample_distinct``)."""
    obs_t = torch.as_tensor(obs, device=device)
    state_in = {
        k: torch.zeros((len(obs),) + tuple(np.shape(v)), device=device)
        for k, v in module.get_initial_state().items()
    }
    # each episode's length: the module then steps only its real steps
    seq_lens = torch.as_tensor(np.asarray(steps).sum(1), device=device)
    out = module.forward_train({Columns.OBS: obs_t, Columns.STATE_IN: state_in, Columns.SEQ_LENS: seq_lens})
    dist = module.get_train_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    logp = dist.logp(torch.as_tensor(actions, device=device))
    values = module.compute_values({Columns.SEQ_LENS: seq_lens}, embeddings=out[Columns.EMBEDDINGS])
    steps_t = torch.as_tensor(steps, device=device, dtype=torch.float32)
    weights = steps_t if counts is None else steps_t * torch.as_tensor(counts, device=device, dtype=torch.float32)[:, None]
    advantage = (torch.as_tensor(returns, device=device) - values).clamp(min=0.0)
    n = weights.sum().clamp(min=1.0)
    policy_loss = -(logp * advantage.detach() * weights).sum() / n
    value_loss = 0.5 * (advantage.pow(2) * weights).sum() / n
    per_episode = ((advantage.detach() * steps_t).sum(1) / steps_t.sum(1).clamp(min=1.0)).cpu().numpy()
    return policy_loss + value_coeff * value_loss, policy_loss, value_loss, per_episode


class SelfImitationMixin:
    """Adds the self-imitation term (when ``sil_coeff`` > 0) to the loss of the
    torch learner it is mixed into (IMPALA's V-trace loss, A2C's loss, ...)."""

    def build(self) -> None:
        super().build()
        # One replay per module, created at the first batch (it needs the obs width).
        self._sil_replays: dict[str, SuccessReplay] = {}
        self._sil_stitcher: EpisodeStitcher | None = None
        # Successes found by the thread that makes batches, drained by the one that
        # computes the loss (IMPALA's learner thread): deque appends/pops are atomic.
        self._sil_found: deque = deque()
        self._sil_rejected = 0

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        # checkpoints keep the replay, so a resumed run goes on imitating what it had found
        # (without it the first evaluations after a resume read ~0.05 lower at stage 7)
        if self._sil_replays and self._check_component(SIL_COMPONENT, components, not_components):
            state[SIL_COMPONENT] = {mid: replay.get_state() for mid, replay in self._sil_replays.items()}
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        sil = self._sil_settings(self.config)  # a resumed run's --sil-capacity/--sil-priority-alpha apply
        for module_id, replay in state.get(SIL_COMPONENT, {}).items():
            self._sil_replays[module_id] = SuccessReplay.from_state(
                replay, capacity=int(sil["sil_capacity"]), alpha=float(sil["sil_priority_alpha"]))

    def _make_batch_if_necessary(self, training_data):
        """Harvest the successes from the episode chunks before they become a padded batch."""
        sil = self._sil_settings(self.config)
        if training_data.episodes is not None and sil["sil_coeff"] > 0:
            if self._sil_stitcher is None:
                layout = self.module[DEFAULT_MODULE_ID].unwrapped().model_config
                self._sil_stitcher = EpisodeStitcher(
                    gamma=self.config.gamma, max_len=int(layout["max_seq_len"]), join=bool(sil["sil_join_chunks"]),
                )
            found = self._sil_stitcher.feed(training_data.episodes)
            kept = self.successes_to_replay(found)
            self._sil_rejected += len(found) - len(kept)
            self._sil_found.extend(kept)
        return super()._make_batch_if_necessary(training_data)

    def successes_to_replay(self, found: list) -> list:
        """The successes (``EpisodeStitcher.feed``'s ``(obs, actions, returns, length)``)
        worth replaying: all of them here; an env-aware learner may filter (the ones left
        out are counted as ``sil_episodes_rejected``)."""
        return found

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
        while self._sil_found:
            replay.add(*self._sil_found.popleft())
        if len(replay) == 0:
            return loss
        idx, counts, *episodes = replay.sample_distinct(sil["sil_batch_episodes"])
        sil_loss, policy_loss, value_loss, advantages = self_imitation_loss(
            module, *episodes, value_coeff=sil["sil_value_coeff"], device=batch[Columns.OBS].device, counts=counts,
        )
        replay.update_priorities(idx, advantages)
        self.metrics.log_dict(
            {
                "sil_policy_loss": policy_loss,
                "sil_value_loss": value_loss,
                "sil_replay_size": float(len(replay)),
                "sil_episodes_added": float(replay.added),
                "sil_episodes_stitched": float(self._sil_stitcher.stitched if self._sil_stitcher else 0),
                "sil_episodes_rejected": float(self._sil_rejected),
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
