"""Recipes (``--config``), ``--print-config``, ``toolagent recipes`` and the grouped help."""

import dataclasses

import pytest
import yaml

from conftest import run_cli
from rllib_app.cli.main import main, outcome_table
from rllib_app.config import recipes
from rllib_app.config.arguments import UsageError
from rllib_app.config.train_config import FLAG_GROUPS, TrainConfig


def test_recipes_lists_every_shipped_recipe_with_what_it_is_for(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == list(recipes.shipped())
    assert {"digits-a2c", "digits-impala", "expressions", "cluster-impala"} <= set(names)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # a description on every line
    assert "(the default)" in lines[names.index(recipes.DEFAULT_RECIPE)]


@pytest.mark.parametrize("name", list(recipes.shipped()))
def test_print_config_of_each_shipped_recipe_loads_back_as_the_same_config(name, tmp_path, capsys):
    assert main(["train", "--config", name, "--print-config"]) == 0
    printed = capsys.readouterr().out
    saved = tmp_path / "resolved.yaml"
    saved.write_text(printed)
    assert main(["train", "--config", str(saved), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    values = yaml.safe_load(printed)
    assert set(values) == TrainConfig.field_names()
    for key, value in recipes.load(name).items():
        assert values[key] == value, key


def test_the_shipped_recipes_say_what_the_issue_asks():
    impala, a2c = recipes.load("digits-impala"), recipes.load("digits-a2c")
    assert (a2c["algo"], impala["algo"]) == ("a2c", "impala")
    assert recipes.load("expressions")["stage_path"] == "5,6,7,0,1,2"
    cluster = recipes.load("cluster-impala")
    assert cluster["address"] == "auto" and cluster["env_runner_resource"] == "rollout_node"


def test_the_defaults_are_the_default_recipe():
    from_recipe = recipes.merge(recipes.load(recipes.DEFAULT_RECIPE), {})
    assert dataclasses.replace(from_recipe, output=TrainConfig().output) == TrainConfig()


def test_flags_typed_override_the_recipe(capsys):
    assert main(["train", "--config", "digits-impala", "--seed", "3", "--no-action-mask", "--print-config"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert (values["algo"], values["seed"], values["action_mask"]) == ("impala", 3, False)
    # IMPALA's own defaults, not A2C's, where the recipe leaves them to the algorithm
    assert values["num_envs_per_env_runner"] == 32 and values["fast_env_runner"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("algo: a2c\nnum_env_runner: 2\n", "unknown key 'num_env_runner'; did you mean 'num_env_runners'?"),
        ("lr: -1\n", "--lr must be > 0, got -1.0 (from --config"),
        ("lr: fast\n", "--lr must be a number, got 'fast'"),
        ("action_mask: 3\n", "--action-mask must be true or false, got 3"),
        ("algo: a3c\n", "--algo 'a3c' is not one of a2c, impala, ppo, appo"),
        ("- algo\n", "a recipe maps settings to values"),
        ("algo: [a2c\n", "cannot read it as YAML"),
    ],
)
def test_a_bad_recipe_is_one_line_and_exit_2(text, expected, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    proc = run_cli("train", "--config", str(recipe), "--print-config", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_an_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(UsageError, match="neither a file nor a shipped recipe; shipped: cluster-impala, digits-a2c"):
        recipes.load("digits")


def test_yaml_readings_become_the_flag_types(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 3e-4\nstage_path: 2\nnum-env-runners: 2\n")
    assert recipes.load(str(recipe)) == {"lr": 3e-4, "stage_path": "2", "num_env_runners": 2}


def test_no_abbreviations():
    from rllib_app.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert not parser.allow_abbrev and not any(p.allow_abbrev for p in commands.values())
    proc = run_cli("train", "--stage", "2", "--print-config", timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --stage 2" in proc.stderr


def test_help_shows_the_everyday_flags_in_groups_and_help_all_the_research_ones(capsys):
    grouped = [name for names in FLAG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(TrainConfig.field_names())  # each field in exactly one group
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    everyday = capsys.readouterr().out
    assert main(["train", "--help-all"]) == 0
    everything = capsys.readouterr().out
    for title in ("task and curriculum:", "algorithm and model:", "resources (Ray):", "run: budget"):
        assert title in everyday
    def options(text: str) -> set[str]:
        return {line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  --")}

    research = {"--" + name.replace("_", "-") for name in FLAG_GROUPS["research"]}
    assert not research & options(everyday) and research <= options(everything)
    assert "(default: on)" not in everyday.split("--num-env-runners")[1].split("\n")[1]
    assert "--num-env-runners N" in everyday and "a2c: 0; impala, ppo, appo: 1" in " ".join(everyday.split())


def test_the_outcome_table_says_how_the_run_ended():
    summary = {"target_reached": True, "stopped_by": None, "algo": "a2c", "wall_seconds": 31.2,
               "env_steps": 169_000, "iterations": 165, "accuracy": {"0": 1.0, "2m": 0.995},
               "mean_return": {"0": 0.9, "2m": 0.8}, "checkpoint": "runs/x/checkpoints/iter_165",
               "best_checkpoint": None, "config": {"target_accuracy": 0.99}}
    import pathlib

    text = outcome_table(summary, pathlib.Path("runs/x"))
    assert text.splitlines()[0] == "a2c: target reached (greedy accuracy >= 0.99 on every row): 31.2 s, 169,000 env steps, 165 iterations"
    assert "  2m       0.995       0.800" in text and "runs/x/summary.json" in text
