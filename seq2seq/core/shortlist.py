"""Lexical shortlist: the target pieces a batch of source sentences may need (vocabulary
selection, as Marian's `--shortlist`).

The output layer is the widest matrix product of a decoder step: every row scores all V
target pieces. A caption about a dog on a beach needs a few hundred of them. The shortlist
keeps, for each source piece, the `per_source` target pieces it most likely translates
into, plus the `frequent` target pieces that any sentence may use (articles,
punctuation). A batch's output layer then computes the union of its sentences' lists, a
few thousand of the 8,000 pieces, so the product costs a fraction of the full one. Each
sentence's softmax covers its own list only (the others' pieces are masked), so its
translation does not depend on the batch it is in; and as the logits are those of the full
layer, whenever the full layer's best piece is in a sentence's list, the list picks it too.

The translation probabilities p(t | s) come from IBM Model 1 (Brown et al., 1993), five EM
iterations over the training pairs, as fast_align's lexical tables do for Marian. The
shortlist is built once per model from its training pairs and kept in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.core.tokenizer import EOS_ID
from seq2seq.errors import Seq2SeqError

PER_SOURCE = 50  # candidates kept per source piece
FREQUENT = 300  # most frequent target pieces, always scored
EM_ITERATIONS = 5


@dataclass(frozen=True)
class BatchVocabulary:
    """What a batch's output layer scores.

    Attributes:
        ids: (C,) the union of the sentences' lists, sorted: logit column c is target id ids[c].
        allowed: (B, C) True where column c is in sentence b's own list.
    """

    ids: Tensor
    allowed: Tensor


@dataclass(frozen=True)
class Shortlist:
    """Attributes:
    candidates: (V_source, per_source) target ids, most likely translations of each
        source id first (rows of special ids hold eos only).
    frequent: (F,) the most frequent target ids, eos among them.
    """

    candidates: Tensor
    frequent: Tensor

    def for_batch(self, source: Tensor) -> BatchVocabulary:
        """The target ids sentences `source` (B, S) may produce, together and each."""
        batch, device = source.size(0), source.device
        candidates = self.candidates.to(device)[source].flatten(1)  # (B, S * per_source)
        frequent = self.frequent.to(device)
        vocabulary_size = int(max(candidates.max(), frequent.max())) + 1
        allowed = torch.zeros(batch, vocabulary_size, dtype=torch.bool, device=device)
        allowed.scatter_(1, candidates, True)
        allowed[:, frequent] = True  # (B, V')
        ids = allowed.any(0).nonzero().squeeze(1)  # (C,) sorted
        return BatchVocabulary(ids, allowed[:, ids])

    def to_dict(self) -> dict[str, Tensor]:
        """What a checkpoint keeps: int32 tensors, loadable with `weights_only=True`."""
        return {"candidates": self.candidates.int(), "frequent": self.frequent.int()}

    @classmethod
    def from_dict(cls, values: dict[str, Tensor]) -> Shortlist:
        return cls(values["candidates"].long(), values["frequent"].long())


def build_shortlist(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    source_vocab_size: int,
    target_vocab_size: int,
    per_source: int = PER_SOURCE,
    frequent: int = FREQUENT,
    iterations: int = EM_ITERATIONS,
) -> Shortlist:
    """The shortlist of training `pairs` (source ids, target ids; no bos or eos)."""
    if per_source < 1 or frequent < 1:
        raise Seq2SeqError(
            f"a shortlist needs at least one candidate per source piece and one frequent piece, "
            f"got per_source={per_source}, frequent={frequent}"
        )
    pairs = [(s, t) for s, t in pairs if len(s) and len(t)]
    if not pairs:
        raise Seq2SeqError("a shortlist needs training pairs with both sides non-empty")
    keys, probabilities = lexical_probabilities(pairs, target_vocab_size, iterations)
    sources, targets = keys // target_vocab_size, keys % target_vocab_size
    # best first within each source id: sort by probability, then stably by source id
    order = torch.argsort(probabilities, descending=True, stable=True)
    order = order[torch.argsort(sources[order], stable=True)]
    sources, targets = sources[order], targets[order]
    starts = torch.searchsorted(sources, sources)  # where each source id's run begins
    rank = torch.arange(len(sources)) - starts
    kept = rank < per_source
    candidates = torch.full((source_vocab_size, per_source), EOS_ID, dtype=torch.long)
    candidates[sources[kept], rank[kept]] = targets[kept]
    counts = torch.bincount(
        torch.cat([torch.as_tensor(t) for _, t in pairs]), minlength=target_vocab_size
    )
    counts[EOS_ID] = counts.max() + 1  # every sentence ends
    most_frequent = counts.topk(min(frequent, target_vocab_size)).indices
    return Shortlist(candidates, torch.sort(most_frequent).values)


def lexical_probabilities(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], target_vocab_size: int, iterations: int
) -> tuple[Tensor, Tensor]:
    """IBM Model 1's p(t | s) for every (s, t) that share a sentence pair: keys
    s * target_vocab_size + t (P,) and their probabilities (P,).

    Every target token of a pair is explained by one of the pair's source tokens, in
    proportion to p(t | s); the expected counts of each (s, t), normalised per s, are the
    next p(t | s). All links of the corpus are handled at once as flat tensors.
    """
    source_tokens, target_tokens, target_positions = [], [], []
    position = 0
    for source, target in pairs:
        source_ids, target_ids = torch.as_tensor(source), torch.as_tensor(target)
        source_tokens.append(source_ids.repeat(len(target_ids)))  # (T * S,)
        target_tokens.append(target_ids.repeat_interleave(len(source_ids)))
        positions = torch.arange(position, position + len(target_ids))
        target_positions.append(positions.repeat_interleave(len(source_ids)))
        position += len(target_ids)
    links = torch.cat(source_tokens) * target_vocab_size + torch.cat(target_tokens)  # (E,)
    positions = torch.cat(target_positions)  # (E,) which target token each link explains
    keys, link_pair = torch.unique(links, return_inverse=True)  # (P,), (E,)
    pair_source = keys // target_vocab_size  # (P,)
    probabilities = torch.ones(len(keys), dtype=torch.float64)  # uniform start
    for _ in range(iterations):
        link = probabilities[link_pair]  # (E,)
        per_position = torch.zeros(position, dtype=torch.float64).index_add_(0, positions, link)
        expected = torch.zeros_like(probabilities).index_add_(
            0, link_pair, link / per_position[positions]
        )  # (P,)
        per_source = torch.zeros(int(pair_source.max()) + 1, dtype=torch.float64)
        per_source.index_add_(0, pair_source, expected)
        probabilities = expected / per_source[pair_source]
    return keys, probabilities
