"""Translate text with a checkpoint: load, tokenize, batch by length, search, detokenize.

A checkpoint file alone is enough: it carries the network settings, the weights and
both SentencePiece models (seq2seq.core.checkpoint). One `Translator` serves many calls
with one network; each call may bring its own `SearchSettings`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.core.checkpoint import load_checkpoint, load_network, load_shortlist
from seq2seq.core.model import Seq2Seq
from seq2seq.core.search import Hypothesis, SearchSettings, beam_search, greedy_search
from seq2seq.core.shortlist import Shortlist
from seq2seq.core.tokenizer import EOS_ID, MAX_PIECE_LENGTH, Tokenizer
from seq2seq.errors import Seq2SeqError

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # the first is the default
# Decoder rows searched together (sentences x beam size) unless a call says otherwise: wider
# batches spend less per sentence on per-step overhead, narrower ones hold less memory.
ROWS_PER_BATCH = 128


def default_batch_size(beam_size: int) -> int:
    """Sentences per batch for `beam_size`: 128 for greedy search, 25 for beam 5."""
    return max(1, ROWS_PER_BATCH // beam_size)


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 natively (a GPU, or a CPU with AVX512-BF16 or AMX);
    elsewhere bf16 is emulated, many times slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_device(precision: str) -> str:
    """Where a translator runs unless told: a GPU when there is one, except for int8 (CPU only)."""
    return "cuda" if torch.cuda.is_available() and precision != "int8" else "cpu"


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto` is bf16 where it is native, else fp32: beam search runs faster in bf16 at the
    same BLEU, greedy search no slower (BENCHMARKS.md). Not int8, though it is faster still:
    its dynamic quantization scales a whole batch's activations together, so a sentence's
    translation would depend on the sentences batched with it."""
    if precision not in PRECISIONS:
        raise Seq2SeqError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


# what torch's dynamic quantization has int8 kernels for (not the plain RNN layer: it stays fp32)
INT8_LAYERS = (
    torch.nn.Linear,
    torch.nn.GRU,
    torch.nn.LSTM,
    torch.nn.GRUCell,
    torch.nn.LSTMCell,
    torch.nn.RNNCell,
)


def keeps_fp32(module_name: str) -> bool:
    """The additive attention's energy layer stays fp32 in every precision: its weight is a
    vector that the fused score reads directly in fp32 (`attention.additive_scores`), never a
    layer call."""
    return module_name.endswith("attention.energy")


def quantize_int8(net: Seq2Seq) -> torch.nn.Module:
    """int8 weights for the linear and recurrent layers (all but the one `keeps_fp32` names),
    activations quantized on the fly (CPU).

    PyTorch marks this eager-mode API deprecated in favour of torchao, which has no GRU
    support yet; it works in the pinned torch, so its notices are silenced here.
    """
    layers = {
        name
        for name, module in net.named_modules()
        if isinstance(module, INT8_LAYERS) and not keeps_fp32(name)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(net, layers, dtype=torch.qint8)


def bf16_decoder(net: Seq2Seq) -> Seq2Seq:
    """A copy of `net` whose decoder matrices are stored in bf16, for bf16 autocast.

    Autocast casts them anew in every batch; stored in bf16 they give the same products
    in less time and memory (BENCHMARKS.md, "Precision"). The encoder stays fp32, since
    autocast runs its packed recurrent layer in fp32, and so does the layer `keeps_fp32`
    names. Only on a CPU, where it was measured: a GPU keeps autocast's casts.
    """
    if next(net.parameters()).device.type != "cpu":
        return net
    net = copy.deepcopy(net)
    for name, module in net.decoder.named_modules():
        if keeps_fp32(name):
            continue
        for parameter in module.parameters(recurse=False):
            if parameter.dim() == 2:  # a tied weight comes twice: the second cast changes nothing
                parameter.data = parameter.data.to(torch.bfloat16)
    return net


PREPARE_NETWORK: dict[str, Callable[[Seq2Seq], torch.nn.Module]] = {
    "fp32": lambda net: net,
    "bf16": bf16_decoder,
    "int8": quantize_int8,
}


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
        corpus: dict | None = None,
        search: SearchSettings = SearchSettings(),
        precision: str = PRECISIONS[0],
        workers: int | None = None,
        shortlist: Shortlist | None = None,
    ) -> None:
        """`search`: the settings of calls that bring none.

        `precision`: fp32; bf16 (autocast: for GPUs and CPUs with AMX/AVX512-BF16); int8
        (dynamic quantization of the linear and recurrent layers, CPU only); or auto
        (`resolve_precision`). bf16 and int8 search a converted copy of `net`
        (`PREPARE_NETWORK`), `self.net`: a bf16 copy runs only under the translator's autocast.
        `workers`: batches searched side by side on a CPU, each with an equal share of
        torch's threads (default: one per thread; on a GPU always one).
        `shortlist`: score only each batch's likely target pieces (`seq2seq.core.shortlist`);
        None: the whole output layer.
        """
        precision = resolve_precision(precision, next(net.parameters()).device)
        if workers is not None and workers < 1:
            raise Seq2SeqError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.precision = precision
        self.net = PREPARE_NETWORK[precision](net.eval())
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.corpus = corpus or {}
        self.check_search(search)
        self.search = search
        self.shortlist = shortlist

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
        precision: str = PRECISIONS[0],
        workers: int | None = None,
        shortlist: bool = False,
    ) -> Translator:
        """`shortlist`: use the checkpoint's shortlist, if it has one (off by default: it
        costs beam search a few tenths of BLEU, BENCHMARKS.md)."""
        checkpoint = load_checkpoint(path)
        net, source_tokenizer, target_tokenizer = load_network(checkpoint, path)
        device = device or default_device(precision)
        if precision == "int8" and device != "cpu":
            raise Seq2SeqError(
                "int8 translation runs on the CPU only: pass --device cpu or another --precision"
            )
        return cls(
            net.to(device),
            source_tokenizer,
            target_tokenizer,
            checkpoint["seq2seq"]["corpus"],
            search,
            precision,
            workers,
            load_shortlist(checkpoint) if shortlist else None,
        )

    def translate(self, lines: Sequence[str], batch_size: int | None = None) -> list[str]:
        """One output line per input line (the best hypothesis); a blank line gives an empty
        line."""
        return [t.text for t in self.translate_detailed(lines, batch_size)]

    def translate_detailed(
        self,
        lines: Sequence[str],
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        search: SearchSettings | None = None,
    ) -> list[Translation]:
        """Translations in input order (see `translate_encoded`)."""
        return self.translate_encoded(self.encode(lines), batch_size, progress, search)

    def translate_encoded(
        self,
        sources: Sequence[EncodedLine],
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        search: SearchSettings | None = None,
    ) -> list[Translation]:
        """Translations in input order; batches are cut from length-sorted sentences (less padding).

        `batch_size`: sentences per batch (default `default_batch_size` of the search's beam).
        `progress`, when given, is called with the number of lines done after each batch.
        `search` replaces the translator's own settings for this call (a server's per-request
        settings); the network and its weights are shared.
        """
        search = search or self.search
        self.check_search(search)
        if batch_size is None:
            batch_size = default_batch_size(search.beam_size)
        if batch_size < 1:
            raise Seq2SeqError(f"batch size must be at least 1, got {batch_size}")
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
        # one call for all
        texts = iter(self.target_tokenizer.decode([h.tokens for nbest in nbests for h in nbest]))
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
        # set per worker thread: OpenMP's count is per thread
        threads = max(1, torch.get_num_threads() // workers)
        with ThreadPoolExecutor(
            workers, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            yield from pool.map(self._search, batches, [search] * len(batches))

    @torch.no_grad()
    def _search(self, batch_ids: list[list[int]], search: SearchSettings) -> list[list[Hypothesis]]:
        lengths = torch.tensor([len(ids) for ids in batch_ids])
        # (B, S), PAD_ID = 0
        source = torch.zeros(len(batch_ids), int(lengths.max()), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            source[row, : len(ids)] = torch.tensor(ids)
        source, lengths = source.to(self.device), lengths.to(self.device)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self._run_search(source, lengths, search)

    def _run_search(
        self, source: torch.Tensor, lengths: torch.Tensor, search: SearchSettings
    ) -> list[list[Hypothesis]]:
        # beam search ranks 2 x beam tokens of each sentence: every list holds the frequent ones
        wide_enough = self.shortlist is not None and (
            len(self.shortlist.frequent) >= 2 * search.beam_size
        )
        vocabulary = self.shortlist.for_batch(source) if wide_enough else None
        if search.beam_size == 1:
            return [[h] for h in greedy_search(self.net, source, lengths, search, vocabulary)]
        return beam_search(self.net, source, lengths, search, vocabulary)

    def source_pieces(self, translation: Translation) -> list[str]:
        """The source subwords the model read, eos included (attention's columns)."""
        return self.source_tokenizer.pieces(translation.source_ids[:-1]) + ["</s>"]

    def target_pieces(self, hypothesis: Hypothesis) -> list[str]:
        """The target subwords of a hypothesis, plus eos when it was produced (attention's rows)."""
        pieces = self.target_tokenizer.pieces(hypothesis.tokens)
        return pieces + ["</s>"] * (hypothesis.attention.size(0) - len(pieces))
