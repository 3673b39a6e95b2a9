"""``BulkLearnerBatch`` builds the batch RLlib's learner pipeline builds, column by
column, from real sampled episode chunks (no Ray: runner and learner in this process)."""

import copy

import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from envs import NUM_STAGES
from rllib_app.config.train_config import TrainConfig
from rllib_app.rl.batched_env_runner import BatchedEnvRunner
from rllib_app.rl.learner_batch import BulkLearnerBatch
from rllib_app.training.algorithms import MODULE_ID, build_config


def _setup(runner_cls, *, gae_lambda=1.0, stage_path="0,1,2", algo="a2c"):
    cfg = TrainConfig(algo=algo, fast_env_runner=True, num_envs_per_env_runner=6, hidden_size=32, seed=5, stage_path=stage_path,
                      gae_lambda=gae_lambda).validate()
    config = build_config(cfg).env_runners(episode_lookback_horizon=1)
    runner = runner_cls(config=config, worker_index=1)
    learner = config.build_learner(env=runner.env)
    runner.module.set_state(learner.module[MODULE_ID].get_state(inference_only=True))
    # every stage of the path, so chunks of all lengths
    runner.env.unwrapped.set_stage_weights([int(s in cfg.stage_path_list()) for s in range(NUM_STAGES)])
    return runner, learner


def _both(learner, episodes):
    """(RLlib's batch, ours) for the same chunks (RLlib's pipeline changes the chunks it is given)."""
    bulk = learner._learner_connector.connectors[0]
    assert isinstance(bulk, BulkLearnerBatch)
    module = learner.module
    kwargs = {"rl_module": module, "explore": False, "metrics": None}
    theirs = bulk.fallback(episodes=copy.deepcopy(episodes), batch={}, shared_data={}, **kwargs)
    ours = bulk(episodes=episodes, batch={}, shared_data={}, **kwargs)
    assert bulk.bulk_calls >= 1
    return theirs[MODULE_ID], ours[MODULE_ID]


def _assert_same(theirs, ours):
    assert set(theirs) == set(ours)
    for key in theirs:
        a, b = theirs[key], ours[key]
        if isinstance(a, dict):
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{key}/{k}")
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, (key, a.dtype, b.dtype, a.shape, b.shape)
        if key in ("advantages", "value_targets"):
            # the same values through the same functions: equal to float32 rounding
            torch.testing.assert_close(b, a, msg=key)
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("runner_cls", [BatchedEnvRunner, SingleAgentEnvRunner])
@pytest.mark.parametrize("max_seq_len", [None, 4])
@pytest.mark.parametrize("algo", ["a2c", "impala", "appo"])
def test_the_bulk_batch_equals_rllibs_pipeline(runner_cls, max_seq_len, algo):
    """Fragments of 5 and 9 steps (chunks that start, continue and end episodes); with
    max_seq_len 4 every longer chunk spans several rows, each with its own state in.
    A2C's batch has value targets; IMPALA's and APPO's (V-trace's own) have none."""
    runner, learner = _setup(runner_cls, algo=algo)
    if max_seq_len:
        learner.module[MODULE_ID].model_config["max_seq_len"] = max_seq_len
    seen = {"continued": 0, "multi_row": 0, "terminated": 0}
    for fragment in (5, 9, 9, 5):
        episodes = runner.sample(num_timesteps=6 * fragment, explore=True)
        seen["continued"] += sum(e.t_started > 0 for e in episodes)
        seen["terminated"] += sum(e.is_terminated for e in episodes)
        seen["multi_row"] += sum(len(e) + 1 > (max_seq_len or 16) for e in episodes)
        theirs, ours = _both(learner, episodes)
        _assert_same(theirs, ours)
    assert seen["continued"] and seen["terminated"] and (seen["multi_row"] or not max_seq_len), seen


def test_the_bulk_batch_equals_rllibs_pipeline_with_gae():
    runner, learner = _setup(BatchedEnvRunner, gae_lambda=0.9, stage_path="2")
    for fragment in (7, 11):
        theirs, ours = _both(learner, runner.sample(num_timesteps=6 * fragment, explore=True))
        _assert_same(theirs, ours)


def test_a_batch_other_pieces_started_goes_to_rllibs_pipeline():
    runner, learner = _setup(BatchedEnvRunner)
    bulk = learner._learner_connector.connectors[0]
    episodes = runner.sample(num_timesteps=30, explore=True)
    before = (bulk.bulk_calls, bulk.fallback_calls)
    out = bulk(rl_module=learner.module, batch={MODULE_ID: {}}, episodes=episodes, explore=False,
               shared_data={}, metrics=None)
    assert (bulk.bulk_calls, bulk.fallback_calls) == (before[0], before[1] + 1)
    assert out[MODULE_ID][Columns.OBS].shape[0] == out[MODULE_ID][Columns.SEQ_LENS].shape[0]


def test_a2c_steps_each_row_up_to_its_bootstrap_step_and_learns_the_same():
    """The step added to each chunk for V's bootstrap is out of A2C's loss: its forward pass
    stops before it (``_without_bootstrap_steps``), and the loss and its gradients stay."""
    from rllib_app.rl.a2c import _without_bootstrap_steps

    runner, learner = _setup(BatchedEnvRunner)
    episodes = runner.sample(num_timesteps=300, random_actions=False)
    _, batch = _both(learner, episodes)
    trimmed = _without_bootstrap_steps(batch)
    assert torch.equal(trimmed[Columns.SEQ_LENS], batch[Columns.LOSS_MASK].sum(1))
    assert int(trimmed[Columns.SEQ_LENS].sum()) == int(batch[Columns.SEQ_LENS].sum()) - len(episodes)
    module = learner.module[MODULE_ID]
    config = learner.config.get_config_for_module(MODULE_ID)
    results = []
    for b in (batch, trimmed):
        module.zero_grad()
        loss = learner.compute_loss_for_module(module_id=MODULE_ID, config=config, batch=b, fwd_out=module.forward_train(b))
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}))
    (full_loss, full_grads), (loss, grads) = results
    torch.testing.assert_close(loss, full_loss)
    assert grads.keys() == full_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], full_grads[k], msg=k)
    # a mask that is not a prefix of its row (not a bulk or RLlib batch) is left as it came
    gapped = dict(batch, **{Columns.LOSS_MASK: batch[Columns.LOSS_MASK].clone()})
    gapped[Columns.LOSS_MASK][0, 0] = False
    assert _without_bootstrap_steps(gapped) is gapped
