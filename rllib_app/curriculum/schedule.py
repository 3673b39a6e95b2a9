"""Curriculum schedules: which stage(s) to train on, and when that changes.

``Curriculum`` is the pure decision logic (no Ray): given per-stage sampled
episode counts after each training iteration, it says which stage is current and
with what weights each stage is drawn. Its state is a small dict, saved in every
checkpoint. ``rllib_app.curriculum.callback`` wires it into RLlib.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from envs import NUM_STAGES, SPEC_STAGES
from envs.machine import EXPRESSION_OPERATORS, NUM_PATTERNS, PATTERN_OFFSET

SCHEDULES = ("threshold", "fixed", "progress")
#: What promotes a stage on the threshold schedule: its sampled accuracy on the env
#: runners, or its greedy accuracy at the training loop's evaluations.
PROMOTE_ON = ("sampled", "greedy")
#: The threshold schedule's default path, and the one with the memory drills
#: (``a-b*c``, ``a*b-c*d``) before stage 2.
SPEC_PATH = SPEC_STAGES
DRILL_PATH = (0, 1, 3, 4, 2)
#: The tutorial's schedule: stage per block of iterations.
TUTORIAL_STAGES = (0, 0, 0, 1, 1, 2)


def error_rate(episodes: float, correct: float) -> float:
    """(failures + 1) / (episodes + 2): the error rate with one imagined success and one
    failure, so a stage or pattern seen rarely (0.5 unseen) is neither ignored nor certain."""
    return (episodes - correct + 1.0) / (episodes + 2.0)


@dataclass(frozen=True)
class CurriculumSettings:
    schedule: str = "threshold"
    #: threshold schedule: the stages in training order.
    path: tuple[int, ...] = SPEC_PATH
    #: threshold schedule: promote when the current stage's sampled accuracy over
    #: the last ``window`` episodes reaches this.
    promotion_accuracy: float = 0.95
    #: threshold schedule: "sampled" promotes on the sampled accuracy over ``window``
    #: episodes; "greedy" on the greedy accuracy of fresh, uniformly drawn episodes
    #: (``observe_greedy``), which --pattern-focus and --hard-fraction do not bias.
    promote_on: str = "sampled"
    window: int = 500
    #: probability that an episode is drawn from an earlier stage (no forgetting).
    replay_probability: float = 0.2
    #: fixed schedule: the stage for each block of ``iterations_per_stage_entry``.
    fixed_stages: tuple[int, ...] = TUTORIAL_STAGES
    iterations_per_stage_entry: int = 10
    #: progress schedule: share of episodes spread uniformly over the path's stages.
    progress_floor: float = 0.1
    #: progress schedule: accuracy points per stage the slope is fitted over.
    progress_window: int = 8
    #: progress schedule: episodes of a stage that make one accuracy point.
    progress_episodes: int = 64
    #: expression stages: share of each operator count's draws given to its operator
    #: patterns in proportion to their recent error (0: every pattern equally often).
    pattern_focus: float = 0.0
    #: expression stages: episodes of a pattern its recent error is averaged over.
    pattern_window: int = 50
    #: entropy bumps: greedy evaluations of the current stage in a row without a new best
    #: (by ``stall_min_gain``) that make a stall and start a bump; 0: never.
    stall_evaluations: int = 0
    stall_min_gain: float = 0.01
    #: env steps a bump lasts; none starts before the last one has ended.
    stall_decay_steps: int = 500_000
    #: threshold schedule: once the path's last stage passes its promotion test, draw every
    #: stage of the path (``Curriculum._review_weights``) instead of the last one and a replay.
    review: bool = False
    #: review: share of episodes given to the stages in proportion to their recent sampled
    #: error; the rest is spread evenly.
    review_focus: float = 0.5


@dataclass
class Curriculum:
    settings: CurriculumSettings = field(default_factory=CurriculumSettings)
    stage: int = 0
    iteration: int = 0
    #: (iteration, new stage) for every change, for the run's summary.
    promotions: list = field(default_factory=list)
    #: Recent (episodes, correct) per stage, newest last, for the sliding window.
    _recent: dict = field(default_factory=lambda: {s: deque() for s in range(NUM_STAGES)})
    #: progress schedule: (episodes, correct) not yet in a point, and the points
    #: (iteration, accuracy) per stage, newest last.
    _pending: dict = field(default_factory=lambda: {s: [0, 0] for s in range(NUM_STAGES)})
    _points: dict = field(default_factory=lambda: {s: [] for s in range(NUM_STAGES)})
    #: pattern focus: decayed (episodes, correct) per pattern number.
    _patterns: dict = field(default_factory=dict)
    #: (iteration, env steps, stage) where each entropy bump started, oldest first.
    entropy_bumps: list = field(default_factory=list)
    #: stall detection: [stage, best greedy accuracy, evaluations since that best].
    _stall: list = field(default_factory=lambda: [None, 0.0, 0])
    #: the iteration the review began (``settings.review``), None before.
    review_from: int | None = None

    def __post_init__(self):
        self.stage = self.stages()[0]

    def stages(self) -> tuple[int, ...]:
        """The stages this curriculum trains, in the order it first visits them."""
        cfg = self.settings
        order = cfg.fixed_stages if cfg.schedule == "fixed" else cfg.path
        return tuple(dict.fromkeys(order))

    def stage_weights(self) -> list[float]:
        """Probability of drawing each stage for the next episodes: the current one,
        and with ``replay_probability`` one of the stages ordered before it; for the
        progress schedule, the teacher's mix; in the review, every stage of the path."""
        if self.settings.schedule == "progress":
            return self._progress_weights()
        if self.review_from is not None:
            return self._review_weights()
        weights = [0.0] * NUM_STAGES
        order = self.stages()
        earlier = order[: order.index(self.stage)]
        p = self.settings.replay_probability if earlier else 0.0
        for s in earlier:
            weights[s] = p / len(earlier)
        weights[self.stage] = 1.0 - p
        return weights

    def windowed_accuracy(self, stage: int) -> tuple[float | None, int]:
        recent = self._recent[stage]
        episodes = sum(n for n, _ in recent)
        correct = sum(c for _, c in recent)
        return (correct / episodes if episodes else None), episodes

    def update(self, counts: dict[int, tuple[int, int]]) -> bool:
        """Record one iteration's sampled ``{stage: (episodes, correct)}``;
        returns True when the stage weights changed (the env runners need them)."""
        before = self.stage_weights()
        self.iteration += 1
        for s, (n, c) in counts.items():
            if n:
                recent = self._recent[s]
                recent.append((n, c))
                # Keep just enough iterations to cover the window.
                while len(recent) > 1 and sum(k for k, _ in list(recent)[1:]) >= self.settings.window:
                    recent.popleft()
                self._add_progress_point(s, n, c)
        new_stage = self._next_stage()
        if new_stage != self.stage:
            self._enter(new_stage)
        elif self.settings.review and self.settings.promote_on == "sampled" and self._passed_sampled():
            self._begin_review()
        return self.stage_weights() != before

    def _passed_sampled(self) -> bool:
        accuracy, episodes = self.windowed_accuracy(self.stage)
        cfg = self.settings
        return accuracy is not None and episodes >= cfg.window and accuracy >= cfg.promotion_accuracy

    # -- review: every stage, once the path is done ------------------------------------------
    def _begin_review(self) -> bool:
        """Start the review if it is on, the last stage of the path is current and it has
        not started yet; returns whether it started.

        Why: while the last stage takes ``1 - replay_probability`` of the episodes, the
        stages before it share the rest and drift (docs/research/2026-12-04-expressions.md,
        twelfth measurement), so the path never has every stage
        passed at once."""
        cfg = self.settings
        if not cfg.review or cfg.schedule != "threshold" or self.review_from is not None:
            return False
        if self.stage != cfg.path[-1]:
            return False
        self.review_from = self.iteration
        return True

    def stage_error(self, stage: int) -> float:
        """A stage's recent sampled error rate over its window (``error_rate``)."""
        recent = self._recent[stage]
        return error_rate(sum(n for n, _ in recent), sum(c for _, c in recent))

    def _review_weights(self) -> list[float]:
        """Every stage of the path: ``1 - review_focus`` spread evenly, ``review_focus``
        in proportion to each stage's recent sampled error."""
        focus = self.settings.review_focus
        order = self.stages()
        errors = {s: self.stage_error(s) for s in order}
        total = sum(errors.values())
        weights = [0.0] * NUM_STAGES
        for s in order:
            weights[s] = (1.0 - focus) / len(order) + focus * errors[s] / total
        return weights

    def _enter(self, stage: int) -> None:
        self.stage = stage
        self.promotions.append((self.iteration, stage))

    # -- pattern focus ---------------------------------------------------------------------
    def update_patterns(self, counts: dict[int, tuple[int, int]]) -> None:
        """Record one iteration's sampled ``{pattern number: (episodes, correct)}``: each
        episode of a pattern weighs ``1 - 1/pattern_window`` times the one after it (the
        iteration's episodes count as interleaved), so about ``pattern_window`` count."""
        window = self.settings.pattern_window
        keep = 1.0 - 1.0 / window
        for code, (n, c) in counts.items():
            if n:
                old_n, old_c = self._patterns.get(code, (0.0, 0.0))
                decay = keep**n
                weight = (1.0 - decay) * window  # the iteration's n episodes, decayed among themselves
                self._patterns[code] = (old_n * decay + weight, old_c * decay + weight * c / n)

    def pattern_error(self, code: int) -> float:
        """A pattern's recent error rate (``error_rate``)."""
        return error_rate(*self._patterns.get(code, (0.0, 0.0)))

    def pattern_weights(self) -> list[float] | None:
        """One weight per pattern number (``envs.machine.pattern_code``) for the operator
        counts of the curriculum's expression stages: ``1 - pattern_focus`` spread evenly
        over a count's patterns, ``pattern_focus`` in proportion to their errors. None when
        the focus is off or no expression stage is trained."""
        focus = self.settings.pattern_focus
        counts = sorted({k for s in self.stages() for k in EXPRESSION_OPERATORS.get(s, ())})
        if not focus or not counts:
            return None
        weights = [0.0] * NUM_PATTERNS
        for k in counts:
            codes = range(PATTERN_OFFSET[k], PATTERN_OFFSET[k] + 3**k)
            errors = [self.pattern_error(code) for code in codes]
            total = sum(errors)
            for code, error in zip(codes, errors):
                weights[code] = (1.0 - focus) / 3**k + focus * error / total
        return weights

    # -- the progress teacher (Matiisen et al. 2017, "Window" variant) --------------------
    def _add_progress_point(self, stage: int, episodes: int, correct: int) -> None:
        pending = self._pending[stage]
        pending[0] += episodes
        pending[1] += correct
        if pending[0] >= self.settings.progress_episodes:
            points = self._points[stage]
            points.append((self.iteration, pending[1] / pending[0]))
            del points[: -self.settings.progress_window]
            pending[0] = pending[1] = 0

    def learning_progress(self, stage: int) -> float | None:
        """|slope| of the stage's recent accuracy points (accuracy per iteration), by
        least squares; None until the stage has two points."""
        points = self._points[stage]
        if len(points) < 2:
            return None
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            return 0.0
        return abs(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx)

    def _progress_weights(self) -> list[float]:
        """Sample stages in proportion to |learning progress|, plus a uniform floor.
        The absolute slope also re-samples a stage being forgotten (negative slope);
        a stage without two points yet counts as the most promising one, so every
        stage gets measured."""
        cfg = self.settings
        order = self.stages()
        progress = {s: self.learning_progress(s) for s in order}
        known = [p for p in progress.values() if p is not None]
        unknown_value = max(known, default=0.0) or 1.0
        scores = {s: unknown_value if p is None else p for s, p in progress.items()}
        total = sum(scores.values())
        weights = [0.0] * NUM_STAGES
        for s in order:
            share = scores[s] / total if total > 0 else 1.0 / len(order)
            weights[s] = cfg.progress_floor / len(order) + (1.0 - cfg.progress_floor) * share
        return weights

    def _next_stage(self) -> int:
        cfg = self.settings
        if cfg.schedule == "progress":
            # The stage the teacher favours now, for progress lines and summaries.
            weights = self._progress_weights()
            return max(self.stages(), key=lambda s: weights[s])
        if cfg.schedule == "fixed":
            entry = min(self.iteration // cfg.iterations_per_stage_entry, len(cfg.fixed_stages) - 1)
            return cfg.fixed_stages[entry]
        path = cfg.path
        position = path.index(self.stage)
        if position == len(path) - 1:
            return self.stage
        if cfg.promote_on == "greedy":
            return self.stage  # observe_greedy promotes
        return path[position + 1] if self._passed_sampled() else self.stage

    def observe_greedy(self, accuracy: dict[str, float]) -> bool:
        """Record an evaluation's greedy ``{row: accuracy}`` (rows as ``toolagent eval``'s:
        the stage number, plus ``2m``); with ``promote_on="greedy"`` the threshold schedule
        promotes when the current stage's row reaches ``promotion_accuracy`` (on the last
        stage of the path: begins the review, if on). Returns True when the stage weights
        changed."""
        cfg = self.settings
        if cfg.schedule != "threshold" or cfg.promote_on != "greedy":
            return False
        position = cfg.path.index(self.stage)
        value = accuracy.get(str(self.stage))
        if value is None or value < cfg.promotion_accuracy:
            return False
        if position == len(cfg.path) - 1:
            return self._begin_review()
        self._enter(cfg.path[position + 1])
        return True

    def observe_stall(self, accuracy: dict[str, float], env_steps: int) -> bool:
        """Record an evaluation's greedy ``{row: accuracy}`` for stall detection. True when
        the current stage has gone ``stall_evaluations`` evaluations without beating its
        best (since it began, or since the last bump) by ``stall_min_gain`` and the last
        bump is over: an entropy bump starts at ``env_steps`` (``entropy_bumps``).

        Why: a policy stuck in a shortcut (a fold where it should store) is nearly
        deterministic there; more entropy makes it sample the other programs again."""
        cfg = self.settings
        value = accuracy.get(str(self.stage))
        if not cfg.stall_evaluations or value is None:
            return False
        stage, best, since = self._stall
        if stage != self.stage or value >= best + cfg.stall_min_gain:
            self._stall = [self.stage, value, 0]
            return False
        self._stall[2] = since = since + 1
        last_end = self.entropy_bumps[-1][1] + cfg.stall_decay_steps if self.entropy_bumps else 0
        if since < cfg.stall_evaluations or env_steps < last_end:
            return False
        self.entropy_bumps.append((self.iteration, int(env_steps), self.stage))
        self._stall = [self.stage, value, 0]
        return True

    def bump_starts(self) -> list[int]:
        """The env steps each entropy bump started at, as the learners take them."""
        return [steps for _, steps, _ in self.entropy_bumps]

    def get_state(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "stage": self.stage,
            "iteration": self.iteration,
            "promotions": [list(p) for p in self.promotions],
            "recent": {str(s): [list(x) for x in q] for s, q in self._recent.items()},
            "pending": {str(s): list(v) for s, v in self._pending.items()},
            "points": {str(s): [list(x) for x in v] for s, v in self._points.items()},
            "patterns": {str(code): list(v) for code, v in self._patterns.items()},
            "entropy_bumps": [list(b) for b in self.entropy_bumps],
            "stall": list(self._stall),
            "review_from": self.review_from,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self.iteration = int(state["iteration"])
        self.promotions = [tuple(p) for p in state["promotions"]]
        self._recent = {
            s: deque(tuple(x) for x in state["recent"].get(str(s), [])) for s in range(NUM_STAGES)
        }
        # .get: checkpoints from before the progress schedule have neither.
        self._pending = {s: list(state.get("pending", {}).get(str(s), [0, 0])) for s in range(NUM_STAGES)}
        self._points = {s: [tuple(x) for x in state.get("points", {}).get(str(s), [])] for s in range(NUM_STAGES)}
        self._patterns = {int(code): tuple(v) for code, v in state.get("patterns", {}).items()}
        self.entropy_bumps = [tuple(b) for b in state.get("entropy_bumps", [])]
        self._stall = list(state.get("stall", [None, 0.0, 0]))
        self.review_from = state.get("review_from")
