"""A GRU unrolled over packed sequences, with its backward pass written out.

``packed_gru(gi, h0, weight_hh, bias_hh, active)`` steps a GRU cell (PyTorch's
``nn.GRUCell`` equations, gates in its order ``r, z, n``) over rows sorted longest
first, stepping at time ``t`` only the first ``active[t]`` rows. ``gi`` is the input
side of every real step, ``x W_ih^T + b_ih``, computed beforehand in one matrix
product, in packed (time-major) order: the ``active[0]`` rows of step 0, then the
``active[1]`` of step 1, and so on (``PackedSequence.data``'s order). It returns each
real step's new state in the same order and every row's final state.

Why not autograd over ``nn.GRUCell``: on the CPU the cell is a dozen small operations
a step, and its backward adds for every step a weight-gradient product over a few
hundred rows, gradient slices of the whole state and a sum into them, which together
cost several times the step's arithmetic (docs/benchmarks.md, "The learner alone").
Here a step's backward is a few elementwise operations and one product for the
previous state's gradient; the weight gradients are one product over all steps. The
values and gradients are the cell's (``tests/test_packed_gru.py``, in float64).
"""

from __future__ import annotations

import itertools

import torch


def packed_gru(gi: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor,
               active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs [N, H], final state [B, H])`` of the GRU over packed steps (module docstring);
    rows that never step keep ``h0``. Differentiable in ``gi``, ``h0``, ``weight_hh`` and ``bias_hh``."""
    active = [int(n) for n in active if n > 0]
    out = _PackedGRU.apply(gi, h0, weight_hh, bias_hh, active)
    if not active:
        return out, h0
    # each row's final state: its output at its last step
    starts = torch.tensor(_step_starts(active))
    steps_of_row = (torch.tensor(active)[:, None] > torch.arange(active[0])[None, :]).sum(0)  # [rows that step]
    last = (starts[steps_of_row - 1] + torch.arange(active[0])).to(out.device)
    return out, torch.cat([out[last], h0[active[0]:]])


def _step_starts(active: list[int]) -> list[int]:
    """Where each step's rows begin in the packed order."""
    return [0, *itertools.accumulate(active[:-1])]


class _PackedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, weight_hh, bias_hh, active):
        H = h0.shape[1]
        N = gi.shape[0]
        out = gi.new_empty(N, H)
        # what the backward pass reads besides the outputs: the hidden side of every step's
        # pre-activations, the gates r and z, and the candidate state n
        gh_all, rz_all, n_all = gi.new_empty(N, 3 * H), gi.new_empty(N, 2 * H), gi.new_empty(N, H)
        w_t = weight_hh.t()
        h_prev = h0[: active[0]] if active else h0
        start = 0
        for n in active:
            end = start + n
            h_prev = h_prev[:n]
            g, gh, rz, cand, h_new = gi[start:end], gh_all[start:end], rz_all[start:end], n_all[start:end], out[start:end]
            torch.addmm(bias_hh, h_prev, w_t, out=gh)
            torch.add(g[:, : 2 * H], gh[:, : 2 * H], out=rz).sigmoid_()
            torch.addcmul(g[:, 2 * H:], rz[:, :H], gh[:, 2 * H:], out=cand).tanh_()
            torch.addcmul(cand, rz[:, H:], h_prev - cand, out=h_new)  # (1 - z) n + z h
            h_prev = h_new
            start = end
        ctx.active = active
        ctx.save_for_backward(gh_all, rz_all, n_all, out, h0, weight_hh)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gh_all, rz_all, n_all, out, h0, weight_hh = ctx.saved_tensors
        active = ctx.active
        H = weight_hh.shape[1]
        N = rz_all.shape[0]
        d_gi = grad_out.new_empty(N, 3 * H)
        d_gh = grad_out.new_empty(N, 3 * H)
        starts = _step_starts(active)
        # the gradient reaching the state after step t from step t + 1 (its rows: a prefix)
        dh = grad_out.new_zeros(0, H)
        for t in range(len(active) - 1, -1, -1):
            n, start = active[t], starts[t]
            end = start + n
            h_prev = h0[:n] if t == 0 else out[starts[t - 1]: starts[t - 1] + n]
            g = grad_out[start:end].clone()
            g[: len(dh)] += dh  # the rows that also stepped at t + 1
            rz, cand = rz_all[start:end], n_all[start:end]
            r, z = rz[:, :H], rz[:, H:]
            step_gi, step_gh = d_gi[start:end], d_gh[start:end]
            d_an = torch.mul(g * (1 - z), 1 - cand * cand, out=step_gi[:, 2 * H:])  # through n = tanh(a_n)
            torch.mul(g * (h_prev - cand), z * (1 - z), out=step_gi[:, H: 2 * H])  # through z
            torch.mul(d_an * gh_all[start:end, 2 * H:], r * (1 - r), out=step_gi[:, :H])  # through r
            step_gh[:, : 2 * H] = step_gi[:, : 2 * H]
            torch.mul(d_an, r, out=step_gh[:, 2 * H:])
            dh = torch.addmm(g * z, step_gh, weight_hh)
        n0 = active[0] if active else 0
        d_h0 = None
        if ctx.needs_input_grad[1]:
            d_h0 = torch.zeros_like(h0)
            d_h0[:n0] = dh
        d_weight = None
        if ctx.needs_input_grad[2] and active:
            # every step's previous state: h0 for step 0, the step before's outputs after
            prev = torch.cat([torch.arange(active[t]) + starts[t - 1] for t in range(1, len(active))]
                             or [torch.zeros(0, dtype=torch.long)]).to(out.device)
            d_weight = d_gh[:n0].t() @ h0[:n0] + d_gh[n0:].t() @ out[prev]
        d_bias = d_gh.sum(0) if ctx.needs_input_grad[3] else None
        return d_gi, d_h0, d_weight, d_bias, None
