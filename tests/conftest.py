"""Shared fixtures: the corpus mirror and one tiny model trained on real Tatoeba data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seq2seq.corpora import MIRROR_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The corpus mirror: $SEQ2SEQ_DATA_MIRROR, else ../shared/data beside the checkout."""
    path = Path(os.environ.get(MIRROR_VARIABLE) or ROOT.parent / "shared" / "data")
    if not (path / "tatoeba" / "fra-eng.zip").is_file():
        pytest.skip(f"no corpus mirror at {path}: set {MIRROR_VARIABLE}")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, mirror) -> Path:
    """A data folder shared by the session's tests (corpora fetched from the mirror once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir, mirror) -> Path:
    """Train configs/tiny.yaml once per session; returns its run folder."""
    from seq2seq.train_cli import train

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    train(
        [
            "--config", str(TINY_CONFIG),
            "--checkpoint_dir", str(checkpoints),
            "--data.data_dir", str(data_dir),
            "--data.mirror", str(mirror),
            "--trainer.enable_progress_bar", "false",
        ]
    )
    return checkpoints / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "last.ckpt"


@pytest.fixture(scope="session")
def training_examples(data_dir, mirror):
    """The tiny config's 300 training pairs (what `tiny_run` memorises)."""
    from seq2seq.data import TranslationDataModule

    module = TranslationDataModule(data_dir=str(data_dir), mirror=str(mirror), max_train_examples=300, vocab_size=400)
    return module.load_splits()["train"]
