"""Faults during training: kill -9, a full disk, NaN loss. No run is lost, no file half-written."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from seq2seq.atomic import atomic_write, write_lines
from seq2seq.cli import main
from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.errors import Seq2SeqError
from seq2seq.training.callbacks import AtomicCheckpointIO
from seq2seq.training.data import (
    EncodedPair,
    ResumableDataLoader,
    TokenBatchSampler,
    TrainingPairs,
    collate,
)
from seq2seq.training.module import assert_finite
from tests.conftest import ROOT, tiny_train_args
from tests.test_checkpoints import RunsCode


def train_args(checkpoints: Path, data_dir: Path, mirror: Path, *extra: str) -> list[str]:
    return ["train", *tiny_train_args(checkpoints, data_dir, mirror, *extra)]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file())


# --------------------------------------------------------------------------- kill -9


def batch_order(loader: ResumableDataLoader) -> list[list[int]]:
    return [batch.index.tolist() for batch in loader]


def test_loader_resumes_mid_epoch_with_the_same_batches_and_lightning_sets_its_epoch():
    pairs = [EncodedPair([5] * n + [3], [6] * n, i) for i, n in enumerate(list(range(1, 30)) * 2)]
    lengths = [len(p.target) + 1 for p in pairs]

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(
            TrainingPairs(pairs),
            batch_sampler=TokenBatchSampler(lengths, 60, True, seed=3),
            collate_fn=collate,
        )

    first = loader()
    _set_sampler_epoch(first, 2)  # what Lightning's fit loop calls at each epoch start
    whole_epoch = batch_order(first)
    _set_sampler_epoch(first, 3)
    assert batch_order(first) != whole_epoch  # each epoch has its own order
    _set_sampler_epoch(first, 2)
    batches = iter(first)
    seen = [next(batches).index.tolist() for _ in range(3)]
    assert first.state_dict() == {"epoch": 2, "batches_done": 3}

    resumed = loader()  # a new process: a new loader, given the checkpointed state
    resumed.load_state_dict(first.state_dict())
    _set_sampler_epoch(resumed, 2)
    assert len(resumed) == len(whole_epoch)  # Lightning counts the whole epoch
    assert seen + batch_order(resumed) == whole_epoch
    assert batch_order(resumed) == whole_epoch  # the skip applies to one pass only


def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seq2seq", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_once_saved(process: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    """SIGKILL the training as soon as its first last.ckpt exists: no clean-up code runs."""
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before writing {checkpoint}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {checkpoint} after {timeout} s")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


# Where the first last.ckpt is written, 8 batches an epoch: a periodic save in epoch 1, or the
# validation in the middle of epoch 0 (as configs/tatoeba-en-fr.yaml validates twice an epoch;
# lr_patience 0 makes the plateau scheduler act, so its restored state matters too).
KILL_POINTS = {
    "periodic save": (
        ("--last_checkpoint.every_n_train_steps", "10"),
        {"epoch": 1, "batches_done": 2},
    ),
    "mid-epoch validation": (
        (
            "--last_checkpoint.every_n_train_steps",
            "0",
            "--trainer.val_check_interval",
            "0.5",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.limit_val_batches",
            "2",
            "--model.lr_patience",
            "0",
        ),
        {"epoch": 0, "batches_done": 4},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_kill_9_then_the_same_command_resumes_and_ends_with_the_uninterrupted_weights(
    tmp_path, data_dir, mirror, kill_point
):
    options, position = KILL_POINTS[kill_point]
    # dropout 0.1: the resumed run must also continue the saved random streams; CPU: the promise is
    # bit-exact there (cuDNN's GRU kernels are not deterministic)
    extra = (
        "--trainer.max_epochs",
        "2",
        "--model.network.dropout",
        "0.1",
        "--trainer.accelerator",
        "cpu",
        *options,
    )
    assert main(train_args(tmp_path / "straight", data_dir, mirror, *extra)) == 0
    straight = load_checkpoint(tmp_path / "straight" / "tiny" / "last.ckpt")
    assert straight["global_step"] == 16

    args = train_args(tmp_path / "killed", data_dir, mirror, *extra)
    last = tmp_path / "killed" / "tiny" / "last.ckpt"
    kill_once_saved(start_training(args), last)
    saved = load_checkpoint(last)  # complete and readable despite the kill
    # killed mid-epoch
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] == position

    rerun = subprocess.run(
        [sys.executable, "-m", "seq2seq", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"Resuming from {last}" in rerun.stdout
    resumed, uninterrupted = weights(last), straight["state_dict"]
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        torch.testing.assert_close(
            resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name
        )


@pytest.mark.slow
def test_max_time_stopping_mid_epoch_writes_a_resumable_last_ckpt(
    tmp_path, data_dir, mirror, capsys
):
    args = train_args(
        tmp_path,
        data_dir,
        mirror,
        "--trainer.max_time",
        "00:00:00:02",
        "--last_checkpoint.every_n_train_steps",
        "0",
    )
    assert main(args) == 0
    saved = load_checkpoint(tmp_path / "tiny" / "last.ckpt")
    epochs = saved["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert epochs["processed"] == epochs["started"] - 1  # saved inside the epoch, not after it
    assert (
        saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["epoch"]
        == epochs["processed"]
    )


# --------------------------------------------------------------------------- full disk


def fail_after(budget: int):
    """A torch.save that writes part of the file, then hits a full disk, after `budget` good
    calls."""
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > budget:
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    return save


def test_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", fail_after(0))
    message = (
        r"could not write checkpoint .*last.ckpt \(No space left on device\); "
        r"the previous last.ckpt, if any, is intact"
    )
    with pytest.raises(Seq2SeqError, match=message):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["last.ckpt"]


def test_two_writers_of_one_file_never_mix_their_bytes(tmp_path):
    """Two runs training the same tokenizer, or fetching the same corpus, at once."""
    path = tmp_path / "source.model"
    with atomic_write(path) as first:
        first.write(b"A" * 1000)
        with atomic_write(path) as second:
            second.write(b"B" * 10)
        assert path.read_bytes() == b"B" * 10
        first.write(b"A" * 1000)
    assert path.read_bytes() == b"A" * 2000
    assert files_in(tmp_path) == ["source.model"]


def test_a_named_pipe_is_written_into_not_replaced(tmp_path):
    """`--output /dev/null` replaced the device with a file (as root: for the whole system)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    # a reader waits, so the writer never blocks
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_lines(pipe, ["eins", "zwei"])
        assert os.read(reader, 100) == b"eins\nzwei\n"
    finally:
        os.close(reader)
    assert pipe.is_fifo() and os.listdir(tmp_path) == ["pipe"]  # no temporary file left


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_lines(link, ["new"])
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == "new\n"


@pytest.mark.slow
def test_full_disk_during_training_stops_with_one_line_and_keeps_last_ckpt(
    tmp_path, data_dir, mirror, monkeypatch, capsys
):
    # the step-3 save works, the step-6 one fails
    monkeypatch.setattr(torch, "save", fail_after(1))
    args = train_args(
        tmp_path,
        data_dir,
        mirror,
        "--trainer.max_epochs",
        "1",
        "--last_checkpoint.every_n_train_steps",
        "3",
    )
    assert main(args) == 1
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("seq2seq: error: could not write checkpoint")
        and "No space left on device" in error
    )
    assert "\n" not in error
    run = tmp_path / "tiny"
    assert load_checkpoint(run / "last.ckpt")["global_step"] == 3
    assert [name for name in files_in(run) if "ckpt" in name] == ["last.ckpt"]


# --------------------------------------------------------------------------- NaN


@pytest.mark.slow
def test_nan_loss_stops_training_with_a_message_and_no_broken_checkpoint(
    tmp_path, data_dir, mirror, capsys
):
    args = train_args(
        tmp_path,
        data_dir,
        mirror,
        "--model.learning_rate",
        "1e37",
        "--model.warmup_steps",
        "1",  # weights near float32's limit: logits overflow
        "--trainer.max_epochs",
        "1",
        "--last_checkpoint.every_n_train_steps",
        "1",
    )
    assert main(args) == 1
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("seq2seq: training stopped: training loss became")
        and "lower the learning_rate" in error
    )
    for checkpoint in (tmp_path / "tiny").glob("*.ckpt"):
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values()), checkpoint


def test_nan_weights_are_never_saved():
    state = {
        "net.a": torch.ones(2),
        "net.b": torch.tensor([1.0, float("nan")]),
        "count": torch.tensor(3),
    }
    with pytest.raises(
        FloatingPointError,
        match=r"weights became NaN or infinite at step 7 \(net.b\); the checkpoint was not written",
    ):
        assert_finite(state, 7)
    assert_finite({"net.a": torch.ones(2)}, 7)


# ------------------------------------------------------------------------- resuming from a bad file


def crafted(path: Path) -> None:
    """A checkpoint whose unpickling would create `pwned` beside it."""
    torch.save({"state_dict": {}, "seq2seq": {"payload": RunsCode(path.parent / "pwned")}}, path)


BAD_CHECKPOINTS = {
    "missing": (lambda path: None, "does not exist"),
    "corrupted": (
        lambda path: path.write_bytes(b"PK\x03\x04garbage" * 10),
        "is truncated or corrupted",
    ),
    "crafted to run code": (crafted, "was refused: it holds objects other than tensors"),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_resuming_from_a_missing_corrupted_or_malicious_checkpoint_is_one_line(
    tmp_path, data_dir, mirror, capsys, kind
):
    make, message = BAD_CHECKPOINTS[kind]
    checkpoint = tmp_path / "given.ckpt"
    make(checkpoint)
    assert main(train_args(tmp_path, data_dir, mirror, "--ckpt_path", str(checkpoint))) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"seq2seq: error: checkpoint {checkpoint} {message}")
    assert "\n" not in error
    assert not (tmp_path / "pwned").exists()  # no code from the file ran
    assert not list((tmp_path / "tiny").glob("*.ckpt"))  # nothing trained, nothing overwritten
