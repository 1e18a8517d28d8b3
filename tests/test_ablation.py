"""`seq2seq ablation` on the tiny config: each variant trains, is scored and lands in the table."""

from __future__ import annotations

import json

import pytest

from seq2seq.errors import Seq2SeqError
from seq2seq.training.ablation import TABLE_END, TABLE_START, run_ablation
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, data_dir, mirror):
    """The tiny config on 16 pairs in small batches for 10 epochs, reading the test session's
    corpora."""
    text = TINY_CONFIG.read_text()
    for old, new in (
        (
            "max_train_examples: 300",
            f"max_train_examples: 16\n  data_dir: {data_dir}\n  mirror: {mirror}",
        ),
        ("max_epochs: 100", "max_epochs: 10"),
        ("max_tokens: 1024", "max_tokens: 96"),  # a few batches an epoch, for the speed
        ("check_val_every_n_epoch: 50", "check_val_every_n_epoch: 10"),
    ):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(text)
    return path


def test_variants_train_score_and_fill_the_table_and_chart(small_config, tmp_path):
    summary = tmp_path / "BENCHMARKS.md"
    summary.write_text("# Benchmarks\n\nkept text\n")
    output = tmp_path / "docs" / "ablation"
    arguments = (str(small_config), ["gru", "cgru"], str(tmp_path / "runs"), "test")
    results = run_ablation(*arguments, output, summary)
    assert [(r.name, r.cell, r.decoder) for r in results] == [
        ("gru", "gru", "bahdanau"),
        ("cgru", "gru", "cgru"),
    ]
    gru, cgru = results
    assert cgru.parameters > gru.parameters  # its second cell reads the context
    assert all(r.steps > 0 and r.tokens_per_second > 0 and 0 <= r.bleu <= 100 for r in results)
    report = json.loads(output.with_suffix(".json").read_text())
    assert [v["name"] for v in report["variants"]] == ["gru", "cgru"]
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    text = summary.read_text()
    assert "kept text" in text
    table = text.split(TABLE_START)[1].split(TABLE_END)[0]
    assert (
        "| gru | gru | bi, 1 layer | additive | bahdanau |" in table
        and "| cgru | gru | bi, 1 layer | additive | cgru |" in table
    )

    # a second call reuses the results in the run folders: nothing trains again
    best = tmp_path / "runs" / "small-ablation-gru" / "best.ckpt"
    written = best.stat().st_mtime_ns
    again = run_ablation(*arguments[:1], ["gru"], *arguments[2:], output, summary)
    assert again == [gru] and best.stat().st_mtime_ns == written
    assert summary.read_text().count(TABLE_START) == 1


def test_an_unknown_variant_names_the_known_ones(tmp_path):
    with pytest.raises(Seq2SeqError, match="unknown ablation variant gruu: choose from gru, lstm"):
        run_ablation(
            str(TINY_CONFIG), ["gruu"], str(tmp_path), "test", tmp_path / "a", tmp_path / "b.md"
        )
