"""Decoding as plain functions over the model's `encode` / `decode_step` interface.

No Lightning and no model internals: any module with those two methods and a
`DecoderState.reorder` can be searched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """One output sentence.

    Attributes:
        tokens: target ids without bos/eos.
        score: sum of the log-probabilities of the tokens and the final eos (if produced).
        attention: (steps, S) weights over the source, one row per generated token
            (the eos included when produced), S the unpadded source length.
    """

    tokens: list[int]
    score: float
    attention: Tensor


def output_caps(source_lengths: Tensor, max_length_ratio: float, min_length: int) -> Tensor:
    """Most tokens each sentence may produce: grows with the source, never below `min_length`."""
    return torch.clamp((source_lengths.float() * max_length_ratio).ceil().long(), min=min_length)


@torch.no_grad()
def greedy_search(
    model: torch.nn.Module,
    source: Tensor,
    source_lengths: Tensor,
    max_length_ratio: float = 2.0,
    min_length: int = 10,
) -> list[Hypothesis]:
    """Pick the most probable token at every step, for a whole batch at once.

    source: (B, S) ids, source_lengths: (B,). Sentences that finish are dropped from the
    batch (the state is reordered), so they stop costing compute.
    """
    batch, source_len = source.shape
    device = source.device
    caps = output_caps(source_lengths, max_length_ratio, min_length).to(device)  # (B,)
    steps = int(caps.max())
    tokens = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
    attention = torch.zeros(batch, steps, source_len, device=device)  # (B, T, S)
    scores = torch.zeros(batch, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)

    state = model.encode(source, source_lengths)
    active = torch.arange(batch, device=device)  # rows of the batch still decoding
    previous = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    for t in range(steps):
        logits, weights, state = model.decode_step(state, previous)  # (A, V), (A, S)
        best_scores, best = F.log_softmax(logits.float(), dim=-1).max(dim=-1)  # (A,)
        tokens[active, t] = best
        attention[active, t] = weights.float()
        scores[active] += best_scores
        lengths[active] = t + 1
        running = (best != EOS_ID) & (t + 1 < caps[active])  # (A,)
        if not running.all():
            keep = running.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active, best, state = active[keep], best[keep], state.reorder(keep)
        previous = best
    return [
        _hypothesis(tokens[i, : lengths[i]], float(scores[i]), attention[i, : lengths[i], : source_lengths[i]])
        for i in range(batch)
    ]


def _hypothesis(steps: Tensor, score: float, attention: Tensor) -> Hypothesis:
    ids = steps.tolist()
    if ids and ids[-1] == EOS_ID:
        ids = ids[:-1]
    return Hypothesis(ids, score, attention.cpu())
