"""The hand-written backward passes (loss, additive attention) against autograd's own."""

import pytest
import torch
import torch.nn.functional as F

import seq2seq.core.attention
import seq2seq.training.loss
from seq2seq.core.attention import additive_scores
from seq2seq.training.loss import smoothed_cross_entropy


# 1 row, 2 rows, all rows a slice
@pytest.mark.parametrize("values_per_slice", [1, 2 * 4 * 5 * 6, 2**19])
def test_additive_scores_pass_gradcheck(monkeypatch, values_per_slice):
    monkeypatch.setattr(seq2seq.core.attention, "VALUES_PER_SLICE", values_per_slice)
    torch.manual_seed(0)
    queries = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    energy = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(additive_scores, (queries, keys, energy))
    expected = torch.tanh(queries.unsqueeze(2) + keys.unsqueeze(1)) @ energy
    torch.testing.assert_close(additive_scores(queries, keys, energy), expected)


def test_additive_scores_under_bf16_autocast_match_fp32():
    torch.manual_seed(0)
    queries, keys = torch.randn(5, 7, 32), torch.randn(5, 9, 32)
    energy = torch.randn(32, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        scores = additive_scores(queries.bfloat16(), keys.bfloat16(), energy)
    assert scores.dtype == torch.float32
    expected = (
        torch.tanh(queries.bfloat16().float().unsqueeze(2) + keys.bfloat16().float().unsqueeze(1))
        @ energy
    )
    torch.testing.assert_close(scores, expected)
    scores.sum().backward()
    assert energy.grad.dtype == torch.float32


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("rows", [1, 63, 64, 200])
def test_smoothed_cross_entropy_equals_torch(smoothing, rows):
    torch.manual_seed(0)
    logits = torch.randn(rows, 37, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 37, (rows,))
    ours = smoothed_cross_entropy(logits, target, smoothing)
    (grad,) = torch.autograd.grad(3 * ours, logits)
    reference = F.cross_entropy(logits, target, label_smoothing=smoothing)
    (expected_grad,) = torch.autograd.grad(3 * reference, logits)
    torch.testing.assert_close(ours, reference.to(ours.dtype))
    torch.testing.assert_close(grad, expected_grad)


def test_smoothed_cross_entropy_without_grad_and_in_bf16(monkeypatch):
    monkeypatch.setattr(seq2seq.training.loss, "ROWS_PER_SLICE", 4)
    torch.manual_seed(0)
    logits = torch.randn(10, 50).bfloat16().requires_grad_()
    target = torch.randint(0, 50, (10,))
    reference = F.cross_entropy(logits.float(), target, label_smoothing=0.1)
    with torch.no_grad():
        torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.1), reference.detach())
    smoothed_cross_entropy(logits, target, 0.1).backward()
    assert logits.grad.dtype == torch.bfloat16


def test_smoothed_cross_entropy_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="at least one"):
        smoothed_cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
