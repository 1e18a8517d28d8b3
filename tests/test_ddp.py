"""Scale-out: token batches shared among DDP processes, and a two-process CPU run of the tiny
config."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest
import torch

from seq2seq.errors import Seq2SeqError
from seq2seq.training.cli import build_cli
from seq2seq.training.data import Batch, TokenBatchSampler, TranslationDataModule, share
from tests.conftest import ROOT, TINY_CONFIG, tiny_train_args

LENGTHS = [3 + (7 * i) % 40 for i in range(500)]


def shares(
    processes: int, shuffle: bool = True, epoch: int = 0, max_tokens: int = 200
) -> list[list[list[int]]]:
    """The batches each of `processes` samplers yields in `epoch`."""
    result = []
    for rank in range(processes):
        sampler = TokenBatchSampler(
            LENGTHS, max_tokens, shuffle, seed=5, num_replicas=processes, rank=rank
        )
        sampler.set_epoch(epoch)
        result.append(list(sampler))
    return result


def sentences(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


@pytest.mark.parametrize("processes", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shares_are_disjoint_equal_and_cover_every_sentence_once(processes, shuffle):
    per_rank = shares(processes, shuffle)
    assert len({len(batches) for batches in per_rank}) == 1  # DDP hangs on unequal counts
    everything = sentences([batch for batches in per_rank for batch in batches])
    assert sorted(everything) == list(range(len(LENGTHS)))  # disjoint, and nothing left out


def test_one_process_yields_the_undivided_batches():
    sampler = TokenBatchSampler(LENGTHS, 200, True, seed=5)
    assert shares(1)[0] == sampler.batches()
    assert share(sampler.batches(), 1) == sampler.batches()


def test_shares_are_the_same_on_every_process_and_reshuffled_each_epoch():
    # each process computes everyone's batches alike
    assert shares(2, epoch=3) == shares(2, epoch=3)
    first, second = shares(2, epoch=0), shares(2, epoch=1)
    assert first[0] != second[0]
    assert sorted(sentences(second[0] + second[1])) == list(range(len(LENGTHS)))


def test_every_epoch_cuts_as_many_batches_within_the_token_budget_and_mixes_them_anew():
    # Lightning reads the batch count once: an epoch that cut fewer would skip validation
    targets = [2 + (11 * i) % 37 for i in range(5000)]
    lengths = [max(3 + (7 * i) % 40, target) for i, target in enumerate(targets)]
    sampler = TokenBatchSampler(lengths, 200, True, seed=5, target_lengths=targets)
    epochs = []
    for epoch in range(8):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert len(epochs[-1]) == len(sampler) == len(epochs[0])
        assert sorted(sentences(epochs[-1])) == list(range(len(lengths)))
        assert all(max(lengths[i] for i in batch) * len(batch) <= 200 for batch in epochs[-1])
    assert len({frozenset(map(frozenset, batches)) for batches in epochs}) == len(epochs)


def caption_lengths(count: int) -> tuple[list[int], list[int]]:
    """Lengths (the longer side) and target lengths shaped like Multi30k's, in subwords."""
    generator = torch.Generator().manual_seed(0)
    targets = (torch.randn(count, generator=generator) * 4 + 14).clamp(3, 40).round().int()
    sources = (targets + torch.randint(-3, 4, targets.shape, generator=generator)).clamp(3, 40)
    return torch.maximum(sources, targets).tolist(), targets.tolist()


def test_shuffled_epochs_seldom_put_the_same_sentences_together():
    # a global sort by length, then target length, kept a fifth of the pairs of sentences that
    # shared a batch together again in the next epoch (and trained worse, BENCHMARKS.md)
    lengths, targets = caption_lengths(30_000)
    sampler = TokenBatchSampler(lengths, 1536, True, seed=5, target_lengths=targets)

    def batch_mates(epoch: int) -> set[tuple[int, int]]:
        sampler.set_epoch(epoch)
        return {pair for batch in sampler for pair in itertools.combinations(sorted(batch), 2)}

    first, second = batch_mates(0), batch_mates(1)
    assert len(first & second) < 0.12 * len(first)


def test_an_epoch_whose_pooled_cut_is_too_long_keeps_the_count_and_the_budget():
    lengths, targets = caption_lengths(5_000)
    sampler = TokenBatchSampler(lengths, 200, True, seed=5, target_lengths=targets)
    globally_sorted = len(sampler._sorted_batches(torch.arange(len(lengths))))
    assert globally_sorted < sampler.epoch_batches - 1
    sampler.__dict__["epoch_batches"] = globally_sorted  # every pooled cut now has too many
    batches = list(sampler)
    assert len(batches) == len(sampler) == globally_sorted
    assert sorted(sentences(batches)) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in batch) * len(batch) <= 200 for batch in batches)


def test_batches_keep_the_token_budget_when_halved():
    for batches in shares(3, max_tokens=200):
        for batch in batches:
            assert max(LENGTHS[i] for i in batch) * len(batch) <= 200


def test_the_largest_batch_is_halved_until_the_count_divides():
    batches = [[0, 1, 2, 3], [4], [5, 6]]
    assert share(batches, 3) == batches
    assert share(batches, 2) == [[0, 1], [2, 3], [4], [5, 6]]
    assert share(batches, 5) == [[0], [1], [2, 3], [4], [5, 6]]


def test_one_sentence_batches_that_cannot_be_halved_are_repeated_to_equal_counts():
    batches = [[0], [1], [2]]
    assert share(batches, 2) == [[0], [1], [2], [0]]
    assert share([[0]], 3) == [[0], [0], [0]]


def test_a_resumed_process_skips_what_it_trained_on_in_its_own_share():
    sampler = TokenBatchSampler(LENGTHS, 200, True, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.resume_at(2, 3)
    assert list(sampler) == whole[3:]


def test_lightnings_distributed_sampler_stays_off(tmp_path):
    args = ["--config", str(TINY_CONFIG), "--checkpoint_dir", str(tmp_path)]
    assert build_cli(args).config.trainer.use_distributed_sampler is False
    with pytest.raises(
        Seq2SeqError, match="use_distributed_sampler: the data module already gives each process"
    ):
        build_cli([*args, "--trainer.use_distributed_sampler", "true"])


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_devices_asks_lightning_for_ddp():
    def dry_run(*variables: str) -> str:
        return subprocess.run(
            ["make", "-n", "train", *variables],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "--trainer.devices 2 --trainer.strategy ddp" in dry_run("DEVICES=2")
    assert "--trainer.devices 1" in dry_run("DEVICES=1") and "ddp" not in dry_run("DEVICES=1")
    assert "--trainer.devices" not in dry_run()


# --------------------------------------------------------------------------- two processes


class RecordBatches(L.Callback):
    """Appends the sentence indices of each batch a process sees to `folder`/rank<N>.jsonl.

    `exit_at_step`: every process dies there at once, no clean-up (a kill -9 of the whole run).
    """

    def __init__(self, folder: str, exit_at_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.exit_at_step = exit_at_step

    def record(self, trainer: L.Trainer, stage: str, batch: Batch) -> None:
        line = {"stage": stage, "epoch": trainer.current_epoch, "indices": batch.index.tolist()}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch: Batch, batch_idx: int) -> None:
        if trainer.global_step == self.exit_at_step:
            os._exit(KILLED)
        self.record(trainer, "train", batch)

    def on_validation_batch_start(
        self, trainer, pl_module, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self.record(trainer, "valid", batch)


KILLED = 3


def ddp_train(
    checkpoints: Path,
    data_dir: Path,
    mirror: Path,
    records: Path,
    *extra: str,
    exit_at_step: int | None = None,
) -> subprocess.CompletedProcess:
    """Two CPU processes on the tiny config (Lightning's launcher starts the second), 2 epochs."""
    records.mkdir(exist_ok=True)
    callback = {
        "class_path": f"{__name__}.RecordBatches",
        "init_args": {"folder": str(records), "exit_at_step": exit_at_step},
    }
    args = [
        "train",
        *tiny_train_args(checkpoints, data_dir, mirror),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "2",
        "--trainer.check_val_every_n_epoch",
        "2",  # one validation, at the end
        "--trainer.callbacks",
        json.dumps([callback]),
        "--model.network.dropout",
        "0.1",  # a resumed run must continue each process's random stream
        *extra,
    ]
    # a session of its own, so a timeout can end both processes (the second is the first's child)
    process = subprocess.Popen(
        [sys.executable, "-m", "seq2seq", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def read_records(folder: Path, rank: int) -> dict[tuple[str, int], list[list[int]]]:
    """(stage, epoch) -> the batches rank `rank` saw, over every run that wrote to `folder`."""
    batches = defaultdict(list)
    for line in (folder / f"rank{rank}.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        batches[record["stage"], record["epoch"]].append(record["indices"])
    return batches


def logged(run: Path, key: str) -> list[float]:
    rows = []
    for metrics in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(metrics, encoding="utf-8") as file:
            rows += [float(row[key]) for row in csv.DictReader(file) if row.get(key)]
    return rows


def saved(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_process_ddp_shares_batches_and_scores_exactly_the_valid_set(
    tmp_path, data_dir, mirror
):
    straight = ddp_train(tmp_path / "straight", data_dir, mirror, tmp_path / "straight-records")
    assert straight.returncode == 0, straight.stdout[-4000:]

    module = TranslationDataModule(data_dir=str(data_dir), max_train_examples=300, vocab_size=400)
    module.setup()
    records = [read_records(tmp_path / "straight-records", rank) for rank in (0, 1)]
    per_process = len(records[0]["train", 0])
    for epoch in (0, 1):
        first, second = (sentences(r["train", epoch]) for r in records)
        # as many batches on each process, and in each epoch
        assert len(records[0]["train", epoch]) == len(records[1]["train", epoch]) == per_process
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(len(module.train_pairs)))
    assert records[0]["train", 0] != records[0]["train", 1]  # reshuffled each epoch
    first, second = (sentences(r["valid", 1]) for r in records)
    # each valid sentence once
    assert sorted(first + second) == list(range(len(module.valid_pairs)))
    assert logged(tmp_path / "straight" / "tiny", "val_sentences") == [len(module.valid_pairs)]

    # killed (every process) right after last.ckpt at step 6, in the middle of epoch 1; rerun
    run, resumed_records = tmp_path / "resumed", tmp_path / "resumed-records"
    killed = ddp_train(
        run,
        data_dir,
        mirror,
        resumed_records,
        "--last_checkpoint.every_n_train_steps",
        "6",
        exit_at_step=6,
    )
    assert killed.returncode == KILLED, killed.stdout[-4000:]
    assert saved(run / "tiny" / "last.ckpt")["global_step"] == 6
    resumed = ddp_train(
        run, data_dir, mirror, resumed_records, "--last_checkpoint.every_n_train_steps", "6"
    )
    assert resumed.returncode == 0 and "Resuming from" in resumed.stdout, resumed.stdout[-4000:]

    for rank in (0, 1):  # the rerun trained on exactly the batches the killed one had left
        assert read_records(resumed_records, rank)["train", 1] == records[rank]["train", 1]
    assert logged(run / "tiny", "val_sentences") == [len(module.valid_pairs)]
    final, expected = (
        saved(run / "tiny" / "last.ckpt"),
        saved(tmp_path / "straight" / "tiny" / "last.ckpt"),
    )
    assert final["global_step"] == expected["global_step"] == 2 * per_process
    first, second = (states["torch"] for states in final["rng_per_process"])
    assert not torch.equal(first, second)  # so restoring rank 0's state everywhere would not do
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(
            final["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name
        )
