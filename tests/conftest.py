"""Shared fixtures: the corpus mirror, one tiny model trained on real Tatoeba data, servers of
it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from seq2seq.corpora import MIRROR_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def tiny_train_args(checkpoints: Path, data_dir: Path, mirror: Path, *extra: str) -> list[str]:
    """`seq2seq train` arguments: the tiny config, its run under `checkpoints`, the corpora from
    the test mirror, no progress bar; `extra` after them."""
    return [
        "--config",
        str(TINY_CONFIG),
        "--checkpoint_dir",
        str(checkpoints),
        "--data.data_dir",
        str(data_dir),
        "--data.mirror",
        str(mirror),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


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
    from seq2seq.training.cli import train

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    train(tiny_train_args(checkpoints, data_dir, mirror))
    return checkpoints / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "last.ckpt"


@pytest.fixture(scope="session")
def training_examples(data_dir, mirror):
    """The tiny config's 300 training pairs (what `tiny_run` memorises)."""
    from seq2seq.training.data import TranslationDataModule

    module = TranslationDataModule(
        data_dir=str(data_dir), mirror=str(mirror), max_train_examples=300, vocab_size=400
    )
    return module.load_splits()["train"]


@dataclass
class RunningServer:
    """A `seq2seq serve` process listening on a loopback port."""

    url: str
    api_key: str | None
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(
    checkpoints: list[Path], log: Path, *options: str, api_key: str | None = None
) -> Iterator[RunningServer]:
    """Start `seq2seq serve` on a free loopback port, wait until /health answers, stop it after."""
    port = free_port()
    command = [sys.executable, "-m", "seq2seq", "serve", "--port", str(port), *options]
    for checkpoint in checkpoints:
        command += ["--checkpoint", str(checkpoint)]
    environment = {key: value for key, value in os.environ.items() if key != "SEQ2SEQ_API_KEY"}
    if api_key:
        environment["SEQ2SEQ_API_KEY"] = api_key
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
    server = RunningServer(f"http://127.0.0.1:{port}", api_key, process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"seq2seq serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"seq2seq serve did not answer within 120 s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def tiny_server(tiny_checkpoint, tmp_path_factory) -> Iterator[RunningServer]:
    """The tiny model served without an API key (greedy search by default)."""
    with running_server(
        [tiny_checkpoint], tmp_path_factory.mktemp("serve") / "server.log"
    ) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_server_with_key(tiny_checkpoint, tmp_path_factory) -> Iterator[RunningServer]:
    """The tiny model served with an API key (from SEQ2SEQ_API_KEY), on one torch thread."""
    with running_server(
        [tiny_checkpoint],
        tmp_path_factory.mktemp("serve") / "server.log",
        "--threads",
        "1",
        api_key="test-key-123",
    ) as server:
        yield server
