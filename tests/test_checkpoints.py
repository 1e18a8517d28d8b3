"""Checkpoints are self-contained and loaded without running code from them."""

import pytest
import torch

from seq2seq.core.checkpoint import (
    FORMAT_VERSION,
    WEIGHTS_PREFIX,
    load_checkpoint,
    load_network,
    load_shortlist,
    translation_section,
)
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError


class RunsCode:
    """Unpickling this would create a file: the classic malicious-checkpoint trick."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_crafted_to_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "seq2seq": {"payload": RunsCode(marker)}}, path)
    with pytest.raises(Seq2SeqError, match="was refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Seq2SeqError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_foreign_and_future_checkpoints(tiny_checkpoint, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(Seq2SeqError, match="not a seq2seq checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["seq2seq"]["format_version"] = 99
    torch.save(checkpoint, tmp_path / "future.ckpt")
    with pytest.raises(Seq2SeqError, match="format version 99"):
        load_checkpoint(tmp_path / "future.ckpt")


def test_a_text_file_is_not_mistaken_for_a_code_carrying_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are my notes, not a model\n")
    with pytest.raises(
        Seq2SeqError, match=r"notes.ckpt is truncated or corrupted \(not the zip archive"
    ):
        load_checkpoint(path)


def test_a_version_1_checkpoint_loads_and_translates_alike(tiny_checkpoint, tmp_path):
    """Version 1 kept the output cap in the file (a search setting now) and knew one cell and
    one decoder (no settings for them: the GRU and bahdanau)."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    assert checkpoint["seq2seq"]["format_version"] == FORMAT_VERSION == 2
    checkpoint["seq2seq"].update(format_version=1, max_length_ratio=2.0)
    del checkpoint["seq2seq"]["shortlist"]  # version 1 had none
    for setting in ("cell", "encoder_cell", "decoder_cell", "decoder", "bidirectional"):
        del checkpoint["seq2seq"]["network"][setting]
    torch.save(checkpoint, tmp_path / "version1.ckpt")
    old = load_checkpoint(tmp_path / "version1.ckpt")["seq2seq"]
    current = load_checkpoint(tiny_checkpoint)["seq2seq"]
    assert load_shortlist({"seq2seq": old}) is None  # it translates with the full layer
    without_shortlist = {key: value for key, value in current.items() if key != "shortlist"}
    assert {**old, "network": None} == {**without_shortlist, "network": None}
    sentences = ["Tom is here.", "I like green tea.", "Where is the station?"]
    translated = Translator.from_checkpoint(tmp_path / "version1.ckpt").translate(sentences)
    assert translated == Translator.from_checkpoint(tiny_checkpoint).translate(sentences)


def test_the_translation_section_rebuilds_the_network(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    net, source, target = load_network(checkpoint, tiny_checkpoint)
    shortlist = load_shortlist(checkpoint)
    section = translation_section(
        net.config, source, target, checkpoint["seq2seq"]["corpus"], shortlist
    )
    saved = checkpoint["seq2seq"]
    assert section.keys() == saved.keys()
    assert {key: value for key, value in section.items() if key != "shortlist"} == {
        key: value for key, value in saved.items() if key != "shortlist"
    }
    assert all(
        torch.equal(section["shortlist"][k], saved["shortlist"][k]) for k in saved["shortlist"]
    )
    assert all(name.startswith(WEIGHTS_PREFIX) for name in checkpoint["state_dict"])
