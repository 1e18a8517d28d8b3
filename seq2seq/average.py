"""Checkpoint averaging: the mean of the weights of several checkpoints of one run.

Averaging the last few checkpoints of a run smooths the noise of the final updates and
often gains a little BLEU for free. Only the weights and the `seq2seq` section (what
translation needs) go into the averaged file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from seq2seq.atomic import atomic_write
from seq2seq.errors import Seq2SeqError
from seq2seq.translate import load_checkpoint

MUST_MATCH = (
    "network",
    "source_tokenizer",
    "target_tokenizer",
)  # else the weights mean nothing together


def average_checkpoints(paths: Sequence[str | Path], output: str | Path) -> dict:
    """Average the float weights of `paths` into a new checkpoint at `output`; returns it.

    One checkpoint is held in memory besides the running sum, however many are averaged.
    """
    if len(paths) < 2:
        raise Seq2SeqError(f"averaging needs at least two checkpoints, got {len(paths)}")
    first = load_checkpoint(paths[0])
    total = {
        name: tensor.double() if tensor.is_floating_point() else tensor
        for name, tensor in first["state_dict"].items()
    }
    for path in paths[1:]:
        checkpoint = load_checkpoint(path)
        for key in MUST_MATCH:
            if checkpoint["seq2seq"][key] != first["seq2seq"][key]:
                raise Seq2SeqError(
                    f"{path} has another {key.replace('_', ' ')} than {paths[0]}: only checkpoints "
                    "of one run can be averaged"
                )
        for name, tensor in checkpoint["state_dict"].items():
            if tensor.is_floating_point():
                total[name] += tensor.double()
    dtypes = {name: tensor.dtype for name, tensor in first["state_dict"].items()}
    averaged = {
        name: (tensor / len(paths)).to(dtypes[name]) if tensor.is_floating_point() else tensor
        for name, tensor in total.items()
    }
    checkpoint = {
        "state_dict": averaged,
        "seq2seq": {**first["seq2seq"], "averaged_from": [str(path) for path in paths]},
    }
    with atomic_write(output) as out:
        torch.save(checkpoint, out)
    return checkpoint
