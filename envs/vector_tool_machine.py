"""``ToolMachineVectorEnv``: N tool machines stepped together with numpy.

A native ``gymnasium.vector.VectorEnv`` that is *bit for bit* the same as
``SyncVectorEnv([lambda: ToolMachineEnv(config)] * N)``: same observations, rewards,
terminations, truncations and infos for the same seed and actions (gymnasium's
next-step autoreset, dict-of-arrays infos with ``_key`` masks).

Design:

* The registers of all machines live in arrays (``acc``/``mem`` with "is set"
  flags, cursor, armed; the seed variant's ``last`` and ``mem`` code). A step is a
  fixed number of numpy operations over all N machines, whatever N is: the
  machine rules, the step limit, rewards (answer check, the seed variant's reward,
  potential-based shaping), the mask and the observation.
* Randomness is the one thing not vectorized. Each sub-env keeps its own numpy
  ``Generator``, seeded exactly as ``SyncVectorEnv`` seeds its envs (``seed + i``
  through ``gymnasium.utils.seeding``), and a sub-env draws its task from it only
  when it resets: ``ToolMachineEnv.reset`` draws from per-env PCG64 streams, and
  matching them means replaying the same calls on the same generator. That is the
  only Python loop over envs in the hot path (``_draw_tasks``), run for the envs
  that reset this step (about one in six per step with short episodes).
  Everything the draw decides (targets, the shaping path, the context in the
  observation) is then computed for all resetting envs at once.
* Configuration is parsed by a ``ToolMachineEnv`` built from the same config, so
  validation, defaults and stage-weight normalisation are the single env's own.

``make_tool_machine`` is the env creator for RLlib (``register_env``): it returns
this class when the config carries ``num_envs`` (what RLlib's
``gym_env_vectorize_mode="vector_entry_point"`` passes) and a ``ToolMachineEnv``
otherwise. ``register_gymnasium_env`` registers a gymnasium id with both entry
points.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.analysis import memory_required_contexts
from envs.machine import ADD, ANS, MEMORY_STAGES, MUL, RCL, STAGE_DIGITS, STO, SUB
from envs.oracle import general_program
from envs.tool_machine import CONTEXT_LEN, NUM_STAGES, PAD_TOKEN, START_ACTION, ToolMachineEnv

__all__ = ["GYM_ENV_ID", "ToolMachineVectorEnv", "make_tool_machine", "register_gymnasium_env"]

#: The gymnasium id ``register_gymnasium_env`` registers (``envs`` registers it on import,
#: so ``"envs:toolagent/ToolMachine-v0"`` also works in a fresh process).
GYM_ENV_ID = "toolagent/ToolMachine-v0"

_NUM_DIGITS = 5  # every task draws (at most) five digits
_STAGE_DIGITS = np.array([STAGE_DIGITS[s] for s in range(NUM_STAGES)], dtype=np.int64)
_STAGE_ID = CONTEXT_LEN
_PREV_ID = CONTEXT_LEN + 1
_MASK_ID = CONTEXT_LEN + 2
# The seed variant's memory slot: empty, "use_d", "ok".
_SEED_MEM_NONE, _SEED_MEM_USE_D, _SEED_MEM_OK = 0, 1, 2
# The general programs without their ANS: the machine states they pass through are
# the shaping potential's path (``oracle.general_path``). Padded with -1, a token
# that is no tool; padded steps get an impossible cursor so they never match.
_PATH_LEN = np.array([len(general_program(s)) - 1 for s in range(NUM_STAGES)], dtype=np.int64)
_PATH_PROGRAMS = np.full((NUM_STAGES, int(_PATH_LEN.max())), -1, dtype=np.int64)
for _s in range(NUM_STAGES):
    _PATH_PROGRAMS[_s, : _PATH_LEN[_s]] = general_program(_s)[:-1]
# Info keys at the end of an episode, in the single env's order, with their dtypes
# (what ``VectorEnv._add_info`` makes of the single env's Python values).
_END_KEYS = (("target", np.int64), ("answered", np.bool_), ("answer", np.int64), ("correct", np.bool_),
             ("steps", np.int64))


def _exact_apply(regs: tuple, tool: np.ndarray, digits: np.ndarray, num_digits: np.ndarray) -> tuple:
    """``machine.apply_tool`` on arrays: ``regs = (acc, acc_set, mem, mem_set, cursor, armed)``,
    one row per machine; returns the next registers (new arrays)."""
    acc, acc_set, mem, mem_set, cursor, armed = regs
    arith = (tool >= MUL) & (tool <= SUB)
    applies = arith & (armed | (cursor < num_digits))
    reads = applies & ~armed
    # An empty accumulator acts as the tool's identity (1 for MUL, 0 for ADD/SUB).
    acc_value = np.where(acc_set, acc, tool == MUL)
    digit = np.take_along_axis(digits, np.minimum(cursor, _NUM_DIGITS - 1)[:, None], axis=1)[:, 0]
    left = np.where(armed, mem, acc_value)
    right = np.where(armed, acc_value, digit)
    value = np.where(tool == MUL, left * right, np.where(tool == ADD, left + right, left - right))
    store = (tool == STO) & acc_set
    recall = (tool == RCL) & mem_set
    return (
        np.where(applies, value, acc),
        (acc_set | applies) & ~store,
        np.where(store, acc, mem),
        (mem_set & ~(applies & armed)) | store,
        cursor + reads,
        (armed & ~applies) | recall,
    )


def _stage_targets(stages: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """``machine.stage_target`` for rows of different stages."""
    a, b, c, d, e = digits.T
    return np.select(
        [stages == 0, stages == 1, stages == 2, stages == 3],
        [a * b + c, a * b + c - d, (a * b + c) - (d * e), a - b * c],
        a * b - c * d,
    )


class ToolMachineVectorEnv(VectorEnv):
    """``num_envs`` tool machines with one config, stepped with numpy.

    Args:
        config: the ``ToolMachineEnv`` config (same keys, same validation), which may
            also carry ``num_envs`` (as RLlib's vector entry point passes it).
        num_envs: the number of machines (default: ``config["num_envs"]``, else 1).

    ``set_stage``/``set_stage_weights`` apply to every machine from its next
    episode on, like the single env's. Reset ``options`` are the single env's
    (``stage``, ``digits``, applied to every env reset) plus ``SyncVectorEnv``'s
    ``reset_mask``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, config: Mapping[str, Any] | None = None, num_envs: int | None = None):
        config = dict(config or {})
        config_num_envs = config.pop("num_envs", None)
        if num_envs is None:
            num_envs = 1 if config_num_envs is None else config_num_envs
        elif config_num_envs is not None and config_num_envs != num_envs:
            raise ValueError(f"num_envs={num_envs} but config has num_envs={config_num_envs}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, Integral) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        # A single env parses the config: the same checks, defaults and weights.
        self._proto = proto = ToolMachineEnv(config)
        self.config = config
        self.num_envs = n = int(num_envs)
        self.variant = proto.variant
        self.max_steps = int(proto.max_steps)
        self.use_action_mask = proto.use_action_mask
        self.hard_fraction = proto.hard_fraction
        self.shaping = proto.shaping
        self.shaping_gamma = proto.shaping_gamma
        self.step_limit_terminates = proto.step_limit_terminates
        self._exact = self.variant == "exact"

        self.single_observation_space = proto.observation_space
        self.single_action_space = proto.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.render_mode = None

        self._set_weights(proto.stage_weights)
        # Memory-required contexts, padded to five digits, with their true lengths.
        self._hard = {}
        if self.hard_fraction > 0:
            for s in MEMORY_STAGES:
                table = memory_required_contexts(s)
                padded = np.zeros((len(table), _NUM_DIGITS), dtype=np.int64)
                padded[:, : table.shape[1]] = table
                self._hard[s] = padded

        # One generator per env, created as gymnasium's Env creates its own.
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._rng_seeds: list[int | None] = [None] * n
        # The task of each env.
        self._stage = np.zeros(n, dtype=np.int64)
        self._digits = np.zeros((n, _NUM_DIGITS), dtype=np.int64)  # all drawn digits
        self._num_digits = np.zeros(n, dtype=np.int64)  # digits the machine reads / the agent sees
        self._target = np.zeros(n, dtype=np.int64)
        # Registers. Exact: acc, mem (+ "is set"), cursor, armed. Seed: ``acc`` is
        # ``last`` and ``mem`` holds the _SEED_MEM_* code.
        self._acc = np.zeros(n, dtype=np.int64)
        self._acc_set = np.zeros(n, dtype=bool)
        self._mem = np.zeros(n, dtype=np.int64)
        self._mem_set = np.zeros(n, dtype=bool)
        self._cursor = np.zeros(n, dtype=np.int64)
        self._armed = np.zeros(n, dtype=bool)
        self._steps = np.zeros(n, dtype=np.int64)
        self._prev_action = np.full(n, START_ACTION, dtype=np.int64)
        # Shaping: the general program's path per env and the current potential.
        width = _PATH_PROGRAMS.shape[1]
        self._path = tuple(np.zeros((n, width), dtype=dt) for dt in (np.int64, bool, np.int64, bool, np.int64, bool))
        self._path_len = np.ones(n, dtype=np.int64)
        self._phi = np.zeros(n, dtype=np.float64)
        # The observation's context and stage columns change only at reset; the
        # mask columns stay all ones unless the exact variant exposes the mask.
        self._obs = np.ones((n, self.single_observation_space.shape[0]), dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)
        self._all = np.arange(n)
        self._needs_reset = True

    # -- curriculum --------------------------------------------------------------
    def set_stage(self, stage: int) -> None:
        """Every env trains on ``stage`` from its next episode on."""
        self._proto.set_stage(stage)
        self._set_weights(self._proto.stage_weights)

    def set_stage_weights(self, weights: Sequence[float]) -> None:
        """Every env draws each next episode's stage from these (unnormalised) weights."""
        self._proto.set_stage_weights(weights)
        self._set_weights(self._proto.stage_weights)

    @property
    def stage_weights(self) -> np.ndarray:
        """The normalised stage weights every env draws from."""
        return self._proto.stage_weights

    def _set_weights(self, weights: np.ndarray) -> None:
        # ``Generator.choice(n, p=p)`` is one ``random()`` looked up in this cdf
        # (numpy's own computation); bisect_right is its ``searchsorted(side="right")``.
        cdf = np.asarray(weights, dtype=np.float64).cumsum()
        cdf /= cdf[-1]
        self._cdf = cdf.tolist()

    @property
    def stages(self) -> np.ndarray:
        """The stage of each env's current episode."""
        return self._stage.copy()

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """Each env's generator (as ``SyncVectorEnv.np_random``)."""
        return tuple(self._rng(i) for i in range(self.num_envs))

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        self.np_random  # noqa: B018 - creates missing generators, as Env.np_random_seed does
        return tuple(self._rng_seeds)

    def _rng(self, i: int) -> np.random.Generator:
        rng = self._rngs[i]
        if rng is None:  # as gymnasium.Env.np_random: fresh entropy on first use
            rng, self._rng_seeds[i] = seeding.np_random()
            self._rngs[i] = rng
        return rng

    # -- gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        n = self.num_envs
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, Integral) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for num_envs={n}")
        options = dict(options or {})
        reset_mask = options.pop("reset_mask", None)
        if reset_mask is None:
            idx = self._all
        else:
            reset_mask = np.asarray(reset_mask)
            if reset_mask.shape != (n,) or reset_mask.dtype != np.bool_ or not reset_mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},) with a True")
            if self._needs_reset and not reset_mask.all():
                raise RuntimeError("the first reset must reset every env")
            idx = np.flatnonzero(reset_mask)
        for i in idx.tolist():
            if seeds[i] is not None:
                self._rngs[i], self._rng_seeds[i] = seeding.np_random(seeds[i])
        self._reset_envs(idx, options)
        self._autoreset[idx] = False
        self._needs_reset = False
        if reset_mask is None:
            infos = {"stage": self._stage.copy(), "_stage": np.ones(n, dtype=bool)}
        else:
            infos = {"stage": np.where(reset_mask, self._stage, 0), "_stage": reset_mask.copy()}
        return self._observation(), infos

    def step(self, actions):
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        action = np.asarray(actions).astype(np.int64, copy=False).reshape(n)
        # Every machine steps; the ones that autoreset are overwritten below.
        steps = self._steps + 1
        if self._exact:
            regs = (self._acc, self._acc_set, self._mem, self._mem_set, self._cursor, self._armed)
            regs = _exact_apply(regs, action, self._digits, self._num_digits)
            self._acc, self._acc_set, self._mem, self._mem_set, self._cursor, self._armed = regs
        else:
            self._seed_apply(action)
        answered = action == ANS
        out_of_steps = ~answered & (steps >= self.max_steps)
        if self.step_limit_terminates:
            terminated = answered | out_of_steps
            truncated = np.zeros(n, dtype=bool)
        else:
            terminated = answered.copy()
            truncated = out_of_steps
        done = terminated | truncated
        if self.shaping:
            after = np.where(done, 0.0, self._progress())
            reward = self.shaping * (self.shaping_gamma * after - self._phi)
            self._phi = after
        else:
            reward = np.zeros(n, dtype=np.float64)
        # An answer is submitted only if the register holds a value.
        submitted = answered & self._acc_set
        correct = submitted & (self._acc == self._target)
        if self._exact:
            reward = np.where(answered, reward + correct, reward)
        elif answered.any():
            reward = np.where(answered, reward + self._seed_reward(), reward)
        self._steps = steps
        self._prev_action = action.copy()

        # Next-step autoreset: envs whose episode ended at the previous step start
        # a new one now, ignoring their action (reward 0, not done).
        resetting = self._autoreset
        if resetting.any():
            idx = np.flatnonzero(resetting)
            self._reset_envs(idx, {})
            reward[idx] = 0.0
            terminated[idx] = False
            truncated[idx] = False
            done[idx] = False
        self._autoreset = done

        infos: dict[str, Any] = {"stage": self._stage.copy(), "_stage": np.ones(n, dtype=bool)}
        if done.any():
            values = (
                self._target,
                submitted,
                np.where(submitted, self._acc, 0),
                correct,
                steps,
            )
            for (key, dtype), value in zip(_END_KEYS, values):
                infos[key] = np.where(done, value, 0).astype(dtype, copy=False)
                infos[f"_{key}"] = done.copy()
        return self._observation(), reward, terminated, truncated, infos

    # -- the two rule sets ------------------------------------------------------------
    def _seed_apply(self, tool: np.ndarray) -> None:
        """``machine.seed_apply`` on arrays (``_acc`` is ``last``)."""
        last, last_set, mem, stage = self._acc, self._acc_set, self._mem, self._stage
        a, b, c, d, e = self._digits.T
        stage1 = stage >= 1
        use_d = (stage == 2) & (mem == _SEED_MEM_USE_D)
        mul = tool == MUL
        add = (tool == ADD) & last_set
        sub = (tool == SUB) & last_set
        sto = tool == STO
        rcl = (tool == RCL) & (mem != _SEED_MEM_NONE)
        rcl_de = rcl & use_d
        rcl_zero = rcl & ~use_d & ~last_set
        value = np.where(mul, np.where(last_set, last * np.where(stage1, d, 1), a * b), last)
        value = np.where(add, last + c, value)
        value = np.where(sub, last - np.where(use_d, e, np.where(stage1, d, 0)), value)
        value = np.where(rcl_de, d * e, np.where(rcl_zero, 0, value))
        self._acc = value
        self._acc_set = last_set | mul | rcl_de | rcl_zero
        self._mem = np.where(sto, np.where(stage1, _SEED_MEM_USE_D, _SEED_MEM_OK), mem)

    def _seed_reward(self) -> np.ndarray:
        """``machine.seed_reward`` on arrays, with the same float operations in the same order."""
        last, ok, stage = self._acc, self._acc_set, self._stage
        a, b, c, d, e = self._digits.T
        goal0 = a * b
        goal1 = goal0 + c
        goal2 = goal1 - d
        goal3 = d * e
        goal4 = goal1 - goal3
        hit0, hit1, hit2, hit3, hit4 = (ok & (last == g) for g in (goal0, goal1, goal2, goal3, goal4))
        checked = np.select([stage == 0, stage == 1], [hit0, hit1], hit2)
        shaped = np.select(
            [stage == 0, stage == 1],
            [0.25 * hit0 + 0.5 * hit1, 0.25 * hit0 + 0.5 * hit1 + 0.75 * hit2],
            0.2 * hit0 + 0.4 * hit1 + 0.6 * hit4 + 0.6 * hit3,
        )
        return 1.0 * checked + 0.2 * shaped

    def _progress(self, sel=slice(None)) -> np.ndarray:
        """``oracle.progress`` of the current state of envs ``sel``: i / len(path) for
        the last path state equal to it, else 0."""
        p_acc, p_acc_set, p_mem, p_mem_set, p_cursor, p_armed = (p[sel] for p in self._path)
        acc_set = self._acc_set[sel, None]
        mem_set = self._mem_set[sel, None]
        equal = (
            (p_cursor == self._cursor[sel, None])
            & (p_armed == self._armed[sel, None])
            & (p_acc_set == acc_set)
            & (p_mem_set == mem_set)
            & (~acc_set | (p_acc == self._acc[sel, None]))
            & (~mem_set | (p_mem == self._mem[sel, None]))
        )
        index = (equal * np.arange(1, equal.shape[1] + 1)).max(axis=1)
        return index / self._path_len[sel]

    # -- resets ---------------------------------------------------------------------------
    def _draw_tasks(self, idx: np.ndarray, options: Mapping[str, Any]):
        """Each env's ``ToolMachineEnv.reset`` draws, from its own generator.

        The one per-env Python loop: a draw from env i's PCG64 stream can only come
        from env i's generator, and what is drawn next depends on what was drawn
        (the stage decides whether a hard-context coin is tossed).
        """
        k = len(idx)
        stages = np.empty(k, dtype=np.int64)
        digits = np.zeros((k, _NUM_DIGITS), dtype=np.int64)
        lengths = np.full(k, _NUM_DIGITS, dtype=np.int64)
        stage = self._proto._check_stage(options["stage"]) if "stage" in options else None
        fixed = tuple(int(x) for x in options["digits"]) if "digits" in options else None
        cdf, hard, hard_fraction, rngs = self._cdf, self._hard, self.hard_fraction, self._rngs
        for j, i in enumerate(idx.tolist()):
            rng = rngs[i] or self._rng(i)
            s = bisect_right(cdf, rng.random()) if stage is None else stage
            stages[j] = s
            if fixed is not None:
                continue
            if s in hard and rng.random() < hard_fraction:
                table = hard[s]
                digits[j] = table[rng.integers(len(table))]  # STAGE_DIGITS[s] digits, zero-padded
            else:
                # As the single env: five digits at every stage, one random stream.
                digits[j] = rng.integers(0, 10, size=5)
        if fixed is not None:
            # The single env would fail only at the episode's end; refuse up front.
            if self._exact:
                needed = int(_STAGE_DIGITS[stages].max())
                fixed = fixed[:_NUM_DIGITS]  # the exact variant keeps at most a stage's digits
            else:
                needed = _NUM_DIGITS
            if not needed <= len(fixed) <= _NUM_DIGITS:
                raise ValueError(f"options['digits'] needs {needed} digits for this variant and stage, got {fixed}")
            digits[:, : len(fixed)] = fixed
            lengths[:] = len(fixed)
        return stages, digits, lengths

    def _reset_envs(self, idx: np.ndarray, options: Mapping[str, Any]) -> None:
        """Start a new episode in envs ``idx`` (``ToolMachineEnv.reset``)."""
        stages, digits, lengths = self._draw_tasks(idx, options)
        num_digits = np.minimum(lengths, _STAGE_DIGITS[stages])
        self._stage[idx] = stages
        self._digits[idx] = digits
        self._num_digits[idx] = num_digits
        self._target[idx] = _stage_targets(stages, digits)
        self._acc[idx] = 0
        self._acc_set[idx] = False
        self._mem[idx] = 0
        self._mem_set[idx] = False
        self._cursor[idx] = 0
        self._armed[idx] = False
        self._steps[idx] = 0
        self._prev_action[idx] = START_ACTION
        obs = self._obs
        obs[idx, :CONTEXT_LEN] = np.where(np.arange(CONTEXT_LEN) < num_digits[:, None], digits, PAD_TOKEN)
        obs[idx, _STAGE_ID] = stages
        if self.shaping:
            # The general program's states on each new context, all envs at once.
            k = len(idx)
            regs = (np.zeros(k, np.int64), np.zeros(k, bool), np.zeros(k, np.int64), np.zeros(k, bool),
                    np.zeros(k, np.int64), np.zeros(k, bool))
            programs = _PATH_PROGRAMS[stages]
            for t in range(programs.shape[1]):
                regs = _exact_apply(regs, programs[:, t], digits, num_digits)
                for path, reg in zip(self._path, regs):
                    path[idx, t] = reg
            path_len = _PATH_LEN[stages]
            self._path[4][idx] = np.where(np.arange(programs.shape[1]) < path_len[:, None], self._path[4][idx], -1)
            self._path_len[idx] = path_len
            self._phi[idx] = self._progress(idx)

    def _observation(self) -> np.ndarray:
        obs = self._obs.copy()
        obs[:, _PREV_ID] = self._prev_action
        if self.use_action_mask and self._exact:
            arith = (self._armed | (self._cursor < self._num_digits))[:, None]
            obs[:, _MASK_ID : _MASK_ID + 3] = arith
            obs[:, _MASK_ID + STO] = self._acc_set
            obs[:, _MASK_ID + RCL] = self._mem_set
        return obs



# -- creators and registration ------------------------------------------------------------
def make_tool_machine(config: Mapping[str, Any] | None = None) -> ToolMachineEnv | ToolMachineVectorEnv:
    """Env creator for ``ray.tune.registry.register_env``.

    RLlib calls it with ``env_config`` for a single env and, under
    ``gym_env_vectorize_mode="vector_entry_point"``, with ``env_config | {"num_envs": N}``
    for a vector env: that case returns ``ToolMachineVectorEnv``.
    """
    config = dict(config or {})
    if "num_envs" in config:
        return ToolMachineVectorEnv(config)
    return ToolMachineEnv(config)


def _single_entry_point(**config: Any) -> ToolMachineEnv:
    return ToolMachineEnv(config)


def _vector_entry_point(num_envs: int = 1, **config: Any) -> ToolMachineVectorEnv:
    return ToolMachineVectorEnv(config, num_envs=num_envs)


def register_gymnasium_env(env_id: str = GYM_ENV_ID) -> str:
    """Register ``env_id`` with gymnasium (idempotent); the config keys are its kwargs.

    ``gym.make(env_id, stage=1)`` builds a ``ToolMachineEnv``;
    ``gym.make_vec(env_id, num_envs=N, stage=1)`` a ``ToolMachineVectorEnv``
    (``vectorization_mode="vector_entry_point"``, the default for this id).
    """
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_single_entry_point, vector_entry_point=_vector_entry_point)
    return env_id
