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
* Randomness: each sub-env has its own PCG64 stream, seeded exactly as
  ``SyncVectorEnv`` seeds its envs (``seed + i`` through ``gymnasium.utils.seeding``).
  The streams live in arrays (``envs.batched_rng``), so the envs that reset in a
  step draw their tasks together, number for number what each single env's
  ``np.random.Generator`` calls (``choice`` of the stage, the hard-context coin,
  ``integers``) would return. Everything the draw decides (targets, the shaping
  path, the context in the observation) is then computed for all of them at once.
* The Python loops over envs, all off the step path or rare: seeding at
  ``reset(seed=...)`` (one ``Generator`` per env, its state copied in), and
  ``_draw_with_generators``, which replays ``ToolMachineEnv.reset``'s exact calls on
  a per-env ``Generator`` for resets with ``options`` and for the draws Lemire's
  method rejects (probability 7e-9 per five-digit draw, at most 3e-6 for a hard context).
* Configuration is parsed by a ``ToolMachineEnv`` built from the same config, so
  validation, defaults and stage-weight normalisation are the single env's own.

``make_tool_machine`` is the env creator for RLlib (``register_env``): it returns
this class when the config carries ``num_envs`` (what RLlib's
``gym_env_vectorize_mode="vector_entry_point"`` passes) and a ``ToolMachineEnv``
otherwise. ``register_gymnasium_env`` registers a gymnasium id with both entry
points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from numbers import Integral
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.analysis import all_contexts, memory_required_contexts
from envs.batched_rng import PCG64Streams, lemire, take_uint32, to_double
from envs.machine import (
    ADD,
    ANS,
    ARITHMETIC,
    EXPRESSION_OPERATORS,
    MAX_OPERATORS,
    MEMORY_STAGES,
    MUL,
    NO_PATTERN,
    OPERATOR_TOKEN,
    PATTERN_OFFSET,
    RCL,
    STAGE_DIGITS,
    STAGES,
    STO,
    SUB,
    expression_value,
    stage_target,
)
from envs.oracle import general_path, general_program, longest_oracle_program
from envs.tool_machine import (
    CONTEXT_LEN,
    NUM_STAGES,
    PAD_TOKEN,
    START_ACTION,
    ToolMachineEnv,
    draw_expression,
    stage_max_steps,
)

__all__ = ["GYM_ENV_ID", "ToolMachineVectorEnv", "make_tool_machine", "register_gymnasium_env"]

#: The gymnasium id ``register_gymnasium_env`` registers (``envs`` registers it on import,
#: so ``"envs:toolagent/ToolMachine-v0"`` also works in a fresh process).
GYM_ENV_ID = "toolagent/ToolMachine-v0"

_NUM_DIGITS = 5  # a digit stage's task draws five digits
_MAX_DIGITS = MAX_OPERATORS + 1  # an expression's digits
#: Digits read at each digit stage (0 at the expression stages: the task says).
_STAGE_DIGITS = np.array([STAGE_DIGITS.get(s, 0) for s in STAGES], dtype=np.int64)
_IS_EXPRESSION = np.isin(np.arange(NUM_STAGES), list(EXPRESSION_OPERATORS))
_STAGE_MAX_STEPS = np.array([stage_max_steps(s) for s in STAGES], dtype=np.int64)
_OPERATOR_TOKENS = np.array([OPERATOR_TOKEN[op] for op in sorted(OPERATOR_TOKEN)], dtype=np.int64)
_STAGE_ID = CONTEXT_LEN
_PREV_ID = CONTEXT_LEN + 1
_MASK_ID = CONTEXT_LEN + 2
# The seed variant's memory slot: empty, "use_d", "ok".
_SEED_MEM_NONE, _SEED_MEM_USE_D, _SEED_MEM_OK = 0, 1, 2
# The shaping potential's path (``oracle.general_path``): the machine states the
# oracle's program (without its ANS) passes through. The digit stages' are tabled;
# an expression's is computed at its reset.
_PATH_LEN = np.array([len(general_program(s)) - 1 if s in STAGE_DIGITS else 0 for s in STAGES], dtype=np.int64)
_PATH_WIDTH = max(int(_PATH_LEN.max()), *(longest_oracle_program(s) - 1 for s in EXPRESSION_OPERATORS))
# Info keys at the end of an episode, in the single env's order, with their dtypes
# (what ``VectorEnv._add_info`` makes of the single env's Python values).
_END_KEYS = (("target", np.int64), ("answered", np.bool_), ("answer", np.int64), ("correct", np.bool_),
             ("steps", np.int64), ("pattern", np.int64))
# pattern_code on arrays: the first pattern number of k operators (NO_PATTERN for none), and
# each operator tool's base-3 digit.
_PATTERN_BASE = np.array([NO_PATTERN] + [PATTERN_OFFSET[k] for k in range(1, MAX_OPERATORS + 1)], dtype=np.int64)
_OPERATOR_DIGIT = np.zeros(max(ARITHMETIC) + 1, dtype=np.int64)
_OPERATOR_DIGIT[list(ARITHMETIC)] = np.arange(len(ARITHMETIC))


def _exact_apply(regs: tuple, tool: np.ndarray, digits: np.ndarray, num_digits: np.ndarray) -> tuple:
    """``machine.apply_tool`` on arrays: ``regs = (acc, acc_set, mem, mem_set, cursor, armed)``,
    one row per machine; returns the next registers (new arrays)."""
    acc, acc_set, mem, mem_set, cursor, armed = regs
    arith = (tool >= MUL) & (tool <= SUB)
    applies = arith & (armed | (cursor < num_digits))
    reads = applies & ~armed
    # An empty accumulator acts as the tool's identity (1 for MUL, 0 for ADD/SUB).
    acc_value = np.where(acc_set, acc, tool == MUL)
    digit = digits[np.arange(len(digits)), np.minimum(cursor, digits.shape[1] - 1)]
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


@cache
def _path_tables():
    """The shaping path of every context of every stage, from one run of the general
    programs over all contexts (``analysis.all_contexts``, lexicographic, so the row
    of context ``x0 x1 ...`` of stage s is ``offset[s] + sum(x_j * place[s, j])``).

    Which tools apply never depends on the digits, so a stage's control registers
    (acc/mem set, cursor, armed) are the same on every context: ``[stage, step]``
    tables, with cursor -1 past the path's end (a state no machine is in). Only
    ``acc``/``mem`` are per context: ``[row, step]`` tables (int16, 0 when empty).
    """
    control = [np.zeros((NUM_STAGES, _PATH_WIDTH), dtype=dt) for dt in (bool, bool, np.int64, bool)]
    control[2][:] = -1
    values = ([], [])
    offset, place = np.zeros(NUM_STAGES, dtype=np.int64), np.zeros((NUM_STAGES, _NUM_DIGITS), dtype=np.int64)
    for s in STAGE_DIGITS:
        n = STAGE_DIGITS[s]
        contexts = np.zeros((10**n, _NUM_DIGITS), dtype=np.int64)
        contexts[:, :n] = all_contexts(n)
        place[s, :n] = 10 ** np.arange(n - 1, -1, -1)
        offset[s] = sum(10 ** STAGE_DIGITS[t] for t in STAGE_DIGITS if t < s)
        k = len(contexts)
        regs = (np.zeros(k, np.int64), np.zeros(k, bool), np.zeros(k, np.int64), np.zeros(k, bool),
                np.zeros(k, np.int64), np.zeros(k, bool))
        acc, mem = np.zeros((k, _PATH_WIDTH), np.int16), np.zeros((k, _PATH_WIDTH), np.int16)
        for t, tool in enumerate(general_program(s)[:-1]):
            regs = _exact_apply(regs, np.full(k, tool), contexts, np.full(k, n))
            for table, reg in zip(control, (regs[1], regs[3], regs[4], regs[5])):
                assert (reg == reg[0]).all()  # control independent of the digits
                table[s, t] = reg[0]
            for table, reg, is_set in ((acc, regs[0], regs[1]), (mem, regs[2], regs[3])):
                assert np.abs(reg).max() < 2**15
                table[:, t] = np.where(is_set, reg, 0)
        values[0].append(acc)
        values[1].append(mem)
    return offset, place, control, np.concatenate(values[0]), np.concatenate(values[1])


def _stage_targets(stages: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """``machine.stage_target`` for rows of different digit stages."""
    columns = digits[:, :_NUM_DIGITS].T
    zero = np.zeros(len(digits), dtype=np.int64)  # the expression stages' (their targets are computed apart)
    return np.choose(stages, [stage_target(s, columns) if s in STAGE_DIGITS else zero for s in STAGES])


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
        self.expression_hard_fraction = proto.expression_hard_fraction
        self.shaping = proto.shaping
        self.shaping_gamma = proto.shaping_gamma
        self.step_limit_terminates = proto.step_limit_terminates
        self._exact = self.variant == "exact"
        if self.shaping:
            _path_tables()  # built once per process (~0.2 s): here, with the env, not at its first reset

        self.single_observation_space = proto.observation_space
        self.single_action_space = proto.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.render_mode = None

        self._set_weights(proto.stage_weights)
        # Memory-required contexts (as ``ToolMachineEnv`` has them), zero-padded to
        # five digits; for the vectorized draw also stacked in one table.
        self._hard = {}
        self._hard_stage = None
        if self.hard_fraction > 0:
            for s in MEMORY_STAGES:
                table = memory_required_contexts(s)
                padded = np.zeros((len(table), _NUM_DIGITS), dtype=np.int64)
                padded[:, : table.shape[1]] = table
                self._hard[s] = padded
                assert 1 < len(table) < 2**32  # integers(len) draws through Lemire's 32-bit path
            self._hard_stage = np.isin(np.arange(NUM_STAGES), MEMORY_STAGES)
            self._hard_len = np.array([len(self._hard.get(s, ())) for s in range(NUM_STAGES)])
            self._hard_offset = np.concatenate([[0], np.cumsum(self._hard_len)[:-1]])
            self._hard_table = np.concatenate([self._hard[s] for s in MEMORY_STAGES])

        # One PCG64 stream per env (what gymnasium's Env keeps as ``np_random``).
        self._streams = PCG64Streams(n)
        self._rng_seeds: list[int | None] = [None] * n
        # The task of each env.
        self._stage = np.zeros(n, dtype=np.int64)
        self._digits = np.zeros((n, _MAX_DIGITS), dtype=np.int64)  # all drawn digits
        self._num_digits = np.zeros(n, dtype=np.int64)  # digits the machine reads / the agent sees
        self._limit = np.zeros(n, dtype=np.int64)  # the episode's step limit
        self._target = np.zeros(n, dtype=np.int64)
        self._pattern = np.full(n, NO_PATTERN, dtype=np.int64)  # pattern_code of the operators
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
        self._path = tuple(
            np.zeros((n, _PATH_WIDTH), dtype=dt) for dt in (np.int64, bool, np.int64, bool, np.int64, bool)
        )
        self._path_len = np.ones(n, dtype=np.int64)
        self._phi = np.zeros(n, dtype=np.float64)
        # The observation's context and stage columns change only at reset; the
        # mask columns stay all ones unless the exact variant exposes the mask.
        self._obs = np.ones((n, self.single_observation_space.shape[0]), dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)
        self._all = np.arange(n)
        self._everyone = np.ones(n, dtype=bool)
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

    def set_pattern_weights(self, weights: Sequence[float] | None) -> None:
        """Every env draws an expression's operators from these (``ToolMachineEnv.set_pattern_weights``)."""
        self._proto.set_pattern_weights(weights)

    @property
    def pattern_cdfs(self) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
        return self._proto.pattern_cdfs

    def _set_weights(self, weights: np.ndarray) -> None:
        self._weights = weights
        # ``Generator.choice(n, p=p)`` is one ``random()`` looked up in this cdf
        # (numpy's own computation) with ``searchsorted(side="right")``.
        self._cdf = weights.cumsum()
        self._cdf /= self._cdf[-1]

    @property
    def stages(self) -> np.ndarray:
        """The stage of each env's current episode."""
        return self._stage.copy()

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """Each env's generator, as ``SyncVectorEnv.np_random`` has them, but copies:
        drawing from them does not move the envs' streams."""
        return tuple(self._generator(i) for i in range(self.num_envs))

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        for i in range(self.num_envs):
            self._seed(i, None)
        return tuple(self._rng_seeds)

    def _seed(self, i: int, seed: int | None) -> None:
        """``Env.reset(seed=seed)``'s seeding of env ``i``; with None, fresh entropy for
        an env that has no stream yet (as ``Env.np_random`` on first use)."""
        if seed is not None or not self._streams.seeded[i]:
            generator, self._rng_seeds[i] = seeding.np_random(seed)
            self._streams.store(i, generator)

    def _generator(self, i: int) -> np.random.Generator:
        self._seed(i, None)
        return self._streams.generator(i)

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
        for i in idx.tolist():  # seeding: one Generator per env (rare)
            self._seed(i, seeds[i])
        self._reset_envs(idx, options)
        self._autoreset[idx] = False
        self._needs_reset = False
        if reset_mask is None:
            infos = {"stage": self._stage.copy(), "_stage": self._everyone.copy()}
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
        out_of_steps = ~answered & (steps >= self._limit)
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

        infos: dict[str, Any] = {"stage": self._stage.copy(), "_stage": self._everyone.copy()}
        if done.any():
            values = (
                self._target,
                submitted,
                np.where(submitted, self._acc, 0),
                correct,
                steps,
                self._pattern,
            )
            for (key, dtype), value in zip(_END_KEYS, values):
                infos[key] = np.where(done, value, 0).astype(dtype, copy=False)
                infos[f"_{key}"] = done.copy()
        return self._observation(), reward, terminated, truncated, infos

    # -- the two rule sets ------------------------------------------------------------
    def _seed_apply(self, tool: np.ndarray) -> None:
        """``machine.seed_apply`` on arrays (``_acc`` is ``last``)."""
        last, last_set, mem, stage = self._acc, self._acc_set, self._mem, self._stage
        a, b, c, d, e = self._digits[:, :_NUM_DIGITS].T
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
        a, b, c, d, e = self._digits[:, :_NUM_DIGITS].T
        goal0 = a * b
        goal1 = goal0 + c
        goal2 = goal1 - d
        goal3 = d * e
        goal4 = goal1 - goal3
        hit0, hit1, hit2, hit3, hit4 = (ok & (last == g) for g in (goal0, goal1, goal2, goal3, goal4))
        checked = np.choose(stage, [hit0, hit1, hit2])
        shaped = np.choose(stage, [
            0.25 * hit0 + 0.5 * hit1,
            0.25 * hit0 + 0.5 * hit1 + 0.75 * hit2,
            0.2 * hit0 + 0.4 * hit1 + 0.6 * hit4 + 0.6 * hit3,
        ])
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
        """What ``ToolMachineEnv.reset`` draws for envs ``idx``: ``(stages, digits [k, 7],
        number of digits drawn, operators [k, 6], number of operators)``. Resets with
        ``options``, and envs that drew an expression stage, take the per-env path."""
        if options.keys() & {"stage", "digits", "operators", "num_operators"}:
            return self._draw_with_generators(idx, options)
        streams = self._streams
        k = len(idx)
        rows = np.arange(k)
        out, state_hi, state_lo = streams.peek(idx)
        # choice(NUM_STAGES, p=weights): one random() in the cdf.
        stages = np.searchsorted(self._cdf, to_double(out[:, 0]), side="right")
        used = np.ones(k, dtype=np.int64)
        count = np.full(k, _NUM_DIGITS)
        bound = np.full(k, 10)
        hard = None
        if self._hard_stage is not None:
            # A memory stage tosses random() < hard_fraction; heads: integers(len(table)).
            eligible = self._hard_stage[stages]
            hard = eligible & (to_double(out[:, 1]) < self.hard_fraction)
            used += eligible
            count = np.where(hard, 1, count)
            bound = np.where(hard, self._hard_len[stages], bound)
        # Otherwise integers(0, 10, size=5). Both take 32-bit words from the buffer.
        words, used32, has32, buf32 = take_uint32(
            out, used, streams.has32[idx], streams.buf32[idx], count, _NUM_DIGITS
        )
        values, rejected = lemire(words, bound, count)
        used += used32
        # An expression stage draws differently: those envs redo it all (stage too) below.
        rejected |= _IS_EXPRESSION[stages]
        ok = ~rejected
        last = used - 1
        streams.commit(idx[ok], state_hi[rows, last][ok], state_lo[rows, last][ok], has32[ok], buf32[ok])
        digits = values
        if hard is not None:
            rows_hard = self._hard_table[np.where(hard, self._hard_offset[stages] + values[:, 0], 0)]
            digits = np.where(hard[:, None], rows_hard, values)
        digits = np.pad(digits, ((0, 0), (0, _MAX_DIGITS - _NUM_DIGITS)))
        lengths = np.full(k, _NUM_DIGITS)
        operators = np.zeros((k, MAX_OPERATORS), dtype=np.int64)
        num_ops = np.zeros(k, dtype=np.int64)
        if rejected.any():  # expression stages, and rarely a digit draw: each env's own Generator calls
            redo = self._draw_with_generators(idx[rejected], {})
            for out_array, value in zip((stages, digits, lengths, operators, num_ops), redo):
                out_array[rejected] = value
        return stages, digits, lengths, operators, num_ops

    def _draw_with_generators(self, idx: np.ndarray, options: Mapping[str, Any]):
        """``_draw_tasks`` through each env's own ``Generator`` and the single env's exact
        calls, one env at a time (for resets with ``options`` and rejected draws)."""
        k = len(idx)
        stages = np.empty(k, dtype=np.int64)
        digits = np.zeros((k, _MAX_DIGITS), dtype=np.int64)
        lengths = np.full(k, _NUM_DIGITS, dtype=np.int64)
        operators = np.zeros((k, MAX_OPERATORS), dtype=np.int64)
        num_ops = np.zeros(k, dtype=np.int64)
        stage = self._proto._check_stage(options["stage"]) if "stage" in options else None
        fixed = tuple(int(x) for x in options["digits"]) if "digits" in options else None
        for j, i in enumerate(idx.tolist()):
            rng = self._generator(i)
            s = int(rng.choice(NUM_STAGES, p=self._weights)) if stage is None else stage
            stages[j] = s
            if s in EXPRESSION_OPERATORS:
                xs, ops = draw_expression(rng, s, options, self.expression_hard_fraction, self._proto.pattern_cdfs,
                                          self._proto.hard_min_digit)
                digits[j, : len(xs)], operators[j, : len(ops)] = xs, ops
                lengths[j], num_ops[j] = len(xs), len(ops)
            elif fixed is None:
                if s in self._hard and rng.random() < self.hard_fraction:
                    table = self._hard[s]
                    digits[j, :_NUM_DIGITS] = table[rng.integers(len(table))]  # STAGE_DIGITS[s] digits, zero-padded
                else:
                    digits[j, :_NUM_DIGITS] = rng.integers(0, 10, size=_NUM_DIGITS)
            self._streams.store(i, rng)
        if fixed is not None and not _IS_EXPRESSION[stages].any():
            # The single env would fail only at the episode's end; refuse up front.
            if self._exact:
                needed = int(_STAGE_DIGITS[stages].max())
                fixed = fixed[:_NUM_DIGITS]  # the exact variant keeps at most a stage's digits
            else:
                needed = _NUM_DIGITS
            if not needed <= len(fixed) <= _NUM_DIGITS or not all(0 <= x <= 9 for x in fixed):
                raise ValueError(f"options['digits'] must be {needed} to {_NUM_DIGITS} digits 0-9 here, got {fixed}")
            digits[:, : len(fixed)] = fixed
            lengths[:] = len(fixed)
        return stages, digits, lengths, operators, num_ops

    def _reset_envs(self, idx: np.ndarray, options: Mapping[str, Any]) -> None:
        """Start a new episode in envs ``idx`` (``ToolMachineEnv.reset``)."""
        stages, digits, lengths, operators, num_ops = self._draw_tasks(idx, options)
        expression = _IS_EXPRESSION[stages]
        num_digits = np.where(expression, num_ops + 1, np.minimum(lengths, _STAGE_DIGITS[stages]))
        self._stage[idx] = stages
        self._digits[idx] = digits
        self._num_digits[idx] = num_digits
        self._limit[idx] = self._proto.fixed_max_steps or _STAGE_MAX_STEPS[stages]
        targets = _stage_targets(np.where(expression, 0, stages), digits)
        for j in np.flatnonzero(expression).tolist():
            targets[j] = expression_value(digits[j, : num_digits[j]], operators[j, : num_ops[j]])
        self._target[idx] = targets
        codes = _PATTERN_BASE[num_ops] + (_OPERATOR_DIGIT[operators] * 3 ** np.arange(MAX_OPERATORS)
                                          * (np.arange(MAX_OPERATORS) < num_ops[:, None])).sum(axis=1)
        self._pattern[idx] = codes
        self._acc[idx] = 0
        self._acc_set[idx] = False
        self._mem[idx] = 0
        self._mem_set[idx] = False
        self._cursor[idx] = 0
        self._armed[idx] = False
        self._steps[idx] = 0
        self._prev_action[idx] = START_ACTION
        context = np.full((len(idx), CONTEXT_LEN), PAD_TOKEN, dtype=np.int64)
        context[:, :_NUM_DIGITS] = np.where(np.arange(_NUM_DIGITS) < num_digits[:, None], digits[:, :_NUM_DIGITS],
                                            PAD_TOKEN)
        if expression.any():
            # x0 o1 x1 ... ok xk, then padding
            tokens = np.empty((len(idx), 2 * MAX_OPERATORS + 1), dtype=np.int64)
            tokens[:, 0::2] = digits
            tokens[:, 1::2] = _OPERATOR_TOKENS[operators]
            tokens = np.where(np.arange(tokens.shape[1]) < 2 * num_ops[:, None] + 1, tokens, PAD_TOKEN)
            context[expression, : tokens.shape[1]] = tokens[expression]
        obs = self._obs
        obs[idx, :CONTEXT_LEN] = context
        obs[idx, _STAGE_ID] = stages
        if self.shaping:
            # Each new context's path: looked up for a digit stage ...
            offset, place, (acc_set, mem_set, cursor, armed), acc, mem = _path_tables()
            digit_stages = np.where(expression, 0, stages)
            row = offset[digit_stages] + (digits[:, :_NUM_DIGITS] * place[digit_stages]).sum(axis=1)
            for path, table in zip(self._path, (acc[row], acc_set[digit_stages], mem[row], mem_set[digit_stages],
                                                cursor[digit_stages], armed[digit_stages])):
                path[idx] = table
            self._path_len[idx] = _PATH_LEN[stages]
            # ... computed for an expression (its program depends on the operators)
            for j in np.flatnonzero(expression).tolist():
                states = general_path(int(stages[j]), digits[j, : num_digits[j]].tolist(),
                                      operators[j, : num_ops[j]].tolist())
                i = idx[j]
                for path in self._path:
                    path[i] = 0
                self._path[4][i] = -1  # cursor -1 past the path's end: a state no machine is in
                for t, st in enumerate(states):
                    for path, value in zip(self._path, (st.acc or 0, st.acc is not None, st.mem or 0,
                                                        st.mem is not None, st.cursor, st.armed)):
                        path[i, t] = value
                self._path_len[i] = len(states)
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
