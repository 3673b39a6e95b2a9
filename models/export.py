"""A trained ``ToolAgentGRUModule`` as a file that torch alone loads and steps.

``PolicyStep`` is the module's one-env-step forward (what an env runner computes), in
plain torch without data-dependent control flow: ``(obs [B, D] int64, h [B, H] float32)
-> (masked logits [B, A], h [B, H])``, the recurrent state carried by the caller (zeros
to start: the start token in the observation sets the context-derived state, as in the
module). ``export_policy`` writes it with ``torch.export`` (a ``.pt2`` file, batch size
dynamic): ``torch.export.load(path).module()(obs, h)`` runs it with no Ray, RLlib or
this project installed. Only the default context reader (``concat``) is exported; the
GRU readers and attention read distinct contexts with ``torch.unique``.

docs/outputs.md, "An exported policy", has an example that plays the env with it.
"""

from __future__ import annotations

import copy
import json
import pathlib

import torch
from torch import nn

from models.gru_actor_critic import MASKED_LOGIT, ToolAgentGRUModule

#: The export's format: bumped when its inputs, outputs or metadata change meaning.
EXPORT_VERSION = 1


class PolicyStep(nn.Module):
    """One step of ``module``'s policy (its layers copied; see the module docstring)."""

    def __init__(self, module: ToolAgentGRUModule):
        super().__init__()
        if module._encoder_kind != "concat":
            raise ValueError(f"export reads the context with the 'concat' encoder only; this module uses "
                             f"{module._encoder_kind!r}")
        lay = module._layout
        self.read_len = module._read_len
        self.stage_index, self.prev_action_index = lay["stage_index"], lay["prev_action_index"]
        self.mask_index, self.num_actions, self.start_action = lay["mask_index"], lay["num_actions"], lay["start_action"]
        self.context_every_step = module._context_every_step
        for name in ("context_embedding", "stage_embedding", "context_encoder", "initial_state",
                     "action_embedding", "gru", "policy_head"):
            setattr(self, name, copy.deepcopy(getattr(module, name)))
        self.register_buffer("stage_rows", module._stage_rows.clone())

    def forward(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = obs.long()
        prev_action = obs[:, self.prev_action_index]
        stage_row = self.stage_rows[obs[:, self.stage_index]]
        tokens = torch.cat([self.context_embedding(obs[:, : self.read_len]).flatten(1),
                            self.stage_embedding(stage_row)], dim=-1)
        context = self.context_encoder(tokens)
        starts = (prev_action == self.start_action).unsqueeze(-1)
        h = torch.where(starts, torch.tanh(self.initial_state(context)), h)
        x = self.action_embedding(prev_action)
        if self.context_every_step:
            x = torch.cat([x, context], dim=-1)
        h = self.gru(x, h)
        mask = obs[:, self.mask_index : self.mask_index + self.num_actions]
        return self.policy_head(h).masked_fill(mask == 0, MASKED_LOGIT), h


def export_policy(module: ToolAgentGRUModule, path: str | pathlib.Path, *, metadata: dict | None = None) -> pathlib.Path:
    """Write ``module``'s policy to ``path`` (``.pt2``); ``metadata`` (JSON) goes with it."""
    step = PolicyStep(module).eval()
    hidden = module._hidden_size
    width = module.observation_space.shape[0]
    example = (torch.zeros((2, width), dtype=torch.int64), torch.zeros((2, hidden)))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(step, example, dynamic_shapes={"obs": {0: batch}, "h": {0: batch}})
    info = {"export_version": EXPORT_VERSION, "hidden_size": hidden, "observation_width": width,
            "num_actions": step.num_actions, **(metadata or {})}
    path = pathlib.Path(path)
    torch.export.save(program, path, extra_files={"toolagent.json": json.dumps(info)})
    return path
