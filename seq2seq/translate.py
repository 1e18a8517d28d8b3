"""Translate text with a checkpoint: load, tokenize, batch by length, search, detokenize.

A checkpoint file alone is enough: it carries the network settings, the weights and
both SentencePiece models. It is loaded with `weights_only=True`, so loading one never
runs code from it.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.errors import Seq2SeqError
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.search import Hypothesis, beam_search, greedy_search
from seq2seq.tokenizer import EOS_ID, Tokenizer
from seq2seq.training import CHECKPOINT_FORMAT


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, refusing anything that is not a readable seq2seq checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise Seq2SeqError(f"checkpoint {path} does not exist: train a model first (make train) or pass CKPT=path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise Seq2SeqError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
            f"({str(error).splitlines()[0][:200]}); only load checkpoints you trust with other tools"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise Seq2SeqError(f"checkpoint {path} is truncated or corrupted ({str(error).splitlines()[0][:200]})") from None
    info = checkpoint.get("seq2seq") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or "state_dict" not in checkpoint:
        raise Seq2SeqError(f"{path} is not a seq2seq checkpoint (no 'seq2seq' section)")
    if info.get("format_version") != CHECKPOINT_FORMAT:
        raise Seq2SeqError(
            f"checkpoint {path} has format version {info.get('format_version')}, this seq2seq reads "
            f"version {CHECKPOINT_FORMAT}: use the seq2seq release that wrote it"
        )
    return checkpoint


@dataclass
class Translation:
    """A translated line with what produced it (for inspection)."""

    text: str
    hypothesis: Hypothesis | None  # None for an empty input line
    source_ids: list[int]


class Translator:
    """Turns lines of source text into lines of target text with a trained network."""

    def __init__(
        self,
        net: Seq2Seq,
        source_tokenizer: Tokenizer,
        target_tokenizer: Tokenizer,
        max_length_ratio: float = 2.0,
        corpus: dict | None = None,
        beam_size: int = 1,
        alpha: float = 0.6,
    ) -> None:
        """`beam_size` 1 is greedy search; `alpha` is beam search's GNMT length penalty."""
        if beam_size < 1:
            raise Seq2SeqError(f"beam size must be at least 1, got {beam_size}")
        self.net = net.eval()
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_length_ratio = max_length_ratio
        self.corpus = corpus or {}
        self.beam_size = beam_size
        self.alpha = alpha

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, beam_size: int = 1, alpha: float = 0.6) -> Translator:
        checkpoint = load_checkpoint(path)
        info = checkpoint["seq2seq"]
        source_tokenizer = Tokenizer(info["source_tokenizer"])
        target_tokenizer = Tokenizer(info["target_tokenizer"])
        net = Seq2Seq(source_tokenizer.vocab_size, target_tokenizer.vocab_size, ModelConfig.from_dict(info["network"]))
        weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
        try:
            net.load_state_dict(weights)
        except RuntimeError as error:
            raise Seq2SeqError(f"checkpoint {path} weights do not fit its network settings: {str(error)[:300]}") from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            net.to(device), source_tokenizer, target_tokenizer, info["max_length_ratio"], info["corpus"], beam_size, alpha
        )

    def translate(self, lines: Sequence[str], batch_size: int = 64) -> list[str]:
        """One output line per input line; an empty or blank line gives an empty line."""
        return [t.text for t in self.translate_detailed(lines, batch_size)]

    def translate_detailed(self, lines: Sequence[str], batch_size: int = 64) -> list[Translation]:
        source_ids = self._encode(lines)
        hypotheses: list[Hypothesis | None] = [None] * len(lines)
        order = sorted((i for i, ids in enumerate(source_ids) if ids), key=lambda i: len(source_ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, hypothesis in zip(chunk, self._search([source_ids[i] for i in chunk])):
                hypotheses[index] = hypothesis
        texts = self.target_tokenizer.decode([h.tokens if h else [] for h in hypotheses])
        return [Translation(text, h, ids) for text, h, ids in zip(texts, hypotheses, source_ids)]

    def _encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids + eos per line ([] for blank lines), cut to what the model can attend to."""
        limit = self.net.config.max_source_length - 1
        encoded = self.source_tokenizer.encode([" ".join(line.split()) for line in lines])
        for number, ids in enumerate(encoded, start=1):
            if len(ids) > limit:
                warnings.warn(f"input line {number} has {len(ids)} tokens; only the first {limit} are translated")
        return [ids[:limit] + [EOS_ID] if ids else [] for ids in encoded]

    @torch.no_grad()
    def _search(self, batch_ids: list[list[int]]) -> list[Hypothesis]:
        lengths = torch.tensor([len(ids) for ids in batch_ids])
        source = torch.zeros(len(batch_ids), int(lengths.max()), dtype=torch.long)  # (B, S), PAD_ID = 0
        for row, ids in enumerate(batch_ids):
            source[row, : len(ids)] = torch.tensor(ids)
        source, lengths = source.to(self.device), lengths.to(self.device)
        if self.beam_size == 1:
            return greedy_search(self.net, source, lengths, self.max_length_ratio)
        best = beam_search(self.net, source, lengths, self.beam_size, self.alpha, 1, self.max_length_ratio)
        return [nbest[0] for nbest in best]
