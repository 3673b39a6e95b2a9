"""Greedy evaluation and readable trajectories, on the RLModule alone (no Ray cluster).

Accuracy here is exact-answer accuracy: the fraction of fresh episodes whose
``ANS`` equals the stage's stated target, with greedy (argmax) actions. Mean
return is reported beside it, never instead of it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from envs import ACTION_NAMES, MEMORY_STAGES, SPEC_STAGES, ToolMachineEnv
from rllib_app.checkpoints import read_run_info, resolve_checkpoint

#: Seed offset so evaluation episodes are never the training stream's.
EVAL_SEED_OFFSET = 1_000_003
#: Report key of a memory stage's memory-required contexts (``"2m"``).
MEMORY_REQUIRED_SUFFIX = "m"


def load_module(path: str | pathlib.Path) -> tuple[RLModule, dict[str, Any]]:
    """The trained module (eval mode) and the run info saved beside it."""
    root, module_dir = resolve_checkpoint(path)
    module = RLModule.from_checkpoint(module_dir)
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

    def row(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "context": " ".join(map(str, self.digits)),
            "target": self.target,
            "tools": " ".join(ACTION_NAMES[a] for a in self.actions),
            "answer": self.answer if self.answered else None,
            "correct": self.correct,
            "return": self.episode_return,
        }


@torch.no_grad()
def rollout(
    module: RLModule,
    stage: int,
    episodes: int,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
    greedy: bool = True,
) -> list[Episode]:
    """Run ``episodes`` fresh episodes of ``stage`` in lockstep, one batched
    forward pass per step."""
    envs = [ToolMachineEnv(env_config) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i, options={"stage": stage})[0] for i, env in enumerate(envs)])
    state = {k: torch.as_tensor(np.asarray(v))[None].repeat(episodes, 1) for k, v in module.get_initial_state().items()}
    actions: list[list[int]] = [[] for _ in envs]
    returns = np.zeros(episodes)
    finals: list[dict | None] = [None] * episodes
    generator = torch.Generator().manual_seed(seed)
    active = np.ones(episodes, dtype=bool)
    while active.any():
        out = module.forward_inference(
            {Columns.OBS: torch.as_tensor(obs)[:, None], Columns.STATE_IN: state}
        )
        logits = out[Columns.ACTION_DIST_INPUTS][:, 0]
        if greedy:
            chosen = logits.argmax(-1)
        else:
            chosen = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        state = out[Columns.STATE_OUT]
        for i in np.flatnonzero(active):
            a = int(chosen[i])
            obs[i], r, term, trunc, info = envs[i].step(a)
            actions[i].append(a)
            returns[i] += r
            if term or trunc:
                active[i] = False
                finals[i] = info
    return [
        Episode(
            stage=stage,
            digits=env.shown_digits,
            target=int(f["target"]),
            actions=acts,
            answered=bool(f["answered"]),
            answer=int(f["answer"]),
            correct=bool(f["correct"]),
            episode_return=float(ret),
        )
        for env, acts, ret, f in zip(envs, actions, returns, finals)
    ]


def greedy_accuracy(
    module: RLModule,
    stages: Sequence[int] = SPEC_STAGES,
    episodes: int = 1000,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """``{row: {accuracy, mean_return, episodes}}`` on fresh episodes, greedy actions.

    One row per stage (``"2"``: uniform contexts) and, for each memory stage, one
    more on its memory-required contexts only (``"2m"``), the honest measure of
    memory: no program without ``STO``/``RCL`` solves those.
    """
    report = {}
    for stage in stages:
        rows = [(str(stage), 0.0, stage + 1)]
        if stage in MEMORY_STAGES:
            rows.append((f"{stage}{MEMORY_REQUIRED_SUFFIX}", 1.0, stage + 7))
        for key, hard_fraction, offset in rows:
            eps = rollout(
                module, stage, episodes, env_config={**(env_config or {}), "hard_fraction": hard_fraction},
                seed=seed + EVAL_SEED_OFFSET * offset,
            )
            report[key] = {
                "accuracy": float(np.mean([e.correct for e in eps])),
                "mean_return": float(np.mean([e.episode_return for e in eps])),
                "episodes": len(eps),
            }
    return report
