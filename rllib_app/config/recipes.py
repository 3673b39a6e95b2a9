"""Recipes: ``TrainConfig`` settings as YAML files, shipped in ``recipes/`` or written by a user.

A recipe maps ``toolagent train`` flags without their dashes (``num_env_runners: 4``;
``num-env-runners`` is read the same) to values; its first comment lines say what it is
for (``toolagent recipes`` lists them). ``toolagent train --config NAME_OR_FILE`` starts
from the defaults, applies the recipe, then the flags typed after it;
``--print-config`` prints the result as a recipe. docs/cli.md has the format.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
from typing import Any, Optional, get_type_hints

import yaml

from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import TrainConfig

RECIPES_DIR = pathlib.Path(__file__).parent / "recipes"
#: What ``toolagent train`` runs with no ``--config``: TrainConfig's own defaults are this recipe.
DEFAULT_RECIPE = "digits-a2c"


def shipped() -> dict[str, pathlib.Path]:
    """The recipes in the package, by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: pathlib.Path) -> str:
    """A recipe's first comment line: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _source(name_or_path: str) -> pathlib.Path:
    path = pathlib.Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise UsageError(f"--config {name_or_path!r}: no such recipe file")
        return path
    recipes = shipped()
    if name_or_path not in recipes:
        raise UsageError(f"--config {name_or_path!r} is neither a file nor a shipped recipe; shipped: "
                         f"{', '.join(recipes)} (toolagent recipes)")
    return recipes[name_or_path]


def load(name_or_path: str) -> dict[str, Any]:
    """The settings of a recipe (a shipped name or a YAML file), keys checked; values are
    checked with the whole config (``merge``)."""
    path = _source(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        reason = re.sub(r"\s+", " ", str(err)).strip()
        raise UsageError(f"--config {name_or_path!r}: cannot read it as YAML ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {name_or_path!r}: a recipe maps settings to values (key: value lines), "
                         f"got a {type(data).__name__}")
    names = TrainConfig.field_names()
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"--config {name_or_path!r}: unknown key {key!r}{hint} (the keys are the "
                             "'toolagent train --help-all' flags without their dashes)")
        settings[name] = _as_field_type(name, value)
    return settings


def _as_field_type(name: str, value: Any) -> Any:
    """YAML's reading where it differs from the flag's: ``stage_path: 2`` is a string,
    ``lr: 3e-4`` and ``lr: 1`` are floats (YAML 1.1 reads the first as a string)."""
    kind = get_type_hints(TrainConfig)[name]
    if kind in (str, Optional[str]) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (float, Optional[float]) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (float, Optional[float]) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # validate() names it
    return value


def merge(recipe: dict[str, Any], typed: dict[str, Any], *, source: str | None = None) -> TrainConfig:
    """The defaults, then ``recipe``, then the flags ``typed``; validated. A bad value that
    came from the recipe is reported with the recipe's name and key."""
    cfg = TrainConfig(**{**recipe, **typed})
    try:
        return cfg.validate()
    except UsageError as err:
        flag = str(err).split(" ", 1)[0]
        key = flag.removeprefix("--").replace("-", "_")
        if source and key in recipe and key not in typed:
            raise UsageError(f"{err} (from --config {source!r}, key {key})") from None
        raise


def print_config(cfg: TrainConfig) -> str:
    """``--print-config``: the resolved settings, as a recipe file."""
    return f"# toolagent train --print-config: every setting; save it and pass it to --config\n{cfg.as_recipe()}"




def from_flags(argv: list[str], command: str) -> TrainConfig:
    """The ``toolagent train`` flags (``--config`` included) another command passes on
    (``ablate``, ``tune``), as a validated config."""
    parser = argparse.ArgumentParser(prog=f"toolagent {command}", add_help=False, allow_abbrev=False,
                                     exit_on_error=False)
    parser.add_argument("--config", default=None)
    TrainConfig.add_arguments(parser, show_all=True)
    try:
        ns, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise UsageError(str(err)) from None
    if unknown:
        raise UsageError(f"unrecognised flag(s) {' '.join(unknown)}; see 'toolagent {command} --help' and "
                         "'toolagent train --help-all'")
    typed = {k: v for k, v in vars(ns).items() if k != "config"}
    return merge(load(ns.config) if ns.config else {}, typed, source=ns.config)
