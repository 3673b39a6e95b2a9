"""``toolagent ablate``: lever flags, which levers run, and the table it writes."""

import pytest

from rllib_app.config.train_config import TrainConfig
from rllib_app.experiments.ablate import LEVERS, ablation_table, active_levers, lever_flags


def test_lever_flags_are_train_flags():
    assert lever_flags({"action_mask": False}) == ["--no-action-mask"]
    assert lever_flags({"context_every_step": True}) == ["--context-every-step"]
    assert lever_flags({"hard_fraction": 0.0, "stage_path": "0,1,2"}) == [
        "--hard-fraction", "0.0", "--stage-path", "0,1,2",
    ]
    for name, overrides in LEVERS.items():
        for flag in lever_flags(overrides):
            assert not flag.startswith("--") or flag.lstrip("-").removeprefix("no-").replace("-", "_") in TrainConfig.__dataclass_fields__, name


def test_levers_already_off_in_the_base_config_are_skipped():
    base = TrainConfig(sil_coeff=0.0, stage_path="0,1,2")
    assert active_levers(base, ["none", "sil", "mask", "drills"]) == ["none", "mask"]


def _record(lever, seed, solved, s2, s2m, steps, wall):
    summary = {"target_reached": solved, "accuracy": {"0": 1.0, "2": s2, "2m": s2m}, "env_steps": steps, "wall_seconds": wall}
    return {"lever": lever, "seed": seed, "returncode": 0, "summary": summary}


def test_table_reports_mean_spread_and_steps_to_solve_over_seeds():
    records = [
        _record("none", 0, True, 0.98, 1.0, 400_000, 200),
        _record("none", 1, True, 1.0, 0.998, 600_000, 300),
        _record("sil", 0, False, 0.3, 0.01, 1_500_000, 900),
        {"lever": "mask", "seed": 0, "returncode": 1, "summary": None},
    ]
    table = ablation_table(records, ["none", "sil", "mask", "hard"]).splitlines()
    assert len(table) == 5  # header, rule, three levers that ran
    none, sil, mask = table[2:]
    # mean and sample sd of 0.98 and 1.0; steps to solve averaged over solved runs only
    assert none == "| none | 2 | 2/2 | 0.990 ± 0.014 | 0.999 ± 0.001 | 500k (400-600k) | 250 |"
    assert sil == "| sil | 1 | 0/1 | 0.300 | 0.010 | — | 900 |"
    assert "every run failed" in mask


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--levers", "mask,wings"], "unknown lever(s) ['wings']"),
        (["--seeds", "0,-1"], "--seeds '0,-1': give distinct integers >= 0, comma-separated"),
        (["--hidden-size", "0"], "--hidden-size must be >= 1, got 0"),
        (["--wings", "2"], "unrecognised flag(s) --wings 2"),
    ],
)
def test_ablate_usage_errors(args, expected):
    from conftest import run_cli

    proc = run_cli("ablate", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
