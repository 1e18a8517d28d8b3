"""The network: a bidirectional recurrent encoder and a recurrent decoder that attends with `Attn`.

The recurrent cell is the course's GRU by default, or its LSTM or plain tanh RNN
(`ModelConfig.cell`). Two decoders: `bahdanau`, the course's N-vs-M decoder (a recurrent
layer over the previous words, whose outputs query `Attn`), and `cgru`, the conditional
GRU of Nematus (a first cell over the previous word, `Attn` queried with its state, a
second cell over the attended context).

A plain `nn.Module` (no Lightning here). Search talks to it only through `encode` and
`decode_step`, with a `DecoderState` whose rows follow the sentences and beams it keeps.

Shapes: B batch, S source length, T target length, E embedding size, H encoder hidden
size per direction, M encoder state size (2H, or H one way), D decoder hidden size, O
attention output size, V vocabulary size, L decoder layers, R decoder rows (B, or B * beams
in beam search).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.core.attention import Attn
from seq2seq.core.tokenizer import PAD_ID
from seq2seq.errors import Seq2SeqError

Cell = Literal["gru", "lstm", "rnn"]
DecoderKind = Literal["bahdanau", "cgru"]
CELLS, DECODERS = get_args(Cell), get_args(DecoderKind)
# h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) for "rnn": torch's default nonlinearity
RECURRENT_LAYERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
RECURRENT_CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}


@dataclass(frozen=True)
class ModelConfig:
    """Every size and switch of the network; stored in checkpoints to rebuild it.

    Attributes:
        embedding_size: source and target embedding size.
        encoder_hidden_size: recurrent size per direction.
        encoder_layers: stacked encoder recurrent layers.
        bidirectional: the encoder reads the sentence both ways (its states are then twice
            `encoder_hidden_size` wide), or left to right only.
        decoder_hidden_size: decoder recurrent size.
        decoder_layers: stacked decoder recurrent layers (1 for `cgru`).
        cell: the recurrent cell of encoder and decoder: gru, lstm or rnn (plain tanh).
        encoder_cell: the encoder's own cell, when it differs from `cell`.
        decoder_cell: the decoder's own cell, when it differs from `cell`.
        decoder: bahdanau (attention after the recurrent layers) or cgru (conditional:
            attention between two cells, the second reading the attended context).
        attention: score rule of `Attn`: additive, dot or concat.
        attention_size: hidden size of the additive rule (default: decoder_hidden_size).
        max_source_length: positions the concat rule can attend to (unused by the others).
        dropout: on embeddings, between GRU layers and before the output layer.
        word_dropout: in training, the share of source and target tokens whose whole
            embedding is zeroed (Gal and Ghahramani, 2016; Sennrich and Zhang, 2019): a
            word must then be translated from its context too, which regularises a small
            corpus more than unit dropout alone.
        tie_embeddings: share the target embedding with the output layer (the attention
            output then has the embedding size).
    """

    embedding_size: int = 256
    encoder_hidden_size: int = 256
    encoder_layers: int = 1
    bidirectional: bool = True
    decoder_hidden_size: int = 512
    decoder_layers: int = 1
    attention: str = "additive"
    attention_size: int | None = None
    max_source_length: int = 128
    dropout: float = 0.2
    word_dropout: float = 0.0
    tie_embeddings: bool = False
    cell: Cell = "gru"
    encoder_cell: Cell | None = None
    decoder_cell: Cell | None = None
    decoder: DecoderKind = "bahdanau"

    def __post_init__(self) -> None:
        for name in ("dropout", "word_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise Seq2SeqError(
                    f"model.network.{name}={value} is a probability: give a value from 0 up to "
                    f"(not including) 1"
                )
        for name in ("cell", "encoder_cell", "decoder_cell"):
            value = getattr(self, name)
            if value is not None and value not in CELLS:
                raise Seq2SeqError(
                    f"unknown model cell {name}={value!r}; choose one of {', '.join(CELLS)}"
                )
        if self.decoder not in DECODERS:
            raise Seq2SeqError(
                f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}"
            )
        if self.decoder == "cgru" and self.decoder_layers != 1:
            raise Seq2SeqError(
                f"the cgru decoder has one layer (two cells around the attention), got "
                f"decoder_layers={self.decoder_layers}: set decoder_layers 1 or decoder bahdanau"
            )

    @property
    def memory_size(self) -> int:
        """The width of the encoder states (2H, or H one way): the attention's values."""
        return (2 if self.bidirectional else 1) * self.encoder_hidden_size

    @property
    def encoder_cell_type(self) -> str:
        return self.encoder_cell or self.cell

    @property
    def decoder_cell_type(self) -> str:
        return self.decoder_cell or self.cell

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise Seq2SeqError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


Recurrent = Tensor | tuple[Tensor, Tensor]  # a recurrent layer's state: h, or the LSTM's (h, c)


@dataclass
class DecoderState:
    """What the decoder carries between steps, batch-first except `hidden` and `cell_state`.

    Beam search decodes `beams` hypotheses per sentence: the decoder rows are then the
    sentences' beams side by side (B * beams of them), while the encoder states stay one
    per sentence and every beam attends to its own sentence's (no copies).

    Attributes:
        hidden: (L, R, D) decoder state h.
        memory: (B, S, M) encoder states (M = 2H, or H one way): the attention values.
        keys: (B, S, *) attention keys, projected once per batch.
        source_mask: (B, S) True on real source positions.
        cell_state: (L, R, D) the LSTM's cell c; None for the GRU and the plain RNN.
        beams: decoder rows per sentence.
        output_weight: (C, O) the output layer's rows of the C target ids a shortlist
            allows (`Seq2Seq.restrict`), so logits are (R, C); None: all V ids.
        output_allowed: (B, C) which of those ids each sentence's own list holds; the
            others' logits are -inf.
    """

    hidden: Tensor
    memory: Tensor
    keys: Tensor
    source_mask: Tensor
    cell_state: Tensor | None = None
    beams: int = 1
    output_weight: Tensor | None = None
    output_allowed: Tensor | None = None

    @property
    def recurrent(self) -> Recurrent:
        """The state in the form torch's recurrent layers take."""
        return self.hidden if self.cell_state is None else (self.hidden, self.cell_state)

    def with_recurrent(self, recurrent: Recurrent) -> DecoderState:
        """This state with a recurrent layer's new one."""
        if isinstance(recurrent, tuple):
            return replace(self, hidden=recurrent[0], cell_state=recurrent[1])
        return replace(self, hidden=recurrent)

    def _rows(self, rows: Tensor, **changes) -> DecoderState:
        """The decoder rows `rows` (R'), with `changes` to the other fields."""
        cell_state = None if self.cell_state is None else self.cell_state.index_select(1, rows)
        return replace(
            self, hidden=self.hidden.index_select(1, rows), cell_state=cell_state, **changes
        )

    def select_sentences(self, indices: Tensor) -> DecoderState:
        """Keep (or repeat) the sentences `indices`, all their beams: how finished sentences
        leave."""
        rows = (
            indices.unsqueeze(1) * self.beams + torch.arange(self.beams, device=indices.device)
        ).flatten()
        allowed = self.output_allowed
        return self._rows(
            rows,
            memory=self.memory.index_select(0, indices),
            keys=self.keys.index_select(0, indices),
            source_mask=self.source_mask.index_select(0, indices),
            output_allowed=None if allowed is None else allowed.index_select(0, indices),
        )

    def select_beams(self, rows: Tensor) -> DecoderState:
        """Follow the beams beam search chose: `rows` (B * beams) index the current rows, each
        within its own sentence. Their count sets the beams per sentence, so the first step can
        grow one row per sentence into `beams` (the encoder states stay shared)."""
        return self._rows(rows, beams=rows.numel() // self.memory.size(0))


class WordDropout(nn.Module):
    """Zeroes whole token embeddings with probability `p` in training, scaling the kept ones
    by 1 / (1 - p) as unit dropout does; the identity in evaluation."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, embedded: Tensor) -> Tensor:
        """embedded: (B, T, E). One draw per token, shared by its E units."""
        if not self.training or self.p == 0.0:
            return embedded
        keep = torch.empty_like(embedded[..., :1]).bernoulli_(1.0 - self.p)  # (B, T, 1)
        return embedded * keep / (1.0 - self.p)


class Encoder(nn.Module):
    """Embedding → word and unit dropout → (bidirectional) multi-layer GRU, LSTM or RNN over
    packed sequences."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.word_dropout = WordDropout(config.word_dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = RECURRENT_LAYERS[config.encoder_cell_type](
            config.embedding_size,
            config.encoder_hidden_size,
            num_layers=config.encoder_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
        )
        self.directions = 2 if config.bidirectional else 1

    def forward(self, source: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """source: (B, S) ids, source_lengths: (B,). Returns states (B, S, M) and final (B, M)."""
        embedded = self.dropout(self.word_dropout(self.embedding(source)))  # (B, S, E)
        packed = pack_padded_sequence(
            embedded, source_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, last = self.rnn(packed)  # last: (layers * directions, B, H), or the LSTM's (h, c)
        last = last[0] if isinstance(last, tuple) else last
        # (B, S, M)
        states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.size(1))
        final = torch.cat(tuple(last[-self.directions :]), dim=-1)  # (B, M): the top layer's
        return states, final


class Decoder(nn.Module):
    """What both decoders share: target embeddings, the bridge from the encoder, `Attn` and
    the output layer. A subclass's `features` runs the recurrence and the attention."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        memory_size = config.memory_size
        output_size = config.embedding_size if config.tie_embeddings else config.decoder_hidden_size
        self.layers = config.decoder_layers
        self.is_lstm = config.decoder_cell_type == "lstm"
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.word_dropout = WordDropout(config.word_dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.bridge = nn.Linear(memory_size, config.decoder_layers * config.decoder_hidden_size)
        # concat scores from (decoder output, input embedding), as the course pairs query and key.
        key_size = config.embedding_size if config.attention == "concat" else memory_size
        self.attention = Attn(
            config.decoder_hidden_size,
            key_size,
            config.max_source_length,
            memory_size,
            output_size,
            rule=config.attention,
            attention_size=config.attention_size or config.decoder_hidden_size,
        )
        self.output = nn.Linear(output_size, vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.embedding.weight

    def initial_state(self, memory: Tensor, final: Tensor, source_mask: Tensor) -> DecoderState:
        """h from the encoder's final states through the bridge; an LSTM's c starts at zero."""
        batch = final.size(0)
        # (L, B, D)
        hidden = (
            torch.tanh(self.bridge(final)).view(batch, self.layers, -1).transpose(0, 1).contiguous()
        )
        keys = self.attention.project_keys(memory)
        cell_state = torch.zeros_like(hidden) if self.is_lstm else None
        return DecoderState(hidden, memory, keys, source_mask, cell_state)

    def forward(self, state: DecoderState, previous: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """previous: (R, T) input ids. Returns logits (R, T, V), or (R, T, C) over a shortlist,
        attention (R, T, S) and the new state."""
        features, weights, state = self.features(state, previous)
        logits = self.project(features, state.output_weight)  # (R, T, V) or (R, T, C)
        if state.output_allowed is not None:
            allowed = state.output_allowed.repeat_interleave(state.beams, dim=0)  # (R, C)
            logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        return logits, weights, state

    def embed(self, previous: Tensor) -> Tensor:
        """previous: (R, T) ids to their embeddings (R, T, E), word and unit dropout applied."""
        return self.dropout(self.word_dropout(self.embedding(previous)))

    def features(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """Everything but the output layer: features (R, T, O), attention (R, T, S), new state."""
        raise NotImplementedError

    def attention_keys(self, state: DecoderState, embedded: Tensor) -> Tensor:
        """What the attention's queries score against: the keys projected once per batch, or for
        the position-based concat rule the input embeddings (R, T, E), one per query."""
        if self.attention.rule != "concat":
            return state.keys
        return embedded.reshape(state.memory.size(0), -1, embedded.size(-1))

    def project(self, features: Tensor, weight: Tensor | None = None) -> Tensor:
        """The output layer: features (..., O) to logits (..., V), or with `weight` (C, O),
        some of its rows, to logits (..., C)."""
        hidden = self.dropout(torch.tanh(features))
        return self.output(hidden) if weight is None else F.linear(hidden, weight)

    def output_rows(self, vocabulary: Tensor) -> Tensor:
        """The output layer's weight rows (C, O) of target ids `vocabulary` (C,)."""
        weight = self.output.weight
        # an int8 layer (dynamic quantization) gives its weight by a call: dequantized here
        weight = weight() if callable(weight) else weight
        rows = weight.index_select(0, vocabulary)
        return rows.dequantize() if rows.is_quantized else rows


class BahdanauDecoder(Decoder):
    """The course's N-vs-M decoder: a recurrent layer over the target embeddings whose outputs
    query `Attn` over the encoder states.

    Training runs the recurrent layer over the whole target at once (teacher forcing) and
    attends for all steps in one batched call; a one-token call does the same for one step,
    so the two agree.
    """

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__(vocab_size, config)
        self.rnn = RECURRENT_LAYERS[config.decoder_cell_type](
            config.embedding_size,
            config.decoder_hidden_size,
            num_layers=config.decoder_layers,
            batch_first=True,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0,
        )

    def features(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        rows, steps = previous.shape  # rows = B * beams
        embedded = self.embed(previous)  # (R, T, E)
        outputs, recurrent = self.rnn(embedded, state.recurrent)  # (R, T, D)
        # a sentence's beams query its memory together: (B, beams * T, D)
        queries = outputs.reshape(state.memory.size(0), state.beams * steps, -1)
        attended, weights = self.attention.attend(
            queries, self.attention_keys(state, embedded), state.memory, state.source_mask
        )
        # (R, T, O), (R, T, S)
        return (
            attended.view(rows, steps, -1),
            weights.view(rows, steps, -1),
            state.with_recurrent(recurrent),
        )


class ConditionalDecoder(Decoder):
    """The conditional GRU (Nematus; Sennrich et al., 2017), with any of the cells:

        s'_t = cell_1(y_{t-1}, s_{t-1})       the first cell reads the previous word
        c_t  = Attn(query s'_t, encoder states)
        s_t  = cell_2(c_t, s'_t)              the second reads what it attended to
        features_t = attn_combine([s_t; c_t])

    The attention's query already knows the previous word, and the state carried to the
    next step has read the context. Each step needs the last one's state, so training runs
    step by step too; the output layer still runs over all steps at once.
    """

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__(vocab_size, config)
        cell = RECURRENT_CELLS[config.decoder_cell_type]
        self.first = cell(config.embedding_size, config.decoder_hidden_size)
        self.second = cell(config.memory_size, config.decoder_hidden_size)

    def features(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        rows, steps = previous.shape  # rows = B * beams
        per_sentence = (state.memory.size(0), state.beams, -1)  # a sentence's beams query together
        embedded = self.embed(previous)  # (R, T, E)
        keys = self.attention_keys(state, embedded)
        recurrent = self._cell_state(state)  # (R, D), or the LSTM's pair
        features, weights = [], []
        for t in range(steps):
            recurrent = self.first(embedded[:, t], recurrent)
            query = self._hidden(recurrent).view(per_sentence)  # (B, beams, D)
            step_keys = keys if self.attention.rule != "concat" else keys[:, t::steps]
            context, step_weights = self.attention.context(
                query, step_keys, state.memory, state.source_mask
            )  # (B, beams, M), (B, beams, S)
            recurrent = self.second(context.reshape(rows, -1), recurrent)
            combined = self.attention.combine(self._hidden(recurrent).view(per_sentence), context)
            features.append(combined.reshape(rows, -1))  # (R, O)
            weights.append(step_weights.reshape(rows, -1))  # (R, S)
        if isinstance(recurrent, tuple):
            state = state.with_recurrent((recurrent[0][None], recurrent[1][None]))
        else:
            state = state.with_recurrent(recurrent[None])
        # (R, T, O), (R, T, S)
        return torch.stack(features, dim=1), torch.stack(weights, dim=1), state

    @staticmethod
    def _cell_state(state: DecoderState) -> Recurrent:
        """The one layer's state as the cells take it: (R, D), or the LSTM's pair."""
        recurrent = state.recurrent
        return (recurrent[0][0], recurrent[1][0]) if isinstance(recurrent, tuple) else recurrent[0]

    @staticmethod
    def _hidden(recurrent: Recurrent) -> Tensor:
        return recurrent[0] if isinstance(recurrent, tuple) else recurrent


DECODER_CLASSES = {"bahdanau": BahdanauDecoder, "cgru": ConditionalDecoder}  # by DECODERS


class Seq2Seq(nn.Module):
    """Encoder + attention decoder. `forward` is the teacher-forced training pass."""

    def __init__(
        self, source_vocab_size: int, target_vocab_size: int, config: ModelConfig = ModelConfig()
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(source_vocab_size, config)
        self.decoder = DECODER_CLASSES[config.decoder](target_vocab_size, config)

    def encode(self, source: Tensor, source_lengths: Tensor) -> DecoderState:
        """source: (B, S) ids ending in eos, source_lengths: (B,). The decoder's first state."""
        memory, final = self.encoder(source, source_lengths)  # (B, S, M), (B, M)
        source_mask = source != PAD_ID  # (B, S)
        return self.decoder.initial_state(memory, final, source_mask)

    def restrict(self, state: DecoderState, ids: Tensor, allowed: Tensor) -> DecoderState:
        """`state` whose steps score only the target ids `ids` (C,), each sentence only those
        `allowed` (B, C) marks: logit column c is the full output layer's for id ids[c],
        -inf where the sentence's list lacks it."""
        return replace(state, output_weight=self.decoder.output_rows(ids), output_allowed=allowed)

    def decode_step(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """previous: (B,) last tokens. Returns logits (B, V) (or (B, C) for a `restrict`ed
        state), attention (B, S), next state."""
        logits, weights, state = self.decoder(state, previous.unsqueeze(1))
        return logits.squeeze(1), weights.squeeze(1), state

    def forward(
        self,
        source: Tensor,
        source_lengths: Tensor,
        target_in: Tensor,
        teacher_forcing: float = 1.0,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, V) for target_in (B, T) = bos + target, or (N, V) at the N True
        `positions` (B, T).

        Training asks only for the real (non-padding) positions: the output layer, the
        widest matrix product of the network, then skips the padding.
        With teacher_forcing < 1, each step feeds the model's own previous prediction
        instead of the reference with probability 1 - teacher_forcing (per sentence).
        """
        state = self.encode(source, source_lengths)
        if teacher_forcing >= 1.0:
            features = self.decoder.features(state, target_in)[0]  # (B, T, O)
            return self.decoder.project(features if positions is None else features[positions])
        steps = []
        previous = target_in[:, 0]  # (B,)
        for t in range(target_in.size(1)):
            logits, _, state = self.decode_step(state, previous)  # (B, V)
            steps.append(logits)
            if t + 1 < target_in.size(1):
                use_reference = torch.rand(previous.shape, device=previous.device) < teacher_forcing
                previous = torch.where(use_reference, target_in[:, t + 1], logits.argmax(-1))
        logits = torch.stack(steps, dim=1)  # (B, T, V)
        return logits if positions is None else logits[positions]
