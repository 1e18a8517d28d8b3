"""Greedy and beam search on the trained tiny model: consistent, batch-independent, ranked."""

import random
import threading

import pytest
import torch

from seq2seq.core.checkpoint import load_checkpoint, load_network
from seq2seq.core.search import (
    ROW_BUCKET,
    SearchSettings,
    beam_search,
    bucketed,
    coverage_penalty,
    greedy_search,
    top_k,
)
from seq2seq.core.tokenizer import BOS_ID, EOS_ID
from seq2seq.core.translate import Translator, native_bf16
from seq2seq.errors import Seq2SeqError


@pytest.fixture(scope="module")
def sentences(data_dir, mirror) -> list[str]:
    """64 sources: memorised training sentences and unseen validation ones, of varied length."""
    from seq2seq.training.data import TranslationDataModule

    splits = TranslationDataModule(
        data_dir=str(data_dir), mirror=str(mirror), max_train_examples=300, vocab_size=400
    ).load_splits()
    return [e.source for e in splits["train"][:32]] + [e.source for e in splits["valid"][:32]]


def test_beam_of_one_is_greedy_search_on_a_trained_model(tiny_checkpoint, sentences):
    translator = Translator.from_checkpoint(tiny_checkpoint, precision="fp32")
    source_ids = [line.ids for line in translator.encode(sentences)]
    lengths = torch.tensor([len(ids) for ids in source_ids])
    source = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ids) for ids in source_ids], batch_first=True
    )
    greedy = greedy_search(translator.net, source, lengths)
    beam = beam_search(translator.net, source, lengths, SearchSettings(beam_size=1, alpha=0.0))
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens
        assert g.log_probability == pytest.approx(b.log_probability, abs=1e-4)
        assert torch.allclose(g.attention, b.attention, atol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_output_does_not_depend_on_batch_size_or_order(tiny_checkpoint, sentences, beam_size):
    translator = Translator.from_checkpoint(
        tiny_checkpoint, search=SearchSettings(beam_size=beam_size, nbest=beam_size)
    )
    reference = translator.translate_detailed(sentences, batch_size=64)
    for batch_size in (1, 7):
        assert [t.texts for t in translator.translate_detailed(sentences, batch_size)] == [
            t.texts for t in reference
        ]
    order = list(range(len(sentences)))
    random.Random(0).shuffle(order)
    shuffled = translator.translate_detailed([sentences[i] for i in order], batch_size=7)
    for position, index in enumerate(order):
        assert shuffled[position].texts == reference[index].texts
        assert [h.score for h in shuffled[position].hypotheses] == pytest.approx(
            [h.score for h in reference[index].hypotheses], abs=1e-4
        )


def test_nbest_lists_are_sorted_and_of_the_requested_size(tiny_checkpoint, sentences):
    translator = Translator.from_checkpoint(
        tiny_checkpoint, search=SearchSettings(beam_size=5, nbest=4)
    )
    for translation in translator.translate_detailed(sentences):
        scores = [h.score for h in translation.hypotheses]
        assert len(scores) == 4
        assert scores == sorted(scores, reverse=True)
        # distinct hypotheses
        assert len(set(map(tuple, (h.tokens for h in translation.hypotheses)))) == 4


def test_max_length_ratio_caps_the_output(tiny_checkpoint, sentences):
    translator = Translator.from_checkpoint(
        tiny_checkpoint, search=SearchSettings(max_length_ratio=0.01)
    )
    for translation in translator.translate_detailed(sentences):
        assert len(translation.hypotheses[0].tokens) <= 10  # the cap never goes below 10 tokens


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beam_size": 0}, "beam size must be at least 1"),
        ({"beam_size": 2, "nbest": 3}, "--beam-size 3"),
        ({"max_length_ratio": -1}, "positive"),
        ({"beta": -0.1}, "--beta 0 or more"),
    ],
)
def test_bad_search_settings_are_named(settings, message):
    with pytest.raises(Seq2SeqError, match=message):
        SearchSettings(**settings)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_translates_the_memorised_pairs_alike(
    tiny_checkpoint, sentences, precision
):
    memorised = sentences[:32]
    full = Translator.from_checkpoint(tiny_checkpoint, "cpu", precision="fp32").translate(memorised)
    reduced = Translator.from_checkpoint(tiny_checkpoint, "cpu", precision=precision).translate(
        memorised
    )
    assert sum(a == b for a, b in zip(full, reduced)) >= 28


def test_bf16_translation_leaves_the_callers_network_in_fp32(tiny_checkpoint):
    net, source_tokenizer, target_tokenizer = load_network(
        load_checkpoint(tiny_checkpoint), tiny_checkpoint
    )
    translator = Translator(net, source_tokenizer, target_tokenizer, precision="bf16")
    assert translator.net is not net
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert torch.bfloat16 in {p.dtype for p in translator.net.parameters()}


def test_the_default_precision_is_bf16_where_it_is_native(tiny_checkpoint, monkeypatch):
    native = Translator.from_checkpoint(tiny_checkpoint, "cpu").precision
    assert native == ("bf16" if native_bf16("cpu") else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert Translator.from_checkpoint(tiny_checkpoint, "cpu").precision == "fp32"
    assert Translator.from_checkpoint(tiny_checkpoint, "cpu", precision="bf16").precision == "bf16"


def test_unknown_precision_is_named(tiny_checkpoint):
    with pytest.raises(Seq2SeqError, match="unknown precision 'fp8'"):
        Translator.from_checkpoint(tiny_checkpoint, "cpu", precision="fp8")


def test_workers_search_whole_batches_on_their_share_of_the_threads(
    tiny_checkpoint, sentences, monkeypatch
):
    alone = Translator.from_checkpoint(tiny_checkpoint, "cpu", workers=1).translate(
        sentences, batch_size=8
    )
    translator = Translator.from_checkpoint(tiny_checkpoint, "cpu", workers=2)
    calls = []
    search = translator._search

    def recording_search(batch, settings):
        calls.append((threading.get_ident(), torch.get_num_threads()))
        return search(batch, settings)

    monkeypatch.setattr(translator, "_search", recording_search)
    threads = torch.get_num_threads()
    assert translator.translate(sentences, batch_size=8) == alone
    assert len(calls) == 8
    assert threading.get_ident() not in {ident for ident, _ in calls}
    assert {count for _, count in calls} == {max(1, threads // 2)}
    assert torch.get_num_threads() == threads  # the caller's own count is untouched


def test_beam_wider_than_half_the_vocabulary_is_named(tiny_checkpoint):
    with pytest.raises(
        Seq2SeqError, match="more than the model's 400 target tokens: use --beam-size 200 or less"
    ):
        Translator.from_checkpoint(tiny_checkpoint, "cpu", SearchSettings(beam_size=201))


def test_workers_must_be_positive(tiny_checkpoint):
    with pytest.raises(Seq2SeqError, match="workers must be at least 1"):
        Translator.from_checkpoint(tiny_checkpoint, "cpu", workers=0)


@pytest.mark.parametrize(
    ("rows", "length", "count"), [(3, 40000, 10), (4, 8001, 1), (2, 97, 3), (5, 1000, 10)]
)
def test_top_k_by_chunks_finds_what_topk_finds(rows, length, count):
    torch.manual_seed(0)
    values = torch.randint(-50, 50, (rows, length)).float()  # many ties
    values[0, : length // 2] = float("-inf")
    top, positions = top_k(values, count)
    assert torch.equal(top, values.topk(count, dim=-1).values)
    assert torch.equal(values.gather(1, positions), top)
    assert all(len(set(row)) == count for row in positions.tolist())  # no position twice


def test_coverage_penalty_counts_only_source_tokens_left_unread():
    coverage = torch.tensor([[1.0, 2.5, 1.0], [0.5, 1.0, 1.0], [0.0, 1.0, 1.0]])
    penalty = coverage_penalty(coverage, beta=0.2)
    # every token read: no penalty, however much attention beyond a full share
    assert penalty[0] == 0
    assert penalty[1] == pytest.approx(0.2 * torch.tensor(0.5).log())
    # unread costs most, but stays comparable
    assert penalty[2] < penalty[1] and torch.isfinite(penalty[2])
    assert torch.equal(coverage_penalty(coverage, beta=0.0), torch.zeros(3))


class ScriptedDecoder(torch.nn.Module):
    """A two-token source and a decoder that reads it one of two ways.

    After bos (reading source token 0) it says A (probability 0.5) or B (0.4). After A it
    reads token 0 again, after B token 1, and then ends (eos, 0.9) either way: "A" is the
    likelier output, "B" the one that read the whole source.
    """

    A, B, VOCAB = 5, 6, 12

    class State:
        def select_sentences(self, indices):
            return self

        def select_beams(self, rows):
            return self

    def encode(self, source, source_lengths):
        return self.State()

    def decode_step(self, state, previous):
        first = previous == BOS_ID
        # rows sum to 1
        probabilities = torch.where(first, 0.1 / 10, 0.1 / 11).unsqueeze(1).repeat(1, self.VOCAB)
        weights = torch.zeros(previous.numel(), 2)
        probabilities[first, self.A], probabilities[first, self.B] = 0.5, 0.4
        probabilities[~first, EOS_ID] = 0.9
        weights[:, 0] = (previous != self.B).float()
        weights[:, 1] = (previous == self.B).float()
        return probabilities.log(), weights, state


def test_coverage_penalty_prefers_the_hypothesis_that_read_the_whole_source():
    source, lengths = torch.tensor([[7, EOS_ID]]), torch.tensor([2])
    likeliest = beam_search(
        ScriptedDecoder(), source, lengths, SearchSettings(beam_size=2, beta=0.0)
    )
    covering = beam_search(
        ScriptedDecoder(), source, lengths, SearchSettings(beam_size=2, beta=0.3)
    )
    assert likeliest[0][0].tokens == [ScriptedDecoder.A]
    assert covering[0][0].tokens == [ScriptedDecoder.B]
    assert covering[0][0].log_probability == pytest.approx(
        float(torch.tensor(0.4 * 0.9).log()), abs=1e-5
    )


@pytest.mark.parametrize("beam_size", [1, 5])
def test_finished_sentences_leave_a_bucket_at_a_time(tiny_checkpoint, sentences, beam_size):
    """The decoder sees a few row counts per batch (whole buckets of ROW_BUCKET rows' worth of
    sentences, or the batch's own size), and rows kept after their sentence ended change no
    translation."""
    search = SearchSettings(beam_size=beam_size)
    translator = Translator.from_checkpoint(tiny_checkpoint, "cpu", search, precision="fp32")
    batch = sentences[:22]
    alone = [translator.translate([s])[0] for s in batch]
    seen: list[int] = []
    decode_step = translator.net.decode_step

    def recording(state, previous):
        seen.append(previous.size(0))
        return decode_step(state, previous)

    translator.net.decode_step = recording
    assert translator.translate(batch, batch_size=len(batch)) == alone
    sentences_per_bucket = -(-ROW_BUCKET // beam_size)
    shrunk = [
        rows // beam_size for rows in seen if rows not in (len(batch), len(batch) * beam_size)
    ]
    assert shrunk  # sentences did leave
    assert all(bucketed(count, sentences_per_bucket) == count for count in shrunk)
    assert len(set(shrunk)) < len(batch) // 2


def test_buckets_are_multiples_of_the_unit_or_powers_of_two_below_it():
    expected = {1: 1, 3: 4, 5: 8, 9: 16, 16: 16, 17: 32, 33: 48, 128: 128}
    assert {count: bucketed(count, 16) for count in expected} == expected
