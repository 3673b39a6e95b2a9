"""``TrainConfig``: the single source of training flags, defaults and their help.

The defaults are the digits-a2c recipe, the best combination measured so far
(docs/algorithms.md): the GRU reads the context only through its initial state, most
stage-2 contexts drawn from the memory-required ones, action masking, and prioritised
self-imitation.

Every field is one ``toolagent train`` flag (``num_env_runners`` ->
``--num-env-runners``); its ``help`` metadata is the CLI help, ``choices`` and
``minimum``/``maximum`` are checked by ``validate()`` (also for configs built
in Python or by Tune, not only from the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional, get_type_hints

from envs import NUM_STAGES, VARIANTS
from rllib_app.config.arguments import UsageError, stages_in
from rllib_app.curriculum.schedule import (
    DRILL_PATH,
    PROMOTE_ON,
    SCHEDULES,
    SPEC_PATH,
    TUTORIAL_STAGES,
    CurriculumSettings,
)

#: ``models.gru_actor_critic.CONTEXT_ENCODERS`` (not imported: it would load torch for every CLI command).
CONTEXT_ENCODERS = ("concat", "gru", "bigru")

ALGOS = ("a2c", "impala", "ppo", "appo")
#: Algorithms whose iteration is one synchronous batch: their batch follows ``batch_rule``.
SYNCHRONOUS_ALGOS = ("a2c", "ppo")
#: The most ``--lr-scaling sqrt`` raises the learning rate (docs/algorithms.md, "The batch rule").
MAX_LR_FACTOR = 2.0
_DRILL_EXAMPLE = ",".join(map(str, DRILL_PATH))


#: The ``toolagent train --help`` sections, in order; ``research`` (the expression-stage
#: experiments' knobs, docs/research) is shown by ``--help-all`` only.
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "task": ("variant", "stage_path", "schedule", "promotion_accuracy", "accuracy_window", "replay_probability",
             "hard_fraction", "action_mask", "shaping", "target_accuracy"),
    "algorithm": ("algo", "lr", "lr_scaling", "gamma", "entropy_coeff", "entropy_schedule", "vf_loss_coeff", "gae_lambda",
                  "standardize_advantages", "num_epochs", "train_batch_size_per_learner", "rollout_fragment_length",
                  "step_limit_terminates", "hidden_size", "sil_coeff", "sil_batch_episodes", "sil_capacity",
                  "sil_priority_alpha", "sil_join_chunks"),
    "resources": ("resources", "num_env_runners", "num_envs_per_env_runner", "num_cpus_per_env_runner", "fast_env_runner",
                  "native_vector_env", "num_learners", "num_gpus_per_learner", "num_cpus", "address",
                  "env_runner_resource", "learner_resource", "resource_wait_minutes"),
    "run": ("max_minutes", "max_iterations", "min_iteration_seconds", "eval_interval", "eval_episodes",
            "keep_checkpoints", "seed", "output"),
    "research": ("expression_hard_fraction", "hard_min_digit", "promote_on", "review", "review_focus",
                 "pattern_focus", "pattern_window", "sil_program_check", "stall_entropy", "stall_evaluations",
                 "stall_decay_steps", "context_encoder", "context_every_step", "context_attention",
                 "attention_projections", "fixed_stages", "iterations_per_stage_entry", "progress_floor",
                 "progress_window", "progress_episodes", "overlap_sampling"),
}
GROUP_TITLES = {
    "task": "task and curriculum", "algorithm": "algorithm and model", "resources": "resources (Ray)",
    "run": "run: budget, evaluation, output", "research": "research (the expression-stage experiments: docs/research)",
}


def flag(default: Any, help: str, *, choices=None, minimum=None, maximum=None, strict_min=False, per_algo=None,
         default_text=None):
    """A ``TrainConfig`` field. ``per_algo``: {algo: default} where an algorithm's
    measured default differs; the field then defaults to None, resolved from ``algo``
    when the config is made (an explicit value always wins)."""
    return field(
        default=None if per_algo else default,
        metadata={
            "help": help,
            "choices": choices,
            "minimum": minimum,
            "maximum": maximum,
            "strict_min": strict_min,
            "base_default": default,
            "per_algo": per_algo or {},
            # what --help says the default is, where no single value does (a rule)
            "default_text": default_text,
        },
    )


@dataclass
class TrainConfig:
    # -- what to train -----------------------------------------------------------------
    algo: str = flag(
        "a2c", "RL algorithm: a2c (synchronous, ours; fastest on a few cores), impala (asynchronous, V-trace; "
        "the scale-out recipe), ppo, appo", choices=ALGOS
    )
    variant: str = flag("exact", "task rules: 'exact' (the spec) or 'seed' (the tutorial's)", choices=VARIANTS)
    action_mask: bool = flag(True, "expose the tools that can apply now and mask the rest out of the policy")
    hard_fraction: float = flag(
        0.8, "share of training contexts of memory stages (2 and the drills 3, 4, 10-13) drawn from their "
        "memory-required subset, and of expression draws that need memory",
        minimum=0, maximum=1,
    )
    expression_hard_fraction: Optional[float] = flag(
        None, "expression stages: share of multi-operator draws that need memory (a later term is a product), "
        "digits from --hard-min-digit; default: --hard-fraction (so stage 2 can keep 0.8 while the expressions "
        "take e.g. 0.5)", minimum=0, maximum=1,
    )
    hard_min_digit: int = flag(
        0, "expression stages: the smallest digit of the hard draws (--hard-fraction); 2 leaves out the 0s and 1s "
        "on which shortcut programs hit the target by coincidence", minimum=0, maximum=9,
    )
    shaping: float = flag(
        0.5, "scale of potential-based shaping (progress along the stage's general program); accuracy stays unshaped",
        minimum=0, maximum=1,
    )
    step_limit_terminates: bool = flag(
        False, "report running out of steps as termination (no bootstrap from V), not truncation",
        per_algo={"a2c": True},
    )
    sil_coeff: float = flag(1.0, "self-imitation loss coefficient (0: off)", minimum=0)
    sil_batch_episodes: int = flag(256, "successful episodes replayed per self-imitation update", minimum=1)
    sil_capacity: int = flag(
        20_000, "successful episodes kept for self-imitation (on --resume, the newest of the checkpoint's that fit)",
        minimum=1,
    )
    sil_priority_alpha: float = flag(
        0.6, "self-imitation replay in proportion to (R-V)+ ** alpha (0: uniform)", minimum=0
    )
    sil_join_chunks: bool = flag(
        False, "self-imitation: join the chunks of an episode cut by rollout fragments (off: replay only "
        "episodes that start and end inside one chunk)",
        # A2C needs it; IMPALA's defaults were verified without it (docs/algorithms.md)
        per_algo={"a2c": True, "ppo": True},
    )
    sil_program_check: int = flag(
        0, "self-imitation replays a success only if the tools it played also answer this many other contexts "
        "of its stage (and operator pattern) right, so a shortcut's coincidental wins are not imitated "
        "(0: off; the learner re-runs the tools on the exact machine's rules)", minimum=0,
    )
    # -- resources -------------------------------------------------------------------------
    resources: str = flag(
        "manual", "manual: runners, learners and GPUs as the flags say; auto: chosen from what the Ray cluster "
        "(or this machine) offers and printed at the start (runners on the spare CPUs, a learner per GPU, "
        "A2C/PPO's batch by the batch rule), replacing --num-env-runners, --num-learners and "
        "--num-gpus-per-learner", choices=("manual", "auto"),
    )
    num_env_runners: int = flag(
        1, "env runner processes sampling in parallel (0: sample on the driver)", minimum=0,
        # A2C waits for its sample every step: on one machine a remote runner only adds the
        # round trip (docs/benchmarks.md)
        per_algo={"a2c": 0},
    )
    num_envs_per_env_runner: int = flag(32, "tool machines stepped by each env runner", minimum=1, per_algo={"a2c": 64})
    num_cpus_per_env_runner: int = flag(1, "CPUs Ray reserves for each env runner", minimum=1)
    native_vector_env: bool = flag(
        False, "step each runner's tool machines as one numpy vector env (ToolMachineVectorEnv) instead of "
        "gymnasium's loop over single envs; same episodes for the same seeds"
    )
    overlap_sampling: bool = flag(
        False, "a2c: the remote env runners sample the next batch while the learner learns on this one (each "
        "batch then comes from the weights one update behind the learner's); no effect with --num-env-runners 0; "
        "shorter iterations, but stage 2 learned much slower or not at all (docs/research)",
    )
    fast_env_runner: bool = flag(
        False, "sample with BatchedEnvRunner (one batched torch forward per step, episode chunks built in "
        "bulk; same episodes as RLlib's runner for the same seeds); implies --native-vector-env",
        # A2C waits for its runner every step: stage 2 in much less wall time (docs/algorithms.md)
        per_algo={"a2c": True},
    )
    num_learners: int = flag(0, "learner processes (0: learn on the driver; >1: DDP)", minimum=0)
    num_gpus_per_learner: float = flag(
        0.0, "GPUs per learner (0: CPU); with --num-learners 0, a GPU for the learner on the driver", minimum=0
    )
    num_cpus: Optional[int] = flag(
        None, "logical CPUs for the embedded local Ray (default: enough for runners and learners)", minimum=1
    )
    address: Optional[str] = flag(None, "Ray cluster to join ('auto' or host:port); default: start a local Ray")
    env_runner_resource: Optional[str] = flag(
        None, "cluster placement: a custom resource each env runner takes one unit of, so runners land only on "
        "nodes declaring it (cluster.yaml: rollout_node)"
    )
    resource_wait_minutes: float = flag(
        5.0, "on a cluster: how long to wait for GPUs and custom resources (an autoscaler adding nodes) "
        "before failing with what is missing", minimum=0
    )
    learner_resource: Optional[str] = flag(
        None, "cluster placement: a custom resource each remote learner takes one unit of (cluster.yaml: "
        "learner_node); needs --num-learners >= 1"
    )
    # -- curriculum ----------------------------------------------------------------------------
    schedule: str = flag(
        "threshold",
        "curriculum: threshold (promote on sampled accuracy), fixed (a stage per iteration block), "
        "progress (a teacher samples stages by learning progress)",
        choices=SCHEDULES,
    )
    stage_path: str = flag(
        ",".join(map(str, SPEC_PATH)),
        f"threshold/progress schedules: the stages in training order; {_DRILL_EXAMPLE} adds the memory drills "
        "a-b*c (3) and a*b-c*d (4) before stage 2; 5-9 are the expression stages (1-2, 3, 4, 5, 6 operators); "
        "10-13 the drills a+b*c, a*b+c*d, a+b-c*d and a-b+c*d; "
        "e.g. 0,1,2,5,6,7 trains up to 4 operators",
    )
    promotion_accuracy: float = flag(
        0.95, "threshold schedule: accuracy that promotes the stage (sampled or greedy: --promote-on)",
        minimum=0, maximum=1, strict_min=True,
    )
    promote_on: str = flag(
        "sampled",
        "threshold schedule: what promotes the stage: its sampled accuracy over --accuracy-window episodes, or "
        "its greedy accuracy on fresh uniform episodes at an evaluation (every --eval-interval iterations; "
        "not biased by --pattern-focus or --hard-fraction)",
        choices=PROMOTE_ON,
    )
    accuracy_window: int = flag(500, "threshold schedule: episodes the sampled accuracy is measured over", minimum=1)
    replay_probability: float = flag(0.2, "probability of sampling an earlier stage once promoted", minimum=0, maximum=0.99)
    fixed_stages: str = flag(",".join(map(str, TUTORIAL_STAGES)), "fixed schedule: stage of each iteration block")
    iterations_per_stage_entry: int = flag(10, "fixed schedule: iterations per entry of --fixed-stages", minimum=1)
    progress_floor: float = flag(
        0.1, "progress schedule: share of episodes spread uniformly over the stages", minimum=0, maximum=1
    )
    progress_window: int = flag(8, "progress schedule: accuracy points per stage the slope is fitted over", minimum=2)
    progress_episodes: int = flag(64, "progress schedule: episodes of a stage per accuracy point", minimum=1)
    pattern_focus: float = flag(
        0.0, "expression stages: share of each operator count's episodes whose operator pattern (e.g. a*b-c) is "
        "drawn in proportion to its recent sampled error (0: all patterns equally often)", minimum=0, maximum=1,
    )
    pattern_window: int = flag(50, "expression stages: episodes of a pattern its recent error is averaged over", minimum=1)
    review: bool = flag(
        False, "threshold schedule: once the last stage of --stage-path passes its promotion test, train on "
        "every stage of the path (--review-focus) instead of the last one plus --replay-probability, so the "
        "earlier stages do not drift while the last is learned",
    )
    review_focus: float = flag(
        0.5, "--review: share of episodes drawn in proportion to each stage's recent sampled error (the rest "
        "spread evenly over the path)", minimum=0, maximum=1,
    )
    # -- optimisation ----------------------------------------------------------------------------
    lr: float = flag(2e-3, "learning rate (a2c, ppo: at the algorithm's default batch; see --lr-scaling)",
                     minimum=0, strict_min=True)
    lr_scaling: str = flag(
        "sqrt", "a2c, ppo: the learning rate for a batch bigger than the algorithm's default on 2 cores (a2c "
        "1,024, ppo 256 env steps, all learners together): 'sqrt' multiplies --lr by the square root of how many "
        "times bigger it is, at most 2, 'none' keeps --lr", choices=("sqrt", "none"),
    )
    entropy_coeff: float = flag(0.03, "entropy bonus coefficient", minimum=0)
    entropy_schedule: str = flag(
        "", "entropy coefficient by env steps sampled, STEPS:VALUE pairs interpolated linearly and held after "
        "the last (e.g. 0:0.05,300000:0.01); empty: --entropy-coeff throughout",
        per_algo={"a2c": "0:0.08,500000:0.02"},
    )
    stall_entropy: float = flag(
        0.0, "a2c: when the current stage's greedy accuracy has not beaten its best by 0.01 for "
        "--stall-evaluations evaluations, raise the entropy coefficient to this, decaying back to the schedule "
        "over --stall-decay-steps env steps (0: never)", minimum=0,
    )
    stall_evaluations: int = flag(10, "evaluations (--eval-interval apart) without a new best that make a stall", minimum=1)
    stall_decay_steps: int = flag(500_000, "env steps an entropy bump decays over; the next waits for its end", minimum=1)
    vf_loss_coeff: float = flag(0.5, "value loss coefficient", minimum=0)
    gae_lambda: float = flag(1.0, "a2c/ppo: GAE lambda (1.0: n-step returns bootstrapped from V)", minimum=0, maximum=1)
    standardize_advantages: bool = flag(True, "a2c: standardise each batch's advantages")
    num_epochs: int = flag(4, "ppo: passes over each batch (one minibatch each)", minimum=1)
    gamma: float = flag(0.99, "discount", minimum=0, maximum=1)
    train_batch_size_per_learner: Optional[int] = flag(
        None, "env steps per learner in each update (total batch: this x max(1, --num-learners))", minimum=1,
        default_text="impala, appo: 256; a2c, ppo: the batch rule, max(1, runners) x envs per runner x "
        "--rollout-fragment-length / max(1, learners), so each env's chunk keeps its length when runners, "
        "envs or learners are added (a2c: 64 x 16 = 1024 on the driver)",
    )
    rollout_fragment_length: int = flag(
        16, "env steps each env contributes: impala/appo to one sample() call; a2c/ppo to one training batch "
        "(the batch rule of --train-batch-size-per-learner)", minimum=1, per_algo={"ppo": 8},
    )
    hidden_size: int = flag(128, "GRU hidden size", minimum=1)
    context_every_step: bool = flag(
        False, "feed the context features to the GRU at every step, not only into its initial state"
    )
    context_encoder: str = flag(
        "concat", "how the module reads the context tokens: 'concat' (embeddings side by side, one weight per "
        "position), 'gru' (a GRU over the tokens: reads expressions of any length) or 'bigru' (the same in both "
        "directions: each token's read also knows what follows it)", choices=CONTEXT_ENCODERS,
    )
    context_attention: bool = flag(
        False, "with --context-encoder gru or bigru: each step also attends over the context GRU's per-token outputs"
    )
    attention_projections: bool = flag(
        False, "with --context-attention: score the attention through learned query and key maps of the GRU "
        "state and the context reads (off: their raw dot product)"
    )
    # -- stopping, evaluation, output ---------------------------------------------------------------
    target_accuracy: float = flag(0.99, "stop when greedy accuracy on every stage reaches this", minimum=0, maximum=1)
    max_minutes: float = flag(15.0, "wall-clock budget of the run (a resumed run counts the minutes it has already trained)", minimum=0, strict_min=True)
    max_iterations: int = flag(0, "iteration budget (0: none)", minimum=0)
    min_iteration_seconds: float = flag(
        1.0, "an iteration trains until this many seconds have passed; 0: one training step per iteration, "
        "which makes a synchronous algorithm's run (a2c, ppo) repeat exactly from its seed, whatever the load",
        minimum=0,
    )
    eval_interval: int = flag(5, "iterations between greedy evaluations (and checkpoints)", minimum=1)
    eval_episodes: int = flag(1000, "fresh episodes per stage in each greedy evaluation", minimum=1)
    keep_checkpoints: int = flag(
        2, "complete checkpoints kept in OUTPUT/checkpoints (the oldest are deleted after each save)", minimum=1
    )
    seed: int = flag(0, "seed for env runners, the module and evaluation", minimum=0)
    output: str = flag("runs/train", "directory for checkpoints and summary.json")

    # ---------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # Defaults measured per algorithm (docs/algorithms.md): A2C solves stage 2 reliably
        # with short chunks of many envs, a terminal step limit and a decaying entropy,
        # sampled by BatchedEnvRunner.
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and f.metadata.get("per_algo"):
                setattr(self, f.name, f.metadata["per_algo"].get(self.algo, f.metadata["base_default"]))
        if self.train_batch_size_per_learner is None:
            self.train_batch_size_per_learner = self.batch_rule() if self.algo in SYNCHRONOUS_ALGOS else 256

    def batch_rule(self) -> int:
        """A synchronous algorithm's batch per learner: every env of every runner (the driver's
        when there are none) contributes one chunk of ``rollout_fragment_length`` env steps,
        split over the learners. More runners or envs then mean a bigger batch, not shorter
        chunks (docs/algorithms.md, "The batch rule")."""
        envs = max(1, self.num_env_runners) * self.num_envs_per_env_runner
        return math.ceil(envs * self.rollout_fragment_length / max(1, self.num_learners))

    def learning_rate(self) -> float:
        """The learner's learning rate: ``--lr``, times ``sqrt(batch / default batch)`` (at most
        ``MAX_LR_FACTOR``) for a synchronous algorithm whose batch (all learners together) is
        bigger than its default one (``--lr-scaling sqrt``; docs/algorithms.md, "The batch rule")."""
        if self.algo not in SYNCHRONOUS_ALGOS or self.lr_scaling == "none":
            return self.lr
        default_batch = TrainConfig(algo=self.algo).train_batch_size_per_learner
        batch = self.train_batch_size_per_learner * max(1, self.num_learners)
        return self.lr * min(MAX_LR_FACTOR, math.sqrt(max(1.0, batch / default_batch)))

    def validate(self) -> TrainConfig:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            name = "--" + f.name.replace("_", "-")
            kind = hints[f.name]
            if value is None:
                if kind in (Optional[int], Optional[float], Optional[str]):
                    continue
                raise UsageError(f"{name} needs a value, got none")
            if kind in (int, Optional[int]) and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"{name} must be an integer, got {value!r}")
            if kind in (float, Optional[float]) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UsageError(f"{name} must be a number, got {value!r}")
            if kind is bool and not isinstance(value, bool):
                raise UsageError(f"{name} must be true or false, got {value!r}")
            if kind in (str, Optional[str]) and not isinstance(value, str):
                raise UsageError(f"{name} must be a string, got {value!r}")
            # nan passes every comparison below, inf every maximum-less one
            if hints[f.name] in (float, Optional[float]) and isinstance(value, (int, float)) and not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value}")
            if meta.get("choices") and value not in meta["choices"]:
                raise UsageError(f"{name} {value!r} is not one of {', '.join(meta['choices'])}")
            lo, hi = meta.get("minimum"), meta.get("maximum")
            if lo is not None and (value < lo or (meta.get("strict_min") and value == lo)):
                op = ">" if meta.get("strict_min") else ">="
                raise UsageError(f"{name} must be {op} {lo}, got {value}")
            if hi is not None and value > hi:
                raise UsageError(f"{name} must be <= {hi}, got {value}")
        self.fixed_stage_list()
        self.stage_path_list()
        self.entropy()
        self._check_output()
        if self.learner_resource and self.num_learners == 0:
            raise UsageError(
                f"--learner-resource {self.learner_resource!r} places remote learners, but --num-learners is 0 "
                "(the learner runs inside the driver); add --num-learners 1 or more"
            )
        for name in ("env_runner_resource", "learner_resource"):
            value = getattr(self, name)
            if value is not None and (not value or value in ("CPU", "GPU", "memory") or not value.replace("_", "").isalnum()):
                raise UsageError(
                    f"--{name.replace('_', '-')} {value!r} must name a custom resource (letters, digits, _), "
                    "e.g. rollout_node or learner_node; not CPU, GPU or memory"
                )
        if self.env_runner_resource and self.num_env_runners == 0:
            raise UsageError(
                f"--env-runner-resource {self.env_runner_resource!r} places remote env runners, but --num-env-runners "
                f"is 0 (--algo {self.algo} samples on the driver); add --num-env-runners 1 or more"
            )
        if self.promote_on == "greedy" and self.schedule != "threshold":
            raise UsageError(f"--promote-on greedy promotes on the threshold schedule; --schedule is {self.schedule!r}")
        if self.overlap_sampling and self.algo != "a2c":
            raise UsageError(f"--overlap-sampling overlaps a2c's remote env runners with its learner; --algo is "
                             f"{self.algo!r} (use a2c, or drop it)")
        if self.review and self.schedule != "threshold":
            raise UsageError(f"--review follows the threshold schedule's path; --schedule is {self.schedule!r}")
        if self.stall_entropy and self.algo != "a2c":
            raise UsageError(f"--stall-entropy raises a2c's entropy coefficient; --algo is {self.algo!r} (use a2c, or drop it)")
        if self.context_attention and self.context_encoder == "concat":
            raise UsageError("--context-attention attends over the context GRU's outputs; add --context-encoder gru (or bigru)")
        if self.attention_projections and not self.context_attention:
            raise UsageError("--attention-projections are the maps of --context-attention's scores; add --context-attention")
        if self.variant == "seed":
            from envs import SPEC_STAGES

            extra = sorted(set(self.trained_stages()) - set(SPEC_STAGES))
            if extra:
                raise UsageError(f"the seed variant has stages {list(SPEC_STAGES)} only; drop {extra} from the curriculum")
            if self.shaping:
                raise UsageError("--shaping applies to the exact variant only; the seed variant has its own rewards")
            if self.sil_program_check:
                raise UsageError("--sil-program-check re-runs tools on the exact machine; the seed variant has other rules")
        return self

    def _check_output(self) -> None:
        """--output must be a directory that exists or can be made: found out now, not
        after Ray has started and the algorithm is built."""
        out = pathlib.Path(self.output)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output {self.output!r} is a file; it must name a directory")
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"--output {self.output!r} cannot be written: {str(existing)!r} is not a writable directory")

    def fixed_stage_list(self) -> tuple[int, ...]:
        return _stage_list("--fixed-stages", self.fixed_stages, example="0,0,1,2")

    def stage_path_list(self) -> tuple[int, ...]:
        path = _stage_list("--stage-path", self.stage_path, example=_DRILL_EXAMPLE)
        if len(set(path)) != len(path):
            raise UsageError(
                f"--stage-path {self.stage_path!r} names a stage twice; each stage once, e.g. {_DRILL_EXAMPLE}"
            )
        return path

    def trained_stages(self) -> tuple[int, ...]:
        """The stages the curriculum trains: evaluated, and all must reach the target."""
        order = self.fixed_stage_list() if self.schedule == "fixed" else self.stage_path_list()
        return tuple(sorted(set(order)))

    def curriculum_settings(self) -> CurriculumSettings:
        return CurriculumSettings(
            schedule=self.schedule,
            path=self.stage_path_list(),
            promotion_accuracy=self.promotion_accuracy,
            promote_on=self.promote_on,
            window=self.accuracy_window,
            replay_probability=self.replay_probability,
            fixed_stages=self.fixed_stage_list(),
            iterations_per_stage_entry=self.iterations_per_stage_entry,
            progress_floor=self.progress_floor,
            progress_window=self.progress_window,
            progress_episodes=self.progress_episodes,
            pattern_focus=self.pattern_focus,
            pattern_window=self.pattern_window,
            stall_evaluations=self.stall_evaluations if self.stall_entropy else 0,
            stall_decay_steps=self.stall_decay_steps,
            review=self.review,
            review_focus=self.review_focus,
        )

    def entropy(self) -> float | list[list[float]]:
        """The entropy coefficient as RLlib takes it: a number, or ``[[env_steps, value], ...]``."""
        if not self.entropy_schedule:
            return self.entropy_coeff
        example = "e.g. 0:0.05,300000:0.01"
        points = []
        for pair in self.entropy_schedule.split(","):
            try:
                steps, value = pair.split(":")
                points.append([int(steps), float(value)])
            except ValueError:
                raise UsageError(
                    f"--entropy-schedule {self.entropy_schedule!r}: {pair!r} is not STEPS:VALUE; {example}"
                ) from None
        steps = [p[0] for p in points]
        if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
            raise UsageError(
                f"--entropy-schedule {self.entropy_schedule!r} must start at 0 env steps and increase; {example}"
            )
        bad = [v for _, v in points if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise UsageError(f"--entropy-schedule {self.entropy_schedule!r}: values must be finite and >= 0, got {bad[0]}")
        # one pair is held from the start: a constant (RLlib's scheduler wants two or more)
        return points[0][1] if len(points) == 1 else points

    def env_config(self) -> dict[str, Any]:
        """The training env's config."""
        config = {
            **self.eval_env_config(), "hard_fraction": self.hard_fraction,
            "step_limit_terminates": self.step_limit_terminates,
            **({"hard_min_digit": self.hard_min_digit} if self.hard_min_digit else {}),
            **({"expression_hard_fraction": self.expression_hard_fraction}
               if self.expression_hard_fraction is not None else {}),
        }
        if self.shaping:
            config.update(shaping=self.shaping, shaping_gamma=self.gamma)
        return config

    def eval_env_config(self) -> dict[str, Any]:
        """The env as evaluation sees it: uniform contexts, whatever training sampled."""
        return {"variant": self.variant, "action_mask": self.action_mask}

    def learner_config(self) -> dict[str, Any]:
        return {
            "sil_coeff": self.sil_coeff,
            "sil_batch_episodes": self.sil_batch_episodes,
            "sil_capacity": self.sil_capacity,
            "sil_priority_alpha": self.sil_priority_alpha,
            "sil_join_chunks": self.sil_join_chunks,
            "sil_program_check": self.sil_program_check,
            "entropy_bump": self.stall_entropy,
            "entropy_bump_steps": self.stall_decay_steps,
        }

    # -- command line, recipes, saved runs ------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, show_all: bool = False) -> None:
        """One option per field, in ``FLAG_GROUPS``' sections (``research`` hidden unless
        ``show_all``). No option has a default: parsing yields just the flags a user typed,
        which go on top of a recipe (``--config``) or a resumed run's saved config."""
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for group, names in FLAG_GROUPS.items():
            section = parser.add_argument_group(GROUP_TITLES[group])
            hidden = group == "research" and not show_all
            for name in names:
                meta, kind = fields[name].metadata, hints[name]
                opts: dict[str, Any] = {
                    "default": argparse.SUPPRESS,
                    "help": argparse.SUPPRESS if hidden else f"{meta['help']} (default: {_default_text(meta)})",
                }
                if kind is bool:
                    opts["action"] = argparse.BooleanOptionalAction
                else:
                    opts["type"] = {Optional[int]: int, Optional[float]: float, Optional[str]: str}.get(kind, kind)
                    opts["metavar"] = ("{" + ",".join(meta["choices"]) + "}" if meta.get("choices")
                                       else {int: "N", float: "X"}.get(opts["type"], "TEXT"))
                section.add_argument("--" + name.replace("_", "-"), dest=name, **opts)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """The flags typed (``add_arguments``) on top of the defaults."""
        names = cls.field_names()
        return cls(**{k: v for k, v in vars(ns).items() if k in names}).validate()

    @classmethod
    def from_saved(cls, saved: dict[str, Any], **overrides: Any) -> TrainConfig:
        """A config as a run saved it (``summary.json``, a checkpoint's run info), with
        ``overrides`` on top. Keys this version no longer has are dropped (an older run);
        not validated, so a caller that only reads it accepts a run from another version."""
        names = cls.field_names()
        return cls(**{**{k: v for k, v in saved.items() if k in names}, **overrides})

    def as_recipe(self) -> str:
        """Every setting as a recipe file (YAML, grouped as in ``--help``): what
        ``--print-config`` prints, and loadable again with ``--config``."""
        import yaml

        values = dataclasses.asdict(self)
        parts = []
        for group, names in FLAG_GROUPS.items():
            block = yaml.safe_dump({n: values[n] for n in names}, sort_keys=False, default_flow_style=False)
            parts.append(f"# {GROUP_TITLES[group]}\n{block}")
        return "\n".join(parts)


def _default_text(meta) -> str:
    shown = {True: "on", False: "off", "": "none", None: "none"}

    def text(value) -> str:
        return shown[value] if isinstance(value, (bool, type(None))) or value == "" else str(value)

    if meta.get("default_text"):
        return meta["default_text"].replace("%", "%%")
    if not meta.get("per_algo"):
        return text(meta["base_default"]).replace("%", "%%")
    by_value: dict[str, list[str]] = {}
    for algo in ALGOS:
        by_value.setdefault(text(meta["per_algo"].get(algo, meta["base_default"])), []).append(algo)
    return "; ".join(f"{', '.join(algos)}: {value}" for value, algos in by_value.items()).replace("%", "%%")


def _stage_list(name: str, text: str, *, example: str) -> tuple[int, ...]:
    stages = stages_in(text)
    if stages is None:
        raise UsageError(
            f"{name} {text!r} must be a comma-separated list of stages in 0..{NUM_STAGES - 1}, e.g. {example}"
        )
    return tuple(stages)
