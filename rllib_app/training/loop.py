"""Train the tool-using agent: the whole story, top to bottom.

How to run::

    toolagent train                        # the digits-a2c recipe: A2C in one process, local Ray
    toolagent train --config digits-impala --max-minutes 5 --output runs/quick
    python -m rllib_app train --algo impala --num-env-runners 2 --seed 1

Each iteration prints one line (stage, sampled per-stage accuracy, env steps,
steps/s). Every ``--eval-interval`` iterations the learner's weights are
evaluated greedily on fresh episodes of every stage and checkpointed to
``OUTPUT/checkpoint``; the run stops when every stage reaches
``--target-accuracy`` or the budget runs out, and writes ``OUTPUT/summary.json``.

Results to expect: stages 0-2 (and stage 2's memory-required contexts) at greedy
accuracy 0.99 within a few minutes on 2 cores; docs/benchmarks.md has the measured
tables and the commands that reproduce them.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import threading
import time
from typing import Any

import ray

from rllib_app.config.train_config import TrainConfig
from rllib_app.curriculum.callback import find_curriculum_callback
from rllib_app.evaluation.evaluate import greedy_accuracy
from rllib_app.outputs.checkpoints import (
    BEST_DIR,
    best_info,
    discard_best,
    keep_best,
    read_run_info,
    save_checkpoint,
    write_json_atomic,
)
from rllib_app.outputs.history import RESULT_LOG, MetricsHistory, ResultLog, finite_metric, metrics_row
from rllib_app.training.algorithms import MODULE_ID, build_config, module_spec
from rllib_app.training.progress import ProgressDisplay
from rllib_app.training.resources import (
    init_ray,
    placement,
    release_requested_resources,
    resolve_on_running_ray,
)


class StopSignals:
    """SIGINT/SIGTERM (Ctrl-C, ``ray job stop``, a pre-empted node) end the run after
    the current iteration with a checkpoint and summary.json, not mid-write. A second
    signal acts as usual. Only in the main thread (Tune runs trials in others)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name
        print(f"{self.received}: stopping after this iteration, with a checkpoint", flush=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _format_accuracy(values: dict[str, Any]) -> str:
    """``s0 1.000 s2 0.350 s2m   -  `` for ``{row: accuracy or None}``."""
    return " ".join(f"s{k} {'  -  ' if v is None else f'{v:.3f}'}" for k, v in values.items())


def push_entropy_bumps(algo, curriculum, env_steps: int) -> None:
    """Tell every learner where the curriculum's entropy bumps started."""
    starts = curriculum.bump_starts()
    for result in algo.learner_group.foreach_learner(lambda learner: learner.set_entropy_bumps(starts, env_steps)):
        result.get()


def iteration_metrics(cfg: TrainConfig, result: dict, env_steps: int, seconds: float) -> dict[str, Any]:
    """The flat per-iteration metrics ``toolagent tune`` reports (and ASHA ranks).

    ``score`` is the sum over the trained stages of their sampled accuracy (a stage not
    reached yet counts 0): it rises with every stage learned, so at equal env steps it
    ranks a run that has solved more stages, sooner, above one that has not.
    """
    cur = result.get("curriculum", {})
    sampled = {s: cur.get(f"stage_{s}_sampled_accuracy") for s in cfg.trained_stages()}
    return {
        "iteration": int(result.get("training_iteration", 0)),
        "env_steps": env_steps,
        "wall_seconds": round(seconds, 3),
        "stage": cur.get("stage"),
        **{f"sampled_accuracy_{s}": v for s, v in sampled.items()},
        "score": float(sum(v or 0.0 for v in sampled.values())),
    }


def train(cfg: TrainConfig, *, resume_from: pathlib.Path | None = None, on_iteration=None) -> dict[str, Any]:
    """Train until every stage reaches the target accuracy or the budget runs out.

    ``resume_from``: a checkpoint to continue (weights, optimiser, curriculum, iteration
    and env-step counts, elapsed time). ``on_iteration(metrics, checkpoint)`` is called
    after every iteration with ``iteration_metrics`` (plus the greedy accuracy on
    evaluation iterations) and the checkpoint written then, if any; if it returns True,
    the run ends after that iteration (``toolagent bench`` budgets training time this way).
    """
    cfg.validate()
    output = pathlib.Path(cfg.output)
    started_ray = not ray.is_initialized()
    cfg = init_ray(cfg) if started_ray else resolve_on_running_ray(cfg)
    output.mkdir(parents=True, exist_ok=True)
    algo = build_config(cfg).build_algo()
    curriculum_callback = find_curriculum_callback(algo)
    curriculum = curriculum_callback.curriculum
    eval_module = module_spec(cfg).build()
    eval_module.eval()
    where = placement(algo)
    print(f"placement: driver on node {where['driver'][:8]}, env runners on {[n[:8] for n in where['env_runners']]}, "
          f"learners on {[n[:8] for n in where['learners']]}", flush=True)
    print(f"batch: {cfg.train_batch_size_per_learner:,} env steps per learner and update, learning rate "
          f"{cfg.learning_rate():.3g}", flush=True)
    earlier_seconds = 0.0
    if resume_from is not None:
        algo.restore_from_path(str(pathlib.Path(resume_from).resolve()))
        earlier_seconds = float(read_run_info(pathlib.Path(resume_from)).get("progress", {}).get("wall_seconds", 0.0))

    history = MetricsHistory(output, resume_after=algo.training_iteration if resume_from is not None else None)
    stages = cfg.trained_stages()
    start = time.time() - earlier_seconds
    env_steps = 0
    # time spent evaluating and checkpointing (wall_seconds includes it)
    eval_seconds = 0.0
    accuracy: dict[str, Any] = {}
    target_reached = False
    checkpoint = None
    # a resumed run's best so far; a fresh run's starts afresh (one before it in this
    # directory was another run's)
    best = best_info(output) if resume_from is not None else None
    if resume_from is None:
        discard_best(output)
    iteration = algo.training_iteration
    # after a restore, RLlib's own lifetime counter continues from the checkpoint
    last_steps = int(algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0))
    if curriculum.entropy_bumps:  # restored with the curriculum; the learners keep only their schedule
        push_entropy_bumps(algo, curriculum, last_steps)
    last_time = time.time()
    display = ProgressDisplay()
    shown_promotions = len(curriculum.promotions)
    shown_review = curriculum.review_from is not None
    stopping = False

    def summary(status: str) -> dict[str, Any]:
        """The run as it stands: ``status`` running (written at every checkpoint), finished,
        stopped (by a signal) or failed (docs/outputs.md)."""
        return {
            "status": status,
            "target_reached": target_reached,
            # the signal that ended the run early (its last checkpoint is the one to --resume)
            "stopped_by": stop.received if stopping else None,
            "accuracy": {s: v["accuracy"] for s, v in accuracy.items()},
            "mean_return": {s: v["mean_return"] for s, v in accuracy.items()},
            "env_steps": env_steps,
            "wall_seconds": round(time.time() - start, 1),
            "eval_seconds": round(eval_seconds, 1),
            "iterations": iteration,
            "checkpoint": str(checkpoint) if checkpoint else None,
            # the evaluated checkpoint with the best greedy accuracy (checkpoints.keep_best)
            "best_checkpoint": {"path": str(output / "checkpoints" / BEST_DIR), **best} if best else None,
            "algo": cfg.algo,
            "variant": cfg.variant,
            "seed": cfg.seed,
            "promotions": [{"iteration": i, "stage": s} for i, s in curriculum.promotions],
            "entropy_bumps": [{"iteration": i, "env_steps": n, "stage": s} for i, n, s in curriculum.entropy_bumps],
            "review_from": curriculum.review_from,
            "placement": where,
            "config": dataclasses.asdict(cfg),
        }

    results = ResultLog(output / RESULT_LOG, resume_after=iteration if resume_from is not None else None)
    with StopSignals() as stop:
        try:
            while True:
                result = algo.train()
                results.append(result)
                iteration = int(result.get("training_iteration", iteration + 1))
                sampled = finite_metric(result.get("env_runners", {}).get("num_env_steps_sampled_lifetime"))
                env_steps = int(sampled) if sampled is not None else env_steps
                now = time.time()
                rate = (env_steps - last_steps) / max(now - last_time, 1e-9)
                last_steps, last_time = env_steps, now
                cur = result.get("curriculum", {})
                replay = finite_metric(result.get("learners", {}).get(MODULE_ID, {}).get("sil_replay_size"))
                left = max(0.0, cfg.max_minutes - (now - start) / 60)
                display.iteration(
                    f"iter {iteration:4d} | stage {cur.get('stage', curriculum.stage)} | sampled acc "
                    f"{_format_accuracy({str(s): cur.get(f'stage_{s}_sampled_accuracy') for s in stages})} | env steps {env_steps:,} | "
                    f"{rate:,.0f} steps/s | {now - start:6.1f} s | {left:.1f} min left"
                    + ("" if replay is None else f" | SIL replay {int(replay):,}")
                )
                metrics = iteration_metrics(cfg, result, env_steps, now - start)
                out_of_time = (now - start) / 60 >= cfg.max_minutes
                out_of_iters = cfg.max_iterations and iteration >= cfg.max_iterations
                # read once: a signal arriving later in this iteration is handled after the next one
                stopping = stop.received is not None
                evaluate = not stopping and (iteration % cfg.eval_interval == 0 or out_of_time or out_of_iters)
                measuring = time.time()
                greedy = None  # {row: accuracy} when this iteration evaluates
                if evaluate:
                    eval_module.set_state(algo.learner_group.get_weights()[MODULE_ID])
                    accuracy = greedy_accuracy(
                        eval_module, stages, episodes=cfg.eval_episodes, env_config=cfg.eval_env_config(), seed=cfg.seed
                    )
                    target_reached = all(v["accuracy"] >= cfg.target_accuracy for v in accuracy.values())
                    greedy = {k: v["accuracy"] for k, v in accuracy.items()}
                    display.event(f"eval @ iter {iteration}: greedy accuracy {_format_accuracy(greedy)}")
                    if curriculum.observe_greedy(greedy):  # --promote-on greedy
                        curriculum_callback.push(algo, wait=False)
                    if curriculum.observe_stall(greedy, env_steps):  # --stall-entropy
                        push_entropy_bumps(algo, curriculum, env_steps)
                        display.event(f"stage {curriculum.stage} stalled: entropy coefficient raised to "
                                      f"{cfg.stall_entropy:g} from {env_steps:,} env steps")
                # a promotion on the sampled accuracy (in algo.train()) or on this evaluation's
                if len(curriculum.promotions) > shown_promotions and cfg.schedule != "progress":
                    display.event(f"stage {curriculum.stage} from iteration {iteration} ({env_steps:,} env steps)")
                shown_promotions = len(curriculum.promotions)
                if curriculum.review_from is not None and not shown_review:
                    display.event(f"every stage of the path from iteration {iteration} (--review)")
                    shown_review = True
                new_checkpoint = None
                if evaluate or stopping:
                    checkpoint = new_checkpoint = save_checkpoint(
                        algo, cfg, output, iteration, keep=cfg.keep_checkpoints,
                        progress={"env_steps": env_steps, "wall_seconds": round(now - start, 1),
                                  **({"greedy": greedy} if greedy else {})},
                    )
                    if greedy and keep_best(output, new_checkpoint, greedy):
                        best = {"iteration": iteration, "accuracy": greedy}
                eval_seconds += time.time() - measuring
                metrics["eval_seconds"] = round(eval_seconds, 2)
                if accuracy:
                    metrics.update(
                        {f"accuracy_{row}": v["accuracy"] for row, v in accuracy.items()},
                        stages_solved=sum(v["accuracy"] >= cfg.target_accuracy for v in accuracy.values()),
                        target_reached=target_reached,
                    )
                history.append(metrics_row(
                    iteration=iteration, wall_seconds=now - start, env_steps=env_steps, steps_per_second=rate,
                    curriculum=cur, learner=result.get("learners", {}).get(MODULE_ID, {}),
                    greedy=greedy,
                ), write=new_checkpoint is not None)  # the file keeps pace with the checkpoints
                caller_stops = on_iteration is not None and on_iteration(metrics, new_checkpoint) is True
                if target_reached or out_of_time or out_of_iters or stopping or caller_stops:
                    break
                if new_checkpoint is not None:  # plot, report and eval can read the run meanwhile
                    write_json_atomic(output / "summary.json", summary("running"))
        except BaseException as err:  # the summary says so, then the error goes on
            write_json_atomic(output / "summary.json", summary("stopped" if isinstance(err, KeyboardInterrupt) else "failed"))
            raise
        finally:
            display.close()
            history.close()
            results.close()
            algo.stop()
            release_requested_resources()
            if started_ray:
                ray.shutdown()

    final = summary("stopped" if stopping else "finished")
    write_json_atomic(output / "summary.json", final)
    return final

