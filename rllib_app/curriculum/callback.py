"""``CurriculumCallback``: the curriculum inside RLlib.

Env runners count episodes and correct answers per stage; the driver updates the
``Curriculum`` (``rllib_app.curriculum.schedule``) in ``on_train_result`` and pushes the
stage weights to every env of every env runner, including the local one and
runners Ray recreates after a crash (counted: ``result["curriculum"]["env_runner_restarts"]``).
"""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from envs import NUM_STAGES
from envs.machine import NO_PATTERN
from rllib_app.curriculum.schedule import Curriculum, CurriculumSettings
from rllib_app.outputs.history import finite_metric


def _stage_metric(stage: int, what: str) -> str:
    return f"curriculum/stage_{stage}_{what}"


_PATTERN_PREFIX = "curriculum/pattern_"


def _pattern_metric(code: int, what: str) -> str:
    return f"{_PATTERN_PREFIX}{code}_{what}"


def _pattern_counts(runners: dict) -> dict[int, tuple[int, int]]:
    """``{pattern number: (episodes, correct)}`` from the env runners' pattern metrics."""
    codes = {int(key[len(_PATTERN_PREFIX):].split("_")[0]) for key in runners if key.startswith(_PATTERN_PREFIX)}
    return {code: (_count(runners.get(_pattern_metric(code, "episodes"))),
                   _count(runners.get(_pattern_metric(code, "correct")))) for code in codes}


def _count(value) -> int:
    return int(finite_metric(value) or 0)


def _tool_machines(env) -> list:
    """The ``ToolMachineEnv`` objects behind an env runner's (vector) env."""
    if env is None:
        return []
    base = env.unwrapped
    if hasattr(base, "set_stage_weights"):
        return [base]
    return [e.unwrapped for e in getattr(base, "envs", [])]


def apply_stage_weights(env_runner, weights, pattern_weights=None) -> list:
    """Set ``weights`` (and ``pattern_weights``, if given) on every env of ``env_runner``;
    returns the stage weights each env now has.

    Never raises: an exception here would kill the remote env runner actor.
    """
    try:
        machines = _tool_machines(getattr(env_runner, "env", None))
        for m in machines:
            m.set_stage_weights(weights)
            if pattern_weights is not None:
                m.set_pattern_weights(pattern_weights)
        return [list(m.stage_weights) for m in machines]
    except Exception as exc:  # pragma: no cover - reported, not raised
        return [f"error: {exc!r}"]


class CurriculumCallback(RLlibCallback):
    """Counts per-stage accuracy on the env runners; moves the stage on the driver.

    Built through ``functools.partial(CurriculumCallback, settings=...)`` so each
    process gets the same settings.
    """

    def __init__(self, settings: CurriculumSettings | None = None):
        super().__init__()
        self.curriculum = Curriculum(settings or CurriculumSettings())
        #: training env runners Ray recreated since this process built the algorithm
        self.env_runner_restarts = 0

    # -- env runner side ---------------------------------------------------------------
    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is None:
            return
        info = episode.get_infos(-1)
        if not isinstance(info, dict) or "correct" not in info:
            return
        stage = int(info["stage"])
        metrics_logger.log_value(_stage_metric(stage, "episodes"), 1, reduce="sum")
        metrics_logger.log_value(_stage_metric(stage, "correct"), int(info["correct"]), reduce="sum")
        if self.curriculum.settings.pattern_focus and int(info.get("pattern", NO_PATTERN)) != NO_PATTERN:
            code = int(info["pattern"])
            metrics_logger.log_value(_pattern_metric(code, "episodes"), 1, reduce="sum")
            metrics_logger.log_value(_pattern_metric(code, "correct"), int(info["correct"]), reduce="sum")

    # -- driver side -------------------------------------------------------------------
    def on_algorithm_init(self, *, algorithm, **kwargs) -> None:
        self.push(algorithm)

    def on_train_result(self, *, algorithm, result, **kwargs) -> None:
        runners = result.get("env_runners", {})
        counts = {
            s: (_count(runners.get(_stage_metric(s, "episodes"))), _count(runners.get(_stage_metric(s, "correct"))))
            for s in range(NUM_STAGES)
        }
        cur = self.curriculum
        changed = cur.update(counts)
        if cur.settings.pattern_focus:  # the pattern weights follow every iteration's episodes
            cur.update_patterns(_pattern_counts(runners))
        if changed or cur.settings.pattern_focus:
            # not waiting: a runner may be sampling the next batch (--overlap-sampling)
            self.push(algorithm, wait=False)
        result["curriculum"] = {
            "stage": cur.stage,
            "stage_weights": cur.stage_weights(),
            **{
                f"stage_{s}_sampled_accuracy": cur.windowed_accuracy(s)[0]
                for s in range(NUM_STAGES)
            },
            "env_runner_restarts": self.env_runner_restarts,
        }

    def on_env_runners_recreated(self, *, algorithm, env_runner_group, env_runner_indices, is_evaluation, **kwargs) -> None:
        # Recreated runners come back with the driver's original env_config.
        if not is_evaluation:
            self.env_runner_restarts += len(env_runner_indices)
        weights, patterns = self.curriculum.stage_weights(), self.curriculum.pattern_weights()
        env_runner_group.foreach_env_runner(
            lambda er: apply_stage_weights(er, weights, patterns),
            remote_worker_ids=env_runner_indices,
            local_env_runner=False,
        )

    def push(self, algorithm, *, wait: bool = True) -> list:
        """Send the current stage weights to every env runner; returns their envs' weights
        (``wait=False``: the local runner's only; the remote runners apply them before
        their next sample)."""
        weights, patterns = self.curriculum.stage_weights(), self.curriculum.pattern_weights()
        return algorithm.env_runner_group.foreach_env_runner(
            lambda er: apply_stage_weights(er, weights, patterns), local_env_runner=True,
            timeout_seconds=None if wait else 0.0,
        )


def find_curriculum_callback(algorithm) -> CurriculumCallback:
    callbacks = algorithm.callbacks
    for cb in callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]:
        if isinstance(cb, CurriculumCallback):
            return cb
    raise RuntimeError("this algorithm was not built with a CurriculumCallback")
