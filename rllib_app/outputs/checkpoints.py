"""Run directories and checkpoints: written atomically, found from any path a user gives.

A ``toolagent train`` output directory looks like::

    OUTPUT/
      checkpoint -> checkpoints/iter_000040   (symlink to the latest complete one)
      checkpoints/iter_000035/ iter_000040/    (RLlib algorithm checkpoints + toolagent.json;
                                               the last --keep-checkpoints of them)
      checkpoints/best/                        (a copy of the evaluated one with the best
                                               greedy accuracy: worst row, then mean)
      summary.json

A save is written to ``checkpoints/.tmp-iter_N``, renamed to ``iter_N`` when complete,
and only then does the ``checkpoint`` symlink move (``os.replace``, atomic). A process
killed mid-save leaves the previous checkpoint in place and a ``.tmp-*`` directory that
nothing treats as a checkpoint (``resolve_checkpoint`` refuses it) and that the next
save deletes.

No Ray imports here: the CLI resolves paths before it loads anything heavy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
from typing import Any

#: The version of every JSON and Parquet file's layout (docs/outputs.md): raised when a
#: key or column changes meaning or goes away, not when one is added.
SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = "schema_version"
#: Where, inside an algorithm checkpoint, RLlib keeps the module.
MODULE_SUBDIR = pathlib.Path("learner_group", "learner", "rl_module", "default_policy")
#: RLlib's file there with the module's class and constructor arguments.
MODULE_CTOR_FILE = "class_and_ctor_args.pkl"
#: Our sidecar with the env settings a checkpoint was trained with.
RUN_INFO_FILE = "toolagent.json"
#: Default of ``--keep-checkpoints``: complete checkpoints kept under ``checkpoints/``.
KEEP_CHECKPOINTS = 2
#: Prefix of a checkpoint still being written (``checkpoints/.tmp-iter_N``).
TMP_PREFIX = ".tmp-"
#: Test hook (tests/test_faults.py), inert unless set: ``TOOLAGENT_TEST_KILL_IN_SAVE=N``
#: makes the process SIGKILL itself in its N-th ``save_checkpoint``, after the temporary
#: directory is written and before it is renamed: a crash at the worst moment, on cue.
KILL_IN_SAVE_ENV = "TOOLAGENT_TEST_KILL_IN_SAVE"
_saves_started = 0


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint."""


def write_atomic(path: pathlib.Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``:
    readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_parquet_atomic(path: pathlib.Path, table) -> None:
    """``table`` as Parquet, with ``schema_version`` in its file metadata (docs/outputs.md)."""
    import pyarrow.parquet as pq

    metadata = {**(table.schema.metadata or {}), SCHEMA_VERSION_KEY.encode(): str(SCHEMA_VERSION).encode()}
    write_atomic(path, lambda tmp: pq.write_table(table.replace_schema_metadata(metadata), tmp))


def versioned(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``schema_version`` first: what every JSON record we write carries."""
    return {SCHEMA_VERSION_KEY: SCHEMA_VERSION, **data}


def write_json_atomic(path: pathlib.Path, data: dict[str, Any]) -> None:
    """``data`` as JSON with ``schema_version`` (docs/outputs.md)."""
    write_text_atomic(path, json.dumps(versioned(data), indent=2) + "\n")


def _iteration_of(checkpoint: pathlib.Path) -> int | None:
    """N for ``iter_N``, None for anything else."""
    digits = checkpoint.name.removeprefix("iter_")
    return int(digits) if checkpoint.name.startswith("iter_") and digits.isdigit() else None


def save_checkpoint(
    algo, train_config, output: pathlib.Path, iteration: int, progress: dict | None = None,
    keep: int = KEEP_CHECKPOINTS,
) -> pathlib.Path:
    """Save to ``checkpoints/iter_N`` via a temporary directory, then point the
    ``checkpoint`` symlink at it: a crash mid-save never leaves a half-written
    checkpoint that looks valid. Keeps the ``keep`` latest checkpoints up to this one."""
    global _saves_started
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    _saves_started += 1
    store = output / "checkpoints"
    store.mkdir(parents=True, exist_ok=True)
    # what an earlier save left when its process was killed mid-write
    for stale in store.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = store / f"iter_{iteration:06d}"
    tmp = store / f"{TMP_PREFIX}iter_{iteration:06d}"
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
    if os.environ.get(KILL_IN_SAVE_ENV) == str(_saves_started):
        os.kill(os.getpid(), signal.SIGKILL)  # the test hook above
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    link, tmp_link = output / "checkpoint", output / ".checkpoint.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(final.relative_to(output))
    os.replace(tmp_link, link)
    # Keep this one and the keep-1 latest before it (by iteration, so never the one the
    # symlink now points at). Later iterations than this one, left when a run is resumed
    # from an earlier checkpoint, stay until this run overwrites them.
    earlier = sorted((n, p) for p in store.glob("iter_*") if (n := _iteration_of(p)) is not None and n < iteration)
    for _, old in earlier[: max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final.resolve()


#: ``checkpoints/best``: a copy of the evaluated checkpoint with the best greedy accuracy.
BEST_DIR = "best"


def greedy_score(greedy: dict[str, float]) -> tuple[float, float]:
    """How ``keep_best`` ranks greedy accuracies: the worst row first, then the mean."""
    return min(greedy.values()), sum(greedy.values()) / len(greedy)


def best_info(output: pathlib.Path) -> dict[str, Any] | None:
    """``{iteration, accuracy}`` of the run's ``checkpoints/best`` (None if it has none)."""
    best = output / "checkpoints" / BEST_DIR
    progress = read_run_info(best).get("progress", {}) if best.is_dir() else {}
    if not isinstance(progress.get("greedy"), dict):
        return None
    return {"iteration": progress.get("iteration"), "accuracy": progress["greedy"]}


def discard_best(output: pathlib.Path) -> None:
    shutil.rmtree(output / "checkpoints" / BEST_DIR, ignore_errors=True)


def keep_best(output: pathlib.Path, checkpoint: pathlib.Path, greedy: dict[str, float]) -> bool:
    """Copy ``checkpoint`` (evaluated at ``greedy``: {row: accuracy}) to ``checkpoints/best``
    if it ranks above the best so far (``greedy_score``, over the same rows; its
    ``toolagent.json`` keeps its ``greedy``). Returns whether it did. Written beside it and
    renamed into place, so ``best`` is always a complete checkpoint."""
    store = output / "checkpoints"
    best = store / BEST_DIR
    old = (best_info(output) or {}).get("accuracy")
    if old is not None and old.keys() == greedy.keys() and greedy_score(old) >= greedy_score(greedy):
        return False
    tmp, old_best = store / f"{TMP_PREFIX}{BEST_DIR}", store / f"{TMP_PREFIX}old-{BEST_DIR}"
    for stale in (tmp, old_best):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, symlinks=True)
    if best.exists():
        os.replace(best, old_best)  # a directory cannot be renamed over a non-empty one
    os.replace(tmp, best)
    shutil.rmtree(old_best, ignore_errors=True)
    return True


def resolve_checkpoint(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(checkpoint dir, module dir) for an algorithm checkpoint or a
    ``toolagent train`` output directory (whose ``checkpoint`` is the latest)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if p.resolve().name.startswith(TMP_PREFIX):
        raise CheckpointError(
            f"{str(path)!r} is an unfinished checkpoint (its save was interrupted); pass the run directory "
            "or its 'checkpoint' link, which point at the latest complete one"
        )
    for root in (p, p / "checkpoint"):
        if (root / MODULE_SUBDIR / MODULE_CTOR_FILE).is_file():
            # absolute: RLlib hands the path to pyarrow, which wants a URI or an absolute path
            root = root.resolve()
            return root, root / MODULE_SUBDIR
    raise CheckpointError(
        f"{str(path)!r} is not a toolagent checkpoint (no {MODULE_SUBDIR} inside); pass a "
        "directory written by 'toolagent train', e.g. runs/train or runs/train/checkpoint"
    )


def saved_stage_rows(checkpoint: pathlib.Path) -> list[int] | None:
    """The ``stage_embedding_rows`` (one per stage the module reads) of the module saved in
    ``checkpoint``, read from RLlib's constructor arguments; None if they cannot be read."""
    import pickle

    try:
        with open(pathlib.Path(checkpoint) / MODULE_SUBDIR / MODULE_CTOR_FILE, "rb") as f:
            _, kwargs = pickle.load(f)["ctor_args_and_kwargs"]
        return [int(r) for r in kwargs["model_config"]["stage_embedding_rows"]]
    except Exception:  # not there, or not ours: the restore itself will say what is wrong
        return None


def read_run_info(checkpoint_dir: pathlib.Path) -> dict[str, Any]:
    """The checkpoint's ``toolagent.json`` ({} if it has none); ``CheckpointError`` if damaged."""
    info_file = checkpoint_dir / RUN_INFO_FILE
    if not info_file.is_file():
        return {}
    try:
        info = json.loads(info_file.read_text())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{str(info_file)!r} is damaged, not the JSON 'toolagent train' wrote ({err})") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k, {}), dict) for k in ("env_config", "train_config", "progress")):
        raise CheckpointError(f"{str(info_file)!r} is damaged: not the JSON object 'toolagent train' wrote")
    return info
