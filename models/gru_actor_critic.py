"""``ToolAgentGRUModule``: a stage-aware GRU actor-critic as an RLlib ``TorchRLModule``.

How it reads the flat observation (offsets come from ``model_config``, so this
module knows RLModule but not the env):

* the context tokens are read in order into context features ``x``, joined with a
  stage embedding. ``context_encoder="concat"`` (default): the token embeddings
  concatenated and passed through a layer (position matters: ``a*b+c`` is not
  ``b*c+a``; one weight per position, so it cannot read past the longest context
  it trained on). ``"gru"``: a GRU over the tokens up to the first padding token,
  its last output (the same weights at every position: a reader for expressions of
  any length). ``"bigru"``: the same read in both directions (half the width each),
  so each token's output also knows what follows it (is the term after this digit a
  product? that decides when to ``STO``); its summary is both directions' final states;
* with ``context_attention`` (``"gru"``/``"bigru"``), every step also reads an attention
  over the context GRU's per-token outputs, queried by the previous hidden state:
  the agent can point at the token it is working on instead of remembering them all.
  With ``attention_projections`` the scores compare learned maps of the two
  (``W_k read . W_q h``) instead of the raw vectors, so what the state asks ("the
  operator after the third digit") need not look like what a token holds;
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
action 0, not the start token, so they never reset the state. When the batch carries
``seq_lens`` (RLlib's learner batches do), the per-step layers and the GRU run on each
row's real steps only: outputs and gradients there are what the full unroll gives
(tested); a padded step gets zeros from the heads. Learner batches step their recurrence
with ``models.packed_gru`` (the real steps packed, the backward pass written out: the
GRU cell's values and gradients, a fraction of autograd's cost on the CPU); env runners'
single steps and the research options (attention, an episode starting inside a row) with
the cell step by step.
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

from models.packed_gru import packed_gru

MASKED_LOGIT = -1e9
#: How the context tokens are read (``context_encoder`` in ``model_config``).
CONTEXT_ENCODERS = ("concat", "gru", "bigru")

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
    "context_reader",
    "context_encoder",
    "initial_state",
    "action_embedding",
    "gru",
    "policy_head",
    "attention_query",
    "attention_key",
)


class ToolAgentGRUModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Stage-aware GRU actor-critic. ``model_config``: the layout keys in
    ``REQUIRED_KEYS`` plus ``hidden_size`` (128), ``embed_dim`` (32),
    ``context_every_step`` (False), ``context_encoder`` ("concat" | "gru" | "bigru"),
    ``context_attention`` (False), ``context_read_len`` (concat: the context positions
    it reads, default all), ``pad_token`` (default ``context_vocab - 1``),
    ``stage_embedding_rows`` (the stage embedding row of each stage; default one per
    stage) and ``max_seq_len`` (RLlib needs it for stateful modules)."""

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
        self._encoder_kind = cfg.get("context_encoder", "concat")
        if self._encoder_kind not in CONTEXT_ENCODERS:
            raise ValueError(f"context_encoder must be one of {list(CONTEXT_ENCODERS)}, got {self._encoder_kind!r}")
        self._attention = bool(cfg.get("context_attention", False))
        if self._attention and self._encoder_kind == "concat":
            raise ValueError("context_attention needs context_encoder 'gru' or 'bigru' (it attends over the GRU's outputs)")
        self._pad_token = int(cfg.get("pad_token", self._layout["context_vocab"] - 1))
        n_ctx = self._layout["context_len"]
        n_act = self._layout["num_actions"]
        # concat: the positions it has weights for (the longest context the run trains on);
        # a wider observation's further positions are padding it never reads
        self._read_len = int(cfg.get("context_read_len", n_ctx))
        if not 1 <= self._read_len <= n_ctx:
            raise ValueError(f"context_read_len must be in 1..{n_ctx}, got {self._read_len}")

        self.context_embedding = nn.Embedding(self._layout["context_vocab"], embed)
        # Stages may share an embedding row: the expression stages differ only in length,
        # which the context shows, and a held-out longer stage must not meet an untrained row.
        rows = [int(r) for r in cfg.get("stage_embedding_rows", range(self._layout["num_stages"]))]
        if len(rows) != self._layout["num_stages"] or min(rows) < 0:
            raise ValueError(f"stage_embedding_rows must give one row >= 0 per stage, got {rows}")
        self.register_buffer("_stage_rows", torch.tensor(rows), persistent=False)
        # A row shared by several stages is drawn apart from every other layer, so a run
        # whose stages all have their own rows starts from exactly the weights it had before
        # shared rows existed (the A2C stage-2 recipe is sensitive to its initial weights).
        shared = [r for r in rows if rows.count(r) > 1]
        own_rows = min(shared) if shared else max(rows) + 1
        self.stage_embedding = nn.Embedding(max(rows) + 1, embed, _weight=torch.empty(max(rows) + 1, embed))
        with torch.no_grad():
            self.stage_embedding.weight[:own_rows].normal_()
        if self._encoder_kind == "concat":
            self.context_encoder = nn.Sequential(nn.Linear((self._read_len + 1) * embed, hidden), nn.Tanh())
        else:
            both = self._encoder_kind == "bigru"
            if both and hidden % 2:
                raise ValueError(f"context_encoder 'bigru' splits hidden_size in two directions; {hidden} is odd")
            self.context_reader = nn.GRU(embed, hidden // 2 if both else hidden, batch_first=True, bidirectional=both)
            self.context_encoder = nn.Sequential(nn.Linear(hidden + embed, hidden), nn.Tanh())
        self.initial_state = nn.Linear(hidden, hidden)
        # +1: the start token is an input but never an output.
        self.action_embedding = nn.Embedding(n_act + 1, embed)
        step_input = embed + (hidden if self._context_every_step else 0) + (hidden if self._attention else 0)
        self.gru = nn.GRUCell(step_input, hidden)
        self.policy_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_act))
        self.value_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        # from a generator of their own: the global random stream (which the env runner then
        # samples actions from) stays as it was too
        shared_rows = torch.Generator().manual_seed(torch.initial_seed() + 1)
        with torch.no_grad():
            self.stage_embedding.weight[own_rows:].normal_(generator=shared_rows)
        self._attention_projections = bool(cfg.get("attention_projections", False))
        if self._attention_projections:
            if not self._attention:
                raise ValueError("attention_projections needs context_attention (they are its query and key maps)")
            # drawn last and from a stream of their own: every other layer starts as without them
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch.initial_seed() + 2)
                self.attention_query = nn.Linear(hidden, hidden)
                self.attention_key = nn.Linear(hidden, hidden)

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
            Columns.ACTION_DIST_INPUTS: self._logits(features, mask, _real_steps(batch, features)),
            Columns.STATE_OUT: state_out,
            Columns.EMBEDDINGS: features,
        }

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Optional[Any] = None):
        if embeddings is None:
            embeddings, _, _ = self._unroll(batch)
        return _at(_real_steps(batch, embeddings), self.value_head, embeddings).squeeze(-1)

    # -- target network (APPO) ------------------------------------------------------------
    def _policy_layers(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: getattr(self, name) for name in POLICY_LAYERS if hasattr(self, name)})

    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self._target = make_target_network(self._policy_layers())

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self):
        return [(self._policy_layers(), self._target)]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        features, _, mask = self._unroll(batch, net=self._target)
        real = _real_steps(batch, features)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._logits(features, mask, real, net=self._target)}

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> list[str]:
        return ["_target"]

    # -- internals ----------------------------------------------------------------------
    def _logits(self, features: torch.Tensor, mask: torch.Tensor, real=None, net=None) -> torch.Tensor:
        return _at(real, (net or self).policy_head, features).masked_fill(mask == 0, MASKED_LOGIT)

    def _read_context(self, net, distinct: torch.Tensor, length: torch.Tensor):
        """Per-token reads ``[U, C, H]`` (zeros past each context's ``length``) and each
        context's summary ``[U, H]`` for the distinct contexts ``[U, C]``."""
        embedded = net.context_embedding(distinct)
        if self._encoder_kind == "gru":
            # causal: the outputs before the padding do not depend on it
            read, _ = net.context_reader(embedded)
            return read, read[torch.arange(len(distinct), device=read.device), length - 1]
        # The backward direction must start at each context's last real token, not at the
        # padding (its count would be part of the read): packed sequences.
        packed = nn.utils.rnn.pack_padded_sequence(embedded, length.cpu(), batch_first=True, enforce_sorted=False)
        out, final = net.context_reader(packed)
        read, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=distinct.shape[1])
        return read, torch.cat([final[0], final[1]], dim=-1)

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
        # Per-step layers run on the real steps only (a learner batch is mostly padding);
        # padded steps get zeros, and only the recurrence below ever sees them.
        real = _real_steps(batch, prev_action)
        starts = prev_action == lay["start_action"]  # [B, T]
        # The context reaches the GRU only through the state at a start step, unless it is
        # an input at every step: encode it only where it is used (a quarter of the steps).
        steps = real if real is not None else torch.ones_like(starts)
        encode = steps if self._context_every_step else steps & starts
        stage = stage[encode]  # [N]
        if self._encoder_kind == "concat":
            embedded = net.context_embedding(context[encode][..., : self._read_len])  # [N, C, E]
            tokens = torch.cat([embedded.flatten(-2), net.stage_embedding(self._stage_rows[stage])], dim=-1)
        else:
            # Each distinct context is read once (a batch repeats each episode's context at
            # every step); padding only trails it, so the read ends at its last real token.
            # Attention looks at the reads from every real step, the initial state at starts.
            C = context.shape[-1]
            read_at = steps if self._attention else encode
            distinct, which = torch.unique(context[read_at], dim=0, return_inverse=True)
            length = (distinct != self._pad_token).sum(-1).clamp(min=1)  # [U]
            read, summary = self._read_context(net, distinct, length)  # [U, C, H], [U, H]
            encoded_which = which[encode[read_at]] if self._attention else which
            last = summary[encoded_which]
            tokens = torch.cat([last, net.stage_embedding(self._stage_rows[stage])], dim=-1)
            real_tokens = torch.arange(C, device=length.device) < length[:, None]  # [U, C]
            which = _unpick(read_at, which, B, T)  # [B, T]: other steps read context 0 (never used)
            keyed = net.attention_key(read) if self._attention_projections else read  # [U, C, H]
        context_features = net.context_encoder(tokens)  # [N, H]
        initial = torch.tanh(net.initial_state(context_features[starts[encode]]))  # [S, H]: each start's state
        step_inputs = net.action_embedding(prev_action)
        if self._context_every_step:
            step_inputs = torch.cat([step_inputs, _unpick(encode, context_features, B, T)], dim=-1)

        h = batch[Columns.STATE_IN]["h"]
        start_steps = encode & starts
        # Episodes start at a row's first step (learner batches, env runners' single steps):
        # the state is set there once; only a start further in needs the check at every step.
        late_starts = bool(start_steps[:, 1:].any())
        if late_starts:
            initial = _unpick(start_steps, initial, B, T)  # [B, T, H]
            starts = start_steps.unsqueeze(-1)  # [B, T, 1]
        else:
            h = torch.where(start_steps[:, :1], _unpick(start_steps[:, :1], initial, B, 1)[:, 0], h)
        # Rows sorted longest first, so the rows still running at step t are a prefix and the
        # GRU steps only those: a learner batch is mostly zero padding (one episode chunk per
        # row of max_seq_len), and the recurrence is causal, so real steps are unchanged.
        # Padded steps are masked out of every loss.
        order, active = _active_prefix(real, B, T)
        # learner batches (they carry seq_lens): the packed recurrence, its backward written
        # out (padded steps' features are zeros); else the cell step by step, where a finished
        # row keeps its last real state
        if real is not None and not self._attention and not late_starts:
            features, h = _packed_unroll(net.gru, step_inputs, h, real, order, active)
            return features, {"h": h}, mask
        if order is not None:
            h, step_inputs = h[order], step_inputs[order]
            if late_starts:
                starts, initial = starts[order], initial[order]
            if self._attention:
                which = which[order]
        outputs = []
        for t in range(T):
            n = active[t]
            if n == 0:  # every row has ended: the rest is padding
                outputs.extend([h] * (T - t))
                break
            h_run = torch.where(starts[:n, t], initial[:n, t], h[:n]) if late_starts else h[:n]
            x = step_inputs[:n, t]
            if self._attention:
                # which token to look at, from where the agent is now (gathered per step from
                # the distinct reads: cheap to differentiate, unlike slicing a [B, T, C, H] copy)
                query = net.attention_query(h_run) if self._attention_projections else h_run
                scores = torch.einsum("bch,bh->bc", keyed[which[:n, t]], query) / self._hidden_size**0.5
                weights = torch.softmax(scores.masked_fill(~real_tokens[which[:n, t]], -1e9), dim=-1)
                x = torch.cat([x, torch.einsum("bc,bch->bh", weights, read[which[:n, t]])], dim=-1)
            h_run = net.gru(x, h_run)
            h = h_run if n == B else torch.cat([h_run, h[n:]])
            outputs.append(h)
        features = torch.stack(outputs, dim=1)
        if order is not None:
            restore = torch.argsort(order)
            features, h = features[restore], h[restore]
        return features, {"h": h}, mask


def _active_prefix(real: Optional[torch.Tensor], B: int, T: int) -> tuple[Optional[torch.Tensor], list[int]]:
    """``(order, active)``: the row order that sorts the rows' real lengths longest first
    (None when every row runs all ``T`` steps) and, per step ``t``, how many rows of that
    order are still running."""
    if real is None:
        return None, [B] * T
    lengths = real.sum(1)
    active = (B - torch.cumsum(torch.bincount(lengths, minlength=T + 1), 0)[:T]).tolist()
    if active[-1] == B:
        return None, active
    return torch.argsort(lengths, descending=True, stable=True), active


def _packed_unroll(cell: nn.GRUCell, step_inputs: torch.Tensor, h: torch.Tensor, real: Optional[torch.Tensor],
                   order: Optional[torch.Tensor], active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``_unroll``'s recurrence for training: the real steps packed time-major, their input
    side in one product, then ``packed_gru`` (its backward written out). Returns the features
    ``[B, T, H]`` (zeros at padded steps, which no head reads) and each row's final state."""
    B, T = step_inputs.shape[:2]
    if order is not None:
        rows, h, valid = order, h[order], real[order].t()
    else:
        rows, valid = torch.arange(B, device=h.device), torch.ones(T, B, dtype=torch.bool, device=h.device)
    t_idx, b_idx = valid.nonzero(as_tuple=True)  # time-major: the packed order
    source = rows[b_idx]  # each packed step's row in the batch
    gi = nn.functional.linear(step_inputs[source, t_idx], cell.weight_ih, cell.bias_ih)
    out, h = packed_gru(gi, h, cell.weight_hh, cell.bias_hh, active)
    features = out.new_zeros(B * T, out.shape[1])
    features.index_copy_(0, source * T + t_idx, out)
    if order is not None:
        h = h[torch.argsort(order)]
    return features.view(B, T, -1), h


def _real_steps(batch: dict[str, Any], like: torch.Tensor) -> Optional[torch.Tensor]:
    """``[B, T]``: which steps are real (before each row's ``seq_lens``), or None without
    ``seq_lens`` (every step counts, as on an env runner)."""
    seq_lens = batch.get(Columns.SEQ_LENS)
    B, T = like.shape[:2]
    if seq_lens is None:
        return None
    lengths = torch.as_tensor(seq_lens, device=like.device).reshape(-1)
    if lengths.numel() != B:
        return None
    return torch.arange(T, device=like.device)[None, :] < lengths.clamp(0, T)[:, None]


def _unpick(real: Optional[torch.Tensor], values: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``[N, ...]`` values of the real steps back to ``[B, T, ...]``, zeros elsewhere."""
    if real is None:
        return values.reshape((B, T) + values.shape[1:])
    out = values.new_zeros((B, T) + values.shape[1:])
    out[real] = values
    return out


def _at(real: Optional[torch.Tensor], layer, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to the real steps of ``x`` ``[B, T, ...]`` only (zeros elsewhere)."""
    if real is None:
        return layer(x)
    return _unpick(real, layer(x[real]), *x.shape[:2])
