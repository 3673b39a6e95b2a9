"""``BatchedEnvRunner``: RLlib's ``SingleAgentEnvRunner`` with a batched sampling loop.

RLlib's env runner spends most of its time per env step in Python: the env-to-module
and module-to-env connector pipelines handle every env's item separately and every step
of every env goes through ``SingleAgentEpisode.add_env_step``. This runner keeps
RLlib's contract (the same episode chunks, callbacks and metrics) but samples
``num_timesteps`` (truncate_episodes mode) with:

* one torch forward per env step over all envs, on a tensor of the observation batch,
  with the recurrent state kept as one ``[N, ...]`` tensor per state key. What RLlib's
  default connectors do per env is done here for the batch:
  ``AddStatesFromEpisodesToBatch`` (the module's initial state at an episode's first
  step, the previous step's ``STATE_OUT`` otherwise), ``AddTimeDimToBatchAndZeroPad``
  (T=1 for a stateful module), ``GetActions`` (sample from the exploration or the
  inference action distribution, greedy via ``to_deterministic()`` when not exploring,
  ``ACTION_LOGP``), ``TensorToNumpy`` (``convert_to_numpy``: int64 -> int32,
  float64 -> float32, as RLlib stores them) and ``RemoveSingleTsTimeRankFromBatch``;
* per-step arrays for all envs (observations, actions, rewards, terminated/truncated,
  the module's extra outputs, infos), from which the ``SingleAgentEpisode`` chunks are
  built in bulk at the end of ``sample()``: one constructor call per chunk with numpy
  data, as ``to_numpy()`` would leave it.

Episode chunks, as RLlib builds them:

* gymnasium's next-step autoreset: a step in which an env resets (its previous step
  ended an episode) is not an env step, its action is ignored, and its observation
  and info start the next episode;
* a done episode's chunk ends with the env's last observation and info (``on_episode_end``
  sees ``get_infos(-1)`` with the env's end-of-episode keys);
* an episode still running at the end of ``sample()`` is returned as a chunk and
  continued by the next call under the same ``id_``, with ``t_started`` = the steps
  so far and the last ``episode_lookback_horizon`` steps (observations, infos, actions,
  rewards, extra model outputs) in its lookback buffer, exactly what
  ``SingleAgentEpisode.cut()`` gives. The learner connector
  ``AddStatesFromEpisodesToBatch`` reads the previous chunk's last ``STATE_OUT`` from
  there as the chunk's initial state;
* extra model outputs per step: every column the module returns (here
  ``ACTION_DIST_INPUTS`` and ``STATE_OUT``), ``ACTION_LOGP`` and ``WEIGHTS_SEQ_NO``.

Callbacks: ``on_episode_end`` (with the finished chunk, ``prev_episode_chunks`` and the
runner's ``metrics_logger``) and ``on_sample_end``. The per-step hooks would need a live
episode object per env and step, the cost this runner removes: when a callback overrides
``on_episode_created``/``on_episode_start``/``on_episode_step`` (or such a callback
function is configured), or anything else here is not what this runner is built for
(custom connector pieces, a non-Discrete action space, ...), it logs why once and samples
with RLlib's own loop instead. ``num_episodes`` sampling (complete_episodes mode,
evaluation) also goes to RLlib's loop (it resets the envs; the next fast call resets
again). Metrics: RLlib's own ``_increase_sampled_metrics``, ``get_metrics`` and
``_log_episode_metrics``, fed the same done and ongoing chunks.

What else it takes to go fast, each giving RLlib's results:

* chunks are assembled without ``SingleAgentEpisode.__init__`` (its gym-space walks and
  validation cost a third of the time at 256 envs); the first chunk is also built by the
  constructor and compared, and any difference switches to the constructor;
* ``get_metrics`` logs only the done episodes RLlib's windowed episode stats keep;
* ``on_episode_end``'s ``metrics_logger.log_value(..., reduce="sum")`` calls are added
  up per key and logged once per ``sample()``;
* the envs' infos hold Python scalars (``PlainInfoToList``), not numpy ones;
* a remote runner's episodes go out as ``PickledEpisodes``: pickled in one C-pickler
  call instead of Ray's per-object serializer (a plain ``list`` again when unpickled);
* a remote runner's process (a Ray actor) is ``gc.freeze()``-d after its first fast ``sample()``
  (``freeze_gc``): full collections otherwise walk the ~430k objects Ray, torch and
  gymnasium leave behind.
"""

from __future__ import annotations

import gc
import logging
import math
import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import ray
import torch
import tree
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.env.env_runner import ENV_STEP_FAILURE
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import _REWARDS_BOX_SPACE, SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.metrics import RLMODULE_INFERENCE_TIMER, WEIGHTS_SEQ_NO
from ray.rllib.utils.numpy import convert_to_numpy

logger = logging.getLogger(__name__)

__all__ = ["PickledEpisodes", "BatchedEnvRunner"]

#: The default connector pieces of a single-agent torch env runner (what this runner
#: replaces); any other piece means the fast loop would skip its work.
_DEFAULT_ENV_TO_MODULE = {
    "AddObservationsFromEpisodesToBatch", "AddTimeDimToBatchAndZeroPad", "AddStatesFromEpisodesToBatch",
    "AgentToModuleMapping", "BatchIndividualItems", "NumpyToTensor",
}
_DEFAULT_MODULE_TO_ENV = {
    "GetActions", "TensorToNumpy", "UnBatchToIndividualItems", "ModuleToAgentUnmapping",
    "RemoveSingleTsTimeRankFromBatch", "NormalizeAndClipActions", "ListifyDataForVectorEnv",
}
#: Episode hooks that need a live episode per env and step.
_PER_STEP_HOOKS = ("on_episode_created", "on_episode_start", "on_episode_step")


@dataclass
class _Lookback:
    """The last ``n`` steps of an episode before the current observation (what
    ``SingleAgentEpisode.cut`` carries into the continuing chunk)."""

    n: int
    obs: np.ndarray  # [n, ...] (the current observation is not in here)
    infos: list  # n dicts
    actions: np.ndarray  # [n]
    rewards: np.ndarray  # [n]
    extras: list  # the extra model outputs, dm-tree flattened: [n, ...] arrays
    weights_seq_no: np.ndarray  # [n]


@dataclass
class _EnvState:
    """What the fast loop carries from one ``sample()`` call to the next."""

    obs: np.ndarray  # [N, ...] the current observation of every env
    infos: list  # N dicts: the info that came with it
    state: Optional[dict]  # STATE_IN of the next forward: {key: tensor [N, ...]} (None: stateless)
    ids: list  # N episode ids
    t_started: np.ndarray  # [N] env steps of each episode before the current observation
    lookback: list  # N Optional[_Lookback]
    pending_reset: np.ndarray  # [N] bool: the episode ended at the last step; the next step resets
    start_time: np.ndarray  # [N] float: perf_counter when the chunk started (nan: at its first step)
    random_actions: bool = False  # the kind of actions its episodes were sampled with


class PickledEpisodes(list):
    """A list of episode chunks that pickles as one bytes object, and unpickles as a plain
    ``list``. Ray's serializer calls a Python ``reducer_override`` and a ``ChainMap`` lookup
    for every object and keeps every numpy array as an out-of-band buffer: for the
    thousand-odd chunks of a large sample ``ray.put`` took as long as the sampling
    itself; one pickle call is faster (docs/research/2026-11-22-throughput.md)."""

    def __reduce__(self):
        return pickle.loads, (pickle.dumps(list(self), protocol=pickle.HIGHEST_PROTOCOL),)


class PlainInfoToList(DictInfoToList):
    """gymnasium's ``DictInfoToList`` with Python scalars in the per-env dicts: ``value[i]``
    of an info array is a numpy scalar, which pickles far slower than an ``int``, and every
    step's info goes out with the episode chunks. Values compare equal to the numpy scalars they replace."""

    def _convert_info_to_list(self, vector_infos: dict) -> list[dict]:
        if any(isinstance(v, dict) for v in vector_infos.values()):
            return super()._convert_info_to_list(vector_infos)
        keys = [k for k in vector_infos if not k.startswith("_")]
        masks = {k: vector_infos.get(f"_{k}") for k in keys}
        everyone = [k for k in keys if masks[k] is None or masks[k].all()]
        if everyone:
            list_info = [dict(zip(everyone, row)) for row in zip(*(vector_infos[k].tolist() for k in everyone))]
        else:
            list_info = [{} for _ in range(self.num_envs)]
        for key in keys:
            if key not in everyone:
                where = np.flatnonzero(masks[key])
                for i, value in zip(where.tolist(), vector_infos[key][where].tolist()):
                    list_info[i][key] = value
        return list_info


def _in_ray_actor() -> bool:
    try:
        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # pragma: no cover - no runtime context
        return False


def _new_id() -> str:
    return uuid.uuid4().hex


def _overrides(callback, name: str) -> bool:
    method = getattr(type(callback), name, None)
    return method is not None and method is not getattr(RLlibCallback, name, None)


class BatchedEnvRunner(SingleAgentEnvRunner):
    """``SingleAgentEnvRunner`` whose ``sample(num_timesteps=...)`` steps all envs with
    one batched forward per step and builds the episode chunks in bulk (module docstring)."""

    #: ``gc.freeze()`` a remote runner's process after its first fast ``sample()``.
    freeze_gc = True

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self._fast: Optional[_EnvState] = None
        self._fast_unsupported: Optional[str] = self._unsupported_reason()
        self._fast_warned = False
        self._fast_init_state = None
        self._gc_frozen = False
        self._fast_episodes: Optional[bool] = None  # direct episode assembly: unchecked/checked ok/differs

    def make_env(self) -> None:
        super().make_env()
        if type(self.env) is DictInfoToList:  # RLlib's wrapper (SingleAgentEnvRunner.make_env)
            self.env = PlainInfoToList(self.env.env)

    def sample(self, **kwargs):
        """RLlib's ``sample()``; in a Ray actor its episodes are a ``PickledEpisodes``, so
        sending them (a remote call's result, ``sample_get_state_and_metrics``' ``ray.put``)
        does not walk every object in Python."""
        episodes = super().sample(**kwargs)
        return PickledEpisodes(episodes) if _in_ray_actor() else episodes

    # -- when the fast loop applies ------------------------------------------------------
    def _unsupported_reason(self) -> Optional[str]:
        """Why this runner must use RLlib's loop (None: it need not)."""
        if self.module is None:
            return "no RLModule"
        if not isinstance(self.module, TorchRLModule):
            return f"the module is a {type(self.module).__name__}, not a TorchRLModule"
        if not self.episodes_to_numpy:
            return "config.episodes_to_numpy is False"
        hooks = [name for name in _PER_STEP_HOOKS
                 if any(_overrides(cb, name) for cb in self._callbacks) or getattr(self.config, f"callbacks_{name}", None)]
        if hooks:
            return f"callbacks use {', '.join(hooks)} (per-step episode hooks)"
        for pipeline, allowed in ((self._env_to_module, _DEFAULT_ENV_TO_MODULE),
                                  (self._module_to_env, _DEFAULT_MODULE_TO_ENV)):
            extra = [type(c).__name__ for c in getattr(pipeline, "connectors", []) if type(c).__name__ not in allowed]
            if extra:
                return f"connector pieces {extra} are not RLlib's defaults"
        return None

    def _env_reason(self) -> Optional[str]:
        if not isinstance(self.env.single_action_space, gym.spaces.Discrete):
            return f"action space {self.env.single_action_space} is not Discrete"
        if not isinstance(self.env.single_observation_space, gym.spaces.Box):
            return f"observation space {self.env.single_observation_space} is not a Box"
        return None

    def _sample(self, *, num_timesteps=None, num_episodes=None, explore, random_actions=False, force_reset=False):
        reason = self._fast_unsupported or (self._env_reason() if self.env is not None else None)
        if num_timesteps is None or reason is not None:
            if reason is not None and not self._fast_warned:
                logger.warning("BatchedEnvRunner samples with RLlib's loop: %s", reason)
                self._fast_warned = True
            # RLlib's loop resets the envs (num_episodes) or keeps its own episodes: ours are stale.
            self._fast = None
            return super()._sample(num_timesteps=num_timesteps, num_episodes=num_episodes, explore=explore,
                                   random_actions=random_actions, force_reset=force_reset)
        return self._sample_fast(num_timesteps, explore, random_actions, force_reset)

    # -- the fast loop ---------------------------------------------------------------------
    def _initial_state(self, n: int) -> Optional[dict]:
        """The module's initial state for ``n`` envs: {key: tensor [n, ...]} (None: stateless)."""
        if not self.module.is_stateful():
            return None
        if self._fast_init_state is None:  # constant (RLlib reads it at every episode start)
            self._fast_init_state = tree.map_structure(
                lambda s: torch.as_tensor(np.asarray(s), device=self._device).unsqueeze(0),
                convert_to_numpy(self.module.get_initial_state()),
            )
        return tree.map_structure(lambda s: s.repeat(n, *([1] * (s.dim() - 1))), self._fast_init_state)

    def _fast_reset(self) -> _EnvState:
        """Reset every env (seeded the first time, as RLlib does) and start new episodes."""
        # RLlib: these chunks' episodes will never complete (they would leak).
        self._ongoing_episodes_for_metrics.clear()
        self._shared_data = {}
        obs, infos = self._try_env_reset(seed=self._seed if self._needs_initial_reset else None, options=None)
        self._needs_initial_reset = False
        n = self.num_envs
        self._fast = _EnvState(
            obs=np.asarray(obs), infos=list(infos), state=self._initial_state(n), ids=[_new_id() for _ in range(n)],
            t_started=np.zeros(n, dtype=np.int64), lookback=[None] * n, pending_reset=np.zeros(n, dtype=bool),
            start_time=np.full(n, time.perf_counter()),
        )
        return self._fast

    def _act(self, f: _EnvState, explore: bool, ts: int):
        """One batched forward: (actions for the env, {column: numpy [N, ...]} to store)."""
        module = self.module
        obs = torch.from_numpy(f.obs).to(self._device)
        stateful = f.state is not None
        batch = {Columns.OBS: obs.unsqueeze(1) if stateful else obs}  # AddTimeDimToBatchAndZeroPad (T=1)
        if stateful:
            batch[Columns.STATE_IN] = f.state
        with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
            # TorchRLModule.forward_exploration/inference = eval(), no_grad _forward_*(), train():
            # two walks over the submodules per step. _sample_fast puts the module in eval
            # mode once per call and calls the _forward_* methods (they hold the no_grad).
            direct = type(module).forward_exploration is TorchRLModule.forward_exploration and \
                type(module).forward_inference is TorchRLModule.forward_inference and not module.training
            if explore:
                runners = self.config.num_env_runners or 1
                t = (self.num_env_steps_sampled_lifetime // runners + ts) * runners
                out = module._forward_exploration(batch, t=t) if direct else module.forward_exploration(batch, t=t)
            else:
                out = module._forward_inference(batch) if direct else module.forward_inference(batch)
        with torch.no_grad():  # GetActions
            if Columns.ACTIONS not in out:
                dist_cls = (module.get_exploration_action_dist_cls() if explore
                            else module.get_inference_action_dist_cls())
                dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
                if not explore:
                    dist = dist.to_deterministic()
                out[Columns.ACTIONS] = dist.sample()
                if Columns.ACTION_LOGP not in out:
                    out[Columns.ACTION_LOGP] = dist.logp(out[Columns.ACTIONS])
        if stateful:
            # The next STATE_IN: this STATE_OUT (rows of envs that reset are set after the step).
            f.state = out[Columns.STATE_OUT]
        out = convert_to_numpy(out)  # TensorToNumpy
        if stateful:  # RemoveSingleTsTimeRankFromBatch (STATE_OUT has no time rank)
            out = {k: v if k == Columns.STATE_OUT else tree.map_structure(lambda a: a[:, 0], v) for k, v in out.items()}
        actions = out.pop(Columns.ACTIONS)
        out.pop(Columns.ACTIONS_FOR_ENV, None)
        return actions, out

    def _sample_fast(self, num_timesteps: int, explore: bool, random_actions: bool, force_reset: bool):
        was_training = self.module.training
        self.module.eval()  # what forward_exploration/inference set around each step
        try:
            return self._sample_fast_in_eval_mode(num_timesteps, explore, random_actions, force_reset)
        finally:
            if was_training:
                self.module.train()

    def _sample_fast_in_eval_mode(self, num_timesteps: int, explore: bool, random_actions: bool, force_reset: bool):
        f = self._fast
        # Switching between random and module actions starts new episodes: a chunk's steps
        # would otherwise differ in their extra model outputs (RLlib's loop cannot continue
        # such an episode either: its buffers end up of different lengths).
        if force_reset or self._needs_initial_reset or f is None or f.random_actions != random_actions:
            f = self._fast_reset()
            f.random_actions = random_actions
        n = self.num_envs
        done: list = []  # (episode, env index), in RLlib's order
        hist = _History(f)
        ts = 0
        while ts < num_timesteps:
            if random_actions:
                actions, extras = self.env.action_space.sample(), {}
            else:
                actions, extras = self._act(f, explore, ts)
            results = self._try_env_step(actions)
            if results == ENV_STEP_FAILURE:
                # RLlib: keep the done episodes, drop the ongoing ones, reset (make_env() has
                # asked for a seeded reset), count again.
                done += self._build(f, hist, keep_ongoing=False)[0]
                ts = 0
                f = self._fast_reset()
                hist = _History(f)
                continue
            obs, rewards, terminated, truncated, infos = results
            resetting = f.pending_reset
            ts += n - int(resetting.sum())
            hist.add(actions, rewards, terminated, truncated, obs, infos, extras, time.perf_counter())
            f.obs, f.infos = hist.obs[-1], list(infos)
            f.pending_reset = hist.terminated[-1] | hist.truncated[-1]
            if random_actions:
                f.state = self._initial_state(n)  # no STATE_OUT stored: RLlib would start from the initial state
            elif f.state is not None and resetting.any():
                # AddStatesFromEpisodesToBatch: a new episode starts from the module's initial state.
                self._initial_state(1)  # (fills the cache: [1, ...] tensors)
                f.state = _reset_rows(f.state, self._fast_init_state, torch.as_tensor(resetting, device=self._device))
        new_done, ongoing = self._build(f, hist, keep_ongoing=True)
        done += new_done

        # Callbacks and metrics, as RLlib's loop.
        logger_ = _SumBatchingLogger(self.metrics)
        for episode, env_index in done:
            self._episode_end_callback(episode, env_index, logger_)
        logger_.flush()
        done_episodes = [episode for episode, _ in done]
        self._done_episodes_for_metrics.extend(done_episodes)
        for episode in ongoing:
            self._ongoing_episodes_for_metrics[episode.id_].append(episode)
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, len(done_episodes))
        if self.freeze_gc and not self._gc_frozen and _in_ray_actor():
            # After the first call everything this actor imports and builds exists: move it
            # out of the cyclic GC's way. Ray, torch and gymnasium leave ~430k objects that
            # every full collection walks (a large share of the sampling time: docs/research).
            # Only in a Ray actor (a remote runner: the process is this
            # runner's); objects are still freed by reference counting.
            gc.freeze()
            self._gc_frozen = True
        return done_episodes + ongoing

    def get_metrics(self):
        """RLlib's ``get_metrics``, fed only the done episodes whose values it keeps.

        Its per-episode metrics (``_log_episode_metrics``: return, length, duration, min,
        max) are all windowed over the last ``win`` episodes, and a windowed stat on an env
        runner is a ``deque(maxlen=win)`` emptied at every ``reduce()``: of the done
        episodes since the last call only the last ``win`` survive. Logging only those
        gives the same metrics at a fraction of the cost (10 ``log_value`` calls per
        episode, ~1,000 episodes per ``sample()`` at 256 envs).
        """
        win = max(1, math.ceil(self.config.metrics_num_episodes_for_smoothing / (self.config.num_env_runners or 1)))
        episodes = self._done_episodes_for_metrics
        if len(episodes) > win:
            for episode in episodes[:-win]:
                self._ongoing_episodes_for_metrics.pop(episode.id_, None)  # what RLlib does after using them
            del episodes[:-win]
        return super().get_metrics()

    def _episode_end_callback(self, episode, env_index: int, metrics_logger) -> None:
        make_callback(
            "on_episode_end",
            callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_episode_end,
            kwargs=dict(
                episode=episode, env_runner=self, metrics_logger=metrics_logger, env=self.env.unwrapped,
                rl_module=self.module, env_index=env_index,
                prev_episode_chunks=self._ongoing_episodes_for_metrics[episode.id_],
            ),
        )

    # -- bulk episode building ---------------------------------------------------------------
    def _episode(self, *, lookback: int, start_time: float, last_step_time: float, **parts) -> SingleAgentEpisode:
        """A numpy ``SingleAgentEpisode`` chunk, as ``SingleAgentEpisode(...).to_numpy()`` makes it.

        The constructor costs ~10 gym-space walks and validations per chunk (a third of
        this runner's time at 256 envs); ``_assemble_episode`` sets the same fields
        directly. The first chunk is built both ways and compared (``get_state()``); on
        any difference (another RLlib version) the constructor is used from then on.
        """
        spaces = (self.env.single_observation_space, self.env.single_action_space)
        if self._fast_episodes is not False:
            episode = _assemble_episode(*spaces, lookback=lookback, **parts)
            if self._fast_episodes is None:
                reference = _construct_episode(*spaces, lookback=lookback, **parts)
                self._fast_episodes = _same_state(episode.get_state(), reference.get_state())
                if not self._fast_episodes:
                    logger.warning("BatchedEnvRunner: direct episode assembly differs from "
                                   "SingleAgentEpisode's constructor here; using the constructor")
                    episode = reference
        else:
            episode = _construct_episode(*spaces, lookback=lookback, **parts)
        episode._start_time = start_time
        episode._last_step_time = last_step_time
        return episode

    def _build(self, f: _EnvState, hist: _History, *, keep_ongoing: bool) -> tuple[list, list]:
        """``([(done episode, env index)], [ongoing chunk])`` from ``hist``: the done ones
        ordered by step, then env, the ongoing ones by env (RLlib's order). With
        ``keep_ongoing``, ``f`` is left with what continues them in the next call."""
        L = len(hist.actions)
        if L == 0:
            return [], []
        n = self.num_envs
        obs = np.stack(hist.obs, axis=1)  # [N, L+1, ...]; obs index k+1 comes from step k
        actions = np.stack(hist.actions, axis=1)  # [N, L]
        rewards = np.stack(hist.rewards, axis=1)
        terminated = np.stack(hist.terminated, axis=1)
        truncated = np.stack(hist.truncated, axis=1)
        done = terminated | truncated
        times = hist.times
        if hist.extras:
            structure = hist.extras[0]
            flat_steps = [tree.flatten(e) for e in hist.extras]
            extras = [np.stack([s[j] for s in flat_steps], axis=1) for j in range(len(flat_steps[0]))]
        else:
            structure, extras = None, []
        wsn = self._weights_seq_no
        infos = hist.infos  # [L+1][N]
        horizon = self.config.episode_lookback_horizon

        unflatten = _unflattener(structure)

        def make(i, ep_id, t0, lb, a, b, is_term, is_trunc, start, last):
            """Chunk of env i: observations a..b (obs indices), steps a..b-1."""
            k = lb.n if lb is not None else 0
            o, acts, rews = obs[i, a:b + 1], actions[i, a:b], rewards[i, a:b]
            ex = [e[i, a:b] for e in extras]
            w = np.full(b - a, wsn, dtype=np.int64)
            info = [infos[s][i] for s in range(a, b + 1)]
            if k:
                o = np.concatenate([lb.obs, o])
                acts = np.concatenate([lb.actions, acts])
                rews = np.concatenate([lb.rewards, rews])
                ex = [np.concatenate([p, e]) for p, e in zip(lb.extras, ex)]
                w = np.concatenate([lb.weights_seq_no, w])
                info = lb.infos + info
            extra_model_outputs = unflatten(ex)
            extra_model_outputs[WEIGHTS_SEQ_NO] = w
            ep = self._episode(
                id_=ep_id, observations=o, infos=info, actions=acts, rewards=rews, terminated=bool(is_term),
                truncated=bool(is_trunc), extra_model_outputs=extra_model_outputs, t_started=int(t0), lookback=k,
                start_time=start if np.isfinite(start) else times[a], last_step_time=last,
            )
            return ep, (o, info, acts, rews, ex, w)

        done_items = []  # (step, env, episode)
        ongoing = []
        for i in range(n):
            if hist.pending_at_start[i]:
                # the first step resets this env: a new episode from obs index 1
                a, ep_id, t0, lb, start = 1, _new_id(), 0, None, times[0]
            else:
                a, ep_id, t0, lb, start = 0, f.ids[i], int(f.t_started[i]), f.lookback[i], f.start_time[i]
            for d in np.flatnonzero(done[i]).tolist():
                ep, _ = make(i, ep_id, t0, lb, a, d + 1, terminated[i, d], truncated[i, d], start, times[d])
                done_items.append((d, i, ep))
                a, ep_id, t0, lb = d + 2, _new_id(), 0, None
                start = times[d + 1] if d + 1 < L else np.nan
            if not keep_ongoing:
                continue
            if a > L:  # done at the last step: the next call's first step resets this env
                f.ids[i], f.t_started[i], f.lookback[i], f.start_time[i] = _new_id(), 0, None, np.nan
                continue
            steps = L - a
            if steps == 0:  # reset at the last step: nothing to return yet (RLlib: t == 0)
                f.ids[i], f.t_started[i], f.lookback[i], f.start_time[i] = ep_id, t0, lb, start
                continue
            ep, (o, info, acts, rews, ex, w) = make(i, ep_id, t0, lb, a, L, False, False, start, times[L - 1])
            ongoing.append(ep)
            # SingleAgentEpisode.cut(len_lookback_buffer=horizon): the last `horizon` steps go along.
            m = min(horizon, len(acts))
            f.ids[i], f.t_started[i], f.start_time[i] = ep_id, t0 + steps, np.nan
            f.lookback[i] = None if m == 0 else _Lookback(
                n=m, obs=o[len(o) - 1 - m:len(o) - 1], infos=info[len(info) - 1 - m:len(info) - 1],
                actions=acts[len(acts) - m:], rewards=rews[len(rews) - m:], extras=[e[len(e) - m:] for e in ex],
                weights_seq_no=w[len(w) - m:],
            )
        done_items.sort(key=lambda item: (item[0], item[1]))
        return [(ep, i) for _, i, ep in done_items], ongoing


class _History:
    """The steps of one ``sample()`` call, one array per step for all envs."""

    def __init__(self, f: _EnvState):
        self.obs = [f.obs]
        self.infos = [f.infos]
        self.actions, self.rewards, self.terminated, self.truncated = [], [], [], []
        self.extras, self.times = [], []
        self.pending_at_start = f.pending_reset.copy()

    def add(self, actions, rewards, terminated, truncated, obs, infos, extras, now):
        # copies: a vector env may hand out the same buffers at every step
        self.actions.append(np.array(actions))
        self.rewards.append(np.array(rewards))
        self.terminated.append(np.array(terminated, dtype=bool))
        self.truncated.append(np.array(truncated, dtype=bool))
        self.obs.append(np.array(obs))
        self.infos.append(infos)
        if extras:
            self.extras.append(extras)
        self.times.append(now)


class _SumBatchingLogger:
    """The runner's ``MetricsLogger`` as the ``on_episode_end`` calls of one ``sample()``
    see it: ``log_value(key, number, reduce="sum")`` (no window or other options) is added
    up per key and logged once by ``flush()`` (a sum stat reduces to the same value: the
    curriculum logs two such counts per episode, ~1,000 episodes per call at 256 envs);
    everything else goes straight to the logger."""

    _NUMBERS = (int, float, np.integer, np.floating)

    def __init__(self, metrics_logger):
        self._logger = metrics_logger
        self._sums: dict = {}

    def log_value(self, key, value, *, reduce=None, window=None, **kwargs):
        if reduce == "sum" and window is None and not kwargs and isinstance(value, self._NUMBERS):
            key = key if isinstance(key, str) else tuple(key)
            self._sums[key] = self._sums.get(key, 0) + value
        else:
            self._logger.log_value(key, value, reduce=reduce, window=window, **kwargs)

    def flush(self) -> None:
        sums, self._sums = self._sums, {}
        for key, total in sums.items():
            self._logger.log_value(key, total, reduce="sum")

    def __getattr__(self, name):
        self.flush()  # peek() and friends see every value logged so far
        return getattr(self._logger, name)


def _reset_rows(state: dict, init: dict, mask: torch.Tensor) -> dict:
    """``state`` with the rows in ``mask`` replaced by ``init`` (out of place: the old
    tensors are stored as the last step's STATE_OUT)."""
    return tree.map_structure(lambda s, i: torch.where(mask.view(-1, *([1] * (s.dim() - 1))), i, s), state, init)


# -- episodes from parts ----------------------------------------------------------------------
def _unflattener(structure):
    """``flat list of arrays -> {column: array or {key: array}}`` for the extra model
    outputs' structure (dm-tree for anything nested deeper)."""
    if structure is None:
        return lambda flat: {}
    spec, j = [], 0
    for key in sorted(structure):  # dm-tree flattens dicts in sorted key order
        value = structure[key]
        if isinstance(value, dict) and all(not isinstance(v, (dict, list, tuple)) for v in value.values()):
            sub = sorted(value)
            spec.append((key, sub, j))
            j += len(sub)
        elif isinstance(value, (dict, list, tuple)):
            return lambda flat: dict(tree.unflatten_as(structure, flat))
        else:
            spec.append((key, None, j))
            j += 1
    return lambda flat: {
        key: flat[j] if sub is None else {name: flat[j + m] for m, name in enumerate(sub)} for key, sub, j in spec
    }


def _buffer(data, lookback: int, space=None, space_struct=None) -> InfiniteLookbackBuffer:
    buf = InfiniteLookbackBuffer.__new__(InfiniteLookbackBuffer)
    buf.data, buf.lookback, buf.finalized = data, lookback, not isinstance(data, list)
    buf._space, buf._space_struct = space, space_struct
    return buf


def _assemble_episode(obs_space, act_space, *, id_, observations, infos, actions, rewards, terminated, truncated,
                      extra_model_outputs, t_started, lookback) -> SingleAgentEpisode:
    ep = SingleAgentEpisode.__new__(SingleAgentEpisode)
    ep.id_, ep.agent_id, ep.module_id, ep.multi_agent_episode_id = id_, None, None, None
    # Box/Discrete spaces are their own base struct (get_base_struct_from_space)
    ep.observations = _buffer(observations, lookback, obs_space, obs_space)
    ep._observation_space = obs_space
    ep.infos = _buffer(infos, lookback)
    ep.actions = _buffer(actions, lookback, act_space, act_space)
    ep._action_space = act_space
    ep.rewards = _buffer(rewards, lookback, _REWARDS_BOX_SPACE, _REWARDS_BOX_SPACE)
    ep.is_terminated, ep.is_truncated = terminated, truncated
    ep.extra_model_outputs = {k: _buffer(v, lookback) for k, v in extra_model_outputs.items()}
    ep.t_started = t_started
    ep.t = t_started + len(rewards) - lookback
    ep._custom_data = {}
    ep._start_time = ep._last_step_time = None
    ep._last_added_observation = ep._last_added_infos = None
    return ep


def _construct_episode(obs_space, act_space, *, extra_model_outputs, lookback, **parts) -> SingleAgentEpisode:
    buffers = {}
    for key, value in extra_model_outputs.items():
        buf = InfiniteLookbackBuffer(value, lookback=lookback)
        buf.lookback = lookback  # (the constructor takes a dict's len(), its number of keys)
        buffers[key] = buf
    return SingleAgentEpisode(observation_space=obs_space, action_space=act_space, extra_model_outputs=buffers,
                              len_lookback_buffer=lookback, **parts)


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and (a.dtype == object and all(_same_state(x, y) for x, y in zip(a.ravel(), b.ravel()))
                     or a.dtype != object and np.array_equal(a, b)))
    return type(a) is type(b) and a == b
