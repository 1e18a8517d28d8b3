"""Checkpoints that survive kills and full disks, and a last.ckpt fresh enough to resume from.

Lightning's default `TorchCheckpointIO` writes a checkpoint in place, so a kill or a full
disk during the write destroys the previous best.ckpt or last.ckpt. `AtomicCheckpointIO`
writes beside it and renames. `LastCheckpoint` writes last.ckpt often enough (every N
steps, after each validation, and when `max_time` stops training mid-epoch) that a
`kill -9` loses little, and the same command resumes exactly where the file left off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from seq2seq.core.checkpoint import save_checkpoint
from seq2seq.errors import Seq2SeqError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes through `seq2seq.core.checkpoint.save_checkpoint`: beside the target, then renamed."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        save_checkpoint(checkpoint, path)


class LastCheckpoint(Checkpoint):
    """Writes the run's last.ckpt, the one a rerun of the same command resumes from.

    Args:
        dirpath: the run folder (set from checkpoint_dir/run_name).
        every_n_train_steps: also write it every this many optimiser steps (0: only after
            validation, at a mid-epoch stop and at the end), so a kill loses at most these.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 200) -> None:
        if every_n_train_steps < 0:
            raise Seq2SeqError(
                f"last_checkpoint.every_n_train_steps must be 0 or more, got {every_n_train_steps}"
            )
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1

    @property
    def path(self) -> Path:
        return Path(self.dirpath or ".") / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """Periodically, and when something (max_time) stops training in the middle of an epoch."""
        every = self.every_n_train_steps
        due = every > 0 and trainer.global_step % every == 0
        if (due or trainer.should_stop) and trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the other checkpoint callbacks, so the saved state knows the new best."""
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer)
