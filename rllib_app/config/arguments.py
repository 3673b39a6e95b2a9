"""Argument types the commands share: each turns a typed string into a value or raises
the one-line error a user sees (argparse's ``ArgumentTypeError``, or ``UsageError``
for values checked outside argparse). Exit code 2 either way.
"""

from __future__ import annotations

import argparse
import os
import pathlib

from envs import NUM_STAGES
from envs.machine import MAX_OPERATORS


class UsageError(ValueError):
    """A bad value a user typed: reported as one line, exit code 2."""


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers >= 0 (a repeated seed would only repeat a run)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: give distinct integers >= 0, comma-separated (e.g. 0,1,2)")
    return seeds


def stages_in(text: str) -> list[int] | None:
    """The stages of a comma-separated list (``0,1,2``), or None when it is not one."""
    try:
        stages = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        return None
    return stages if stages and all(0 <= s < NUM_STAGES for s in stages) else None


def stage_list(text: str) -> list[int]:
    stages = stages_in(text)
    if stages is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of stages in 0..{NUM_STAGES - 1}"
        )
    return stages


def stage(text: str) -> int:
    if text.strip() not in {str(s) for s in range(NUM_STAGES)}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a stage; allowed: 0..{NUM_STAGES - 1}")
    return int(text)


def at_least(minimum: int, what: str):
    """An integer type for argparse: ``minimum`` or more, else ``'TEXT' is not WHAT``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


positive = at_least(1, "a positive integer")
#: Seeds: gymnasium refuses negative ones with a traceback.
seed = at_least(0, "a seed (an integer >= 0)")


def operators(text: str) -> int:
    if text.strip() not in {str(k) for k in range(1, MAX_OPERATORS + 1)}:
        raise argparse.ArgumentTypeError(f"{text!r} is not an operator count; allowed: 1..{MAX_OPERATORS}")
    return int(text)


def output_dir(path: str, flag: str = "--output") -> pathlib.Path:
    """A directory to write into: refused when it is a file (before anything runs)."""
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path!r} is a file; give a directory")
    return p


def writable_file(path: str, flag: str, suffix: str) -> pathlib.Path:
    """``path`` as a file we can create or replace, checked before any work is done."""
    p = pathlib.Path(path)
    if p.suffix.lower() != suffix:
        raise UsageError(f"{flag} {path!r} must name a {suffix} file")
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{flag} {path!r}: directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path!r}: {str(parent)!r} is not a directory")
    if p.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path!r} is not writable")
    return p
