"""The LightningDataModule: corpus → SentencePiece → ids → token-count batches.

`prepare_data` (one process) fetches the corpus and trains the tokenizers, caching both
under the data folder; `setup` (every process) reads the splits and encodes them once,
so the training loop only ever sees ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from seq2seq.atomic import atomic_write
from seq2seq.core.shortlist import Shortlist, build_shortlist
from seq2seq.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_tokenizer
from seq2seq.corpora import Corpus, Example, open_corpus, training_pairs
from seq2seq.errors import Seq2SeqError

log = logging.getLogger(__name__)

# Shuffled batches are sorted by length within pools of this many batches' worth of sentences.
POOL_BATCHES = 100
# Room, as a share of the batches a pooled cut gives, for an epoch whose shuffle cuts more.
EPOCH_BATCHES_MARGIN = 0.01


class Batch(NamedTuple):
    """Padded ids plus lengths. `index` points back into the split's example list."""

    source: Tensor  # (B, S) ids + eos
    source_lengths: Tensor  # (B,)
    target_in: Tensor  # (B, T) bos + ids
    target_out: Tensor  # (B, T) ids + eos
    index: Tensor  # (B,)


class EncodedPair(NamedTuple):
    source: list[int]  # ids + eos
    target: list[int]  # ids (no bos/eos)
    index: int


def collate(pairs: Sequence[EncodedPair]) -> Batch:
    """Pad a list of encoded pairs into a `Batch`."""
    batch = len(pairs)
    source_len = max(len(p.source) for p in pairs)
    target_len = max(len(p.target) for p in pairs) + 1
    source = torch.full((batch, source_len), PAD_ID, dtype=torch.long)
    target_in = torch.full((batch, target_len), PAD_ID, dtype=torch.long)
    target_out = torch.full((batch, target_len), PAD_ID, dtype=torch.long)
    for row, pair in enumerate(pairs):
        source[row, : len(pair.source)] = torch.tensor(pair.source)
        target_in[row, : len(pair.target) + 1] = torch.tensor([BOS_ID, *pair.target])
        target_out[row, : len(pair.target) + 1] = torch.tensor([*pair.target, EOS_ID])
    lengths = torch.tensor([len(p.source) for p in pairs])
    return Batch(source, lengths, target_in, target_out, torch.tensor([p.index for p in pairs]))


def fits(pair: EncodedPair, max_length: int) -> bool:
    """Whether both sides of `pair` (the target with its bos or eos) are at most `max_length`."""
    return max(len(pair.source), len(pair.target) + 1) <= max_length


class SubwordSampling(NamedTuple):
    """What `TrainingPairs` needs to segment its texts anew: the tokenizers, their `alpha`
    (`Tokenizer.sample`), the longest pair kept and the seed of epoch 0."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    alpha: float
    max_length: int
    seed: int


class TrainingPairs(Dataset[EncodedPair]):
    """The training pairs, and with `sampling` a new random segmentation of them each epoch.

    Batches are cut from the lengths of the fixed segmentation (`pairs`), so every epoch
    cuts as many batches (`TokenBatchSampler`): a sampled segmentation is a little longer on
    average (Multi30k, unigram, alpha 0.3: a tenth) and a pair sampled past `max_length`
    keeps its fixed one. An epoch's segmentation depends only on the seed and the epoch, so
    a resumed run and every DDP process see the same pairs.
    """

    def __init__(
        self,
        pairs: list[EncodedPair],
        texts: list[tuple[str, str]] | None = None,
        sampling: SubwordSampling | None = None,
    ) -> None:
        if sampling is not None and (texts is None or len(texts) != len(pairs)):
            raise ValueError("subword sampling needs the text of every pair")
        self.pairs = pairs
        self.texts = texts
        self.sampling = sampling
        self._epoch_pairs = pairs
        self._epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Segment the texts for `epoch` (only with sampling, and once per epoch)."""
        if self.sampling is None or epoch == self._epoch:
            return
        sampling, seed = self.sampling, 2 * (self.sampling.seed + epoch)
        sources = sampling.source_tokenizer.sample([s for s, _ in self.texts], sampling.alpha, seed)
        targets = sampling.target_tokenizer.sample(
            [t for _, t in self.texts], sampling.alpha, seed + 1
        )
        self._epoch_pairs = []
        for fixed, source, target in zip(self.pairs, sources, targets):
            sampled = EncodedPair(source + [EOS_ID], target, fixed.index)
            self._epoch_pairs.append(sampled if fits(sampled, sampling.max_length) else fixed)
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> EncodedPair:
        return self._epoch_pairs[index]


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of about `max_tokens` padded tokens, built from sentences of similar length.

    Shuffled: each epoch shuffles the sentences, sorts them by length inside pools of about
    `POOL_BATCHES` batches (little padding, yet every epoch mixes new neighbours into a
    batch), cuts the batches, then shuffles their order. A global sort would fix which
    sentences share a batch for the whole run, and trained worse (BENCHMARKS.md). Every
    epoch holds as many batches, `len()`: Lightning reads it once and validates when that
    many batches are done (an epoch one batch short would skip validation, one batch long
    would lose a batch), so an epoch that cuts fewer halves its largest batches, and one
    that would cut more is cut from the global sort instead. Deterministic for a given seed
    and epoch, so a resumed run sees the same batches; `resume_at` makes the next pass over
    an epoch skip the batches a killed run had already trained on.

    Unshuffled (validation): one global sort by length, then target length.

    Distributed (`num_replicas` processes): every process cuts the same batches, then
    `share` gives process `rank` every `num_replicas`-th one, so the shares are disjoint,
    cover the data and hold equally many batches (DDP hangs otherwise). Lightning cannot
    inject its DistributedSampler into a batch sampler, hence the sharding here.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        target_lengths: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} replicas")
        self.lengths = torch.tensor(lengths)
        self.target_lengths = (
            self.lengths if target_lengths is None else torch.tensor(target_lengths)
        )
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None  # (epoch, batches)
        self._resume: tuple[int, int] | None = None  # (epoch, batches already done)

    @property
    def sampler(self) -> TokenBatchSampler:
        """Lightning calls `set_epoch` on `batch_sampler.sampler` (torch's BatchSampler layout), so
        point it here."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next pass over `epoch` start after its first `batches_done` batches."""
        self._resume = (epoch, batches_done)

    def batches_to_skip(self) -> int:
        """How many of this epoch's batches the next pass skips (0 unless resuming this epoch)."""
        if self._resume is None or self._resume[0] != self.epoch:
            return 0
        return self._resume[1]

    def batches(self) -> list[list[int]]:
        """This process's batches of this epoch, computed once (Lightning asks for the length and
        then iterates)."""
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (
                self.epoch,
                share(self._make_batches(), self.num_replicas)[self.rank :: self.num_replicas],
            )
        return self._cached[1]

    def _make_batches(self) -> list[list[int]]:
        if not self.shuffle:
            return self._sorted_batches(torch.arange(len(self.lengths)))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = self._pooled_batches(order)
        if len(batches) > self.epoch_batches:
            batches = self._sorted_batches(order)  # ties still broken by the shuffle
        batches = split_largest(batches, self.epoch_batches)
        permutation = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in permutation]

    @functools.cached_property
    def epoch_batches(self) -> int:
        """How many batches every shuffled epoch holds: what a pooled cut gives, with room for
        the few more another shuffle may need (the global sort always needs fewer)."""
        generator = torch.Generator().manual_seed(self.seed)
        pooled = len(self._pooled_batches(torch.randperm(len(self.lengths), generator=generator)))
        return pooled + max(1, math.ceil(EPOCH_BATCHES_MARGIN * pooled))

    def _pooled_batches(self, order: Tensor) -> list[list[int]]:
        """Batches of `order` (a shuffle), sorted by length within pools of POOL_BATCHES batches."""
        mean_length = max(1, int(self.lengths.float().mean()))
        pool = max(1, POOL_BATCHES * self.max_tokens // mean_length)
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            batches += self._cut(chunk[torch.argsort(self.lengths[chunk], stable=True)])
        return batches

    def _sorted_batches(self, order: Tensor) -> list[list[int]]:
        """Batches of all of `order` sorted by length, then target length (`_sorted`)."""
        return self._cut(self._sorted(order))

    def _sorted(self, order: Tensor) -> Tensor:
        """`order` stably sorted by length, then target length: ties keep their order in `order`."""
        order = order[torch.argsort(self.target_lengths[order], stable=True)]
        return order[torch.argsort(self.lengths[order], stable=True)]

    def _cut(self, order: Tensor) -> list[list[int]]:
        batches, current, longest = [], [], 0
        for index, length in zip(order.tolist(), self.lengths[order].tolist()):
            if current and max(longest, length) * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """A lazy pass: the epoch is read at the first batch, after Lightning's `set_epoch`."""
        start = self.batches_to_skip()
        self._resume = None
        yield from self.batches()[start:]

    def __len__(self) -> int:
        return len(self.batches())


def share(batches: list[list[int]], parts: int) -> list[list[int]]:
    """`batches` made a multiple of `parts` long, so each of `parts` processes gets as many.

    The batch with the most sentences is halved until the count divides evenly: every
    sentence stays in exactly one batch. Only if too few batches hold two sentences (a
    `max_tokens` near the longest sentence) are the first batches repeated, as torch's
    DistributedSampler pads; validation drops such repeats by sentence index.
    """
    count = math.ceil(len(batches) / parts) * parts
    batches = split_largest(batches, count)
    missing = count - len(batches)
    return batches + (batches * parts)[:missing]


def split_largest(batches: list[list[int]], count: int) -> list[list[int]]:
    """`batches` with the one holding the most sentences halved until there are `count` (or
    until no batch holds two sentences); every sentence stays in exactly one batch."""
    batches = list(batches)
    while len(batches) < count:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        whole = batches[largest]
        if len(whole) < 2:
            break
        batches[largest : largest + 1] = [whole[: len(whole) // 2], whole[len(whole) // 2 :]]
    return batches


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `TokenBatchSampler` that can stop and resume mid-epoch.

    It implements Lightning's stateful-loader interface (`state_dict` / `load_state_dict`):
    the checkpoint records the epoch and how many batches of it reached the training
    loop (counted here, in the main process, so worker prefetching does not skew it), and
    a resumed run skips exactly those. `len()` stays the whole epoch, as Lightning expects.
    Under DDP every process delivers as many batches, so rank 0's count, the one saved,
    holds for each process's own share.
    """

    dataset: TrainingPairs
    batch_sampler: TokenBatchSampler
    _epoch = 0  # of the current or last pass
    _delivered = 0  # batches of that epoch handed to the training loop, skipped ones included

    def __iter__(self) -> Iterator[Batch]:
        self._epoch = self.batch_sampler.epoch
        self.dataset.set_epoch(self._epoch)
        self._delivered = self.batch_sampler.batches_to_skip()
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches_done": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(state["epoch"], state["batches_done"])


class TranslationDataModule(L.LightningDataModule):
    """A corpus for one direction, tokenized with SentencePiece and batched by tokens.

    Args:
        corpus: tatoeba, multi30k or custom.
        source_lang: source language code (e.g. en).
        target_lang: target language code (e.g. fr).
        custom_files: for corpus custom: {split: [source_file, target_file]} or {split: [file.tsv]};
            splits train and valid are required, any other split is a test split.
        data_dir: where corpora and tokenizers are cached.
        mirror: folder to copy corpus files from instead of downloading
            (default: $SEQ2SEQ_DATA_MIRROR).
        vocab_size: SentencePiece vocabulary size per side (or shared, if joint).
        tokenizer_type: unigram or bpe.
        joint_vocabulary: one SentencePiece model for both languages.
        max_tokens: padded tokens per batch (the longer side counts).
        max_length: training pairs with a side longer than this many tokens are dropped.
        max_train_examples: keep only the first N training examples (for quick experiments).
        subword_sampling: None, or sample each training sentence's segmentation anew every
            epoch with this alpha (subword regularization: `Tokenizer.sample`); translation
            always uses the fixed segmentation.
        num_workers: DataLoader worker processes (batches are cheap: 0 is usually best).
        seed: seed of the batch shuffling.
    """

    def __init__(
        self,
        corpus: str = "tatoeba",
        source_lang: str = "en",
        target_lang: str = "fr",
        custom_files: dict[str, list[str]] | None = None,
        data_dir: str = "data",
        mirror: str | None = None,
        vocab_size: int = 8000,
        tokenizer_type: str = "unigram",
        joint_vocabulary: bool = False,
        max_tokens: int = 2048,
        max_length: int = 100,
        max_train_examples: int | None = None,
        subword_sampling: float | None = None,
        num_workers: int = 0,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        check_sampling_alpha(subword_sampling, tokenizer_type)
        self.corpus: Corpus = open_corpus(corpus, source_lang, target_lang, custom_files)
        self.corpus_name = corpus
        self.custom_files = custom_files
        self.data_dir = Path(data_dir)
        self.mirror = mirror
        self.vocab_size = vocab_size
        self.tokenizer_type = tokenizer_type
        self.joint_vocabulary = joint_vocabulary
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.max_train_examples = max_train_examples
        self.subword_sampling = subword_sampling
        self.num_workers = num_workers
        self.seed = seed
        self.source_tokenizer: Tokenizer | None = None
        self.target_tokenizer: Tokenizer | None = None
        self.splits: dict[str, list[Example]] = {}
        self._shortlist: Shortlist | None = None

    # ------------------------------------------------------------------ description

    def describe(self) -> dict:
        """Enough to reopen this corpus later (evaluate reads it from the checkpoint)."""
        return {
            "corpus": self.corpus_name,
            "source_lang": self.corpus.source_lang,
            "target_lang": self.corpus.target_lang,
            "custom_files": self.custom_files,
            "data_dir": str(self.data_dir),
            "valid_split": self.corpus.valid_split,
            "test_splits": list(self.corpus.test_splits),
        }

    def checkpoint_record(self) -> dict:
        """`describe()` and how many training examples were used (None: all): what a checkpoint
        keeps, so that `seq2seq shortlist` rebuilds its shortlist from the pairs the model saw."""
        return {**self.describe(), "max_train_examples": self.max_train_examples}

    def _tokenizer_paths(self) -> tuple[Path, Path]:
        settings = json.dumps(
            [
                self.describe(),
                self.vocab_size,
                self.tokenizer_type,
                self.joint_vocabulary,
                self.max_train_examples,
            ],
            sort_keys=True,
        )
        key = hashlib.sha256(settings.encode()).hexdigest()[:16]
        folder = self.data_dir / "tokenizers" / f"{self.corpus_name}-{self.corpus.pair}-{key}"
        return folder / "source.model", folder / "target.model"

    # ------------------------------------------------------------------ Lightning hooks

    def load_splits(self) -> dict[str, list[Example]]:
        splits = self.corpus.load_for_training(self.data_dir, self.max_train_examples)
        for name in (self.corpus.train_split, self.corpus.valid_split):
            if not splits.get(name):
                raise Seq2SeqError(
                    f"the {name} split of corpus {self.corpus_name} ({self.corpus.pair}) is empty "
                    "after cleaning (pairs with an empty side are dropped): give it files with at "
                    "least one sentence pair"
                )
        return splits

    def prepare_data(self) -> None:
        """Fetch the corpus and train the tokenizers (once; both are cached on disk)."""
        self.corpus.prepare(self.data_dir, self.mirror)
        source_path, target_path = self._tokenizer_paths()
        if source_path.exists() and target_path.exists():
            return
        pairs = training_pairs(self.load_splits()[self.corpus.train_split])
        sources = list(dict.fromkeys(s for s, _ in pairs))
        targets = [t for _, t in pairs]
        if self.joint_vocabulary:
            joint = train_tokenizer(sources + targets, self.vocab_size, self.tokenizer_type)
            source_model = target_model = joint.model_proto
        else:
            source_model = train_tokenizer(
                sources, self.vocab_size, self.tokenizer_type
            ).model_proto
            target_model = train_tokenizer(
                targets, self.vocab_size, self.tokenizer_type
            ).model_proto
        for path, model in ((source_path, source_model), (target_path, target_model)):
            with atomic_write(path) as out:
                out.write(model)

    def setup(self, stage: str | None = None) -> None:
        if self.source_tokenizer is not None:
            return
        source_path, target_path = self._tokenizer_paths()
        self.source_tokenizer = Tokenizer(source_path.read_bytes())
        self.target_tokenizer = Tokenizer(target_path.read_bytes())
        self.splits = self.load_splits()
        train = training_pairs(self.splits[self.corpus.train_split])
        kept = [(p, text) for p, text in zip(self.encode(train), train) if fits(p, self.max_length)]
        sampling = None
        if self.subword_sampling is not None:
            sampling = SubwordSampling(
                self.source_tokenizer,
                self.target_tokenizer,
                self.subword_sampling,
                self.max_length,
                self.seed,
            )
        self.train_pairs = TrainingPairs([p for p, _ in kept], [text for _, text in kept], sampling)
        dropped = len(train) - len(self.train_pairs)
        print(
            "Corpus {} {}: {}; {} training pairs longer than {} tokens dropped".format(
                self.corpus_name,
                self.corpus.pair,
                ", ".join(
                    f"{name} {len(examples):,} sources" for name, examples in self.splits.items()
                ),
                f"{dropped:,}",
                self.max_length,
            )
        )
        self.valid_pairs = self.encode_examples(self.corpus.valid_split)

    def shortlist(self) -> Shortlist:
        """The lexical shortlist of the training pairs, for the checkpoints (built once)."""
        if self._shortlist is None:
            self._shortlist = build_shortlist(
                [(p.source[:-1], p.target) for p in self.train_pairs.pairs],  # without eos
                self.source_tokenizer.vocab_size,
                self.target_tokenizer.vocab_size,
            )
        return self._shortlist

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Ids of (source, target) pairs: source gets eos, target stays bare."""
        sources = self.source_tokenizer.encode([s for s, _ in pairs])
        targets = self.target_tokenizer.encode([t for _, t in pairs])
        return [EncodedPair(s + [EOS_ID], t, i) for i, (s, t) in enumerate(zip(sources, targets))]

    def encode_examples(self, split: str) -> list[EncodedPair]:
        """One pair per example (its first reference, for the loss); index = example number."""
        return self.encode([(e.source, e.references[0]) for e in self.splits[split]])

    def _loader(
        self, dataset: Dataset[EncodedPair], pairs: Sequence[EncodedPair], shuffle: bool
    ) -> DataLoader:
        """Token batches of `dataset`, cut by the lengths of `pairs` (its fixed segmentation);
        under DDP, this process's share of them (see `TokenBatchSampler`)."""
        target_lengths = [len(p.target) + 1 for p in pairs]  # with bos (or eos)
        lengths = [max(len(p.source), length) for p, length in zip(pairs, target_lengths)]
        processes, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        sampler = TokenBatchSampler(
            lengths, self.max_tokens, shuffle, self.seed, processes, rank, target_lengths
        )
        loader = ResumableDataLoader if shuffle else DataLoader  # validation always runs whole
        # its own generator: starting a pass draws a worker seed, which must not move the
        # global RNG (dropout), or a resumed run would drift from an uninterrupted one
        generator = torch.Generator().manual_seed(self.seed)
        return loader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pairs, self.train_pairs.pairs, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_pairs, self.valid_pairs, shuffle=False)


def check_sampling_alpha(alpha: float | None, tokenizer_type: str) -> None:
    """Refuse an alpha SentencePiece cannot sample with, naming the valid range."""
    if alpha is None:
        return
    if tokenizer_type == "bpe" and not 0 < alpha < 1:
        raise Seq2SeqError(
            f"data.subword_sampling={alpha} is a BPE-dropout probability with tokenizer_type bpe: "
            "give one between 0 and 1 (0.1 is usual), or null to turn sampling off"
        )
    if alpha <= 0:
        raise Seq2SeqError(
            f"data.subword_sampling={alpha}: the unigram sampling alpha must be above 0 (0.1 to "
            "1; the lower, the more varied the segmentations), or null to turn sampling off"
        )
