"""Translate text with a checkpoint: load, tokenize, batch by length, search, detokenize.

A checkpoint file alone is enough: it carries the network settings, the weights and
both SentencePiece models. It is loaded with `weights_only=True`, so loading one never
runs code from it.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.errors import Seq2SeqError
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.search import Hypothesis, beam_search, greedy_search
from seq2seq.tokenizer import EOS_ID, MAX_PIECE_LENGTH, Tokenizer

CHECKPOINT_FORMAT = (
    1  # the version of the `seq2seq` section that training writes and this module reads
)


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, refusing anything that is not a readable seq2seq checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise Seq2SeqError(
            f"checkpoint {path} does not exist: train a model first (make train) or pass CKPT=path"
        )
    try:
        is_archive = zipfile.is_zipfile(path)  # torch.save writes a zip archive
    except OSError as error:
        raise Seq2SeqError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not is_archive:
        raise Seq2SeqError(
            f"checkpoint {path} is truncated or corrupted (not the zip archive torch.save writes)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise Seq2SeqError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
            f"({str(error).splitlines()[0][:200]}); only load checkpoints you trust with other "
            "tools"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise Seq2SeqError(
            f"checkpoint {path} is truncated or corrupted ({str(error).splitlines()[0][:200]})"
        ) from None
    info = checkpoint.get("seq2seq") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or "state_dict" not in checkpoint:
        raise Seq2SeqError(f"{path} is not a seq2seq checkpoint (no 'seq2seq' section)")
    if info.get("format_version") != CHECKPOINT_FORMAT:
        raise Seq2SeqError(
            f"checkpoint {path} has format version {info.get('format_version')}, this seq2seq "
            f"reads version {CHECKPOINT_FORMAT}: use the seq2seq release that wrote it"
        )
    return checkpoint


PRECISIONS = ("fp32", "bf16", "int8")


def quantize_int8(net: Seq2Seq) -> torch.nn.Module:
    """int8 weights for the linear and GRU layers, activations quantized on the fly (CPU).

    The additive attention's energy layer stays as it is: its weight is a vector that
    the fused score reads directly (see `attention.additive_scores`), never a layer call.
    PyTorch marks this eager-mode API deprecated in favour of torchao, which has no GRU
    support yet; it works in the pinned torch, so its notices are silenced here.
    """
    layers = {
        name
        for name, module in net.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.GRU))
        and not name.endswith("attention.energy")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(net, layers, dtype=torch.qint8)


@dataclass(frozen=True)
class SearchSettings:
    """How to search: `beam_size` 1 is greedy search.

    Attributes:
        beam_size: hypotheses kept per sentence (1: greedy).
        alpha: GNMT length penalty of beam search (0: rank by log-probability alone).
        beta: GNMT coverage penalty of beam search (0: none); 0.3 was the best of 0-0.4 on
            Multi30k and Tatoeba validation (BENCHMARKS.md).
        nbest: hypotheses returned per sentence, best first (at most `beam_size`).
        max_length_ratio: output cap in target tokens per source token; None: the
            checkpoint's training setting.
    """

    beam_size: int = 1
    alpha: float = 0.6
    beta: float = 0.3
    nbest: int = 1
    max_length_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise Seq2SeqError(f"beam size must be at least 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise Seq2SeqError(
                f"--nbest {self.nbest} needs a beam at least as wide: use --beam-size "
                f"{max(self.nbest, 1)} or more"
            )
        if self.beta < 0:
            raise Seq2SeqError(
                "a negative coverage penalty would reward dropping source words: use --beta 0 or "
                f"more, got {self.beta}"
            )
        if self.max_length_ratio is not None and self.max_length_ratio <= 0:
            raise Seq2SeqError(f"max length ratio must be positive, got {self.max_length_ratio}")

    def describe(self) -> str:
        """A short name for file names and reports: `greedy` or `beam5`."""
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"


@dataclass(frozen=True)
class EncodedLine:
    """A source line as the model reads it.

    Attributes:
        ids: subword ids + eos, [] for a blank line.
        truncated: the line was longer than the model reads: only its beginning is translated.
    """

    ids: list[int]
    truncated: bool = False


@dataclass
class Translation:
    """A translated line with what produced it (for inspection).

    `texts` and `hypotheses` are the n-best list, best first; both are empty for a blank
    input line (whose translation is the empty string).
    """

    texts: list[str]
    hypotheses: list[Hypothesis]
    source_ids: list[int]
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class Translator:
    """Turns lines of source text into lines of target text with a trained network."""

    def __init__(
        self,
        net: Seq2Seq,
        source_tokenizer: Tokenizer,
        target_tokenizer: Tokenizer,
        max_length_ratio: float = 2.0,
        corpus: dict | None = None,
        search: SearchSettings = SearchSettings(),
        precision: str = "fp32",
        workers: int | None = None,
    ) -> None:
        """`max_length_ratio` is the training setting, used unless `search` overrides it.

        `precision`: fp32; bf16 (autocast: for GPUs and CPUs with AMX/AVX512-BF16); or int8
        (dynamic quantization of the linear and GRU layers, CPU only).
        `workers`: batches searched side by side on a CPU, each with an equal share of
        torch's threads (default: one per thread; on a GPU always one).
        """
        if precision not in PRECISIONS:
            raise Seq2SeqError(
                f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}"
            )
        if workers is not None and workers < 1:
            raise Seq2SeqError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.precision = precision
        self.net = quantize_int8(net.eval()) if precision == "int8" else net.eval()
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.corpus = corpus or {}
        self.training_max_length_ratio = max_length_ratio
        self.check_search(search)
        self.search = search

    @property
    def max_beam_size(self) -> int:
        """The widest beam this model allows: the first step ranks 2 x beam of its target tokens."""
        return self.target_tokenizer.vocab_size // 2

    def check_search(self, search: SearchSettings) -> None:
        if search.beam_size > 1 and search.beam_size > self.max_beam_size:
            raise Seq2SeqError(
                f"beam size {search.beam_size} ranks {2 * search.beam_size} extensions of each "
                f"sentence, more than the model's {self.target_tokenizer.vocab_size} target "
                f"tokens: use --beam-size {self.max_beam_size} or less"
            )

    @property
    def max_length_ratio(self) -> float:
        """The output cap of the default search (its own, else the training setting)."""
        return self.search.max_length_ratio or self.training_max_length_ratio

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def worker_count(self) -> int:
        """Batches searched side by side: on a CPU `workers`, else one per torch thread; on a GPU
        one (its kernels queue on one stream: threads would only interleave their launches)."""
        if self.device.type != "cpu":
            return 1
        return self.workers or torch.get_num_threads()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | None = None,
        search: SearchSettings = SearchSettings(),
        precision: str = "fp32",
        workers: int | None = None,
    ) -> Translator:
        checkpoint = load_checkpoint(path)
        info = checkpoint["seq2seq"]
        source_tokenizer = Tokenizer(info["source_tokenizer"])
        target_tokenizer = Tokenizer(info["target_tokenizer"])
        net = Seq2Seq(
            source_tokenizer.vocab_size,
            target_tokenizer.vocab_size,
            ModelConfig.from_dict(info["network"]),
        )
        weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
        try:
            net.load_state_dict(weights)
        except RuntimeError as error:
            raise Seq2SeqError(
                f"checkpoint {path} weights do not fit its network settings: {str(error)[:300]}"
            ) from None
        device = device or ("cuda" if torch.cuda.is_available() and precision != "int8" else "cpu")
        if precision == "int8" and device != "cpu":
            raise Seq2SeqError(
                "int8 translation runs on the CPU only: pass --device cpu or another --precision"
            )
        return cls(
            net.to(device),
            source_tokenizer,
            target_tokenizer,
            info["max_length_ratio"],
            info["corpus"],
            search,
            precision,
            workers,
        )

    def translate(self, lines: Sequence[str], batch_size: int = 64) -> list[str]:
        """One output line per input line (the best hypothesis); a blank line gives an empty
        line."""
        return [t.text for t in self.translate_detailed(lines, batch_size)]

    def translate_detailed(
        self,
        lines: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        search: SearchSettings | None = None,
    ) -> list[Translation]:
        """Translations in input order (see `translate_encoded`)."""
        return self.translate_encoded(self.encode(lines), batch_size, progress, search)

    def translate_encoded(
        self,
        sources: Sequence[EncodedLine],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        search: SearchSettings | None = None,
    ) -> list[Translation]:
        """Translations in input order; batches are cut from length-sorted sentences (less padding).

        `progress`, when given, is called with the number of lines done after each batch.
        `search` replaces the translator's own settings for this call (a server's per-request
        settings); the network and its weights are shared.
        """
        if batch_size < 1:
            raise Seq2SeqError(f"batch size must be at least 1, got {batch_size}")
        search = search or self.search
        self.check_search(search)
        nbests: list[list[Hypothesis]] = [[] for _ in sources]
        order = sorted(
            (i for i, line in enumerate(sources) if line.ids), key=lambda i: len(sources[i].ids)
        )
        if progress:
            progress(len(sources) - len(order))  # blank lines need no search
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        batches = [[sources[i].ids for i in chunk] for chunk in chunks]
        for chunk, results in zip(chunks, self._search_all(batches, search)):
            for index, nbest in zip(chunk, results):
                nbests[index] = nbest
            if progress:
                progress(len(chunk))
        texts = iter(
            self.target_tokenizer.decode([h.tokens for nbest in nbests for h in nbest])
        )  # one call for all
        return [
            Translation([next(texts) for _ in nbest], nbest, line.ids, line.truncated)
            for nbest, line in zip(nbests, sources)
        ]

    def encode(self, lines: Sequence[str], warn: bool = True) -> list[EncodedLine]:
        """Source ids + eos per line ([] for blank lines), cut to what the model can attend to.

        A line is cut to a few pieces' worth of characters before tokenizing, so a huge
        line costs bounded memory and time. `warn`: a warning names each line that was cut.
        """
        limit = self.net.config.max_source_length - 1
        characters = limit * MAX_PIECE_LENGTH
        encoded = self.source_tokenizer.encode(
            [" ".join(line[: characters * 2].split())[:characters] for line in lines]
        )
        results = []
        for number, (line, ids) in enumerate(zip(lines, encoded), start=1):
            truncated = len(ids) > limit or len(line) > characters * 2
            if truncated and warn:
                warnings.warn(
                    f"input line {number} is longer than {limit} tokens: "
                    "only its beginning is translated",
                    stacklevel=2,
                )
            results.append(EncodedLine(ids[:limit] + [EOS_ID] if ids else [], truncated))
        return results

    def _search_all(
        self, batches: list[list[list[int]]], search: SearchSettings
    ) -> Iterator[list[list[Hypothesis]]]:
        """`_search` of each batch, in order; on a CPU, several batches at a time.

        At this model's matrix sizes torch gains little from a second thread inside one
        search, so each worker thread searches whole batches on its share of the threads.
        """
        workers = min(len(batches), self.worker_count)
        if workers <= 1:
            yield from (self._search(batch, search) for batch in batches)
            return
        threads = max(
            1, torch.get_num_threads() // workers
        )  # set per worker thread: OpenMP's count is per thread
        with ThreadPoolExecutor(
            workers, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            yield from pool.map(self._search, batches, [search] * len(batches))

    @torch.no_grad()
    def _search(self, batch_ids: list[list[int]], search: SearchSettings) -> list[list[Hypothesis]]:
        lengths = torch.tensor([len(ids) for ids in batch_ids])
        source = torch.zeros(
            len(batch_ids), int(lengths.max()), dtype=torch.long
        )  # (B, S), PAD_ID = 0
        for row, ids in enumerate(batch_ids):
            source[row, : len(ids)] = torch.tensor(ids)
        source, lengths = source.to(self.device), lengths.to(self.device)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self._run_search(source, lengths, search)

    def _run_search(
        self, source: torch.Tensor, lengths: torch.Tensor, search: SearchSettings
    ) -> list[list[Hypothesis]]:
        max_length_ratio = search.max_length_ratio or self.training_max_length_ratio
        if search.beam_size == 1:
            return [[h] for h in greedy_search(self.net, source, lengths, max_length_ratio)]
        return beam_search(
            self.net,
            source,
            lengths,
            search.beam_size,
            search.alpha,
            search.beta,
            search.nbest,
            max_length_ratio,
        )

    def source_pieces(self, translation: Translation) -> list[str]:
        """The source subwords the model read, eos included (attention's columns)."""
        return self.source_tokenizer.pieces(translation.source_ids[:-1]) + ["</s>"]

    def target_pieces(self, hypothesis: Hypothesis) -> list[str]:
        """The target subwords of a hypothesis, plus eos when it was produced (attention's rows)."""
        pieces = self.target_tokenizer.pieces(hypothesis.tokens)
        return pieces + ["</s>"] * (hypothesis.attention.size(0) - len(pieces))
