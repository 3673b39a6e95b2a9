"""``models.packed_gru``: the GRU over packed steps gives ``nn.GRUCell``'s values and gradients."""

import pytest
import torch
from torch import nn

from models.packed_gru import packed_gru


def cell_unroll(cell: nn.GRUCell, x: torch.Tensor, h0: torch.Tensor, lengths: list[int]):
    """The reference: ``nn.GRUCell`` stepped row by row over each row's real steps."""
    outputs, finals = [], []
    for b, length in enumerate(lengths):
        h = h0[b: b + 1]
        row = []
        for t in range(length):
            h = cell(x[b: b + 1, t], h)
            row.append(h)
        outputs.append(row)
        finals.append(h)
    return outputs, torch.cat(finals)


def packed(cell: nn.GRUCell, x: torch.Tensor, h0: torch.Tensor, lengths: list[int]):
    """The same through ``packed_gru`` (rows sorted longest first, time-major packing)."""
    T = x.shape[1]
    active = [sum(length > t for length in lengths) for t in range(T)]
    valid = torch.arange(T)[:, None] < torch.tensor(lengths)[None, :]  # [T, B]
    t_idx, b_idx = valid.nonzero(as_tuple=True)
    gi = nn.functional.linear(x[b_idx, t_idx], cell.weight_ih, cell.bias_ih)
    out, final = packed_gru(gi, h0, cell.weight_hh, cell.bias_hh, active)
    outputs = [[None] * length for length in lengths]
    for i, (t, b) in enumerate(zip(t_idx.tolist(), b_idx.tolist())):
        outputs[b][t] = out[i: i + 1]
    return outputs, final


@pytest.mark.parametrize("lengths", [[7, 7, 5, 5, 3, 1, 0, 0], [4, 4, 4], [1], [0, 0], [9, 2, 2, 1]])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU path is checked where one is"))])
def test_values_and_gradients_are_the_cells(lengths, device):
    torch.manual_seed(0)
    cell = nn.GRUCell(5, 6).double().to(device)
    B, T = len(lengths), max(max(lengths), 1)
    x = torch.randn(B, T, 5, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(B, 6, dtype=torch.float64, device=device, requires_grad=True)
    # a loss on every output and on the final states, with weights of its own each
    weights = torch.randn(B, T, 6, dtype=torch.float64, device=device)
    final_weights = torch.randn(B, 6, dtype=torch.float64, device=device)
    results = []
    for unroll in (cell_unroll, packed):
        x.grad = h0.grad = None
        cell.zero_grad()
        outputs, final = unroll(cell, x, h0, lengths)
        loss = (final * final_weights).sum()
        for b, row in enumerate(outputs):
            for t, h in enumerate(row):
                loss = loss + (h[0] * weights[b, t]).sum()
        loss.backward()
        grads = [x.grad, h0.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in cell.parameters()]
        results.append(([h for row in outputs for h in row], final, grads))
    (ref_out, ref_final, ref_grads), (out, final, grads) = results
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(final, ref_final)
    for name, a, b in zip(["x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"], grads, ref_grads):
        torch.testing.assert_close(a, b, msg=name)


def test_gradcheck():
    torch.manual_seed(1)
    H, active = 3, [4, 3, 3, 1]
    gi = torch.randn(sum(active), 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(5, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * H, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: packed_gru(*a, active), (gi, h0, w, b))


def test_without_gradients_it_only_steps():
    cell = nn.GRUCell(4, 3)
    x, h0 = torch.randn(2, 5, 4), torch.randn(2, 3)
    with torch.no_grad():
        outputs, final = packed(cell, x, h0, [5, 2])
        reference, ref_final = cell_unroll(cell, x, h0, [5, 2])
    assert not final.requires_grad
    torch.testing.assert_close(final, ref_final)
    torch.testing.assert_close(torch.cat(outputs[0]), torch.cat(reference[0]))
