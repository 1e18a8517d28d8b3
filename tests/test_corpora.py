import gzip
import hashlib
import urllib.error
from pathlib import Path

import pytest

from seq2seq.corpora import (
    Custom,
    Multi30k,
    RemoteFile,
    Tatoeba,
    fetch,
    open_corpus,
    read_lines,
    training_pairs,
)
from seq2seq.errors import Seq2SeqError


def remote_for(content: bytes, name: str = "demo/file.txt") -> RemoteFile:
    return RemoteFile(name, "https://example.invalid/file.txt", hashlib.sha256(content).hexdigest())


def test_fetch_copies_from_mirror_verifies_and_caches(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "demo").mkdir(parents=True)
    (mirror / "demo" / "file.txt").write_bytes(b"hello\n")
    remote = remote_for(b"hello\n")
    path = fetch(remote, tmp_path / "data", mirror)
    assert path.read_bytes() == b"hello\n"
    (mirror / "demo" / "file.txt").unlink()  # cached: the mirror is not read again
    assert fetch(remote, tmp_path / "data", mirror) == path


def test_checksum_mismatch_removes_the_bad_file(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "demo").mkdir(parents=True)
    (mirror / "demo" / "file.txt").write_bytes(b"tampered\n")
    remote = remote_for(b"hello\n")
    with pytest.raises(
        Seq2SeqError, match=f"checksum mismatch for demo/file.txt.*expected SHA-256 {remote.sha256}"
    ):
        fetch(remote, tmp_path / "data", mirror)
    assert list((tmp_path / "data" / "demo").iterdir()) == []  # no final file, no partial file


def test_offline_without_mirror_names_the_url_and_the_variable(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.delenv("SEQ2SEQ_DATA_MIRROR", raising=False)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(
        Seq2SeqError,
        match=r"could not download https://example.invalid/file.txt .*SEQ2SEQ_DATA_MIRROR",
    ):
        fetch(remote_for(b"x"), tmp_path / "data")
    assert list((tmp_path / "data" / "demo").iterdir()) == []


def test_missing_mirror_file_is_explained(tmp_path):
    with pytest.raises(Seq2SeqError, match="mirror file .*demo/file.txt does not exist"):
        fetch(remote_for(b"x"), tmp_path / "data", tmp_path)


@pytest.fixture(scope="module")
def tatoeba_splits(data_dir, mirror):
    corpus = Tatoeba("en", "fr")
    corpus.prepare(data_dir, mirror)
    return corpus.load(data_dir)


def test_tatoeba_splits_are_disjoint_by_source(tatoeba_splits):
    sources = {name: {e.source for e in examples} for name, examples in tatoeba_splits.items()}
    assert len(sources["test"]) == 2000 and len(sources["valid"]) == 1000
    assert len(sources["train"]) > 90_000
    assert not sources["train"] & sources["test"]
    assert not sources["train"] & sources["valid"]
    assert not sources["valid"] & sources["test"]


def test_tatoeba_groups_every_reference_of_a_source(tatoeba_splits):
    test = tatoeba_splits["test"]
    assert sum(len(e.references) > 1 for e in test) > 200  # multi-reference BLEU is possible
    pairs = training_pairs(tatoeba_splits["train"])
    assert len(pairs) == len(set(pairs))  # exact duplicates were dropped
    run = next(e for e in tatoeba_splits["train"] + test if e.source == "Run!")
    assert len(run.references) >= 2


def test_tatoeba_split_is_stable_and_reversible(data_dir, tatoeba_splits):
    again = Tatoeba("en", "fr").load(data_dir)
    assert again["test"] == tatoeba_splits["test"]
    french = Tatoeba("fr", "en").load(data_dir)
    assert len(french["test"]) == 2000
    assert {r for e in french["train"] for r in e.references} & {
        e.source for e in tatoeba_splits["train"]
    }


def test_multi30k_official_splits(data_dir, mirror):
    corpus = Multi30k("en", "de")
    corpus.prepare(data_dir, mirror)
    splits = corpus.load(data_dir)
    assert {name: len(s) for name, s in splits.items()} == {
        "train": 29000,
        "val": 1014,
        "test_2016_flickr": 1000,
        "test_2017_flickr": 1000,
    }
    assert Multi30k("en", "cs").test_splits == ("test_2016_flickr",)


@pytest.mark.parametrize(
    "name, pair", [("tatoeba", ("en", "de")), ("multi30k", ("en", "xx")), ("wmt", ("en", "de"))]
)
def test_unknown_corpus_or_pair_is_a_clear_error(name, pair):
    with pytest.raises(Seq2SeqError, match="unknown corpus|has no pair"):
        open_corpus(name, *pair)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(Seq2SeqError, match=r"bad.txt, line 3: invalid UTF-8"):
        read_lines(path)


def test_read_lines_handles_gzip_and_windows_line_endings(tmp_path):
    path = write(tmp_path / "x.gz", gzip.compress(b"a\r\n\r\nc\r\n"))
    assert read_lines(path) == ["a", "", "c"]


def test_custom_parallel_files_with_different_line_counts(tmp_path):
    source = write(tmp_path / "train.en", b"one\ntwo\n")
    target = write(tmp_path / "train.fr", b"un\n")
    corpus = Custom(
        "en", "fr", {"train": [str(source), str(target)], "valid": [str(source), str(source)]}
    )
    with pytest.raises(Seq2SeqError, match=r"train.en has 2 lines but .*train.fr has 1"):
        corpus.load(tmp_path)


def test_custom_tsv_with_references_and_a_line_without_tab(tmp_path):
    good = write(tmp_path / "valid.tsv", b"hello\tbonjour\tsalut\n")
    corpus = Custom("en", "fr", {"train": [str(good)], "valid": [str(good)]})
    assert corpus.load(tmp_path)["valid"][0].references == ("bonjour", "salut")
    bad = write(tmp_path / "train.tsv", b"hello\tbonjour\nno tab here\n")
    with pytest.raises(Seq2SeqError, match=r"train.tsv, line 2: expected 'source<TAB>reference'"):
        Custom("en", "fr", {"train": [str(bad)], "valid": [str(good)]}).load(tmp_path)


def test_custom_needs_train_and_valid():
    with pytest.raises(Seq2SeqError, match="missing: valid"):
        Custom("en", "fr", {"train": ["a.tsv"]})
