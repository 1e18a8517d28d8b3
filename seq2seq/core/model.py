"""The network: a bidirectional GRU encoder and a GRU decoder that attends with `Attn`.

A plain `nn.Module` (no Lightning here). Search talks to it only through `encode` and
`decode_step`, with a `DecoderState` whose rows follow the sentences and beams it keeps.

Shapes: B batch, S source length, T target length, E embedding size, H encoder hidden
size per direction, D decoder hidden size, O attention output size, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.core.attention import Attn
from seq2seq.core.tokenizer import PAD_ID
from seq2seq.errors import Seq2SeqError


@dataclass(frozen=True)
class ModelConfig:
    """Every size and switch of the network; stored in checkpoints to rebuild it.

    Attributes:
        embedding_size: source and target embedding size.
        encoder_hidden_size: GRU size per direction (the encoder states are twice this).
        encoder_layers: stacked bidirectional GRU layers.
        decoder_hidden_size: decoder GRU size.
        decoder_layers: stacked decoder GRU layers.
        attention: score rule of `Attn`: additive, dot or concat.
        attention_size: hidden size of the additive rule (default: decoder_hidden_size).
        max_source_length: positions the concat rule can attend to (unused by the others).
        dropout: on embeddings, between GRU layers and before the output layer.
        tie_embeddings: share the target embedding with the output layer (the attention
            output then has the embedding size).
    """

    embedding_size: int = 256
    encoder_hidden_size: int = 256
    encoder_layers: int = 1
    decoder_hidden_size: int = 512
    decoder_layers: int = 1
    attention: str = "additive"
    attention_size: int | None = None
    max_source_length: int = 128
    dropout: float = 0.2
    tie_embeddings: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise Seq2SeqError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class DecoderState:
    """What the decoder carries between steps, batch-first except `hidden`.

    Beam search decodes `beams` hypotheses per sentence: the decoder rows are then the
    sentences' beams side by side (B * beams of them), while the encoder states stay one
    per sentence and every beam attends to its own sentence's (no copies).

    Attributes:
        hidden: (L, B * beams, D) decoder GRU state.
        memory: (B, S, 2H) encoder states: the attention values.
        keys: (B, S, *) attention keys, projected once per batch.
        source_mask: (B, S) True on real source positions.
        beams: decoder rows per sentence.
    """

    hidden: Tensor
    memory: Tensor
    keys: Tensor
    source_mask: Tensor
    beams: int = 1

    def select_sentences(self, indices: Tensor) -> DecoderState:
        """Keep (or repeat) the sentences `indices`, all their beams: how finished sentences
        leave."""
        rows = (
            indices.unsqueeze(1) * self.beams + torch.arange(self.beams, device=indices.device)
        ).flatten()
        return DecoderState(
            self.hidden.index_select(1, rows),
            self.memory.index_select(0, indices),
            self.keys.index_select(0, indices),
            self.source_mask.index_select(0, indices),
            self.beams,
        )

    def select_beams(self, rows: Tensor) -> DecoderState:
        """Follow the beams beam search chose: `rows` (B * beams) index the current rows, each
        within its own sentence. Their count sets the beams per sentence, so the first step can
        grow one row per sentence into `beams` (the encoder states stay shared)."""
        beams = rows.numel() // self.memory.size(0)
        return DecoderState(
            self.hidden.index_select(1, rows), self.memory, self.keys, self.source_mask, beams
        )


class Encoder(nn.Module):
    """Embedding → dropout → bidirectional multi-layer GRU over packed sequences."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = nn.GRU(
            config.embedding_size,
            config.encoder_hidden_size,
            num_layers=config.encoder_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
        )

    def forward(self, source: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """source: (B, S) ids, source_lengths: (B,). Returns states (B, S, 2H) and final (B, 2H)."""
        embedded = self.dropout(self.embedding(source))  # (B, S, E)
        packed = pack_padded_sequence(
            embedded, source_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, last = self.rnn(packed)  # last: (layers * 2, B, H)
        # (B, S, 2H)
        states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.size(1))
        final = torch.cat((last[-2], last[-1]), dim=-1)  # (B, 2H): top layer, both directions
        return states, final


class Decoder(nn.Module):
    """A GRU over target embeddings whose outputs attend over the encoder states.

    Training runs the GRU over the whole target at once (teacher forcing) and attends for
    all steps in one batched call; `step` does the same for one token, so the two agree.
    """

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        memory_size = 2 * config.encoder_hidden_size
        output_size = config.embedding_size if config.tie_embeddings else config.decoder_hidden_size
        self.layers = config.decoder_layers
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.bridge = nn.Linear(memory_size, config.decoder_layers * config.decoder_hidden_size)
        self.rnn = nn.GRU(
            config.embedding_size,
            config.decoder_hidden_size,
            num_layers=config.decoder_layers,
            batch_first=True,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0,
        )
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
        batch = final.size(0)
        # (L, B, D)
        hidden = (
            torch.tanh(self.bridge(final)).view(batch, self.layers, -1).transpose(0, 1).contiguous()
        )
        return DecoderState(hidden, memory, self.attention.project_keys(memory), source_mask)

    def forward(self, state: DecoderState, previous: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """previous: (B, T) input ids. Returns logits (B, T, V), attention (B, T, S), new state."""
        features, weights, state = self.features(state, previous)
        return self.project(features), weights, state

    def features(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """Everything but the output layer: features (B, T, O), attention (B, T, S), new state."""
        rows, steps = previous.shape  # rows = B * beams
        embedded = self.dropout(self.embedding(previous))  # (B * beams, T, E)
        outputs, hidden = self.rnn(embedded, state.hidden)  # (B * beams, T, D)
        # a sentence's beams query its memory together
        per_sentence = (
            state.memory.size(0),
            state.beams * steps,
        )
        keys = (
            embedded.reshape(*per_sentence, -1) if self.attention.rule == "concat" else state.keys
        )
        attended, weights = self.attention.attend(
            outputs.reshape(*per_sentence, -1), keys, state.memory, state.source_mask
        )
        state = DecoderState(hidden, state.memory, state.keys, state.source_mask, state.beams)
        # (B * beams, T, O), (B * beams, T, S)
        return (
            attended.view(rows, steps, -1),
            weights.view(rows, steps, -1),
            state,
        )

    def project(self, features: Tensor) -> Tensor:
        """The output layer: features (..., O) to logits (..., V)."""
        return self.output(self.dropout(torch.tanh(features)))


class Seq2Seq(nn.Module):
    """Encoder + attention decoder. `forward` is the teacher-forced training pass."""

    def __init__(
        self, source_vocab_size: int, target_vocab_size: int, config: ModelConfig = ModelConfig()
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(source_vocab_size, config)
        self.decoder = Decoder(target_vocab_size, config)

    def encode(self, source: Tensor, source_lengths: Tensor) -> DecoderState:
        """source: (B, S) ids ending in eos, source_lengths: (B,). The decoder's first state."""
        memory, final = self.encoder(source, source_lengths)  # (B, S, 2H), (B, 2H)
        source_mask = source != PAD_ID  # (B, S)
        return self.decoder.initial_state(memory, final, source_mask)

    def decode_step(
        self, state: DecoderState, previous: Tensor
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """previous: (B,) last tokens. Returns logits (B, V), attention (B, S), next state."""
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
