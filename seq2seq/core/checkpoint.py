"""The checkpoint format, and the one module that writes, reads, checks and averages it.

A checkpoint is Lightning's checkpoint dict saved with `torch.save`: the weights under
`state_dict` (the network's names prefixed `net.`), the optimiser and loop state a run
resumes from, and a `seq2seq` section with everything translation needs:

    format_version    FORMAT_VERSION
    network           the `ModelConfig` as a dict
    source_tokenizer  the source SentencePiece model (bytes)
    target_tokenizer  the target SentencePiece model (bytes)
    corpus            what it was trained on (name, languages, splits)
    shortlist         optional: the lexical shortlist of its training pairs
                      (`Shortlist.to_dict`); checkpoints written before it have none

Version 1 also held `max_length_ratio`, the output cap, which is now a search setting
(`SearchSettings`); version-1 files load with it dropped. Files are loaded with
`weights_only=True`, so loading one never runs code from it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from seq2seq.atomic import atomic_write
from seq2seq.core.model import ModelConfig, Seq2Seq
from seq2seq.core.shortlist import Shortlist, build_shortlist
from seq2seq.core.tokenizer import Tokenizer
from seq2seq.corpora import load_recorded_corpus, training_pairs
from seq2seq.errors import Seq2SeqError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS_PREFIX = "net."  # the training module holds the network as `self.net`
# averaged weights mean nothing together unless these agree
MUST_MATCH_TO_AVERAGE = ("network", "source_tokenizer", "target_tokenizer")


def translation_section(
    network: ModelConfig,
    source: Tokenizer,
    target: Tokenizer,
    corpus: dict,
    shortlist: Shortlist | None = None,
) -> dict:
    """The `seq2seq` section of a checkpoint: what `load_network` rebuilds a model from."""
    section = {
        "format_version": FORMAT_VERSION,
        "network": asdict(network),
        "source_tokenizer": source.model_proto,
        "target_tokenizer": target.model_proto,
        "corpus": corpus,
    }
    if shortlist is not None:
        section["shortlist"] = shortlist.to_dict()
    return section


def load_shortlist(checkpoint: dict) -> Shortlist | None:
    """The checkpoint's shortlist, None if it was written without one."""
    values = checkpoint["seq2seq"].get("shortlist")
    return None if values is None else Shortlist.from_dict(values)


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """`torch.save` beside `path`, fsync, then rename over it: a kill or a full disk mid-write
    leaves the previous file intact."""
    try:
        with atomic_write(path) as out:
            torch.save(checkpoint, out)
    except OSError as error:
        raise Seq2SeqError(
            f"could not write checkpoint {path} ({error.strerror or error}); the previous "
            f"{Path(path).name}, if any, is intact. Free disk space and run the same command "
            "again (a training run resumes from its last.ckpt)"
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, refusing anything that is not a readable seq2seq checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise Seq2SeqError(
            f"checkpoint {path} does not exist: train a model first (make train) or pass CKPT=path"
        )
    try:
        is_archive = zipfile.is_zipfile(path)  # torch.save writes a zip archive
    except OSError as error:
        raise Seq2SeqError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not is_archive:
        raise Seq2SeqError(
            f"checkpoint {path} is truncated or corrupted (not the zip archive torch.save writes)"
        )
    try:
        # mapped, not read: the optimiser state translation never touches costs no memory
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise Seq2SeqError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
            f"({str(error).splitlines()[0][:200]}); only load checkpoints you trust with other "
            "tools"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise Seq2SeqError(
            f"checkpoint {path} is truncated or corrupted ({str(error).splitlines()[0][:200]})"
        ) from None
    info = checkpoint.get("seq2seq") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or "state_dict" not in checkpoint:
        raise Seq2SeqError(f"{path} is not a seq2seq checkpoint (no 'seq2seq' section)")
    version = info.get("format_version")
    if version not in READABLE_VERSIONS:
        raise Seq2SeqError(
            f"checkpoint {path} has format version {version}, this seq2seq reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: use the seq2seq release that wrote it"
        )
    info.pop("max_length_ratio", None)  # version 1's output cap: a search setting now
    info["format_version"] = FORMAT_VERSION
    return checkpoint


def load_network(checkpoint: dict, path: str | Path) -> tuple[Seq2Seq, Tokenizer, Tokenizer]:
    """The network with its weights (eval mode, CPU) and both tokenizers of a loaded checkpoint."""
    info = checkpoint["seq2seq"]
    source = Tokenizer(info["source_tokenizer"])
    target = Tokenizer(info["target_tokenizer"])
    net = Seq2Seq(source.vocab_size, target.vocab_size, ModelConfig.from_dict(info["network"]))
    weights = {
        name.removeprefix(WEIGHTS_PREFIX): tensor
        for name, tensor in checkpoint["state_dict"].items()
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise Seq2SeqError(
            f"checkpoint {path} weights do not fit its network settings: {str(error)[:300]}"
        ) from None
    return net.eval(), source, target


def add_shortlist(path: str | Path, mirror: str | None = None) -> Shortlist:
    """Build the lexical shortlist of the training pairs a checkpoint was trained on and save
    it into the checkpoint: once per model, for checkpoints written without one."""
    checkpoint = load_checkpoint(path)
    info = checkpoint["seq2seq"]
    source, target = Tokenizer(info["source_tokenizer"]), Tokenizer(info["target_tokenizer"])
    corpus, splits = load_recorded_corpus(info["corpus"], mirror)
    pairs = training_pairs(splits[corpus.train_split])
    ids = zip(source.encode([s for s, _ in pairs]), target.encode([t for _, t in pairs]))
    shortlist = build_shortlist(list(ids), source.vocab_size, target.vocab_size)
    info["shortlist"] = shortlist.to_dict()
    save_checkpoint(checkpoint, path)
    return shortlist


def average_checkpoints(paths: Sequence[str | Path], output: str | Path) -> dict:
    """The mean of the float weights of `paths` (one run's), saved at `output`; returns it.

    Averaging the last few checkpoints of a run smooths the noise of the final updates.
    Only the weights and the `seq2seq` section go into the averaged file, and one
    checkpoint is held in memory besides the running sum, however many are averaged.
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
        for key in MUST_MATCH_TO_AVERAGE:
            if checkpoint["seq2seq"][key] != first["seq2seq"][key]:
                raise Seq2SeqError(
                    f"{path} has another {key.replace('_', ' ')} than {paths[0]}: only "
                    "checkpoints of one run can be averaged"
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
    save_checkpoint(checkpoint, output)
    return checkpoint
