"""Decoding over the model's `encode` / `decode_step` interface: greedy and beam search.

No Lightning and no model internals: any module with those two methods and a
`DecoderState` (`select_sentences`, `select_beams`) can be searched. `SearchSettings` is
the one home of the search defaults; the CLI, the server and training read them from it.

Shapes: B batch, S source length, V target vocabulary, A sentences still searching,
K beam size, R decoder rows (A on beam search's first step, A * K after it), t steps so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq.core.shortlist import BatchVocabulary
from seq2seq.core.tokenizer import BOS_ID, EOS_ID, PAD_ID
from seq2seq.errors import Seq2SeqError


@dataclass(frozen=True)
class SearchSettings:
    """How to search: `beam_size` 1 is greedy search.

    Attributes:
        beam_size: hypotheses kept per sentence (1: greedy).
        alpha: GNMT length penalty of beam search (0: rank by log-probability alone).
        beta: GNMT coverage penalty of beam search (0: none); 0.1 was the best of 0-0.3 on
            the validation split for four Multi30k models, en-de and en-fr (BENCHMARKS.md,
            "Search settings").
        nbest: hypotheses returned per sentence, best first (at most `beam_size`).
        max_length_ratio: output cap in target tokens per source token.
        min_length: the output cap never falls below this, so short sources can be
            translated by longer sentences.
    """

    beam_size: int = 1
    alpha: float = 0.6
    beta: float = 0.1
    nbest: int = 1
    max_length_ratio: float = 2.0
    min_length: int = 10

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise Seq2SeqError(f"beam size must be at least 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise Seq2SeqError(
                f"--nbest {self.nbest} needs a beam at least as wide: "
                f"use --beam-size {max(self.nbest, 1)} or more"
            )
        if self.beta < 0:
            raise Seq2SeqError(
                "a negative coverage penalty would reward dropping source words: "
                f"use --beta 0 or more, got {self.beta}"
            )
        if self.max_length_ratio <= 0:
            raise Seq2SeqError(f"max length ratio must be positive, got {self.max_length_ratio}")
        if self.min_length < 1:
            raise Seq2SeqError(f"min length must be at least 1, got {self.min_length}")

    def describe(self) -> str:
        """A short name for file names and reports: `greedy` or `beam5`."""
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"

    def output_caps(self, source_lengths: Tensor) -> Tensor:
        """(B,) most tokens each sentence may produce: grows with the source, floored."""
        caps = (source_lengths.float() * self.max_length_ratio).ceil().long()
        return torch.clamp(caps, min=self.min_length)


@dataclass
class Hypothesis:
    """One output sentence.

    Attributes:
        tokens: target ids without bos/eos.
        score: what the search ranked by: the log-probability; in beam search divided by
            the length penalty, plus the coverage penalty.
        log_probability: sum of the log-probabilities of the tokens and the final eos.
        attention: (steps, S) weights over the source, one row per generated token
            (the eos included when produced), S the unpadded source length.
    """

    tokens: list[int]
    score: float
    log_probability: float
    attention: Tensor


@torch.no_grad()
def greedy_search(
    model: torch.nn.Module,
    source: Tensor,
    source_lengths: Tensor,
    settings: SearchSettings = SearchSettings(),
    vocabulary: BatchVocabulary | None = None,
) -> list[Hypothesis]:
    """Pick the most probable token at every step, for a whole batch at once.

    source: (B, S) ids, source_lengths: (B,). Sentences that finish leave the batch (the
    state is reordered) a bucket of rows at a time (`rows_to_keep`), so they stop costing
    compute. Only the settings' length cap applies. `vocabulary`: the target ids a shortlist
    allows (`first_state`).
    """
    batch, source_len = source.shape
    device = source.device
    caps = settings.output_caps(source_lengths).to(device)  # (B,)
    steps = int(caps.max())
    tokens = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
    attention = torch.zeros(batch, steps, source_len, device=device)  # (B, T, S)
    scores = torch.zeros(batch, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)

    state = first_state(model, source, source_lengths, vocabulary)
    active = torch.arange(batch, device=device)  # (A,) the batch sentence of each decoder row
    live = torch.ones(batch, dtype=torch.bool, device=device)  # (A,) rows still decoding
    # indices of the live rows into A; None while every row is live, so the usual step
    # indexes nothing (four index operations a step cost greedy search about 9 %)
    live_rows = None
    previous = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    for t in range(steps):
        logits, weights, state = model.decode_step(state, previous)  # (A, V), (A, S)
        best_scores, best = top_k(F.log_softmax(logits.float(), dim=-1), 1)  # (A, 1) each
        best_scores, best = best_scores.squeeze(1), best.squeeze(1)  # (A,)
        best = best if vocabulary is None else vocabulary.ids[best]
        if live_rows is not None:
            weights, best_scores = weights[live_rows], best_scores[live_rows]
        rows, new = (active, best) if live_rows is None else (active[live_rows], best[live_rows])
        tokens[rows, t] = new
        attention[rows, t] = weights.float()
        scores[rows] += best_scores
        lengths[rows] = t + 1
        ended = (best == EOS_ID) | (t + 1 >= caps[active])  # (A,)
        if ended.any():
            live &= ~ended
            if not live.any():
                break
            keep = rows_to_keep(live)
            if keep is not None:
                active, live, best = active[keep], live[keep], best[keep]
                state = state.select_sentences(keep)
            live_rows = None if bool(live.all()) else live.nonzero().squeeze(1)
        previous = best
    # Python numbers once per batch: indexing tensors element by element costs more than the
    # copies themselves
    token_rows, length_list = tokens.tolist(), lengths.tolist()
    return [
        _hypothesis(ids[:length], attention[i, :length, :source_length], score)
        for i, (ids, length, source_length, score) in enumerate(
            zip(token_rows, length_list, source_lengths.tolist(), scores.tolist())
        )
    ]


ROW_BUCKET = 16


def bucketed(count: int, unit: int = ROW_BUCKET) -> int:
    """How many rows (or sentences) a search keeps for `count` still searching: `count` rounded
    up to a multiple of `unit`, or below `unit` to a power of two.

    Finished rows leave a bucket at a time, so a batch runs its matrix products at a few row
    counts instead of at every count from its size down. On a CPU oneDNN builds its bf16
    kernels for each shape and keeps them: one shape per row count doubled the memory of
    translating a file in bf16 (BENCHMARKS.md). Small batches (a server's) still shrink.
    """
    if count >= unit:
        return -(-count // unit) * unit
    return 1 << (count - 1).bit_length()


def rows_to_keep(searching: Tensor, beam_size: int = 1) -> Tensor | None:
    """Indices into A of the sentences a search keeps once some are done: the searching ones
    first, then done ones to fill a bucket of about `ROW_BUCKET` decoder rows (`bucketed`);
    None when that is all of them. searching: (A,) bool, at least one True."""
    kept = bucketed(int(searching.sum()), -(-ROW_BUCKET // beam_size))
    if kept >= searching.numel():
        return None
    return torch.argsort(~searching, stable=True)[:kept]


def first_state(
    model: torch.nn.Module,
    source: Tensor,
    source_lengths: Tensor,
    vocabulary: BatchVocabulary | None,
) -> object:
    """The model's first decoder state; with a shortlist's `vocabulary`, one whose steps
    score only its ids (logits (R, C), each sentence's softmax over its own list: scores
    are log-probabilities within it)."""
    state = model.encode(source, source_lengths)
    if vocabulary is None:
        return state
    return model.restrict(state, vocabulary.ids, vocabulary.allowed)


CPU = torch.device("cpu")


def _hypothesis(
    ids: list[int], attention: Tensor, log_probability: float, score: float | None = None
) -> Hypothesis:
    """A finished output from its ids (eos included when produced); `score` defaults to the
    log-probability."""
    if ids and ids[-1] == EOS_ID:
        ids = ids[:-1]
    # a copy: a view would keep the whole batch's attention alive as long as the hypothesis
    attention = attention.to(CPU, copy=True)
    return Hypothesis(ids, log_probability if score is None else score, log_probability, attention)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty ((5 + length) / 6) ** alpha: alpha 0 ranks by log-probability."""
    return ((5 + length) / 6) ** alpha


def coverage_penalty(coverage: Tensor, beta: float) -> Tensor:
    """GNMT's coverage penalty beta * sum_s log(min(coverage_s, 1)), (R,) from (R, S).

    coverage_s is the attention a hypothesis has paid source token s so far. The penalty
    is 0 once every token has had a full share and falls for each token left unread, the
    mark of a dropped phrase. Coverage is floored at 1e-6 so that an unread token costs
    a finite 13.8 * beta (and beta 0 costs nothing).
    """
    return beta * coverage.clamp(min=1e-6, max=1.0).log().sum(-1)


@dataclass
class Extensions:
    """The 2K best one-token extensions of each searching sentence's beams, best first.

    Attributes:
        ranked: (A, 2K) what they rank by: log-probability + length x coverage penalty.
        log_probabilities: (A, 2K) their log-probabilities.
        rows: (A, 2K) the decoder row (into R) each extends.
        tokens: (A, 2K) the token each adds.
        weights: (R, S) this step's attention of every row.
        coverage: (R, S) every row's coverage after this step.
        coverage_penalty: (R,) its coverage penalty.
        length_penalty: this step's length penalty (every extension has the same length).
    """

    ranked: Tensor
    log_probabilities: Tensor
    rows: Tensor
    tokens: Tensor
    weights: Tensor
    coverage: Tensor
    coverage_penalty: Tensor
    length_penalty: float

    @property
    def is_eos(self) -> Tensor:
        return self.tokens == EOS_ID


@dataclass
class BeamState:
    """What beam search carries between steps for the A sentences still searching.

    Each sentence's rows lie side by side: R = A on the first step (its beams would all be
    the same), A * K from the second on. Decoder rows and these rows are the same rows.

    Attributes:
        decoder: the model's decoder state, R rows.
        sentences: (A,) each searching sentence's index into the batch.
        scores: (A, R/A) the log-probabilities of its beams.
        previous: (R,) each row's last token.
        history: (R, t) each row's tokens so far.
        attention: (R, t, S) each row's attention so far.
        coverage: (R, S) each row's attention summed over the steps; padding counts as read.
    """

    decoder: object
    sentences: Tensor
    scores: Tensor
    previous: Tensor
    history: Tensor
    attention: Tensor
    coverage: Tensor

    @classmethod
    def start(cls, decoder: object, source_lengths: Tensor, source_len: int) -> BeamState:
        """One row per sentence, at bos, nothing read yet."""
        batch, device = source_lengths.numel(), source_lengths.device
        positions = torch.arange(source_len, device=device)
        return cls(
            decoder=decoder,
            sentences=torch.arange(batch, device=device),
            scores=torch.zeros(batch, 1, device=device),
            previous=torch.full((batch,), BOS_ID, dtype=torch.long, device=device),
            history=torch.empty(batch, 0, dtype=torch.long, device=device),
            attention=torch.empty(batch, 0, source_len, device=device),
            coverage=(positions >= source_lengths.unsqueeze(1)).float(),
        )

    def expand(
        self,
        logits: Tensor,
        weights: Tensor,
        length: int,
        settings: SearchSettings,
        vocabulary: BatchVocabulary | None = None,
    ) -> Extensions:
        """Rank the extensions of every row by this step's logits (R, V) and weights (R, S);
        with a shortlist, logits (R, C) over the target ids `vocabulary.ids` (C,).

        Every extension of a row shares its coverage, and every extension of this step
        its length: ranking by log-probability + length penalty * coverage penalty is
        ranking by log-probability / length penalty + coverage penalty.
        """
        coverage = self.coverage + weights.float()  # (R, S)
        penalty = length_penalty(length, settings.alpha)
        row_coverage = coverage_penalty(coverage, settings.beta)  # (R,)
        row_bonus = penalty * row_coverage  # (R,)
        ranked, rows, tokens = best_extensions(
            logits, self.scores + row_bonus.view_as(self.scores), 2 * settings.beam_size
        )
        tokens = tokens if vocabulary is None else vocabulary.ids[tokens]
        return Extensions(
            ranked=ranked,
            log_probabilities=ranked - row_bonus[rows],
            rows=rows,
            tokens=tokens,
            weights=weights.float(),
            coverage=coverage,
            coverage_penalty=row_coverage,
            length_penalty=penalty,
        )

    def finish(
        self, extensions: Extensions, final: Tensor, source_lengths: list[int]
    ) -> list[tuple[int, Hypothesis]]:
        """The hypotheses that `final` (A, 2K) marks as ended, with their sentence indices."""
        a, j = final.nonzero(as_tuple=True)  # one pair per finished hypothesis: F of them
        rows = extensions.rows[a, j]
        steps = torch.cat((self.history[rows], extensions.tokens[a, j].unsqueeze(1)), dim=1)
        # (F, t+1, S)
        attention = torch.cat((self.attention[rows], extensions.weights[rows].unsqueeze(1)), dim=1)
        coverage = extensions.coverage_penalty[rows].tolist()
        log_probabilities = extensions.log_probabilities[a, j].tolist()
        finished = []
        for f, (sentence, ids) in enumerate(zip(self.sentences[a].tolist(), steps.tolist())):
            score = log_probabilities[f] / extensions.length_penalty + coverage[f]
            hypothesis = _hypothesis(
                ids, attention[f, :, : source_lengths[sentence]], log_probabilities[f], score
            )
            finished.append((sentence, hypothesis))
        return finished

    def select(self, decoder: object, extensions: Extensions, beam_size: int) -> BeamState:
        """The next state: each sentence's `beam_size` best extensions that do not end it."""
        ranked = extensions.ranked.masked_fill(extensions.is_eos, float("-inf"))
        pick = ranked.topk(beam_size, dim=-1).indices  # (A, K)
        rows = extensions.rows.gather(1, pick).flatten()  # (A*K,)
        previous = extensions.tokens.gather(1, pick).flatten()  # (A*K,)
        return BeamState(
            decoder=decoder.select_beams(rows),
            sentences=self.sentences,
            scores=extensions.log_probabilities.gather(1, pick),
            previous=previous,
            history=torch.cat((self.history[rows], previous.unsqueeze(1)), dim=1),
            attention=torch.cat(
                (self.attention[rows], extensions.weights[rows].unsqueeze(1)), dim=1
            ),
            coverage=extensions.coverage[rows],
        )

    def keep_sentences(self, keep: Tensor) -> BeamState:
        """Only the sentences at `keep` (indices into A), their K rows each."""
        beam_size = self.scores.size(1)
        beams = torch.arange(beam_size, device=keep.device)
        rows = (keep.unsqueeze(1) * beam_size + beams).flatten()
        return BeamState(
            decoder=self.decoder.select_sentences(keep),
            sentences=self.sentences[keep],
            scores=self.scores[keep],
            previous=self.previous[rows],
            history=self.history[rows],
            attention=self.attention[rows],
            coverage=self.coverage[rows],
        )


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    source: Tensor,
    source_lengths: Tensor,
    settings: SearchSettings,
    vocabulary: BatchVocabulary | None = None,
) -> list[list[Hypothesis]]:
    """Beam search for a whole batch: every sentence and beam in one decoder call per step.

    Each step ranks the 2 * beam_size best extensions of every sentence: those ending in
    eos among the first beam_size are set aside as finished, the best beam_size others go
    on, so finished hypotheses never starve the beam. A sentence is done when its best
    extension ends it and it holds `nbest` finished hypotheses (OpenNMT-py's rule: faster
    than waiting for beam_size of them at the same BLEU), or at its length cap; done
    sentences leave the batch. The vocabulary must hold 2 * beam_size tokens. Returns, per
    sentence, its `nbest` hypotheses, best first. `vocabulary`: the target ids a shortlist
    allows (`first_state`).

    Hypotheses rank by log-probability / length penalty (`alpha`) + coverage penalty
    (`beta`), at every step (OpenNMT-py's stepwise penalty): left to log-probability
    alone, a beam drops source phrases and stops early.
    """
    batch, source_len = source.shape
    device = source.device
    caps = settings.output_caps(source_lengths).to(device)  # (B,)
    source_length_list = source_lengths.tolist()
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    finished_count = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    in_beam = torch.arange(2 * settings.beam_size, device=device) < settings.beam_size  # (2K,)

    state = first_state(model, source, source_lengths, vocabulary)
    beam = BeamState.start(state, source_lengths, source_len)
    # (A,) not yet done; done sentences leave a bucket at a time (`rows_to_keep`)
    searching = torch.ones(batch, dtype=torch.bool, device=device)
    for t in range(int(caps.max())):
        logits, weights, decoder = model.decode_step(beam.decoder, beam.previous)  # (R, V), (R, S)
        extensions = beam.expand(logits, weights, t + 1, settings, vocabulary)
        at_cap = t + 1 >= caps[beam.sentences]  # (A,)
        # (A, 2K): a done sentence kept to fill its bucket ends nothing more
        final = in_beam & (extensions.is_eos | at_cap.unsqueeze(1)) & searching.unsqueeze(1)
        if final.any():
            for sentence, hypothesis in beam.finish(extensions, final, source_length_list):
                finished[sentence].append(hypothesis)
            finished_count.index_add_(0, beam.sentences, final.sum(1))
        beam = beam.select(decoder, extensions, settings.beam_size)
        done = at_cap | (final[:, 0] & (finished_count[beam.sentences] >= settings.nbest))  # (A,)
        if (done & searching).any():
            searching &= ~done
            if not searching.any():
                break
            keep = rows_to_keep(searching, settings.beam_size)
            if keep is not None:
                beam, searching = beam.keep_sentences(keep), searching[keep]
    return [sorted(hypotheses, key=lambda h: -h.score)[: settings.nbest] for hypotheses in finished]


def best_extensions(logits: Tensor, scores: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """The `count` best one-token extensions of each sentence's beams.

    logits: (A*K, V) for the K beams of A sentences; scores: (A, K) their log-probabilities.
    Returns the extended scores, the beam rows (into A*K) they extend and their tokens,
    each (A, count), best first.
    """
    sentences, k = scores.shape
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (A*K, V)
    vocab = log_probs.size(-1)
    # in place: no second (A*K, V) copy
    candidates = log_probs.add_(scores.view(-1, 1)).view(sentences, k * vocab)  # (A, K*V)
    top_scores, flat = top_k(candidates, count)  # (A, count)
    first_rows = torch.arange(sentences, device=scores.device).unsqueeze(1) * k  # (A, 1)
    rows = torch.div(flat, vocab, rounding_mode="floor") + first_rows
    return top_scores, rows, flat % vocab


def top_k(values: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """`values.topk(count, dim=-1)` of a 2-d tensor, for long rows faster on a CPU.

    A row's best `count` values lie in the `count` chunks of it with the highest maxima
    (a value outside them has `count` chunk maxima above it), and chunk maxima are a
    vectorised reduction where the CPU's topk over a whole row is not. A GPU's topk is
    fast, and there the extra kernel launches would cost more. Equal values may come out
    in another order than `topk`'s.
    """
    rows, length = values.shape
    chunk = chunk_size(length)
    chunks = -(-length // chunk)
    if chunks <= 2 * count or values.device.type != "cpu":
        return values.topk(count, dim=-1)
    if length % chunk:
        values = F.pad(values, (0, chunks * chunk - length), value=float("-inf"))
    values = values.view(rows, chunks, chunk)
    best_chunks = values.amax(dim=-1).topk(count, dim=-1).indices  # (R, count)
    gathered = values.gather(1, best_chunks.unsqueeze(-1).expand(-1, -1, chunk))
    top, within = gathered.view(rows, -1).topk(count, dim=-1)  # (R, count)
    chunk_of = best_chunks.gather(1, torch.div(within, chunk, rounding_mode="floor"))
    return top, chunk_of * chunk + within % chunk


def chunk_size(length: int) -> int:
    """A chunk length near 100 that divides `length` if one does (no padding copy), else 100."""
    return next((size for size in range(100, 63, -1) if length % size == 0), 100)
