"""``ToolAgentGRUModule``: a stage-aware GRU actor-critic as an RLlib ``TorchRLModule``.

How it reads the flat observation (offsets come from ``model_config``, so this
module knows RLModule but not the env):

* the context tokens are embedded and *concatenated in order* (so position
  matters: ``a*b+c`` is not ``b*c+a``), joined with a stage embedding and
  encoded into context features ``x``;
* at an episode's first step (previous action == the start token) the hidden
  state is set to ``tanh(W x)``: a context-dependent initial state, computed
  inside the module because RLlib's initial state is constant;
* every step feeds ``embed(previous action)`` to a GRU cell, joined with ``x``
  when ``context_every_step`` is on; policy and value heads read the GRU output.
  With it off, the context reaches the GRU only through the initial state, so a
  context-independent program is the easiest thing to represent (stages 0-2 each
  have one); with it on, per-context programs are just as easy;
* where the observation carries an action mask, masked tools get a logit of
  ``-1e9`` (all ones when the env's mask is off, so nothing changes).

Each row of a batch uses its own context (the tutorial broadcast a ``[B, d]``
context mean against ``[B, 1, d]`` and gave every row the batch mean).

Zero-padded steps (learner batches are padded to ``max_seq_len``) have previous
action 0, not the start token, so they never reset the state.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import (
    TARGET_NETWORK_ACTION_DIST_INPUTS,
    InferenceOnlyAPI,
    TargetNetworkAPI,
    ValueFunctionAPI,
)
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

MASKED_LOGIT = -1e9

#: model_config keys the module needs; the app fills them from the env's layout.
REQUIRED_KEYS = (
    "context_len",
    "context_vocab",
    "stage_index",
    "num_stages",
    "prev_action_index",
    "start_action",
    "mask_index",
    "num_actions",
)


#: The layers the policy's logits depend on (APPO's target network copies these).
POLICY_LAYERS = (
    "context_embedding",
    "stage_embedding",
    "context_encoder",
    "initial_state",
    "action_embedding",
    "gru",
    "policy_head",
)


class ToolAgentGRUModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Stage-aware GRU actor-critic. ``model_config``: the layout keys in
    ``REQUIRED_KEYS`` plus ``hidden_size`` (128), ``embed_dim`` (32),
    ``context_every_step`` (False) and ``max_seq_len`` (RLlib needs it for
    stateful modules)."""

    @override(TorchRLModule)
    def setup(self):
        cfg = self.model_config
        missing = [k for k in REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"model_config lacks {missing}; it needs all of {list(REQUIRED_KEYS)}")
        self._layout = {k: int(cfg[k]) for k in REQUIRED_KEYS}
        hidden = int(cfg.get("hidden_size", 128))
        embed = int(cfg.get("embed_dim", 32))
        self._hidden_size = hidden
        self._context_every_step = bool(cfg.get("context_every_step", False))
        n_ctx = self._layout["context_len"]
        n_act = self._layout["num_actions"]

        self.context_embedding = nn.Embedding(self._layout["context_vocab"], embed)
        self.stage_embedding = nn.Embedding(self._layout["num_stages"], embed)
        self.context_encoder = nn.Sequential(nn.Linear((n_ctx + 1) * embed, hidden), nn.Tanh())
        self.initial_state = nn.Linear(hidden, hidden)
        # +1: the start token is an input but never an output.
        self.action_embedding = nn.Embedding(n_act + 1, embed)
        self.gru = nn.GRUCell(embed + (hidden if self._context_every_step else 0), hidden)
        self.policy_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_act))
        self.value_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    @override(TorchRLModule)
    def get_initial_state(self) -> Any:
        return {"h": np.zeros((self._hidden_size,), dtype=np.float32)}

    # -- forward passes ---------------------------------------------------------------
    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self._forward_train(batch)
        del out[Columns.EMBEDDINGS]
        return out

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, state_out, mask = self._unroll(batch)
        return {
            Columns.ACTION_DIST_INPUTS: self._logits(features, mask),
            Columns.STATE_OUT: state_out,
            Columns.EMBEDDINGS: features,
        }

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Optional[Any] = None):
        if embeddings is None:
            embeddings, _, _ = self._unroll(batch)
        return self.value_head(embeddings).squeeze(-1)

    # -- target network (APPO) ------------------------------------------------------------
    def _policy_layers(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: getattr(self, name) for name in POLICY_LAYERS})

    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self._target = make_target_network(self._policy_layers())

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self):
        return [(self._policy_layers(), self._target)]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        features, _, mask = self._unroll(batch, net=self._target)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._logits(features, mask, net=self._target)}

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> list[str]:
        return ["_target"]

    # -- internals ----------------------------------------------------------------------
    def _logits(self, features: torch.Tensor, mask: torch.Tensor, net=None) -> torch.Tensor:
        return (net or self).policy_head(features).masked_fill(mask == 0, MASKED_LOGIT)

    def _unroll(self, batch: dict[str, Any], net=None):
        """Run the GRU over ``[B, T]`` steps; returns features ``[B, T, H]``,
        the final state and the action mask ``[B, T, A]``. ``net``: the layers to
        use (default this module's own; APPO passes its target copy)."""
        net = net or self
        lay = self._layout
        obs = batch[Columns.OBS].long()
        context = obs[..., : lay["context_len"]]
        stage = obs[..., lay["stage_index"]]
        prev_action = obs[..., lay["prev_action_index"]]
        mask = obs[..., lay["mask_index"] : lay["mask_index"] + lay["num_actions"]]

        B, T = prev_action.shape
        tokens = torch.cat(
            [net.context_embedding(context).flatten(-2), net.stage_embedding(stage)], dim=-1
        )
        context_features = net.context_encoder(tokens)  # [B, T, H]
        step_inputs = net.action_embedding(prev_action)
        if self._context_every_step:
            step_inputs = torch.cat([step_inputs, context_features], dim=-1)
        starts = (prev_action == lay["start_action"]).unsqueeze(-1)  # [B, T, 1]
        initial = torch.tanh(net.initial_state(context_features))

        h = batch[Columns.STATE_IN]["h"]
        outputs = []
        for t in range(T):
            h = torch.where(starts[:, t], initial[:, t], h)
            h = net.gru(step_inputs[:, t], h)
            outputs.append(h)
        return torch.stack(outputs, dim=1), {"h": h}, mask
