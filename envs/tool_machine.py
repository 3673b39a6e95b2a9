"""``ToolMachineEnv``: the tool machine as a Gymnasium environment.

The agent reads a context of digits and emits tool tokens (``MUL ADD SUB STO RCL
ANS``) that drive the machine in ``envs.machine``. It never sees the machine's
registers: only the context, the stage and its own previous action (plus, when
``action_mask`` is on, which tools can apply now).

Observation: one flat ``int64`` vector, laid out as ``observation_layout()`` says::

    [context tokens (CONTEXT_LEN, PAD-padded) | stage | previous action | mask (6)]

Context tokens: the digits 0-9 themselves and, at the expression stages (5-9), the
operator tokens ``MUL``=10, ``ADD``=11, ``SUB``=12; ``CONTEXT_LEN`` fits the longest
stage's expression (7 digits, 6 operators).

A flat vector keeps RLlib's connectors cheap (no dict traversal per step); the
module slices it with the offsets it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.analysis import memory_required_contexts
from envs.machine import (
    ANS,
    ARITHMETIC,
    EXPRESSION_OPERATORS,
    EXPRESSION_STAGES,
    MAX_OPERATORS,
    MEMORY_STAGES,
    NUM_ACTIONS,
    NUM_PATTERNS,
    OPERATOR_TOKEN,
    PATTERN_OFFSET,
    SEED_EPISODE_TOKENS,
    STAGE_DIGITS,
    STAGES,
    TOKEN_OPERATOR,
    MachineState,
    SeedState,
    apply_tool,
    needs_memory,
    pattern_code,
    pattern_operators,
    seed_apply,
    seed_reward,
    stage_target,
    tool_applies,
)
from envs.oracle import general_path, longest_oracle_program, progress

VARIANTS = ("exact", "seed")
NUM_STAGES = len(STAGES)
#: The spec's stages (the tutorial's three); the ``seed`` variant defines only these.
SPEC_STAGES = (0, 1, 2)
#: Longest context of any stage (an expression of MAX_OPERATORS operators); shorter
#: ones are padded with ``PAD_TOKEN``.
CONTEXT_LEN = max(*STAGE_DIGITS.values(), 2 * MAX_OPERATORS + 1)
#: Context tokens: digits 0-9, the operator tokens 10-12, then padding.
PAD_TOKEN = 13
CONTEXT_VOCAB = 14
#: The previous-action field at the first step of an episode.
START_ACTION = NUM_ACTIONS
#: The step limit of the digit stages 0-4 (the spec's 12).
DEFAULT_MAX_STEPS = 12
#: Slack over the oracle's longest program in an expression stage's step limit (spec).
EXPRESSION_SLACK = 3


def stage_max_steps(stage: int) -> int:
    """The default step limit of ``stage``: 12 for the digit stages; the oracle's longest
    program plus 3 for an expression stage."""
    if stage in EXPRESSION_OPERATORS:
        return longest_oracle_program(stage) + EXPRESSION_SLACK
    return DEFAULT_MAX_STEPS


def stage_context_len(stage: int) -> int:
    """The longest context of ``stage``: its digits, or its longest expression's tokens."""
    if stage in EXPRESSION_OPERATORS:
        return 2 * max(EXPRESSION_OPERATORS[stage]) + 1
    return STAGE_DIGITS[stage]


def context_tokens(stage: int, digits: Sequence[int], operators: Sequence[int] = ()) -> tuple[int, ...]:
    """What the agent reads: the digits, or at an expression stage ``x0 o1 x1 ... ok xk``."""
    if stage not in EXPRESSION_OPERATORS:
        return tuple(int(x) for x in digits)
    tokens = [int(digits[0])]
    for op, x in zip(operators, digits[1:]):
        tokens += [OPERATOR_TOKEN[op], int(x)]
    return tuple(tokens)


def read_context(stage: int, tokens: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(digits, operators)`` of a context as ``context_tokens`` shows it (its inverse)."""
    tokens = [int(t) for t in tokens]
    if stage not in EXPRESSION_OPERATORS:
        return tuple(tokens), ()
    return tuple(tokens[0::2]), tuple(TOKEN_OPERATOR[t] for t in tokens[1::2])


def read_task(obs: Sequence[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """``(stage, digits, operators)`` of the task an observation shows; any step's
    observation of an episode will do."""
    stage = int(obs[CONTEXT_LEN])
    return (stage, *read_context(stage, [t for t in obs[:CONTEXT_LEN] if t != PAD_TOKEN]))


def pattern_cdfs(weights: Sequence[float] | None) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Checked ``set_pattern_weights`` weights (one per pattern number) as cumulative
    distributions per operator count: ``{k: (over all its patterns, over those that need
    memory or None)}``; a count whose weights are all zero has none."""
    if weights is None:
        return {}
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (NUM_PATTERNS,) or not np.isfinite(w).all() or np.any(w < 0):
        raise ValueError(
            f"pattern weights must be {NUM_PATTERNS} non-negative numbers (one per pattern number, "
            f"envs.machine.pattern_code), got an array of shape {w.shape}"
        )
    cdfs = {}
    for k, offset in PATTERN_OFFSET.items():
        block = w[offset: offset + 3**k]
        if block.sum() > 0:
            hard = block * _NEEDS_MEMORY[k]
            cdfs[k] = (np.cumsum(block / block.sum()), np.cumsum(hard / hard.sum()) if hard.sum() > 0 else None)
    return cdfs


#: Per operator count, whether each pattern (in pattern-number order) needs memory.
_NEEDS_MEMORY = {k: np.array([needs_memory(pattern_operators(offset + i)) for i in range(3**k)])
                 for k, offset in PATTERN_OFFSET.items()}


def draw_expression(
    rng: np.random.Generator, stage: int, options: Mapping[str, Any] | None = None, hard_fraction: float = 0.0,
    pattern_cdf: Mapping[int, tuple[np.ndarray, np.ndarray | None]] | None = None, hard_min_digit: int = 0,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An expression stage's task ``(digits, operators)``: ``options``' ``digits`` and
    ``operators`` if given (checked), else drawn from ``rng`` as ``MAX_OPERATORS + 1``
    digits, ``MAX_OPERATORS`` operators, then (if the stage has several and ``options``
    has no ``num_operators``) the operator count, always in this order and number.
    With ``hard_fraction`` > 0, a first ``random() < hard_fraction`` makes the task one
    that needs memory (drawn again until ``needs_memory``), as the digit stages' hard
    contexts do; its digits are drawn from ``hard_min_digit``..9. With a ``pattern_cdf``
    (``pattern_cdfs``) for the drawn count, one more ``random()`` picks the operators from
    it instead (the drawn operators are unused); a hard task from its patterns that need
    memory (uniformly if it weights none)."""
    counts = EXPRESSION_OPERATORS[stage]
    options = options or {}
    if "digits" in options or "operators" in options:
        digits = tuple(int(x) for x in options.get("digits", ()))
        operators = tuple(int(x) for x in options.get("operators", ()))
        if len(operators) not in counts or len(digits) != len(operators) + 1 or not all(
            0 <= x <= 9 for x in digits
        ) or not all(op in ARITHMETIC for op in operators):
            raise ValueError(
                f"stage {stage} takes options digits (k + 1 digits 0-9) and operators (k of "
                f"MUL=0, ADD=1, SUB=2) with k in {list(counts)}, got {list(digits)} and {list(operators)}"
            )
        return digits, operators
    k = options.get("num_operators")
    if k is not None and k not in counts:
        raise ValueError(f"stage {stage} draws {list(counts)} operators, got num_operators={k!r}")
    hard = hard_fraction > 0 and rng.random() < hard_fraction and (k or max(counts)) > 1
    while True:
        digits = rng.integers(hard_min_digit if hard else 0, 10, size=MAX_OPERATORS + 1)
        operators = rng.integers(0, len(ARITHMETIC), size=MAX_OPERATORS)
        count = k if k is not None else counts[int(rng.integers(len(counts)))] if len(counts) > 1 else counts[0]
        cdf = None
        if pattern_cdf and count in pattern_cdf:
            every_pattern, memory_patterns = pattern_cdf[count]
            cdf = memory_patterns if hard else every_pattern
        if cdf is not None:
            pick = int(np.searchsorted(cdf, rng.random(), side="right"))
            ops = pattern_operators(PATTERN_OFFSET[count] + min(pick, 3**count - 1))
        else:
            ops = tuple(int(ARITHMETIC[o]) for o in operators[:count])
        task = tuple(int(x) for x in digits[: count + 1]), ops
        if not hard or needs_memory(task[1]):
            return task


_CONFIG_KEYS = (
    "variant", "stage", "max_steps", "action_mask", "hard_fraction", "expression_hard_fraction", "hard_min_digit",
    "shaping", "shaping_gamma", "step_limit_terminates",
)


def stage_embedding_rows() -> list[int]:
    """The stage embedding row of each stage: one per digit stage, one shared by the
    expression stages (they differ only in length): 0-4, 5 for 5-9, then 6-9 for 10-13."""
    rows, shared = [], None
    for s in STAGES:
        if s in EXPRESSION_STAGES:
            shared = len(set(rows)) if shared is None else shared
            rows.append(shared)
        else:
            rows.append(len(set(rows)))
    return rows


def observation_layout() -> dict[str, int]:
    """Offsets and sizes a model needs to read the flat observation."""
    return {
        "context_len": CONTEXT_LEN,
        "context_vocab": CONTEXT_VOCAB,
        "pad_token": PAD_TOKEN,
        "stage_embedding_rows": stage_embedding_rows(),
        "stage_index": CONTEXT_LEN,
        "num_stages": NUM_STAGES,
        "prev_action_index": CONTEXT_LEN + 1,
        "start_action": START_ACTION,
        "answer_action": ANS,
        "mask_index": CONTEXT_LEN + 2,
        "num_actions": NUM_ACTIONS,
    }


def _check_stage(stage: Any) -> int:
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)):
        raise ValueError(f"stage must be an integer in 0..{NUM_STAGES - 1}, got {stage!r}")
    if not 0 <= stage < NUM_STAGES:
        raise ValueError(f"stage must be in 0..{NUM_STAGES - 1}, got {stage}")
    return int(stage)


class ToolMachineEnv(gym.Env):
    """The tool machine task, ``exact`` or ``seed`` variant.

    Stages 0-2 are the spec's; 3 (``a-b*c``), 4 (``a*b-c*d``), 10 (``a+b*c``), 11
    (``a*b+c*d``), 12 (``a+b-c*d``) and 13 (``a-b+c*d``) are memory drills for the
    ``exact`` variant: shorter programs that already need ``STO``/``RCL``; 5-9 are the
    expression stages (``EXPRESSION_OPERATORS``: 1-2, 3, 4, 5 and 6 operators), whose
    program depends on the operators read.

    Args:
        config: RLlib's ``env_config`` (or any mapping) with optional keys
            ``variant`` ("exact" | "seed"), ``stage`` (0-13; the seed variant 0-2), ``max_steps``
            (exact variant only: one step limit for every stage; by default each stage's
            own, ``stage_max_steps``; the seed variant always reads 6 tokens) and
            ``action_mask`` (bool: expose the tools that can apply now) and
            ``hard_fraction`` (0-1: the share of episodes of a memory stage (2, and
            the drills 3, 4, 10-13) whose context is drawn from that stage's
            memory-required subset, the contexts that no memory-free program
            solves (20% of stage 2's), and of an expression stage that need memory
            (a later term is a product); a training lever, evaluation keeps 0),
            ``expression_hard_fraction`` (0-1, default ``hard_fraction``: the share for
            the expression stages alone, so stage 2 can keep the spec's 0.8 while
            the expressions take less) and
            ``hard_min_digit`` (0-9, default 0: those expressions' smallest digit; 2
            leaves out the 0s and 1s on which shortcut programs often hit the target).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: Mapping[str, Any] | None = None):
        config = dict(config or {})
        unknown = sorted(k for k in config if k not in _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown env config key(s) {unknown}; allowed: {list(_CONFIG_KEYS)}")
        self.variant = config.get("variant", "exact")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        #: One step limit for every stage, or None: each stage's own (``stage_max_steps``).
        self.fixed_max_steps = SEED_EPISODE_TOKENS if self.variant == "seed" else config.get("max_steps")
        if (self.variant == "seed" or "max_steps" in config) and (isinstance(self.fixed_max_steps, bool) or not isinstance(
            self.fixed_max_steps, (int, np.integer)
        ) or self.fixed_max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {self.fixed_max_steps!r}")
        #: The longest any episode can be.
        self.max_steps = self.fixed_max_steps or max(stage_max_steps(s) for s in STAGES)
        self.use_action_mask = bool(config.get("action_mask", False))
        self.hard_fraction = config.get("hard_fraction", 0.0)
        self.expression_hard_fraction = config.get("expression_hard_fraction", self.hard_fraction)
        for name, value in (("hard_fraction", self.hard_fraction),
                            ("expression_hard_fraction", self.expression_hard_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        self.hard_min_digit = config.get("hard_min_digit", 0)
        if isinstance(self.hard_min_digit, bool) or not isinstance(self.hard_min_digit, int) or not (
            0 <= self.hard_min_digit <= 9
        ):
            raise ValueError(f"hard_min_digit must be an integer in 0..9, got {self.hard_min_digit!r}")
        self._hard_contexts = (
            {s: memory_required_contexts(s) for s in MEMORY_STAGES} if self.hard_fraction > 0 else {}
        )
        self._stage_weights = np.eye(NUM_STAGES)[self._check_stage(config.get("stage", 0))]
        self._pattern_cdfs: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.shaping = config.get("shaping", 0.0)
        self.shaping_gamma = config.get("shaping_gamma", 0.99)
        for name, value in (("shaping", self.shaping), ("shaping_gamma", self.shaping_gamma)):
            # written so that NaN fails too (every comparison with NaN is False)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.shaping and self.variant == "seed":
            raise ValueError("shaping is defined for the exact variant only; the seed variant has its own rewards")
        self._path: tuple = ()
        self.step_limit_terminates = bool(config.get("step_limit_terminates", False))

        width = CONTEXT_LEN + 2 + NUM_ACTIONS
        high = np.full(width, max(CONTEXT_VOCAB - 1, START_ACTION), dtype=np.int64)
        self.observation_space = gym.spaces.Box(0, high, shape=(width,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)

        self.stage = 0
        self.digits: tuple[int, ...] = ()
        self.operators: tuple[int, ...] = ()
        self._limit = self.max_steps
        self._state: MachineState | SeedState = MachineState()
        self._steps = 0
        self._prev_action = START_ACTION

    # -- curriculum --------------------------------------------------------------
    def set_stage(self, stage: int) -> None:
        """Train on ``stage`` from the next episode on (the current one finishes)."""
        self._stage_weights = np.eye(NUM_STAGES)[self._check_stage(stage)]

    def set_stage_weights(self, weights: Sequence[float]) -> None:
        """Draw each next episode's stage from these (unnormalised) weights."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (NUM_STAGES,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(
                f"stage weights must be {NUM_STAGES} non-negative numbers with a positive "
                f"sum, got {list(weights)!r}"
            )
        for stage in np.flatnonzero(w):
            self._check_stage(int(stage))
        self._stage_weights = w / w.sum()

    @property
    def stage_weights(self) -> np.ndarray:
        return self._stage_weights.copy()

    def set_pattern_weights(self, weights: Sequence[float] | None) -> None:
        """Draw a k-operator expression's operators in proportion to these weights, one per
        pattern number (``envs.machine.pattern_code``), for every k whose weights are not
        all zero; the other counts, and ``None``, draw them uniformly."""
        self._pattern_cdfs = pattern_cdfs(weights)

    @property
    def pattern_cdfs(self) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
        return dict(self._pattern_cdfs)

    # -- gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "stage" in options:
            self.stage = self._check_stage(options["stage"])
        else:
            self.stage = int(self.np_random.choice(NUM_STAGES, p=self._stage_weights))
        operators: tuple[int, ...] = ()
        if self.stage in EXPRESSION_OPERATORS:
            digits, operators = draw_expression(self.np_random, self.stage, options, self.expression_hard_fraction,
                                                self._pattern_cdfs, self.hard_min_digit)
        elif "digits" in options:
            digits = tuple(int(x) for x in options["digits"])
        elif self.stage in self._hard_contexts and self.np_random.random() < self.hard_fraction:
            hard = self._hard_contexts[self.stage]
            digits = tuple(int(x) for x in hard[self.np_random.integers(len(hard))])
        else:
            # The tutorial draws all five digits at every stage; so do we, which
            # keeps both variants on one random stream.
            digits = tuple(int(x) for x in self.np_random.integers(0, 10, size=5))
        if self.variant == "seed" or self.stage in EXPRESSION_OPERATORS:
            self.digits = digits
        else:
            self.digits = digits[: STAGE_DIGITS[self.stage]]
        self.operators = operators
        self._limit = self.fixed_max_steps or stage_max_steps(self.stage)
        self._state = SeedState() if self.variant == "seed" else MachineState()
        self._path = general_path(self.stage, self.digits, self.operators) if self.shaping else ()
        self._steps = 0
        self._prev_action = START_ACTION
        return self._observation(), {"stage": self.stage}

    def step(self, action):
        action = int(action)
        self._steps += 1
        previous = self._state
        if self.variant == "seed":
            self._state = seed_apply(self._state, action, self.digits, self.stage)
            answer = self._state.last
        else:
            self._state = apply_tool(self._state, action, self.digits)
            answer = self._state.acc
        self._prev_action = action
        answered = action == ANS
        out_of_steps = not answered and self._steps >= self._limit
        terminated = answered or (out_of_steps and self.step_limit_terminates)
        truncated = out_of_steps and not self.step_limit_terminates
        reward = 0.0
        if self.shaping:
            before = progress(previous, self._path)
            after = 0.0 if terminated or truncated else progress(self._state, self._path)
            reward = self.shaping * (self.shaping_gamma * after - before)
        info: dict[str, Any] = {"stage": self.stage}
        if terminated or truncated:
            # Every value a plain scalar of a fixed type: gymnasium's vector envs
            # pack infos into typed arrays.
            submitted = answer if answered else None
            correct = submitted is not None and submitted == self.target
            if answered:
                reward += seed_reward(submitted, self.digits, self.stage) if self.variant == "seed" else float(correct)
            info.update(
                target=self.target,
                answered=submitted is not None,
                answer=0 if submitted is None else int(submitted),
                correct=bool(correct),
                steps=self._steps,
                pattern=pattern_code(self.operators),
            )
        return self._observation(), reward, terminated, truncated, info

    # -- helpers --------------------------------------------------------------------
    def _check_stage(self, stage: Any) -> int:
        stage = _check_stage(stage)
        if self.variant == "seed" and stage not in SPEC_STAGES:
            raise ValueError(f"the seed variant has stages {list(SPEC_STAGES)} only, got {stage}")
        return stage

    @property
    def shown_digits(self) -> tuple[int, ...]:
        """The digits the agent reads (the seed variant draws five, shows fewer)."""
        if self.stage in EXPRESSION_OPERATORS:
            return self.digits
        return self.digits[: STAGE_DIGITS[self.stage]]

    @property
    def step_limit(self) -> int:
        """The current episode's step limit (its stage's, or the configured ``max_steps``)."""
        return self._limit

    @property
    def context(self) -> tuple[int, ...]:
        """The context tokens the agent reads (digits, and operators at an expression stage)."""
        return context_tokens(self.stage, self.shown_digits, self.operators)

    @property
    def target(self) -> int:
        """The stated target of the stage: what a correct answer equals.

        For the ``seed`` variant this is *not* what its reward pays (that is one
        stage behind, see ``seed_reward``); accuracy is always against this one.
        """
        return stage_target(self.stage, self.digits, self.operators)

    def action_mask(self) -> np.ndarray:
        """1 for each tool that can apply now (all ones for the seed variant)."""
        if self.variant == "seed":
            return np.ones(NUM_ACTIONS, dtype=np.int64)
        n = len(self.digits)
        return np.array(
            [tool_applies(self._state, t, n) for t in range(NUM_ACTIONS)], dtype=np.int64
        )

    def _observation(self) -> np.ndarray:
        obs = np.empty(self.observation_space.shape, dtype=np.int64)
        shown = self.context
        obs[: len(shown)] = shown
        obs[len(shown) : CONTEXT_LEN] = PAD_TOKEN
        obs[CONTEXT_LEN] = self.stage
        obs[CONTEXT_LEN + 1] = self._prev_action
        obs[CONTEXT_LEN + 2 :] = self.action_mask() if self.use_action_mask else 1
        return obs
