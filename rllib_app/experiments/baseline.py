"""The hand-written baseline: single-process batched A2C in plain torch (no Ray).

This is the reference the RLlib app is measured against (``toolagent bench``): the
spec's "hand-written batched A2C" (docs/task.md), with the same
learning recipe as ``toolagent train``'s defaults. One file, top to bottom, in the
spirit of CleanRL::

    python -m rllib_app.experiments.baseline                         # stages 0,1,2 until solved or 15 min
    python -m rllib_app.experiments.baseline --stage-path 0 --max-seconds 60 --seed 1

What it does:

* ``ToolMachineVectorEnv`` steps ``num_envs`` machines with numpy. Episodes that end
  are reset at once (``reset_mask``), so every ``step`` is ``num_envs`` real env steps
  (no dead autoreset step).
* ``GRUActorCritic`` reads the flat observation through ``envs.observation_layout()``
  like ``models.ToolAgentGRUModule``: context tokens embedded in order plus the
  stage, encoded into ``x``; the GRU state starts at ``tanh(W x)`` when the previous
  action is the start token (the context reaches the GRU only there); every step feeds
  the previous action to a ``GRUCell``; policy and value heads read its output; tools
  the env's action mask rules out get a logit of -1e9.
* One update per rollout of ``num_envs x rollout_steps`` env steps: n-step returns
  bootstrapped from V at the rollout's end, an episode's end (answer or step limit:
  running out of steps is terminal here, as ``--step-limit-terminates``) cuts the
  bootstrap; loss = policy gradient (advantages standardised) + ``vf_coeff`` x value
  loss - ``entropy_coeff`` x entropy + ``sil_coeff`` x self-imitation; one Adam step;
  gradients clipped at ``max_grad_norm``. The GRU is unrolled over the rollout from
  the state it started with (truncated BPTT, as RLlib's state-in does).
* The recipe of ``toolagent train``'s defaults: action mask, potential-based shaping
  0.5 (in the env; accuracy is unshaped), 80% hard contexts on memory stages, entropy
  0.03, the threshold curriculum (``rllib_app.curriculum.schedule.Curriculum``: promote at
  sampled accuracy 0.95 over 500 episodes, replay earlier stages with 0.2) through
  the env's ``set_stage_weights``, and prioritised self-imitation (Oh et al. 2018, as
  ``rllib_app.rl.self_imitation``: a ring of up to 20,000 whole successful episodes,
  256 replayed per update in proportion to ``(R - V)+ ** 0.6``, loss
  ``-log pi(a|s) (R-V)+ + 0.01 * 0.5 (R-V)+^2``).
* Every ``eval_every_steps`` env steps it evaluates greedily (argmax) on fresh
  episodes (``eval_episodes`` per row, a fixed evaluation set, seeds disjoint from
  training) with its own batched rollout over the vector env, and reports the
  *milestones*: the first evaluation where stage 0 >= ``target_accuracy``; stages 0
  and 1; stages 0, 1, 2 and 2m (stage 2 on its memory-required contexts, as
  ``toolagent eval``'s ``2m`` row). Rows are evaluated in milestone order and only as
  far as needed (a later milestone needs the earlier rows too). Env steps and wall
  seconds are counted from the first reset; evaluation time is included.

``train(args)`` returns (and ``--output FILE.json`` writes) the milestones, the
last greedy accuracy, env steps, wall seconds and throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import numpy as np
import torch
from torch import nn

from envs import MEMORY_STAGES, NUM_STAGES, ToolMachineVectorEnv, observation_layout
from rllib_app.curriculum.schedule import Curriculum, CurriculumSettings

#: Seed offset of evaluation episodes (as ``rllib_app.evaluation.evaluate``): never the training stream's.
EVAL_SEED_OFFSET = 1_000_003
MASKED_LOGIT = -1e9


@dataclass
class Args:
    """Every field is a ``--flag`` of ``python -m rllib_app.experiments.baseline``."""

    seed: int = 0
    # -- sampling --------------------------------------------------------------------
    num_envs: int = 256
    """tool machines stepped together (N)"""
    rollout_steps: int = 8
    """steps per env per update (T): one gradient step per N x T env steps (16 did not solve
    stage 2 within 2M env steps, seed 0; 8 and 4 did, in 0.53M and 0.66M)"""
    # -- the task and the recipe -------------------------------------------------------
    stage_path: str = "0,1,2"
    """threshold curriculum: stages in training order"""
    promotion_accuracy: float = 0.95
    accuracy_window: int = 500
    replay_probability: float = 0.2
    action_mask: bool = True
    hard_fraction: float = 0.8
    shaping: float = 0.5
    # -- optimisation ------------------------------------------------------------------
    lr: float = 2e-3
    gamma: float = 0.99
    entropy_coeff: float = 0.03
    vf_coeff: float = 0.5
    max_grad_norm: float = 40.0
    standardize_advantages: bool = True
    hidden_size: int = 128
    embed_dim: int = 32
    # -- self-imitation (0: off) ---------------------------------------------------------
    sil_coeff: float = 1.0
    sil_value_coeff: float = 0.01
    sil_batch_episodes: int = 256
    sil_capacity: int = 20_000
    sil_priority_alpha: float = 0.6
    # -- evaluation, budget --------------------------------------------------------------
    target_accuracy: float = 0.99
    eval_every_steps: int = 20_480
    eval_episodes: int = 1000
    max_seconds: float = 900.0
    """budget of training seconds: wall time less the evaluations (as milestone times are)"""
    max_env_steps: int = 0
    """0: no env-step budget"""
    torch_threads: int = 1
    """torch intra-op threads (on 2 shared cores, 2 threads made a forward pass ~5x slower)"""
    verbose: bool = True
    output: str = ""
    """write the result as JSON here (optional)"""

    def stages(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.stage_path.split(","))

    def env_config(self) -> dict[str, Any]:
        return {
            "variant": "exact", "action_mask": self.action_mask, "hard_fraction": self.hard_fraction,
            "shaping": self.shaping, "shaping_gamma": self.gamma,
        }


# ---------------------------------------------------------------------------------------
# The model
class GRUActorCritic(nn.Module):
    """``ToolAgentGRUModule``'s network without RLlib: context only in the initial state."""

    def __init__(self, hidden: int = 128, embed: int = 32):
        super().__init__()
        lay = self.layout = observation_layout()
        n_ctx, n_act = lay["context_len"], lay["num_actions"]
        self.hidden = hidden
        self.context_embedding = nn.Embedding(lay["context_vocab"], embed)
        self.stage_embedding = nn.Embedding(lay["num_stages"], embed)
        self.context_encoder = nn.Sequential(nn.Linear((n_ctx + 1) * embed, hidden), nn.Tanh())
        self.initial_state = nn.Linear(hidden, hidden)
        self.action_embedding = nn.Embedding(n_act + 1, embed)  # +1: the start token
        self.gru = nn.GRUCell(embed, hidden)
        self.policy_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_act))
        self.value_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def _step(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for a batch ``obs [B, D]``: (GRU output [B, H], action mask [B, A])."""
        lay = self.layout
        prev_action = obs[:, lay["prev_action_index"]]
        starts = prev_action == lay["start_action"]
        if starts.any():  # a new episode: the state starts from the context
            ctx = obs[starts]
            tokens = torch.cat([self.context_embedding(ctx[:, : lay["context_len"]]).flatten(1),
                                self.stage_embedding(ctx[:, lay["stage_index"]])], dim=-1)
            h = h.clone()
            h[starts] = torch.tanh(self.initial_state(self.context_encoder(tokens)))
        h = self.gru(self.action_embedding(prev_action), h)
        mask = obs[:, lay["mask_index"] : lay["mask_index"] + lay["num_actions"]]
        return h, mask

    def logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.policy_head(h).masked_fill(mask == 0, MASKED_LOGIT)

    def act(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, A], next state) for one step."""
        h, mask = self._step(obs, h)
        return self.logits(h, mask), h

    def unroll(self, obs: torch.Tensor, h: torch.Tensor):
        """``obs [T, B, D]`` from state ``h``: (logits [T, B, A], values [T, B], last state)."""
        outputs, masks = [], []
        for t in range(obs.shape[0]):
            h, mask = self._step(obs[t], h)
            outputs.append(h)
            masks.append(mask)
        features = torch.stack(outputs)
        return self.logits(features, torch.stack(masks)), self.value_head(features).squeeze(-1), h

    def value(self, obs: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h, _ = self._step(obs, h)
        return self.value_head(h).squeeze(-1)


# ---------------------------------------------------------------------------------------
# Self-imitation: a prioritised ring of whole successful episodes
class SuccessReplay:
    def __init__(self, capacity: int, max_len: int, obs_dim: int, alpha: float, seed: int):
        self.obs = np.zeros((capacity, max_len, obs_dim), dtype=np.int64)
        self.actions = np.zeros((capacity, max_len), dtype=np.int64)
        self.returns = np.zeros((capacity, max_len), dtype=np.float32)
        self.lengths = np.zeros(capacity, dtype=np.int64)
        self.priorities = np.zeros(capacity)
        self.capacity, self.alpha, self.max_priority = capacity, alpha, 1.0
        self.size = self.cursor = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Add ``k`` episodes at once (``[k, max_len, ...]``, zero past each length)."""
        k = len(lengths)
        if k > self.capacity:
            obs, actions, returns, lengths = obs[-self.capacity:], actions[-self.capacity:], \
                returns[-self.capacity:], lengths[-self.capacity:]
            k = self.capacity
        idx = (self.cursor + np.arange(k)) % self.capacity
        self.obs[idx], self.actions[idx], self.returns[idx], self.lengths[idx] = obs, actions, returns, lengths
        self.priorities[idx] = self.max_priority
        self.cursor = int((self.cursor + k) % self.capacity)
        self.size = min(self.size + k, self.capacity)

    def sample(self, n: int):
        weights = self.priorities[: self.size] ** self.alpha
        idx = self.rng.choice(self.size, size=n, p=weights / weights.sum())
        steps = np.arange(self.obs.shape[1])[None, :] < self.lengths[idx, None]
        return idx, self.obs[idx], self.actions[idx], self.returns[idx], steps

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.maximum(priorities, 1e-6)
        self.priorities[idx] = priorities
        self.max_priority = max(self.max_priority, float(priorities.max()))


def sil_loss(model: GRUActorCritic, replay: SuccessReplay, n: int, value_coeff: float) -> torch.Tensor:
    idx, obs, actions, returns, steps = replay.sample(n)
    h0 = torch.zeros(n, model.hidden)  # every episode starts at its first step: h = f(context)
    logits, values, _ = model.unroll(torch.from_numpy(obs).transpose(0, 1), h0)
    logp = torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(actions).T[..., None]).squeeze(-1)
    steps_t = torch.from_numpy(steps).T.float()
    advantage = (torch.from_numpy(returns).T - values).clamp(min=0.0)
    count = steps_t.sum().clamp(min=1.0)
    policy = -(logp * advantage.detach() * steps_t).sum() / count
    value = 0.5 * (advantage.pow(2) * steps_t).sum() / count
    per_episode = (advantage.detach() * steps_t).sum(0) / steps_t.sum(0).clamp(min=1.0)
    replay.update_priorities(idx, per_episode.numpy())
    return policy + value_coeff * value


# ---------------------------------------------------------------------------------------
# Sampling
class Sampler:
    """The vector env, the policy's recurrent state, and the episodes in flight."""

    def __init__(self, args: Args, model: GRUActorCritic, stage_weights=None):
        self.args, self.model = args, model
        self.env = ToolMachineVectorEnv(args.env_config(), num_envs=args.num_envs)
        if stage_weights is not None:
            self.env.set_stage_weights(stage_weights)
        self.n = n = args.num_envs
        self.obs, _ = self.env.reset(seed=args.seed)
        self.h = torch.zeros(n, args.hidden_size)
        self.generator = torch.Generator().manual_seed(args.seed)
        # Whole episodes in flight, for self-imitation.
        max_len, dim = self.env.max_steps, self.obs.shape[1]
        self.ep_obs = np.zeros((n, max_len, dim), dtype=np.int64)
        self.ep_actions = np.zeros((n, max_len), dtype=np.int64)
        self.ep_rewards = np.zeros((n, max_len), dtype=np.float32)
        self.ep_len = np.zeros(n, dtype=np.int64)
        self.rows = np.arange(n)
        self.env_steps = 0

    @torch.no_grad()
    def rollout(self, steps: int, on_success: Callable | None = None):
        """``steps`` steps of every env: (obs [T, N, D], actions, rewards, dones, start state,
        ``[stage, (episodes ended, correct)]`` counts). ``on_success(obs, actions, returns,
        lengths)`` receives the whole successful episodes that ended."""
        T, n = steps, self.n
        obs_buf = np.empty((T, n, self.obs.shape[1]), dtype=np.int64)
        actions = np.empty((T, n), dtype=np.int64)
        rewards = np.empty((T, n), dtype=np.float32)
        dones = np.empty((T, n), dtype=bool)
        h0 = self.h
        counts = np.zeros((NUM_STAGES, 2), dtype=np.int64)  # per stage: episodes, correct
        for t in range(T):
            obs_buf[t] = self.obs
            logits, self.h = self.model.act(torch.from_numpy(self.obs), self.h)
            # Gumbel-max: a sample from softmax(logits); masked tools never win.
            u = torch.rand(logits.shape, generator=self.generator).clamp_(min=1e-12)
            action = (logits - torch.log(-torch.log(u))).argmax(-1).numpy()
            obs, reward, terminated, truncated, info = self.env.step(action)
            done = terminated | truncated
            actions[t], rewards[t], dones[t] = action, reward, done
            if on_success is not None:
                self._record(obs_buf[t], action, reward)
            if done.any():
                correct = info["correct"] & done
                stages = info["stage"][done]
                counts[:, 0] += np.bincount(stages, minlength=NUM_STAGES)
                counts[:, 1] += np.bincount(stages, weights=correct[done], minlength=NUM_STAGES).astype(np.int64)
                if on_success is not None:
                    self._finish(done, correct, on_success)
                obs, _ = self.env.reset(options={"reset_mask": done})
            self.obs = obs
        self.env_steps += T * n
        return obs_buf, actions, rewards, dones, h0, counts

    def _record(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray) -> None:
        at = self.ep_len
        self.ep_obs[self.rows, at] = obs
        self.ep_actions[self.rows, at] = action
        self.ep_rewards[self.rows, at] = reward
        self.ep_len += 1

    def _finish(self, done: np.ndarray, correct: np.ndarray, on_success: Callable) -> None:
        won = np.flatnonzero(correct)
        if len(won):
            lengths = self.ep_len[won]
            steps = np.arange(self.ep_obs.shape[1])[None, :] < lengths[:, None]
            rewards = self.ep_rewards[won] * steps
            returns = np.zeros_like(rewards)
            running = np.zeros(len(won), dtype=np.float32)
            for t in range(rewards.shape[1] - 1, -1, -1):
                running = rewards[:, t] + self.args.gamma * running
                returns[:, t] = running
            on_success(self.ep_obs[won] * steps[..., None], self.ep_actions[won] * steps, returns * steps, lengths)
        self.ep_len[done] = 0


# ---------------------------------------------------------------------------------------
# Greedy evaluation and milestones
#: Milestone name -> the eval rows that must all reach the target at one evaluation.
MILESTONES = {"stage 0": ("0",), "stages 0-1": ("0", "1"), "stages 0-2": ("0", "1", "2", "2m")}


def milestones_for(stages: tuple[int, ...]) -> dict[str, tuple[str, ...]]:
    """The milestones a run training ``stages`` can reach (all their rows trained)."""
    rows = {str(s) for s in stages} | {f"{s}m" for s in stages if s in MEMORY_STAGES}
    return {name: need for name, need in MILESTONES.items() if set(need) <= rows}


class GreedyEvaluator:
    """Fixed sets of fresh episodes per eval row, played greedily with one batched
    forward pass per step over a ``ToolMachineVectorEnv``."""

    def __init__(self, args: Args):
        self.args = args
        self.envs: dict[str, tuple[ToolMachineVectorEnv, int]] = {}

    def _env(self, row: str):
        if row not in self.envs:
            stage, hard = int(row.rstrip("m")), row.endswith("m")
            config = {"variant": "exact", "action_mask": self.args.action_mask, "stage": stage,
                      "hard_fraction": 1.0 if hard else 0.0}
            seed = self.args.seed + EVAL_SEED_OFFSET * (stage + (7 if hard else 1))
            self.envs[row] = (ToolMachineVectorEnv(config, num_envs=self.args.eval_episodes), seed)
        return self.envs[row]

    @torch.no_grad()
    def accuracy(self, model: GRUActorCritic, row: str) -> float:
        env, seed = self._env(row)
        obs, _ = env.reset(seed=seed)
        n = env.num_envs
        h = torch.zeros(n, model.hidden)
        active = np.ones(n, dtype=bool)
        correct = np.zeros(n, dtype=bool)
        while active.any():
            logits, h = model.act(torch.from_numpy(obs), h)
            obs, _, terminated, truncated, info = env.step(logits.argmax(-1).numpy())
            ended = (terminated | truncated) & active
            if ended.any():
                correct[ended] = info["correct"][ended]
                active &= ~ended
        return float(correct.mean())

    def evaluate(self, model: GRUActorCritic, milestones: dict[str, tuple[str, ...]]) -> dict[str, float]:
        """Greedy accuracy of the rows needed, in milestone order: a milestone's rows are
        evaluated only when every earlier one is met now. Returns ``{row: accuracy}``."""
        accuracy: dict[str, float] = {}
        for need in milestones.values():
            for row in need:
                if row not in accuracy:
                    accuracy[row] = self.accuracy(model, row)
            if any(accuracy[row] < self.args.target_accuracy for row in need):
                break
        return accuracy


# ---------------------------------------------------------------------------------------
# Training
def train(args: Args, on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train until every milestone is reached or the budget runs out; returns the result."""
    with torch_threads(args.torch_threads):
        return _train(args, on_eval)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads for a while (a caller such as ``toolagent bench`` keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(args: Args, on_eval) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = GRUActorCritic(args.hidden_size, args.embed_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    curriculum = Curriculum(CurriculumSettings(
        schedule="threshold", path=args.stages(), promotion_accuracy=args.promotion_accuracy,
        window=args.accuracy_window, replay_probability=args.replay_probability,
    ))
    sampler = Sampler(args, model, curriculum.stage_weights())
    replay = SuccessReplay(args.sil_capacity, sampler.env.max_steps, sampler.obs.shape[1],
                           args.sil_priority_alpha, args.seed) if args.sil_coeff > 0 else None
    evaluator = GreedyEvaluator(args)
    milestones = milestones_for(args.stages())
    reached: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    updates, next_eval, eval_seconds = 0, args.eval_every_steps, 0.0
    start = time.perf_counter()

    def log(text: str) -> None:
        if args.verbose:
            print(text, flush=True)

    while True:
        # -- sample ---------------------------------------------------------------------
        obs, actions, rewards, dones, h0, counts = sampler.rollout(
            args.rollout_steps, replay.add if replay is not None else None)
        if curriculum.update({s: (int(n), int(c)) for s, (n, c) in enumerate(counts) if n}):
            sampler.env.set_stage_weights(curriculum.stage_weights())
        # -- learn: n-step returns, one gradient step -------------------------------------
        obs_t = torch.from_numpy(obs)
        logits, values, _ = model.unroll(obs_t, h0)
        with torch.no_grad():
            bootstrap = model.value(torch.from_numpy(sampler.obs), sampler.h)
            returns = torch.empty_like(values)
            running = bootstrap
            not_done = torch.from_numpy(~dones).float()
            rewards_t = torch.from_numpy(rewards)
            for t in range(args.rollout_steps - 1, -1, -1):
                running = rewards_t[t] + args.gamma * not_done[t] * running
                returns[t] = running
            advantages = returns - values
            if args.standardize_advantages:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_probs = torch.log_softmax(logits, -1)
        logp = log_probs.gather(-1, torch.from_numpy(actions)[..., None]).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        loss = (-(logp * advantages).mean() + args.vf_coeff * (values - returns).pow(2).mean()
                - args.entropy_coeff * entropy)
        if replay is not None and replay.size:
            loss = loss + args.sil_coeff * sil_loss(model, replay, args.sil_batch_episodes, args.sil_value_coeff)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        updates += 1

        # -- evaluate, milestones, budget ---------------------------------------------------
        steps = sampler.env_steps
        out_of_steps = bool(args.max_env_steps) and steps >= args.max_env_steps
        out_of_time = time.perf_counter() - start - eval_seconds >= args.max_seconds
        if steps >= next_eval or out_of_steps or out_of_time:
            next_eval = steps + args.eval_every_steps
            t0 = time.perf_counter()
            model.eval()
            accuracy = evaluator.evaluate(model, milestones)
            model.train()
            eval_seconds += time.perf_counter() - t0
            seconds = time.perf_counter() - start
            for name, need in milestones.items():
                if name not in reached and all(accuracy.get(r, 0.0) >= args.target_accuracy for r in need):
                    reached[name] = {"env_steps": steps, "wall_seconds": round(seconds, 2),
                                     "training_seconds": round(seconds - eval_seconds, 2),
                                     "accuracy": {r: accuracy[r] for r in need}}
                    log(f"milestone {name} >= {args.target_accuracy}: {steps:,} env steps, {seconds:.1f} s")
            point = {"env_steps": steps, "wall_seconds": round(seconds, 2), "stage": curriculum.stage,
                     "accuracy": dict(accuracy)}
            history.append(point)
            if on_eval is not None:
                on_eval(point)
            shown = " ".join(f"s{r} {a:.3f}" for r, a in accuracy.items())
            sampled = " ".join(
                f"s{s} {a:.2f}" for s in args.stages() if (a := curriculum.windowed_accuracy(s)[0]) is not None)
            log(f"{steps:>10,} env steps | {seconds:6.1f} s | {steps / seconds:8,.0f} steps/s | "
                f"stage {curriculum.stage} | sampled {sampled} | greedy {shown}")
            if len(reached) == len(milestones) or out_of_steps or out_of_time:
                break

    seconds = time.perf_counter() - start
    result = {
        "args": dataclasses.asdict(args),
        "milestones": {
            name: {"reached": name in reached,
                   **reached.get(name, {"env_steps": None, "wall_seconds": None, "training_seconds": None})}
            for name in milestones
        },
        "solved": len(reached) == len(milestones),
        "accuracy": accuracy,
        "env_steps": sampler.env_steps,
        "wall_seconds": round(seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "updates": updates,
        "env_steps_per_second": sampler.env_steps / seconds,
        "stage": curriculum.stage,
        "promotions": [{"update": i, "stage": s} for i, s in curriculum.promotions],
        "sil_replay_size": replay.size if replay is not None else 0,
        "history": history,
    }
    if args.output:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        from rllib_app.outputs.checkpoints import write_json_atomic

        write_json_atomic(path, result)
    return result


def sampling_rate(args: Args, seconds: float = 2.0) -> float:
    """Env steps/s of the baseline's sampling alone (policy forward + env, no learning)."""
    with torch_threads(args.torch_threads):
        sampler = Sampler(args, GRUActorCritic(args.hidden_size, args.embed_dim))
        sampler.rollout(args.rollout_steps)  # warm up
        start, steps = time.perf_counter(), sampler.env_steps
        while time.perf_counter() - start < seconds:
            sampler.rollout(args.rollout_steps)
        return (sampler.env_steps - steps) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m rllib_app.experiments.baseline", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = get_type_hints(Args)
    for f in dataclasses.fields(Args):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=kind, default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    result = train(parse_args(argv))
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "args")}, indent=2))
    return 0 if result["solved"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

