"""Every cell x decoder trains, searches, saves and loads: the tiny config on 16 real pairs.

Each combination is trained once per session by the training command, then translated from
its checkpoint the way a user would (greedy, beam, n-best, int8 and bf16).
"""

from __future__ import annotations

import pytest
import torch

from seq2seq.core import translate
from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.core.model import CELLS, DECODERS, ModelConfig, Seq2Seq
from seq2seq.core.search import SearchSettings, greedy_search
from seq2seq.core.translate import Translator, native_bf16
from tests.conftest import tiny_train_args
from tests.test_end_to_end import is_one_of

PAIRS = 16
ARCHITECTURES = [(cell, decoder) for cell in CELLS for decoder in DECODERS]


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=lambda a: "-".join(a))
def trained(request, tmp_path_factory, data_dir, mirror):
    """(cell, decoder, the training CLI after fitting, its last checkpoint)."""
    from seq2seq.training.cli import train

    cell, decoder = request.param
    checkpoints = tmp_path_factory.mktemp(f"{cell}-{decoder}")
    cli = train(
        tiny_train_args(
            checkpoints,
            data_dir,
            mirror,
            "--model.network.cell",
            cell,
            "--model.network.decoder",
            decoder,
            "--data.max_train_examples",
            str(PAIRS),
            "--trainer.max_epochs",
            "120",
            "--trainer.check_val_every_n_epoch",
            "120",
            "--keep_last",
            "0",
        )
    )
    return cell, decoder, cli, checkpoints / "tiny" / "last.ckpt"


@pytest.fixture(scope="module")
def pairs(data_dir, mirror):
    from seq2seq.training.data import TranslationDataModule

    module = TranslationDataModule(
        data_dir=str(data_dir), mirror=str(mirror), max_train_examples=PAIRS, vocab_size=400
    )
    return module.load_splits()["train"]


def reproduced(translator: Translator, pairs, **search) -> float:
    """The share of `pairs` translated into one of their references (short pairs: BLEU's
    4-grams would not exist)."""
    translations = translator.translate_detailed(
        [p.source for p in pairs], search=SearchSettings(**search)
    )
    hits = [is_one_of(t.text, p.references) for t, p in zip(translations, pairs)]
    return sum(hits) / len(hits)


def test_the_checkpoint_records_the_architecture(trained):
    cell, decoder, _, checkpoint = trained
    network = load_checkpoint(checkpoint)["seq2seq"]["network"]
    assert (network["cell"], network["decoder"]) == (cell, decoder)


def test_each_architecture_memorises_its_pairs_greedy_and_beam(trained, pairs):
    translator = Translator.from_checkpoint(trained[3], precision="fp32")
    assert reproduced(translator, pairs) >= 0.9
    assert reproduced(translator, pairs, beam_size=5) >= 0.9


def test_the_loaded_checkpoint_translates_as_the_trained_network(trained, pairs):
    net = trained[2].model.net.eval()
    translator = Translator.from_checkpoint(trained[3], precision="fp32")
    sources = translator.encode([p.source for p in pairs[:4]])
    lengths = torch.tensor([len(s.ids) for s in sources])
    batch = torch.nn.utils.rnn.pad_sequence([torch.tensor(s.ids) for s in sources], True)
    expected = greedy_search(net, batch, lengths)
    loaded = greedy_search(translator.net, batch, lengths)
    for a, b in zip(expected, loaded):
        assert a.tokens == b.tokens
        torch.testing.assert_close(a.attention, b.attention)


def test_nbest_and_attention_rows_follow_each_hypothesis(trained, pairs):
    translator = Translator.from_checkpoint(trained[3], precision="fp32")
    translations = translator.translate_detailed(
        [p.source for p in pairs[:4]], search=SearchSettings(beam_size=4, nbest=3)
    )
    for translation in translations:
        assert len(translation.hypotheses) == 3
        scores = [h.score for h in translation.hypotheses]
        assert scores == sorted(scores, reverse=True)
        for hypothesis in translation.hypotheses:
            rows, columns = hypothesis.attention.shape
            assert rows in (len(hypothesis.tokens), len(hypothesis.tokens) + 1)
            assert columns == len(translation.source_ids)
            torch.testing.assert_close(hypothesis.attention.sum(-1), torch.ones(rows))


def test_int8_translation_keeps_the_memorised_pairs(trained, pairs):
    translator = Translator.from_checkpoint(trained[3], precision="int8")
    assert reproduced(translator, pairs, beam_size=5) >= 0.8


@pytest.mark.parametrize("cell, decoder", ARCHITECTURES)
def test_every_precision_keeps_the_energy_vector_fp32(cell, decoder):
    config = ModelConfig(
        embedding_size=8,
        encoder_hidden_size=8,
        decoder_hidden_size=16,
        cell=cell,
        decoder=decoder,
        tie_embeddings=True,
    )
    net = Seq2Seq(40, 50, config)
    stored = translate.bf16_decoder(net)
    decoder_matrices = {
        name: p.dtype for name, p in stored.decoder.named_parameters() if p.dim() == 2
    }
    assert decoder_matrices.pop("attention.energy.weight") == torch.float32
    assert set(decoder_matrices.values()) == {torch.bfloat16}
    assert {p.dtype for p in stored.encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # the caller's stays fp32
    quantized = translate.quantize_int8(net)
    assert type(quantized.decoder.attention.energy) is torch.nn.Linear
    assert type(quantized.decoder.attention.query_proj) is not torch.nn.Linear


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16")
def test_bf16_translation_keeps_the_memorised_pairs(trained, pairs):
    translator = Translator.from_checkpoint(trained[3], precision="bf16")
    assert reproduced(translator, pairs, beam_size=5) >= 0.8


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16")
def test_a_bf16_decoder_translates_as_autocast_over_fp32_weights(trained, pairs, monkeypatch):
    stored = Translator.from_checkpoint(trained[3], precision="bf16")
    decoder_matrices = [p for p in stored.net.decoder.parameters() if p.dim() == 2]
    energy = getattr(stored.net.decoder.attention, "energy", None)
    assert {p.dtype for p in decoder_matrices if energy is None or p is not energy.weight} == {
        torch.bfloat16
    }
    assert {p.dtype for p in stored.net.encoder.parameters()} == {torch.float32}
    monkeypatch.setitem(translate.PREPARE_NETWORK, "bf16", lambda net: net)
    autocast = Translator.from_checkpoint(trained[3], precision="bf16")
    assert {p.dtype for p in autocast.net.parameters()} == {torch.float32}
    sources = [p.source for p in pairs]
    for search in (SearchSettings(), SearchSettings(beam_size=3, nbest=2)):
        expected = autocast.translate_detailed(sources, search=search)
        got = stored.translate_detailed(sources, search=search)
        assert [t.texts for t in got] == [t.texts for t in expected]
        assert [[h.score for h in t.hypotheses] for t in got] == [
            [h.score for h in t.hypotheses] for t in expected
        ]
