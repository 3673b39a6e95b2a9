"""Run directories and checkpoints: written atomically, found from any path a user gives.

A ``toolagent train`` output directory looks like::

    OUTPUT/
      checkpoint -> checkpoints/iter_000040   (symlink to the latest complete one)
      checkpoints/iter_000035/ iter_000040/    (RLlib algorithm checkpoints + toolagent.json)
      summary.json

No Ray imports here: the CLI resolves paths before it loads anything heavy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

#: Where, inside an algorithm checkpoint, RLlib keeps the module.
MODULE_SUBDIR = pathlib.Path("learner_group", "learner", "rl_module", "default_policy")
#: Our sidecar with the env settings a checkpoint was trained with.
RUN_INFO_FILE = "toolagent.json"
KEEP_CHECKPOINTS = 2


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint."""


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(algo, train_config, output: pathlib.Path, iteration: int, progress: dict | None = None) -> pathlib.Path:
    """Save to ``checkpoints/iter_N`` via a temporary directory, then point the
    ``checkpoint`` symlink at it: a crash mid-save never leaves a half-written
    checkpoint that looks valid."""
    store = output / "checkpoints"
    store.mkdir(parents=True, exist_ok=True)
    final = store / f"iter_{iteration:06d}"
    tmp = store / f".tmp-iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    write_json_atomic(
        tmp / RUN_INFO_FILE,
        {
            "env_config": train_config.eval_env_config(),
            "train_config": dataclasses.asdict(train_config),
            # what a resumed run continues from (RLlib restores iteration and env steps itself)
            "progress": {"iteration": iteration, **(progress or {})},
        },
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    link, tmp_link = output / "checkpoint", output / ".checkpoint.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(final.relative_to(output))
    os.replace(tmp_link, link)
    for old in sorted(store.glob("iter_*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final.resolve()


def resolve_checkpoint(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(checkpoint dir, module dir) for an algorithm checkpoint or a
    ``toolagent train`` output directory (whose ``checkpoint`` is the latest)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    for root in (p, p / "checkpoint"):
        if (root / MODULE_SUBDIR / "class_and_ctor_args.pkl").is_file():
            # absolute: RLlib hands the path to pyarrow, which wants a URI or an absolute path
            root = root.resolve()
            return root, root / MODULE_SUBDIR
    raise CheckpointError(
        f"{str(path)!r} is not a toolagent checkpoint (no {MODULE_SUBDIR} inside); pass a "
        "directory written by 'toolagent train', e.g. runs/train or runs/train/checkpoint"
    )


def read_run_info(checkpoint_dir: pathlib.Path) -> dict[str, Any]:
    info_file = checkpoint_dir / RUN_INFO_FILE
    return json.loads(info_file.read_text()) if info_file.is_file() else {}
