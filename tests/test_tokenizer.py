import pytest

from seq2seq.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from seq2seq.corpora import Tatoeba, training_pairs


@pytest.fixture(scope="module")
def french(data_dir, mirror):
    corpus = Tatoeba("en", "fr")
    corpus.prepare(data_dir, mirror)
    splits = corpus.load(data_dir)
    targets = [t for _, t in training_pairs(splits["train"][:3000])]
    return train_tokenizer(targets, vocab_size=1000), splits["test"]


def test_round_trip_on_unseen_real_sentences(french):
    tokenizer, test = french
    sentences = [e.references[0] for e in test[:300]]
    decoded = tokenizer.decode(tokenizer.encode(sentences))
    # SentencePiece applies NFKC (e.g. narrow no-break space → space); all else is exact.
    import unicodedata

    assert decoded == [" ".join(unicodedata.normalize("NFKC", s).split()) for s in sentences]


def test_nothing_maps_to_unknown(french):
    tokenizer, _ = french
    ids = tokenizer.encode(["Ünïcödé 🙂 漢字 Ωμέγα"])[0]
    assert UNK_ID not in ids
    assert tokenizer.decode([ids]) == ["Ünïcödé 🙂 漢字 Ωμέγα"]


def test_special_ids_are_fixed_and_survive_serialisation(french):
    tokenizer, _ = french
    copy = Tokenizer(tokenizer.model_proto)
    assert (
        copy.processor.pad_id(),
        copy.processor.unk_id(),
        copy.processor.bos_id(),
        copy.processor.eos_id(),
    ) == (
        PAD_ID,
        UNK_ID,
        BOS_ID,
        EOS_ID,
    )
    assert copy.encode(["Bonjour !"]) == tokenizer.encode(["Bonjour !"])
    assert tokenizer.decode([[BOS_ID, *tokenizer.encode(["Bonjour"])[0], EOS_ID, PAD_ID]]) == [
        "Bonjour"
    ]


def test_bpe_option_and_size(french):
    tokenizer, test = french
    assert 900 <= tokenizer.vocab_size <= 1000
    bpe = train_tokenizer([e.references[0] for e in test], vocab_size=600, model_type="bpe")
    assert bpe.decode(bpe.encode(["Je suis là."])) == ["Je suis là."]


@pytest.mark.parametrize("model_type, alpha", [("unigram", 0.3), ("bpe", 0.1)])
def test_sampled_segmentations_repeat_by_seed_vary_between_seeds_and_decode_to_the_text(
    french, model_type, alpha
):
    tokenizer, test = french
    if model_type == "bpe":
        tokenizer = train_tokenizer([e.references[0] for e in test], 600, model_type="bpe")
    sentences = [e.references[0] for e in test[:200]]
    first, again, other = (tokenizer.sample(sentences, alpha, seed) for seed in (1, 1, 2))
    assert first == again
    assert first != other
    fixed = tokenizer.encode(sentences)
    assert sum(a != b for a, b in zip(first, fixed)) > len(sentences) // 4  # segmented otherwise
    assert tokenizer.decode(first) == tokenizer.decode(other) == tokenizer.decode(fixed)
