"""`Attn`: the attention module of the course this project grew from, batched and masked.

Three score rules, then the same ending: the attended values are concatenated with the
query and one linear layer gives an output of the requested size.

- ``concat``   scores = Linear([query; key]) over a fixed number of positions
               (position-based: it can only attend to `value_size1` positions).
- ``additive`` scores = v · tanh(W [query; key_j]) for each key j (Bahdanau; content-based).
- ``dot``      scores = query · key_j / sqrt(d) (the query is projected to the key size
               when the two differ).

Shapes: B batch, T queries (decoder steps), S source positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.errors import Seq2SeqError

RULES = ("concat", "additive", "dot")


class Attn(nn.Module):
    """Attention with the course's signature:
    `Attn(query_size, key_size, value_size1, value_size2, output_size)`.

    `value_size1` is the number of value positions the ``concat`` rule can score (its
    `max_length`); `value_size2` is the size of one value vector. `attention_size` is the
    hidden size of the ``additive`` rule.
    """

    def __init__(
        self,
        query_size: int,
        key_size: int,
        value_size1: int,
        value_size2: int,
        output_size: int,
        rule: str = "concat",
        attention_size: int | None = None,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise Seq2SeqError(f"unknown attention rule {rule!r}; choose one of {', '.join(RULES)}")
        self.rule = rule
        self.query_size, self.key_size = query_size, key_size
        self.value_size1, self.value_size2 = value_size1, value_size2
        self.output_size = output_size
        if rule == "concat":
            self.attn = nn.Linear(query_size + key_size, value_size1)
        elif rule == "additive":
            # Linear([q; k]) == W_q q + W_k k: split so keys are projected once per batch.
            hidden = attention_size or key_size
            self.query_proj = nn.Linear(query_size, hidden, bias=False)
            self.key_proj = nn.Linear(key_size, hidden)
            self.energy = nn.Linear(hidden, 1, bias=False)
        elif query_size != key_size:
            self.query_proj = nn.Linear(query_size, key_size, bias=False)
        self.attn_combine = nn.Linear(query_size + value_size2, output_size)

    def forward(
        self, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One attention step in the course's layout.

        Q: (1, B, query_size). K: (1, B, key_size) for ``concat``, (B, S, key_size) otherwise.
        V: (B, S, value_size2). mask: (B, S), True where a position is real (not padding).
        Returns output (1, B, output_size) and weights (B, S).
        """
        queries = Q.transpose(0, 1)  # (B, 1, q)
        keys = K.transpose(0, 1) if self.rule == "concat" else K
        output, weights = self.attend(queries, self.project_keys(keys), V, mask)
        return output.transpose(0, 1), weights.squeeze(1)

    def project_keys(self, keys: Tensor) -> Tensor:
        """What `attend` expects as keys; for ``additive`` the key half of the linear layer.

        Call it once per batch and reuse the result at every decoder step. Additive keys come
        in the dtype the scores are computed in (fp32 under bf16 autocast), converted once here
        rather than at every step.
        """
        if self.rule != "additive":
            return keys
        projected = self.key_proj(keys)
        return projected.to(compute_dtype(projected))

    def attend(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Batched attention for T queries at once.

        queries: (B, T, query_size). keys: from `project_keys`; (B, T, key_size) for
        ``concat`` (one key per query), (B, S, *) otherwise. values: (B, S, value_size2).
        mask: (B, S) bool. Returns output (B, T, output_size) and weights (B, T, S):
        exactly zero on padding, summing to 1 over S.
        """
        context, weights = self.context(queries, keys, values, mask)
        return self.combine(queries, context), weights

    def context(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The first half of `attend`: the attended values (B, T, value_size2) and the weights
        (B, T, S). The conditional decoder feeds the values to its second cell before
        `combine`."""
        scores = self.score(queries, keys, values.size(1))  # (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = F.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(weights, values), weights

    def combine(self, queries: Tensor, context: Tensor) -> Tensor:
        """The course's ending: Linear([query; context]), (B, T, output_size)."""
        return self.attn_combine(torch.cat((queries, context), dim=-1))

    def score(self, queries: Tensor, keys: Tensor, positions: int) -> Tensor:
        """Unnormalized scores (B, T, S)."""
        if self.rule == "concat":
            if positions > self.value_size1:
                raise Seq2SeqError(
                    f"the concat attention rule scores at most {self.value_size1} positions, "
                    f"got {positions}: shorten the input or raise the model's max_source_length"
                )
            return self.attn(torch.cat((queries, keys), dim=-1))[..., :positions]  # (B, T, S)
        if self.rule == "additive":
            # (B, T, S)
            return additive_scores(self.query_proj(queries), keys, self.energy.weight[0])
        if self.query_size != self.key_size:
            queries = self.query_proj(queries)
        return torch.bmm(queries, keys.transpose(1, 2)) / math.sqrt(self.key_size)  # (B, T, S)


VALUES_PER_SLICE = 2**19  # of the (B, T, S, A) tensor: 2 MB in fp32, cache-sized


class _AdditiveScores(torch.autograd.Function):
    """scores[b, t, s] = v · tanh(q[b, t] + k[b, s]), one slice of batch rows at a time.

    Written out, the (B, T, S, A) tanh tensor is the largest of a training step (10 M
    values at 64 sentences of 20 tokens), and autograd passes it through main memory about
    six times; the energy layer's backward is a product with an inner size of 1, which
    matrix kernels handle badly. Here each slice stays in cache and backward recomputes
    it instead of storing it. Computed in fp32 (fp64 for fp64 inputs) whatever the autocast dtype.

    tanh(h) = 2 σ(2h) - 1, and torch's CPU sigmoid is several times faster than its tanh,
    so the slices hold σ(2h):
    v · tanh(h) = 2 v · σ(2h) - Σv, and tanh'(h) = 4 σ(2h) (1 - σ(2h)).
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, energy: Tensor) -> Tensor:
        ctx.save_for_backward(queries, keys, energy)
        dtype = compute_dtype(queries)
        scores = queries.new_empty(queries.shape[:2] + keys.shape[1:2], dtype=dtype)  # (B, T, S)
        with torch.autocast(queries.device.type, enabled=False):
            v = energy.to(dtype)
            twice_v = 2 * v
            for rows in batch_slices(queries, keys):
                torch.matmul(hidden_sigmoid(queries[rows], keys[rows]), twice_v, out=scores[rows])
            scores -= v.sum()
        return scores

    @staticmethod
    def backward(ctx, grad_scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        queries, keys, energy = ctx.saved_tensors
        grad_queries, grad_keys = torch.empty_like(queries), torch.empty_like(keys)
        grad_energy = torch.zeros_like(energy, dtype=compute_dtype(queries))
        with torch.autocast(queries.device.type, enabled=False):
            v = energy.to(grad_energy.dtype)
            four_v = 4 * v
            for rows in batch_slices(queries, keys):
                sigmoid = hidden_sigmoid(queries[rows], keys[rows])  # (r, T, S, A)
                grad = grad_scores[rows].to(v.dtype)  # (r, T, S)
                # the 2σ of Σ (2σ - 1) g
                grad_energy.addmv_(sigmoid.flatten(0, 2).t(), grad.flatten(), alpha=2)
                # tanh'(h) g v
                grad_hidden = sigmoid.sub_(sigmoid.square()).mul_(grad.unsqueeze(-1) * four_v)
                grad_queries[rows] = grad_hidden.sum(2)
                grad_keys[rows] = grad_hidden.sum(1)
            grad_energy -= grad_scores.sum(dtype=grad_energy.dtype)  # the - 1 of Σ (2σ - 1) g
        return grad_queries, grad_keys, grad_energy.to(energy.dtype)


def hidden_sigmoid(queries: Tensor, keys: Tensor) -> Tensor:
    """σ(2 (q[b, t] + k[b, s])): (r, T, A) and (r, S, A) to (r, T, S, A), at least in fp32."""
    dtype = compute_dtype(queries)
    # one pass over the (r, T, S, A) values: 2q + 2k, the 2 of k folded into the addition
    twice_queries = queries.to(dtype).mul(2).unsqueeze(2)
    return torch.add(twice_queries, keys.to(dtype).unsqueeze(1), alpha=2).sigmoid_()


def compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def batch_slices(queries: Tensor, keys: Tensor) -> list[slice]:
    """Batch rows cut so each slice's (r, T, S, A) tanh holds about `VALUES_PER_SLICE` values."""
    (batch, steps, size), positions = queries.shape, keys.size(1)
    rows = max(1, VALUES_PER_SLICE // max(1, steps * positions * size))
    return [slice(start, start + rows) for start in range(0, batch, rows)]


def additive_scores(queries: Tensor, keys: Tensor, energy: Tensor) -> Tensor:
    """Bahdanau scores v · tanh(q_t + k_s): queries (B, T, A), keys (B, S, A), energy v (A,)
    to (B, T, S) fp32."""
    return _AdditiveScores.apply(queries, keys, energy)
