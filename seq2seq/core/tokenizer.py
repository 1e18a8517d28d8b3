"""SentencePiece: the only vocabulary. Text ↔ subword ids with fixed special ids.

The trained model is kept as bytes (its serialized proto) so it can travel inside a
checkpoint; nothing else is needed to turn a checkpoint's output back into text.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from seq2seq.errors import Seq2SeqError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# characters in one piece (SentencePiece's default): n characters give at least n / 16 pieces
MAX_PIECE_LENGTH = 16


class Tokenizer:
    """A SentencePiece model with pad=0, unk=1, bos=2, eos=3."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as error:
            raise Seq2SeqError(f"not a valid SentencePiece model: {error}") from None
        fixed = (
            self.processor.pad_id(),
            self.processor.unk_id(),
            self.processor.bos_id(),
            self.processor.eos_id(),
        )
        if fixed != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise Seq2SeqError(
                f"SentencePiece model has special ids {fixed}, expected (0, 1, 2, 3)"
            )

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    # One text per call, here and in `decode`: SentencePiece's list call starts a thread pool
    # each time, which costs a one-line request tens of times the encoding itself, competes with
    # torch's threads, and saves only milliseconds on thousands of lines.
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids of each text, without bos/eos."""
        return [self.processor.encode(text, out_type=int) for text in texts]

    def sample(self, texts: Sequence[str], alpha: float, seed: int) -> list[list[int]]:
        """A random segmentation of each text, the same for the same seed: subword
        regularization (Kudo, 2018) for unigram models, where `alpha` sharpens the sampling
        (the lower, the more varied), and BPE-dropout (Provilkov et al., 2020) for bpe ones,
        where `alpha` is the dropout probability. Decodes to the same text as `encode`."""
        # SentencePiece's generator is global; one thread draws in a fixed order
        spm.set_random_generator_seed(seed)
        return self.processor.encode(
            list(texts),
            out_type=int,
            enable_sampling=True,
            alpha=alpha,
            nbest_size=-1,
            num_threads=1,
        )

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenized text of each id sequence (special ids are dropped)."""
        return [self.processor.decode([int(i) for i in seq if i > EOS_ID]) for seq in ids]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The subword pieces of `ids`, for showing where attention looked."""
        return [self.processor.id_to_piece(int(i)) for i in ids]


def train_tokenizer(
    sentences: Iterable[str],
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    max_sentences: int = 2_000_000,
    seed_sentencepiece_size: int = 1_000_000,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a SentencePiece model on `sentences` (the training split only).

    `byte_fallback` makes every character encodable, so no input maps to <unk>.
    `hard_vocab_limit=False` lets a small corpus give a smaller vocabulary instead of failing.
    """
    if model_type not in ("unigram", "bpe"):
        raise Seq2SeqError(f"tokenizer model_type must be 'unigram' or 'bpe', got {model_type!r}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        max_sentencepiece_length=MAX_PIECE_LENGTH,
        hard_vocab_limit=False,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=num_threads,
        minloglevel=2,
    )
    return Tokenizer(model.getvalue())
