"""Greedy evaluation and readable trajectories, on the RLModule alone (no Ray cluster).

Accuracy here is exact-answer accuracy: the fraction of fresh episodes whose
``ANS`` equals the stage's stated target, with greedy (argmax) actions. Mean
return is reported beside it, never instead of it.

Evaluated episodes as data: ``toolagent eval CHECKPOINT --episodes-out FILE.parquet``
writes one row per episode (``EPISODES_SCHEMA``), e.g. to find the contexts a policy
gets wrong::

    import pyarrow.parquet as pq
    df = pq.read_table("episodes.parquet").to_pandas()
    df[~df.correct].groupby("row").size()

Columns (in this order):

    row      string        the eval row: "2" = stage 2 on uniform contexts, "2m" = on
                           its memory-required contexts, "3op" = expressions of 3
                           operators (as ``toolagent eval`` reports)
    stage    int64         0-13
    context  list<int64>   the tokens the agent read, in order: digits 0-9 and, at an
                           expression stage (5-9), operators MUL=10, ADD=11, SUB=12
    target   int64         the stage's stated target for this context
    tools    list<string>  the tool tokens it took, in order (MUL ADD SUB STO RCL ANS)
    answer   int64, null   the value it submitted; null if it never said ANS
    correct  bool          answer == target
    return   float64       the episode's (possibly shaped) return
    length   int64         number of actions (len(tools))
    seed     int64         the env's reset seed: ``ToolMachineEnv({"variant": variant,
                           "hard_fraction": 1.0 if row ends in "m" else 0.0}).reset(
                           seed=seed, options={"stage": stage})`` replays this context
    variant  string        task rules, "exact" or "seed"

The file's schema metadata (key ``toolagent``) is JSON: the checkpoint, the episodes
per row, the evaluation seed and the env config. Files are written atomically (a
temporary file, then ``os.replace``): a reader never sees half of one.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs import ACTION_NAMES, MEMORY_STAGES, SPEC_STAGES
from envs.analysis import ProgramCheck
from envs.machine import OPERATOR_STAGE, needs_memory, pattern_text, program_text
from envs.oracle import compile_expression
from envs.tool_machine import CONTEXT_LEN, PAD_TOKEN, read_context
from envs.vector_tool_machine import ToolMachineVectorEnv
from rllib_app.config.arguments import UsageError
from rllib_app.outputs.checkpoints import (
    CheckpointError,
    read_run_info,
    resolve_checkpoint,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    from ray.rllib.core.rl_module.rl_module import RLModule

#: Seed offset so evaluation episodes are never the training stream's.
EVAL_SEED_OFFSET = 1_000_003
#: Report key of a memory stage's memory-required contexts (``"2m"``).
MEMORY_REQUIRED_SUFFIX = "m"
#: Report key of expressions with k operators (``"3op"``).
OPERATOR_SUFFIX = "op"

#: One row per evaluated episode; the module docstring says what each column means.
EPISODES_SCHEMA = pa.schema(
    [
        pa.field("row", pa.string(), nullable=False),
        pa.field("stage", pa.int64(), nullable=False),
        pa.field("context", pa.list_(pa.int64()), nullable=False),
        pa.field("target", pa.int64(), nullable=False),
        pa.field("tools", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.int64()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("return", pa.float64(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
    ]
)
#: The headers of a readable trajectory table (``explain``, ``report``).
TRAJECTORY_HEADERS = ("context", "target", "tools", "answer", "correct")


def load_module(path: str | pathlib.Path) -> tuple[RLModule, dict[str, Any]]:
    """The trained module (eval mode) and the run info saved beside it."""
    # torch and RLlib are imported where a module is loaded or run: reading or
    # writing an episodes file needs neither (explain --episodes answers in 0.5 s, not 4)
    from ray.rllib.core.rl_module.rl_module import RLModule

    root, module_dir = resolve_checkpoint(path)
    try:
        module = RLModule.from_checkpoint(module_dir)
    except Exception as exc:  # a damaged or foreign pickle: say which checkpoint, not a traceback
        raise CheckpointError(f"cannot load the module in {str(path)!r}: {type(exc).__name__}: {exc}") from None
    module.eval()
    return module, read_run_info(root)


@dataclass
class Episode:
    stage: int
    digits: tuple[int, ...]
    target: int
    actions: list[int]
    answered: bool
    answer: int
    correct: bool
    episode_return: float
    #: the env's reset seed (replays the context), the eval row ("2", "2m"), the task rules
    seed: int = 0
    label: str = ""
    variant: str = "exact"

    def record(self) -> dict[str, Any]:
        """One row of ``EPISODES_SCHEMA``."""
        return {
            "row": self.label or str(self.stage),
            "stage": self.stage,
            "context": list(self.digits),
            "target": self.target,
            "tools": [ACTION_NAMES[a] for a in self.actions],
            "answer": self.answer if self.answered else None,
            "correct": self.correct,
            "return": self.episode_return,
            "length": len(self.actions),
            "seed": self.seed,
            "variant": self.variant,
        }


def rollout(
    module: RLModule,
    stage: int,
    episodes: int,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
    greedy: bool = True,
    label: str | None = None,
    num_operators: int | None = None,
) -> list[Episode]:
    """Run ``episodes`` fresh episodes of ``stage`` in lockstep on one
    ``ToolMachineVectorEnv``, one batched forward pass per step. Episode ``i`` is
    ``ToolMachineEnv(env_config).reset(seed=seed + i, options={"stage": stage})``
    played out (the vector env is bit for bit those single envs); ``num_operators``
    (expression stages) fixes the operator count."""
    import torch
    from ray.rllib.core.columns import Columns

    env = ToolMachineVectorEnv(env_config, num_envs=episodes)
    options = {"stage": stage} if num_operators is None else {"stage": stage, "num_operators": num_operators}
    obs, _ = env.reset(seed=seed, options=options)
    shown = [tuple(int(t) for t in row if t != PAD_TOKEN) for row in obs[:, :CONTEXT_LEN]]
    state = {k: torch.as_tensor(np.asarray(v))[None].repeat(episodes, 1) for k, v in module.get_initial_state().items()}
    actions = np.zeros((env.max_steps, episodes), dtype=np.int64)
    returns = np.zeros(episodes)
    final = {key: np.zeros(episodes, dtype=np.int64) for key in ("target", "answered", "answer", "correct", "steps")}
    generator = torch.Generator().manual_seed(seed)
    active = np.ones(episodes, dtype=bool)
    t = 0
    while active.any():
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs)[:, None], Columns.STATE_IN: state})
        logits = out[Columns.ACTION_DIST_INPUTS][:, 0]
        if greedy:
            chosen = logits.argmax(-1)
        else:
            chosen = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        state = out[Columns.STATE_OUT]
        actions[t] = chosen.numpy()
        # an ended env autoresets on its next step; nothing of it is recorded after the end
        obs, reward, terminated, truncated, info = env.step(actions[t])
        returns[active] += reward[active]
        ended = (terminated | truncated) & active
        if ended.any():
            for key, value in final.items():
                value[ended] = info[key][ended]
        active &= ~ended
        t += 1
    env.close()
    return [
        Episode(
            stage=stage,
            digits=shown[i],
            target=int(final["target"][i]),
            actions=actions[: final["steps"][i], i].tolist(),
            answered=bool(final["answered"][i]),
            answer=int(final["answer"][i]),
            correct=bool(final["correct"][i]),
            episode_return=float(returns[i]),
            seed=seed + i,
            label=str(stage) if label is None else label,
            variant=env.variant,
        )
        for i in range(episodes)
    ]


def evaluate_rows(
    module: RLModule,
    stages: Sequence[int] = SPEC_STAGES,
    episodes: int = 1000,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, list[Episode]]:
    """``{row: episodes}``, greedy actions on fresh episodes: one row per stage
    (``"2"``: uniform contexts) and, for each memory stage, one more on its
    memory-required contexts only (``"2m"``), the honest measure of memory: no
    program without ``STO``/``RCL`` solves those."""
    rows = {}
    for stage in stages:
        keys = [(str(stage), 0.0, stage + 1)]
        if stage in MEMORY_STAGES:
            keys.append((f"{stage}{MEMORY_REQUIRED_SUFFIX}", 1.0, stage + 7))
        for key, hard_fraction, offset in keys:
            rows[key] = rollout(
                module, stage, episodes, env_config={**(env_config or {}), "hard_fraction": hard_fraction},
                seed=seed + EVAL_SEED_OFFSET * offset, label=key,
            )
    return rows


def operator_rows(
    module: RLModule,
    max_operators: int,
    episodes: int = 1000,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, list[Episode]]:
    """``{"1op": episodes, ...}``: greedy episodes of expressions with exactly k operators,
    k = 1 .. ``max_operators``, each at the expression stage that draws k."""
    return {
        f"{k}{OPERATOR_SUFFIX}": rollout(
            module, OPERATOR_STAGE[k], episodes, env_config=env_config, seed=seed + EVAL_SEED_OFFSET * (20 + k),
            label=f"{k}{OPERATOR_SUFFIX}", num_operators=k,
        )
        for k in range(1, max_operators + 1)
    }


def answered_by_a_program(episode: Episode, check: ProgramCheck) -> bool:
    """Right, and by tools that answer every context of its stage (and operator pattern)
    right: not a shortcut that happened to hit this target (``envs.analysis.ProgramCheck``)."""
    _, operators = read_context(episode.stage, episode.digits)
    return episode.correct and check(episode.stage, operators, episode.actions)


def accuracy_report(rows: dict[str, list[Episode]]) -> dict[str, dict[str, float | int]]:
    """``{row: {accuracy, mean_return, episodes}}`` for ``evaluate_rows``' episodes, and on
    the exact machine ``program_accuracy``: the share answered right by a program."""
    check = ProgramCheck(trials=64)
    report = {}
    for key, eps in rows.items():
        report[key] = {
            "accuracy": float(np.mean([e.correct for e in eps])),
            "mean_return": float(np.mean([e.episode_return for e in eps])),
            "episodes": len(eps),
        }
        if all(e.variant == "exact" for e in eps):
            report[key]["program_accuracy"] = float(np.mean([answered_by_a_program(e, check) for e in eps]))
    return report


def pattern_report(rows: dict[str, list[Episode]]) -> dict[str, list[dict[str, Any]]]:
    """``{row: [{pattern, needs_memory, accuracy, episodes, program, wrong_tools, wrong_count}, ...]}``
    for the rows of expression episodes, one entry per operator pattern seen (``"a + b*c"``),
    worst accuracy first: where a policy's errors sit, the oracle's program for the pattern,
    and the tools the policy played most often when wrong (None if never): a left fold, or
    a store one term early."""
    out = {}
    for key, eps in rows.items():
        groups: dict[tuple[int, ...], list[Episode]] = {}
        for e in eps:
            _, operators = read_context(e.stage, e.digits)
            if operators:
                groups.setdefault(tuple(operators), []).append(e)
        if groups:
            out[key] = sorted((_pattern_entry(ops, group) for ops, group in groups.items()),
                              key=lambda r: (r["accuracy"], r["pattern"]))
    return out


def _pattern_entry(operators: tuple[int, ...], episodes: list[Episode]) -> dict[str, Any]:
    wrong = Counter(program_text(e.actions) for e in episodes if not e.correct)
    tools, count = wrong.most_common(1)[0] if wrong else (None, 0)
    return {"pattern": pattern_text(operators), "needs_memory": needs_memory(operators),
            "accuracy": float(np.mean([e.correct for e in episodes])), "episodes": len(episodes),
            "program": program_text(compile_expression(operators)),
            "wrong_tools": tools, "wrong_count": count}


def greedy_accuracy(
    module: RLModule,
    stages: Sequence[int] = SPEC_STAGES,
    episodes: int = 1000,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """``{row: {accuracy, mean_return, episodes}}`` on fresh episodes, greedy actions
    (the rows of ``evaluate_rows``)."""
    return accuracy_report(evaluate_rows(module, stages, episodes, env_config=env_config, seed=seed))


# -- episodes as data ----------------------------------------------------------------------------
def write_episodes(path: str | pathlib.Path, rows: dict[str, list[Episode]], *, metadata: dict[str, Any]) -> int:
    """Write ``evaluate_rows``' episodes to ``path`` (Parquet, ``EPISODES_SCHEMA``),
    atomically; returns the number of rows written."""
    path = pathlib.Path(path)
    records = [e.record() for eps in rows.values() for e in eps]
    table = pa.Table.from_pylist(records, schema=EPISODES_SCHEMA.with_metadata({"toolagent": json.dumps(metadata)}))
    write_parquet_atomic(path, table)
    return len(records)


def read_episodes(path: str | pathlib.Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, metadata) of a file ``write_episodes`` wrote; ``UsageError`` for
    anything else, naming what is wrong."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError(f"--episodes {str(path)!r}: no such file")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError):
        raise UsageError(f"--episodes {str(path)!r} is not a Parquet file") from None
    missing = [name for name in EPISODES_SCHEMA.names if name not in table.column_names]
    if missing:
        raise UsageError(
            f"--episodes {str(path)!r} is not an episodes file (no column {', '.join(missing)}); "
            "write one with 'toolagent eval CHECKPOINT --episodes-out FILE.parquet'"
        )
    meta = (table.schema.metadata or {}).get(b"toolagent")
    return table.select(EPISODES_SCHEMA.names).to_pylist(), (json.loads(meta) if meta else {})


def readable(record: dict[str, Any]) -> dict[str, str]:
    """A trajectory (an ``EPISODES_SCHEMA`` row) as the text ``explain`` prints."""
    return {
        "context": " ".join(map(str, record["context"])),
        "target": str(record["target"]),
        "tools": " ".join(record["tools"]),
        "answer": "-" if record["answer"] is None else str(record["answer"]),
        "correct": "yes" if record["correct"] else "no",
    }


def trajectory_table(records: Sequence[dict[str, Any]], headers: Sequence[str] = TRAJECTORY_HEADERS) -> str:
    """Trajectories as aligned plain-text columns, a header line first."""
    rows = [readable(r) for r in records]
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers)]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
