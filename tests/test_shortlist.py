"""The lexical shortlist: IBM Model 1 finds the translations, the restricted output layer gives
the full layer's logits, and search with it is batch-independent and can be switched off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from seq2seq.core.checkpoint import add_shortlist, load_checkpoint, load_shortlist, save_checkpoint
from seq2seq.core.search import SearchSettings, first_state
from seq2seq.core.shortlist import Shortlist, build_shortlist
from seq2seq.core.tokenizer import BOS_ID, EOS_ID
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError
from tests.test_architectures import reproduced
from tests.test_end_to_end import run_cli

# source: 10 the, 11 dog, 12 cat, 13 runs, 14 sleeps; target: 20 der, 21 Hund, 22 Katze,
# 23 läuft, 24 schläft
TOY_PAIRS = [
    ([10, 11], [20, 21]),
    ([10, 12], [20, 22]),
    ([10, 11, 13], [20, 21, 23]),
    ([10, 12, 14], [20, 22, 24]),
    ([10, 11, 14], [20, 21, 24]),
]


def test_ibm_model_1_ranks_each_source_pieces_translation_first():
    shortlist = build_shortlist(TOY_PAIRS, 16, 32, per_source=2, frequent=2)
    best = {source: int(shortlist.candidates[source, 0]) for source in range(10, 15)}
    assert best == {10: 20, 11: 21, 12: 22, 13: 23, 14: 24}
    assert shortlist.candidates[0].tolist() == [EOS_ID, EOS_ID]  # never seen: eos only
    assert shortlist.frequent.tolist() == [EOS_ID, 20]  # eos first, then der
    batch = shortlist.for_batch(torch.tensor([[11, 13, EOS_ID], [12, EOS_ID, 0]]))
    assert set(batch.ids.tolist()) >= {EOS_ID, 20, 21, 22, 23}
    own = [set(batch.ids[row].tolist()) for row in batch.allowed]
    assert {21, 23} <= own[0] and 22 not in own[0]  # a sentence keeps its own list
    assert 22 in own[1] and 23 not in own[1]
    restored = Shortlist.from_dict(shortlist.to_dict())
    assert torch.equal(restored.candidates, shortlist.candidates)


def test_a_shortlist_needs_pairs_and_sizes():
    with pytest.raises(Seq2SeqError, match="at least one candidate per source piece"):
        build_shortlist(TOY_PAIRS, 16, 32, per_source=0)
    with pytest.raises(Seq2SeqError, match="both sides non-empty"):
        build_shortlist([([], [20])], 16, 32)


@pytest.fixture(scope="module")
def narrow_checkpoint(tiny_checkpoint, training_examples, tmp_path_factory) -> Path:
    """The tiny model with a narrow shortlist of its training pairs (8 candidates per source
    piece, 40 frequent pieces), so that every sentence's list leaves pieces out."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    full = Translator.from_checkpoint(tiny_checkpoint)
    pairs = [(e.source, r) for e in training_examples for r in e.references]
    sources = full.source_tokenizer.encode([s for s, _ in pairs])
    targets = full.target_tokenizer.encode([t for _, t in pairs])
    vocabulary_sizes = (full.source_tokenizer.vocab_size, full.target_tokenizer.vocab_size)
    narrow = build_shortlist(list(zip(sources, targets)), *vocabulary_sizes, 8, 40)
    checkpoint["seq2seq"]["shortlist"] = narrow.to_dict()
    path = tmp_path_factory.mktemp("narrow") / "narrow.ckpt"
    save_checkpoint(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def translator(narrow_checkpoint) -> Translator:
    # fp32: some tests run its network outside the translator, where a bf16 copy would not run
    return Translator.from_checkpoint(narrow_checkpoint, precision="fp32", shortlist=True)


def source_batch(translator: Translator, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [line.ids for line in translator.encode(sentences)]
    source = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True)
    return source, torch.tensor([len(i) for i in ids])


def test_training_writes_the_shortlist_into_the_checkpoint_and_translation_asks_for_it(
    tiny_checkpoint,
):
    shortlist = load_shortlist(load_checkpoint(tiny_checkpoint))
    assert shortlist is not None
    translator = Translator.from_checkpoint(tiny_checkpoint, shortlist=True)
    assert torch.equal(translator.shortlist.candidates, shortlist.candidates)
    assert shortlist.candidates.shape[0] == translator.source_tokenizer.vocab_size
    assert Translator.from_checkpoint(tiny_checkpoint).shortlist is None  # off by default


def test_the_restricted_layer_gives_the_full_layers_logits_and_top_1(translator, training_examples):
    sentences = [e.source for e in training_examples[:16]]
    source, lengths = source_batch(translator, sentences)
    vocabulary = translator.shortlist.for_batch(source)
    assert len(vocabulary.ids) < translator.target_tokenizer.vocab_size
    assert not vocabulary.allowed.all()
    net = translator.net
    full = net.encode(source, lengths)
    restricted = first_state(net, source, lengths, vocabulary)
    previous = torch.full((len(sentences),), BOS_ID)
    compared = 0
    for _ in range(6):
        full_logits, _, full = net.decode_step(full, previous)  # (B, V)
        logits, _, restricted = net.decode_step(restricted, previous)  # (B, C)
        in_list = vocabulary.allowed
        torch.testing.assert_close(logits[in_list], full_logits[:, vocabulary.ids][in_list])
        assert torch.all(logits[~in_list] == float("-inf"))
        full_best = full_logits.argmax(-1)
        listed = (vocabulary.ids[None] == full_best[:, None]) & in_list  # (B, C)
        has_best = listed.any(1)
        assert torch.equal(vocabulary.ids[logits.argmax(-1)][has_best], full_best[has_best])
        compared += int(has_best.sum())
        previous = full_best
    assert compared > 0


def test_memorised_pairs_translate_back_with_the_checkpoints_shortlist_greedy_and_beam(
    tiny_checkpoint, training_examples
):
    translator = Translator.from_checkpoint(tiny_checkpoint, shortlist=True)
    assert reproduced(translator, training_examples[:40]) >= 0.9
    assert reproduced(translator, training_examples[:40], beam_size=4) >= 0.9


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_sentence_translates_alike_alone_and_in_any_batch_with_the_shortlist(
    translator, training_examples, beam_size
):
    sentences = [e.source for e in training_examples[:24]]
    search = SearchSettings(beam_size=beam_size, nbest=beam_size)
    together = translator.translate_detailed(sentences, 64, search=search)
    for index in (0, 5, 17):
        alone = translator.translate_detailed([sentences[index]], 1, search=search)[0]
        assert alone.texts == together[index].texts
        assert [h.score for h in alone.hypotheses] == pytest.approx(
            [h.score for h in together[index].hypotheses], abs=1e-4
        )


def test_int8_translation_with_the_shortlist_keeps_the_memorised_pairs(
    tiny_checkpoint, training_examples
):
    int8 = Translator.from_checkpoint(tiny_checkpoint, "cpu", precision="int8", shortlist=True)
    assert int8.shortlist is not None
    assert reproduced(int8, training_examples[:40]) >= 0.9


def test_the_shortlist_command_adds_one_to_a_checkpoint_without(tiny_checkpoint, tmp_path, mirror):
    bare = tmp_path / "bare.ckpt"
    checkpoint = load_checkpoint(tiny_checkpoint)
    saved_by_the_run = load_shortlist(checkpoint)
    del checkpoint["seq2seq"]["shortlist"]
    save_checkpoint(checkpoint, bare)
    assert Translator.from_checkpoint(bare, shortlist=True).shortlist is None
    result = run_cli("shortlist", str(bare), "--mirror", str(mirror))
    assert result.returncode == 0, result.stderr
    assert "50 candidates for each of" in result.stdout
    shortlist = load_shortlist(load_checkpoint(bare))
    assert shortlist is not None and shortlist.candidates.shape[1] == 50
    # rebuilt from the 300 pairs the tiny run trained on, not the whole corpus
    assert torch.equal(shortlist.candidates, saved_by_the_run.candidates)
    copy = tmp_path / "copy.ckpt"
    shutil.copy(bare, copy)
    assert torch.equal(add_shortlist(copy, str(mirror)).candidates, shortlist.candidates)


def test_translate_shortlist_scores_the_list_and_by_default_the_whole_vocabulary(
    narrow_checkpoint, training_examples
):
    """A list's softmax leaves the other pieces out, so a translation scores higher with it;
    without --shortlist the score is the full softmax's log-probability."""
    line = training_examples[0].source
    full = Translator.from_checkpoint(narrow_checkpoint)
    expected = full.translate_detailed([line])[0].hypotheses[0].score
    arguments = ("translate", "--checkpoint", str(narrow_checkpoint), "--scores")
    with_list = run_cli(*arguments, "--shortlist", stdin=line + "\n")
    without = run_cli(*arguments, stdin=line + "\n")
    assert with_list.returncode == without.returncode == 0, without.stderr

    def score_of(result) -> float:  # the line printed is "translation<TAB>score"
        return float(result.stdout.rstrip("\n").split("\t")[1])

    assert score_of(without) == pytest.approx(expected, abs=1e-3)
    assert score_of(with_list) > score_of(without)
