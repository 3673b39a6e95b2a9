"""Bad input: one clear line naming the value and what is allowed, exit code 2."""

import pytest

from conftest import run_cli, train_in_process


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--algo", "a3c"], "--algo 'a3c' is not one of a2c, impala, ppo, appo"),
        (["train", "--schedule", "sometimes"], "--schedule 'sometimes' is not one of threshold, fixed"),
        (["train", "--variant", "tutorial"], "--variant 'tutorial' is not one of exact, seed"),
        (["train", "--num-env-runners", "-1"], "--num-env-runners must be >= 0, got -1"),
        (["train", "--num-envs-per-env-runner", "0"], "--num-envs-per-env-runner must be >= 1, got 0"),
        (["train", "--num-learners", "-2"], "--num-learners must be >= 0, got -2"),
        (["train", "--target-accuracy", "1.5"], "--target-accuracy must be <= 1, got 1.5"),
        (["train", "--fixed-stages", "0,1,14"], "--fixed-stages '0,1,14' must be a comma-separated list of stages in 0..13"),
        (["train", "--stage-path", "0,1,1,2"], "--stage-path '0,1,1,2' names a stage twice"),
        (["train", "--stage-path", "0,x"], "--stage-path '0,x' must be a comma-separated list of stages in 0..13"),
        (["train", "--variant", "seed", "--stage-path", "0,1,3,2"], "the seed variant has stages [0, 1, 2] only; drop [3]"),
        (["train", "--variant", "seed", "--shaping", "0.5"], "--shaping applies to the exact variant only"),
        (["train", "--variant", "seed", "--shaping", "0", "--sil-program-check", "64"],
         "--sil-program-check re-runs tools on the exact machine"),
        (["train", "--sil-program-check", "-1"], "--sil-program-check must be >= 0, got -1"),
        (["train", "--context-encoder", "gru", "--attention-projections"],
         "--attention-projections are the maps of --context-attention's scores; add --context-attention"),
        (["train", "--promote-on", "best"], "--promote-on 'best' is not one of sampled, greedy"),
        (["train", "--schedule", "progress", "--promote-on", "greedy"],
         "--promote-on greedy promotes on the threshold schedule; --schedule is 'progress'"),
        (["train", "--num-env-runners", "two"], "invalid int value: 'two'"),
        (["eval", "/nonexistent/run"], "checkpoint '/nonexistent/run' does not exist"),
        (["eval", "tests"], "'tests' is not a toolagent checkpoint"),
        (["eval", "tests", "--stages", "0,14"], "'0,14' is not a comma-separated list of stages in 0..13"),
        (["explain", "tests", "--stage", "14"], "'14' is not a stage; allowed: 0..13"),
        (["eval", "tests", "--max-operators", "0"], "'0' is not an operator count; allowed: 1..6"),
        (["train", "--context-attention"], "--context-attention attends over the context GRU's outputs; add --context-encoder gru"),
        (["train", "--algo", "impala", "--stall-entropy", "0.08"], "--stall-entropy raises a2c's entropy coefficient; --algo is 'impala'"),
        (["train", "--review", "--schedule", "progress"], "--review follows the threshold schedule's path; --schedule is 'progress'"),
        (["train", "--review-focus", "1.5"], "--review-focus must be <= 1, got 1.5"),
        (["train", "--context-encoder", "mean"], "--context-encoder 'mean' is not one of concat, gru"),
        (["explain", "tests", "-n", "-3"], "'-3' is not a positive integer"),
        (["eval", "tests", "--seed", "-5"], "'-5' is not a seed (an integer >= 0)"),
        (["explain", "tests", "--seed", "-1"], "'-1' is not a seed (an integer >= 0)"),
        (["tune", "--output", "pyproject.toml"], "--output 'pyproject.toml' is a file; give a directory"),
        (["ablate", "--output", "pyproject.toml"], "--output 'pyproject.toml' is a file; give a directory"),
    ],
)
def test_usage_errors(args, expected):
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(("toolagent", "usage")) or "error:" in proc.stderr


def test_help_lists_every_train_flag_with_its_default():
    proc = run_cli("train", "--help", timeout=120)
    assert proc.returncode == 0
    for flag in ("--algo", "--num-env-runners", "--num-envs-per-env-runner", "--num-learners",
                 "--num-gpus-per-learner", "--schedule", "--target-accuracy", "--max-minutes",
                 "--seed", "--output", "--address"):
        assert flag in proc.stdout
    assert "(default: a2c)" in proc.stdout


def test_asking_for_gpus_on_a_machine_without_fails_at_once(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    proc = run_cli("train", "--num-gpus-per-learner", "1", "--num-learners", "2",
                   "--output", str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "this machine (an embedded local Ray) cannot host this run: it needs GPU 2 (has 0)" in proc.stderr
    assert "--num-gpus-per-learner 0 learns on CPU" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "summary.json").exists()


def test_placement_resources_a_local_ray_lacks_fail_at_once(tmp_path):
    proc = run_cli("train", "--num-env-runners", "1", "--env-runner-resource", "rollout_node",
                   "--output", str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "it needs rollout_node 1 (has 0)" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--env-runner-resource", "rollout_node", timeout=60)  # A2C samples on the driver
    assert proc.returncode == 2 and "--num-env-runners is 0" in proc.stderr
    proc = run_cli("train", "--learner-resource", "learner_node", timeout=60)
    assert proc.returncode == 2 and "--num-learners is 0" in proc.stderr
    proc = run_cli("train", "--env-runner-resource", "GPU", timeout=60)
    assert proc.returncode == 2 and "must name a custom resource" in proc.stderr


@pytest.mark.integration
def test_eval_refuses_stages_the_checkpoints_variant_does_not_have(local_ray, tmp_path):
    out = tmp_path / "seed-run"
    train_in_process(out, variant="seed", shaping=0.0, max_iterations=1, eval_interval=1, eval_episodes=10,
                     num_envs_per_env_runner=4, train_batch_size_per_learner=64, hidden_size=16)
    for args in (["eval", str(out), "--stages", "0,3"], ["explain", str(out), "--stage", "4"]):
        bad = run_cli(*args, timeout=120)
        assert bad.returncode == 2 and "trained on the seed variant, which has stages [0, 1, 2] only" in bad.stderr
        assert "Traceback" not in bad.stderr


def test_a_checkpoint_module_older_than_a_stage_is_a_usage_error():
    import types

    from rllib_app.cli.main import _check_stages
    from rllib_app.config.arguments import UsageError

    older = types.SimpleNamespace(model_config={"stage_embedding_rows": [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]})
    _check_stages([0, 5, 9], {}, older)
    with pytest.raises(UsageError, match=r"reads stages 0\.\.9 \(it predates the later ones\); got \[10, 11\]"):
        _check_stages([2, 11, 10], {}, older)
    _check_stages([10, 11], {}, types.SimpleNamespace(model_config={"stage_embedding_rows": list(range(12))}))


def test_resuming_a_run_whose_module_predates_a_stage_is_a_usage_error(tmp_path):
    """Its stage embedding has one row per stage it knew: say so, not a state_dict traceback."""
    import json
    import pickle

    from envs import NUM_STAGES
    from rllib_app.outputs.checkpoints import MODULE_SUBDIR, saved_stage_rows

    module_dir = tmp_path / "run" / "checkpoint" / MODULE_SUBDIR
    module_dir.mkdir(parents=True)
    rows = [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 6, 7]
    with open(module_dir / "class_and_ctor_args.pkl", "wb") as f:
        pickle.dump({"class": None, "ctor_args_and_kwargs": ((), {"model_config": {"stage_embedding_rows": rows}})}, f)
    (tmp_path / "run" / "checkpoint" / "toolagent.json").write_text(json.dumps({"train_config": {"algo": "a2c"}}))
    assert saved_stage_rows(tmp_path / "run" / "checkpoint") == rows
    proc = run_cli("train", "--resume", str(tmp_path / "run"), "--max-minutes", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"its module reads stages 0..11, this toolagent's 0..{NUM_STAGES - 1} (stages were added since)"
            in proc.stderr)
    assert saved_stage_rows(tmp_path) is None  # not a checkpoint: the restore says what is wrong
