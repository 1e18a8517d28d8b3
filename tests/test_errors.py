"""Mistakes a user can make give one clear line from the CLI and exit 1, and change no file."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import pytest

from seq2seq.cli import main
from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.corpora import Tatoeba
from seq2seq.errors import Seq2SeqError
from seq2seq.training.data import TranslationDataModule
from tests.conftest import TINY_CONFIG


def run_cli(capsys, *args: str) -> str:
    """Run `seq2seq ARGS`, check it failed with exit status 1, return its one-line error."""
    assert main(list(args)) == 1
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert "\n" not in error and "Traceback" not in captured.out + captured.err
    return error


def train(tmp_path: Path, *args: str) -> tuple[str, ...]:
    return (
        "train",
        "--config",
        str(TINY_CONFIG),
        "--checkpoint_dir",
        str(tmp_path / "runs"),
        *args,
    )


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ("--model.learnin_rate", "3"),
            "unknown config key 'model.learnin_rate' (did you mean 'model.learning_rate'?)",
        ),
        (
            ("--data.vocab_sise", "3"),
            "unknown config key 'data.vocab_sise' (did you mean 'data.vocab_size'?)",
        ),
        (
            ("--model.network.dropuot", "0.1"),
            "unknown config key 'model.network.dropuot' (did you mean 'model.network.dropout'?)",
        ),
        (
            ("--trainer.max_epoch", "3"),
            "unknown config key 'trainer.max_epoch' (did you mean 'trainer.max_epochs'?)",
        ),
        (("--zzz", "1"), "unknown config key 'zzz' (no similar key exists)"),
        (
            ("--model.learning_rate", "abc"),
            "bad value for config key 'model.learning_rate': Expected a <class 'float'>. Got "
            "value: abc",
        ),
        (("--trainer.max_epochs", "x"), "bad value for config key 'trainer.max_epochs'"),
    ],
)
def test_config_mistakes_on_the_command_line(tmp_path, capsys, args, expected):
    error = run_cli(capsys, *train(tmp_path, *args))
    assert error.startswith("seq2seq: error: ") and expected in error
    assert not (tmp_path / "runs").exists()


def test_lightning_save_last_is_refused_because_it_would_overwrite_a_mid_epoch_last_ckpt(
    tmp_path, capsys
):
    error = run_cli(capsys, *train(tmp_path, "--checkpoint.save_last", "true"))
    assert error.startswith(
        "seq2seq: error: checkpoint.save_last: last.ckpt is written by last_checkpoint"
    )


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epocs: 3\n")
    error = run_cli(capsys, *train(tmp_path, "--config", str(config)))
    assert "unknown config key 'trainer.max_epocs' (did you mean 'trainer.max_epochs'?)" in error
    assert "--print_config" in error


def test_missing_config_file(tmp_path, capsys):
    error = run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert "bad value for config key 'config'" in error and "nope.yaml" in error


def test_unknown_corpus_and_pair_through_the_cli(tmp_path, capsys):
    assert "unknown corpus 'wmt'; choose one of tatoeba, multi30k, custom" in run_cli(
        capsys, *train(tmp_path, "--data.corpus", "wmt")
    )
    error = run_cli(capsys, *train(tmp_path, "--data.target_lang", "de"))
    assert "corpus tatoeba has no pair en-de; choose one of en-fr, fr-en" in error


def test_offline_without_a_mirror_through_the_cli(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.delenv("SEQ2SEQ_DATA_MIRROR", raising=False)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    error = run_cli(capsys, *train(tmp_path, "--data.data_dir", str(tmp_path / "data")))
    assert (
        error.startswith("seq2seq: error: could not download https://")
        and "set SEQ2SEQ_DATA_MIRROR" in error
    )
    assert list((tmp_path / "data" / "tatoeba").iterdir()) == []  # no partial download left
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


# --------------------------------------------------------------------------- corpus files


def custom_run(tmp_path: Path, train_files: list[Path], valid_files: list[Path]) -> tuple[str, ...]:
    files = "{{train: [{}], valid: [{}]}}".format(
        ", ".join(map(str, train_files)),
        ", ".join(map(str, valid_files)),
    )
    return train(
        tmp_path,
        "--data.corpus",
        "custom",
        "--data.custom_files",
        files,
        "--data.data_dir",
        str(tmp_path / "data"),
    )


def test_misaligned_parallel_files_through_the_cli(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.fr").write_text("un\ndeux\n")
    error = run_cli(
        capsys,
        *custom_run(
            tmp_path, [tmp_path / "a.en", tmp_path / "a.fr"], [tmp_path / "a.en", tmp_path / "a.en"]
        ),
    )
    assert f"{tmp_path / 'a.en'} has 3 lines but {tmp_path / 'a.fr'} has 2" in error


def test_invalid_utf8_through_the_cli(tmp_path, capsys):
    (tmp_path / "train.tsv").write_bytes(b"hello\tbonjour\ncaf\xe9\tcaf\xe9\n")
    error = run_cli(
        capsys, *custom_run(tmp_path, [tmp_path / "train.tsv"], [tmp_path / "train.tsv"])
    )
    assert (
        f"{tmp_path / 'train.tsv'}, line 2: invalid UTF-8 (byte 0xe9)" in error and "iconv" in error
    )


def test_tsv_line_without_a_tab_through_the_cli(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("hello\tbonjour\nno tab here\n")
    error = run_cli(
        capsys, *custom_run(tmp_path, [tmp_path / "train.tsv"], [tmp_path / "train.tsv"])
    )
    assert (
        f"{tmp_path / 'train.tsv'}, line 2: expected 'source<TAB>reference', found no tab" in error
    )


def test_corpus_empty_after_cleaning(tmp_path):
    tsv = tmp_path / "blank.tsv"
    tsv.write_text(" \t \n\tonly a target\nonly a source\t\n")
    module = TranslationDataModule(
        "custom", "en", "fr", {"train": [str(tsv)], "valid": [str(tsv)]}, data_dir=str(tmp_path)
    )
    with pytest.raises(
        Seq2SeqError, match=r"the train split of corpus custom \(en-fr\) is empty after cleaning"
    ):
        module.load_splits()


# ------------------------------------------------------------------------- archives and checkpoints


def tatoeba_archive(folder: Path, members: dict[str, str]) -> Path:
    path = folder / "tatoeba" / "fra-eng.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "/etc/evil.txt", "sub/../../evil.txt", "C:/evil.txt"]
)
def test_archive_member_escaping_the_folder_is_refused(tmp_path, evil):
    tatoeba_archive(tmp_path, {"fra.txt": "Hi.\tSalut.\n", evil: "payload"})
    with pytest.raises(
        Seq2SeqError, match=rf"fra-eng.zip holds a member whose path leaves its folder \({evil}\)"
    ):
        Tatoeba("en", "fr").load(tmp_path)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_archive_without_the_expected_member_or_not_a_zip(tmp_path):
    path = tatoeba_archive(tmp_path, {"other.txt": "x"})
    with pytest.raises(Seq2SeqError, match=r"fra-eng.zip has no fra.txt"):
        Tatoeba("en", "fr").load(tmp_path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(Seq2SeqError, match=r"fra-eng.zip is not a readable zip archive"):
        Tatoeba("en", "fr").load(tmp_path)


def test_missing_and_corrupted_checkpoints(tmp_path):
    with pytest.raises(Seq2SeqError, match=r"checkpoint .*nothing.ckpt does not exist"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    with pytest.raises(Seq2SeqError, match=r"checkpoint .* does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64)  # looks like a zip, is not one
    with pytest.raises(Seq2SeqError, match=r"noise.ckpt is truncated or corrupted"):
        load_checkpoint(noise)


def test_corrupted_checkpoint_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    error = run_cli(capsys, "translate", "--checkpoint", str(bad), "--input", str(bad))
    assert error.startswith(f"seq2seq: error: checkpoint {bad} is truncated or corrupted")
