"""The GRU actor-critic RLModule, without Ray."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from envs import ADD, ANS, MUL, PAD_TOKEN, SUB, ToolMachineEnv, general_program, observation_layout
from models import ToolAgentGRUModule


def make_module(**extra):
    env = ToolMachineEnv({"action_mask": True})
    torch.manual_seed(0)
    return ToolAgentGRUModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={**observation_layout(), "max_seq_len": 16, "hidden_size": 32, **extra},
    )


def episode_observations(stage, digits, program, operators=None):
    """Observations an agent sees while playing ``program``: [T, D]."""
    env = ToolMachineEnv({"action_mask": True})
    options = {"stage": stage, "digits": digits}
    if operators is not None:
        options["operators"] = operators
    obs, _ = env.reset(seed=0, options=options)
    seq = [obs]
    for tool in program[:-1]:
        obs, *_ = env.step(tool)
        seq.append(obs)
    return np.stack(seq)


def initial_state(module, batch):
    return {"h": torch.zeros(batch, module._hidden_size)}


@pytest.mark.parametrize("context_every_step", [True, False])
def test_unrolling_a_sequence_equals_stepping_it(context_every_step):
    module = make_module(context_every_step=context_every_step)
    obs = torch.as_tensor(episode_observations(2, (3, 4, 5, 6, 7), general_program(2)))[None]
    whole = module.forward_train({Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 1)})
    state = initial_state(module, 1)
    stepped = []
    for t in range(obs.shape[1]):
        out = module.forward_inference({Columns.OBS: obs[:, t : t + 1], Columns.STATE_IN: state})
        stepped.append(out[Columns.ACTION_DIST_INPUTS])
        state = out[Columns.STATE_OUT]
    torch.testing.assert_close(whole[Columns.ACTION_DIST_INPUTS], torch.cat(stepped, dim=1))
    torch.testing.assert_close(whole[Columns.STATE_OUT]["h"], state["h"])
    values = module.compute_values({Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 1)})
    torch.testing.assert_close(values, module.compute_values({}, embeddings=whole[Columns.EMBEDDINGS]))
    assert values.shape == (1, obs.shape[1])


@pytest.mark.parametrize("context_every_step", [True, False])
def test_each_row_of_a_batch_sees_its_own_context(context_every_step):
    """The tutorial's defect: a [B,d] context mean broadcast against [B,1,d]."""
    module = make_module(context_every_step=context_every_step)
    contexts = [(1, 2, 3, 4, 5), (9, 8, 7, 6, 5), (0, 0, 0, 0, 0), (5, 5, 1, 2, 9)]
    obs = torch.stack([torch.as_tensor(episode_observations(2, c, [MUL, ANS])) for c in contexts])
    batched = module.forward_train({Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 4)})
    logits = batched[Columns.ACTION_DIST_INPUTS]
    for i in range(len(contexts)):
        alone = module.forward_train({Columns.OBS: obs[i : i + 1], Columns.STATE_IN: initial_state(module, 1)})
        torch.testing.assert_close(logits[i : i + 1], alone[Columns.ACTION_DIST_INPUTS])
    # and different contexts give different outputs
    assert not torch.allclose(logits[0], logits[1])


PROJECTED = {"context_encoder": "gru", "context_attention": True, "attention_projections": True}
BIDIRECTIONAL = {"context_encoder": "bigru", "context_attention": True}
ENCODERS = [{}, {"context_encoder": "gru"}, {"context_encoder": "gru", "context_attention": True}, PROJECTED,
            {"context_encoder": "bigru"}, BIDIRECTIONAL]
READER_IDS = ["gru", "gru+attention", "gru+projected attention", "bigru", "bigru+attention"]


@pytest.mark.parametrize("encoder", ENCODERS, ids=["concat", *READER_IDS])
def test_context_order_matters(encoder):
    module = make_module(**encoder)
    a = torch.as_tensor(episode_observations(0, (2, 3, 4), [ANS]))[None]
    b = torch.as_tensor(episode_observations(0, (4, 3, 2), [ANS]))[None]
    out = [module.forward_inference({Columns.OBS: x, Columns.STATE_IN: initial_state(module, 1)}) for x in (a, b)]
    assert not torch.allclose(out[0][Columns.ACTION_DIST_INPUTS], out[1][Columns.ACTION_DIST_INPUTS])
    # the spec's example: a mean of token embeddings cannot tell these two apart
    two = [episode_observations(5, digits, [MUL, ANS], operators=ops) for digits, ops in
           (((2, 3, 4), (SUB, MUL)), ((2, 3, 4), (MUL, SUB)))]
    out = [module.forward_inference({Columns.OBS: torch.as_tensor(x)[None], Columns.STATE_IN: initial_state(module, 1)})
           for x in two]
    assert not torch.allclose(out[0][Columns.ACTION_DIST_INPUTS], out[1][Columns.ACTION_DIST_INPUTS])


@pytest.mark.parametrize("encoder", ENCODERS[1:], ids=READER_IDS)
def test_the_gru_reader_reads_up_to_the_padding_and_serves_every_length(encoder):
    """Its output does not depend on how many padding tokens follow, and one module
    takes expressions of 1 to 6 operators in one batch, every row as if alone."""
    module = make_module(**encoder)
    ops = (ADD, MUL, SUB, MUL, MUL, ADD)
    obs = [episode_observations(5 if k < 3 else k + 3, tuple(range(1, k + 2)), [MUL, MUL, ANS], operators=ops[:k])
           for k in range(1, 7)]
    batch = torch.as_tensor(np.stack(obs))
    both = module.forward_train({Columns.OBS: batch, Columns.STATE_IN: initial_state(module, 6)})
    for i in range(6):
        alone = module.forward_train({Columns.OBS: batch[i : i + 1], Columns.STATE_IN: initial_state(module, 1)})
        torch.testing.assert_close(both[Columns.ACTION_DIST_INPUTS][i : i + 1], alone[Columns.ACTION_DIST_INPUTS])
    # a longer padding (a wider observation) changes nothing: the read stops at the first PAD
    lay = observation_layout()
    wide = torch.cat([batch[:, :, : lay["context_len"]], torch.full((6, 3, 4), PAD_TOKEN),
                      batch[:, :, lay["context_len"] :]], dim=-1)
    wider = make_module(**encoder, context_len=lay["context_len"] + 4, stage_index=lay["stage_index"] + 4,
                        prev_action_index=lay["prev_action_index"] + 4, mask_index=lay["mask_index"] + 4)
    wider.load_state_dict(module.state_dict())
    out = wider.forward_train({Columns.OBS: wide, Columns.STATE_IN: initial_state(module, 6)})
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], both[Columns.ACTION_DIST_INPUTS])


def test_concat_reads_only_the_positions_it_was_built_for():
    """context_read_len 5 (a run on stages 0-2): the same layer as before the observation
    grew to 13 tokens, and whatever lies past position 5 is never read."""
    module = make_module(context_read_len=5)
    assert module.context_encoder[0].in_features == (5 + 1) * 32
    obs = torch.as_tensor(episode_observations(2, (1, 2, 3, 4, 5), [MUL, ANS]))[None]
    changed = obs.clone()
    changed[..., 5:13] = 7  # tokens the reader must not see
    out = [module.forward_inference({Columns.OBS: x, Columns.STATE_IN: initial_state(module, 1)}) for x in (obs, changed)]
    torch.testing.assert_close(out[0][Columns.ACTION_DIST_INPUTS], out[1][Columns.ACTION_DIST_INPUTS])
    with pytest.raises(ValueError, match="context_read_len must be in 1..13, got 14"):
        make_module(context_read_len=14)


def test_a_shared_stage_row_does_not_change_the_other_initial_weights():
    """The expression stages' shared stage row is drawn apart from every other layer, so
    a module has the same initial weights and leaves the same random stream as one built
    without it (the layout before
    expression stages: one row per stage 0-4)."""
    shared = make_module(context_read_len=5)
    stream_after_shared = torch.get_rng_state()
    rows = observation_layout()["stage_embedding_rows"]
    own = min(r for r in rows if rows.count(r) > 1)  # the rows before the shared one are the stages' own
    assert own == 5 and shared.stage_embedding.num_embeddings == len(set(rows))
    alone = make_module(context_read_len=5, stage_embedding_rows=list(range(len(rows))))
    before = make_module(context_read_len=5, num_stages=own, stage_embedding_rows=list(range(own)))
    # nor the random stream after it (the env runner samples actions from it)
    assert torch.equal(stream_after_shared, torch.get_rng_state())
    for name, weight in shared.state_dict().items():
        if name == "stage_embedding.weight":
            torch.testing.assert_close(weight[:own], before.state_dict()[name], rtol=0, atol=0)
            torch.testing.assert_close(weight[:own], alone.state_dict()[name][:own], rtol=0, atol=0)
        else:
            torch.testing.assert_close(weight, before.state_dict()[name], rtol=0, atol=0)


def test_the_bidirectional_reader_sees_what_follows_a_token():
    """bigru: the read at a token depends on the tokens after it (the forward GRU's does not)."""
    for kind, changes in (("gru", False), ("bigru", True)):
        module = make_module(context_encoder=kind, context_attention=True)
        reads = []
        for ops in ((ADD, MUL), (ADD, ADD)):  # 2 + 3 * 4 against 2 + 3 + 4: the same up to token 3
            obs = torch.as_tensor(episode_observations(5, (2, 3, 4), [ANS], operators=ops))[None]
            context = obs[0, :, : observation_layout()["context_len"]][:1]
            length = (context != PAD_TOKEN).sum(-1)
            read, _ = module._read_context(module, context, length)
            reads.append(read[0, :3])
        assert torch.allclose(reads[0], reads[1]) != changes, kind
    with pytest.raises(ValueError, match="splits hidden_size in two directions; 31 is odd"):
        make_module(context_encoder="bigru", hidden_size=31)


def test_attention_needs_the_gru_reader():
    with pytest.raises(ValueError, match="context_attention needs context_encoder 'gru' or 'bigru'"):
        make_module(context_attention=True)
    with pytest.raises(ValueError, match="context_encoder must be one of"):
        make_module(context_encoder="mean")
    with pytest.raises(ValueError, match="attention_projections needs context_attention"):
        make_module(context_encoder="gru", attention_projections=True)


def test_attention_projections_leave_every_other_layer_as_it_was_drawn():
    torch.manual_seed(5)
    plain = make_module(context_encoder="gru", context_attention=True)
    after_plain = torch.rand(1)
    torch.manual_seed(5)
    projected = make_module(**PROJECTED)
    assert torch.equal(torch.rand(1), after_plain)  # the global stream too
    extra = {name for name in projected.state_dict() if name not in plain.state_dict()}
    assert extra == {"attention_query.weight", "attention_query.bias", "attention_key.weight", "attention_key.bias"}
    for name, weight in plain.state_dict().items():
        torch.testing.assert_close(projected.state_dict()[name], weight, rtol=0, atol=0)


@pytest.mark.parametrize("extra", [{}, {"context_every_step": True},
                                   {"context_encoder": "gru", "context_attention": True}, PROJECTED, BIDIRECTIONAL])
def test_sequence_lengths_step_only_the_real_steps_and_change_nothing_there(extra):
    """With ``seq_lens`` (what RLlib's learner batches carry) the GRU steps only the rows
    still running: outputs and gradients at real steps equal those of the full unroll."""
    module = make_module(**extra)
    rows = [(2, (3, 4, 5, 6, 7)), (0, (1, 2, 3)), (1, (9, 8, 7, 6)), (2, (0, 0, 1, 2, 3))]
    lengths = [9, 2, 5, 1]
    obs = np.zeros((len(rows), 12, len(episode_observations(0, (1, 2, 3), general_program(0))[0])), np.int64)
    for i, ((stage, digits), n) in enumerate(zip(rows, lengths)):
        obs[i, :n] = episode_observations(stage, digits, general_program(stage))[:n]
    obs = torch.as_tensor(obs)
    real = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    state_in = {"h": torch.randn(len(rows), module._hidden_size)}
    outs = []
    for seq_lens in (None, torch.tensor(lengths)):
        module.zero_grad()
        batch = {Columns.OBS: obs, Columns.STATE_IN: state_in}
        if seq_lens is not None:
            batch[Columns.SEQ_LENS] = seq_lens
        out = module.forward_train(batch)
        logits = out[Columns.ACTION_DIST_INPUTS][real]
        values = module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS])[real]
        (logits.clamp(min=-50).sum() + values.sum()).backward()
        grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
        outs.append((logits, values, grads))
    (full_logits, full_values, full_grads), (logits, values, grads) = outs
    torch.testing.assert_close(logits, full_logits)
    torch.testing.assert_close(values, full_values)
    assert grads.keys() == full_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], full_grads[k], msg=k)


def test_start_token_resets_the_state_and_padding_does_not():
    module = make_module()
    obs = torch.as_tensor(episode_observations(1, (1, 2, 3, 4), [MUL, ANS]))[None]
    random_state = {"h": torch.randn(1, module._hidden_size)}
    zero_state = initial_state(module, 1)
    a = module.forward_inference({Columns.OBS: obs, Columns.STATE_IN: random_state})
    b = module.forward_inference({Columns.OBS: obs, Columns.STATE_IN: zero_state})
    # the first step is a start step: the incoming state is irrelevant
    torch.testing.assert_close(a[Columns.ACTION_DIST_INPUTS], b[Columns.ACTION_DIST_INPUTS])
    # zero padding after the sequence (as learner batches have) leaves earlier steps alone
    padded = torch.cat([obs, torch.zeros(1, 3, obs.shape[-1], dtype=obs.dtype)], dim=1)
    c = module.forward_train({Columns.OBS: padded, Columns.STATE_IN: zero_state})
    torch.testing.assert_close(c[Columns.ACTION_DIST_INPUTS][:, :2], b[Columns.ACTION_DIST_INPUTS])


@pytest.mark.parametrize("extra", [{}, {"context_encoder": "gru", "context_attention": True},
                                   {"context_every_step": True}, PROJECTED, BIDIRECTIONAL])
def test_an_episode_starting_inside_a_row_starts_from_its_own_context(extra):
    """A row may hold an episode's end and the next one's start (a start token after the
    first step): each part's outputs are those of the episode on its own."""
    module = make_module(**extra)
    first = episode_observations(0, (1, 2, 3), general_program(0))
    second = episode_observations(1, (4, 5, 6, 7), general_program(1))
    row = torch.as_tensor(np.concatenate([first, second]))[None]
    state = {"h": torch.randn(1, module._hidden_size)}
    together = module.forward_train({Columns.OBS: row, Columns.STATE_IN: state})[Columns.ACTION_DIST_INPUTS]
    for part, start in ((first, 0), (second, len(first))):
        alone = module.forward_train({Columns.OBS: torch.as_tensor(part)[None], Columns.STATE_IN: state})
        torch.testing.assert_close(together[:, start:start + len(part)], alone[Columns.ACTION_DIST_INPUTS])


def test_action_mask_removes_inapplicable_tools():
    module = make_module()
    obs = torch.as_tensor(episode_observations(0, (2, 3, 4), [ANS]))[None]  # STO, RCL inapplicable
    logits = module.forward_inference({Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 1)})[
        Columns.ACTION_DIST_INPUTS
    ]
    probs = torch.softmax(logits, -1)[0, 0]
    assert probs[3] == 0 and probs[4] == 0 and probs.sum() == pytest.approx(1.0)


def test_missing_layout_keys_are_reported():
    env = ToolMachineEnv()
    with pytest.raises(ValueError, match="context_len"):
        ToolAgentGRUModule(observation_space=env.observation_space, action_space=env.action_space,
                           model_config={"max_seq_len": 16})


def test_target_network_starts_equal_and_follows_only_when_updated():
    from ray.rllib.core.learner.utils import update_target_network
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    module = make_module()
    module.make_target_networks()
    obs = torch.as_tensor(episode_observations(2, (1, 2, 3, 4, 5), general_program(2)))[None]
    batch = {Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 1)}

    def logits():
        return module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]

    def target_logits():
        return module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS]

    torch.testing.assert_close(target_logits(), logits())
    assert not any(p.requires_grad for p in module._target.parameters())
    with torch.no_grad():
        module.policy_head[-1].bias += 1.0  # a training step, in effect
    assert not torch.allclose(target_logits(), logits())
    for main, target in module.get_target_network_pairs():
        update_target_network(main_net=main, target_net=target, tau=1.0)
    torch.testing.assert_close(target_logits(), logits())
    # env runners get the weights without the target copy
    assert not any(k.startswith("_target") for k in module.get_state(inference_only=True))


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("env_config", [
    {"action_mask": True},
    {"action_mask": True, "hard_fraction": 1.0, "shaping": 0.5, "step_limit_terminates": True},
    {"variant": "seed"},
])
def test_rollout_plays_the_same_episodes_as_single_envs(env_config, greedy):
    """``evaluate.rollout`` (one vector env) against episode i = a single env reset
    with seed + i, stepped with the same batched forward pass."""
    from rllib_app.evaluation.evaluate import rollout

    module, n, seed, stage = make_module(), 64, 5, 2
    episodes = rollout(module, stage, n, env_config=env_config, seed=seed, greedy=greedy)
    envs = [ToolMachineEnv(env_config) for _ in range(n)]
    obs = np.stack([env.reset(seed=seed + i, options={"stage": stage})[0] for i, env in enumerate(envs)])
    digits = [env.shown_digits for env in envs]
    state = {"h": torch.zeros(n, module._hidden_size)}
    generator = torch.Generator().manual_seed(seed)
    actions, returns, finals = [[] for _ in envs], np.zeros(n), [None] * n
    while any(f is None for f in finals):
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs)[:, None], Columns.STATE_IN: state})
        logits = out[Columns.ACTION_DIST_INPUTS][:, 0]
        chosen = (logits.argmax(-1) if greedy
                  else torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0])
        state = out[Columns.STATE_OUT]
        for i in range(n):
            if finals[i] is None:
                obs[i], r, term, trunc, info = envs[i].step(int(chosen[i]))
                actions[i].append(int(chosen[i]))
                returns[i] += r
                if term or trunc:
                    finals[i] = info
    assert len(episodes) == n
    for i, e in enumerate(episodes):
        assert (e.digits, e.actions, e.seed, e.stage) == (digits[i], actions[i], seed + i, stage)
        assert (e.target, e.answered, e.answer, e.correct) == tuple(
            finals[i][k] for k in ("target", "answered", "answer", "correct"))
        assert e.episode_return == pytest.approx(returns[i])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the module's GPU path is checked where one is")
@pytest.mark.parametrize(
    "extra",
    [{}, {"context_encoder": "gru"}, {"context_encoder": "bigru", "context_attention": True},
     {"context_encoder": "gru", "context_attention": True, "attention_projections": True, "context_every_step": True}],
)
def test_the_module_on_cuda_gives_what_it_gives_on_cpu(extra):
    """Every context encoder on a GPU learner: no tensor left on the CPU, the same outputs."""
    module = make_module(**extra)
    rows = [episode_observations(2, (3, 4, 5, 6, 7), general_program(2)),
            episode_observations(5, (2, 3, 4), [MUL, ADD, ANS], operators=(ADD, MUL))]
    length = max(len(r) for r in rows)
    obs = torch.as_tensor(np.stack([np.pad(r, ((0, length - len(r)), (0, 0))) for r in rows]))
    batch = {Columns.OBS: obs, Columns.STATE_IN: initial_state(module, 2),
             Columns.SEQ_LENS: torch.as_tensor([len(r) for r in rows])}
    on_cpu = module.forward_train(batch)
    cuda = make_module(**extra).to("cuda")
    on_gpu = cuda.forward_train({Columns.OBS: obs.cuda(), Columns.STATE_IN: {"h": batch[Columns.STATE_IN]["h"].cuda()},
                                 Columns.SEQ_LENS: batch[Columns.SEQ_LENS].cuda()})
    torch.testing.assert_close(on_gpu[Columns.ACTION_DIST_INPUTS].cpu(), on_cpu[Columns.ACTION_DIST_INPUTS],
                               rtol=1e-4, atol=1e-4)
    values = cuda.compute_values({}, embeddings=on_gpu[Columns.EMBEDDINGS])
    assert values.device.type == "cuda" and values.shape == (2, length)
