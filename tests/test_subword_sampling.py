"""Subword regularization in training: a new segmentation of the training pairs each epoch,
the same batches, and the same pairs again for the same epoch (resumed runs, DDP processes)."""

from __future__ import annotations

import re

import pytest

from seq2seq.errors import Seq2SeqError
from seq2seq.training.data import TranslationDataModule


def data_module(data_dir, mirror, **settings) -> TranslationDataModule:
    module = TranslationDataModule(
        data_dir=str(data_dir),
        mirror=str(mirror),
        max_train_examples=300,
        vocab_size=400,
        max_tokens=512,
        **settings,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def epoch_pairs(module: TranslationDataModule, epoch: int) -> tuple[list, list]:
    """(the pairs each batch of `epoch` holds, by example index; those pairs' ids)."""
    loader = module.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    batches, ids = [], []
    for batch in loader:
        batches.append(batch.index.tolist())
        for row in range(len(batch.index)):
            source = batch.source[row, : batch.source_lengths[row]].tolist()
            target = batch.target_out[row][batch.target_out[row] != 0].tolist()
            ids.append((int(batch.index[row]), source, target))
    return batches, sorted(ids)


def test_each_epoch_samples_new_segmentations_of_the_same_text_in_the_same_batches(
    data_dir, mirror
):
    sampled = data_module(data_dir, mirror, subword_sampling=0.3)
    fixed = data_module(data_dir, mirror)
    batches_0, pairs_0 = epoch_pairs(sampled, 0)
    batches_1, pairs_1 = epoch_pairs(sampled, 1)
    fixed_batches, fixed_pairs = epoch_pairs(fixed, 1)
    assert batches_1 == fixed_batches  # cut from the fixed lengths: as many, the same pairs
    assert len(batches_0) == len(batches_1)
    changed = sum(a != b for a, b in zip(pairs_0, pairs_1))
    assert changed > len(pairs_0) // 2
    assert sum(a != b for a, b in zip(pairs_1, fixed_pairs)) > len(pairs_0) // 2
    # every sampled segmentation reads back as its sentence pair
    for tokenizer, side in ((sampled.source_tokenizer, 1), (sampled.target_tokenizer, 2)):
        assert tokenizer.decode([p[side] for p in pairs_1]) == tokenizer.decode(
            [p[side] for p in fixed_pairs]
        )
    # a second process (a resumed run, another DDP rank) sees the same pairs for that epoch
    assert epoch_pairs(data_module(data_dir, mirror, subword_sampling=0.3), 1)[1] == pairs_1
    assert epoch_pairs(fixed, 0)[1] == fixed_pairs  # without sampling nothing moves


def test_a_pair_sampled_past_the_length_limit_keeps_its_fixed_segmentation(data_dir, mirror):
    limit = 12
    module = data_module(data_dir, mirror, subword_sampling=0.1, max_length=limit)
    fixed = {p.index: p for p in module.train_pairs.pairs}
    module.train_pairs.set_epoch(0)
    pairs = [module.train_pairs[i] for i in range(len(module.train_pairs))]
    assert all(max(len(p.source), len(p.target) + 1) <= limit for p in pairs)
    kept = [p for p in pairs if p == fixed[p.index]]
    assert kept and len(kept) < len(pairs)  # alpha 0.1 lengthens many pairs past 12


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"subword_sampling": 0.0},
            "data.subword_sampling=0.0: the unigram sampling alpha must be above 0",
        ),
        (
            {"subword_sampling": 1.5, "tokenizer_type": "bpe"},
            "data.subword_sampling=1.5 is a BPE-dropout probability with tokenizer_type bpe: "
            "give one between 0 and 1",
        ),
    ],
)
def test_an_alpha_sentencepiece_cannot_sample_with_is_refused(settings, message):
    with pytest.raises(Seq2SeqError, match=re.escape(message)):
        TranslationDataModule(**settings)
