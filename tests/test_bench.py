"""The benchmark harness on the tiny model: every figure is measured, saved, and consistent."""

import json

import pytest

import seq2seq.training.bench
from seq2seq.core.evaluate import load_split, score
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError
from seq2seq.training.bench import (
    LATEST_RUN_MARKER,
    machine,
    native_bf16,
    run_bench,
    save,
    trainable_precisions,
)
from tests.conftest import TINY_CONFIG


def test_bench_measures_training_and_translation_and_writes_both_reports(
    tiny_checkpoint, data_dir, mirror, tmp_path
):
    results = run_bench(
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        ["32-true"],
        warmup=2,
        steps=3,
        sentences=40,
        latency_sentences=3,
        mirror=str(mirror),
        device="cpu",
        overrides=["--data.data_dir", str(data_dir), "--checkpoint_dir", str(tmp_path)],
    )
    assert results.matmul_gflops["fp32"] > 1 and results.matmul_gflops.get("bf16", 1) > 0
    # emulated bf16: a minute a product, unused
    assert ("bf16" in results.matmul_gflops) == native_bf16("cpu")
    (training,) = results.training
    assert (
        training.steps == 3
        and training.target_tokens_per_second > 0
        and training.peak_memory_mb > 0
    )
    assert 0 < training.between_steps_percent < 100
    assert results.flops_per_target_token > 1e4  # a tiny model still costs tens of kFLOP per token
    precisions = ["fp32", "bf16", "int8"] if native_bf16("cpu") else ["fp32", "int8"]
    expected = [
        (search, precision, shortlist)
        for precision in precisions
        for shortlist in (False, True)
        for search in ("greedy", "beam5")
    ]
    assert [(t.search, t.precision, t.shortlist) for t in results.translation] == expected
    assert set(results.latency_ms) == {t.name for t in results.translation}
    assert "beam5 fp32 shortlist" in results.latency_ms

    translator = Translator.from_checkpoint(tiny_checkpoint, "cpu", precision="fp32")
    examples = next(iter(load_split(translator.corpus, None, str(mirror)).values()))[:40]
    expected = score(
        translator.translate([e.source for e in examples]), [e.references for e in examples]
    )[0].score
    assert results.translation[0].bleu == expected  # the bench scores what translate produces

    save(
        results,
        tmp_path / "BENCH",
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        "seq2seq bench --config tiny",
    )
    report = json.loads((tmp_path / "BENCH.json").read_text())
    assert report["training"][0]["steps"] == 3 and report["machine"][
        "cpu_native_bf16"
    ] == native_bf16("cpu")
    markdown = (tmp_path / "BENCH.md").read_text()
    assert "| 32-true |" in markdown and "| beam5 | int8 | on |" in markdown
    # AVX2 and AVX512 runs are not comparable
    assert report["machine"]["cpu_vector_unit"] in markdown

    history = "# Benchmarks\n\nHand-written history, kept by every run.\n\n"
    (tmp_path / "BENCH.md").write_text(history + LATEST_RUN_MARKER + "\n\nan older run's figures\n")
    save(
        results,
        tmp_path / "BENCH",
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        "seq2seq bench --config tiny",
    )
    rewritten = (tmp_path / "BENCH.md").read_text()
    assert rewritten.startswith(history + LATEST_RUN_MARKER) and "an older run" not in rewritten
    assert rewritten.count(LATEST_RUN_MARKER) == 1 and "| beam5 | int8 |" in rewritten


def test_bench_skips_emulated_bf16_training(monkeypatch):
    monkeypatch.setattr(seq2seq.training.bench, "native_bf16", lambda device: False)
    assert trainable_precisions(["32-true", "bf16-mixed"], "cpu") == ["32-true"]
    monkeypatch.setattr(seq2seq.training.bench, "native_bf16", lambda device: True)
    assert trainable_precisions(["32-true", "bf16-mixed"], "cpu") == ["32-true", "bf16-mixed"]


def test_serve_bench_drives_both_servers_and_writes_its_own_section(
    tiny_checkpoint, mirror, tmp_path
):
    from seq2seq.serving.loadtest import SECTION_START, run_serve_bench
    from seq2seq.serving.loadtest import save as save_serve

    results = run_serve_bench(
        str(tiny_checkpoint),
        clients=(1, 4),
        sentences=24,
        time_limit=30,
        mirror=str(mirror),
        precisions=("fp32",),
    )
    assert [(f.precision, f.clients, f.batching) for f in results.load] == [
        ("fp32", 1, True),
        ("fp32", 1, False),
        ("fp32", 4, True),
        ("fp32", 4, False),
    ]
    for figures in results.load:
        assert figures.requests == figures.answered == 24 and figures.failed == figures.refused == 0
        assert (
            figures.sentences_per_second > 0 and figures.p50_ms <= figures.p95_ms <= figures.p99_ms
        )
    (offline,) = results.offline
    assert offline.precision == "fp32" and offline.in_process > 0 and offline.whole_process > 0

    history = "# Benchmarks\n\nHand-written history.\n\n"
    (tmp_path / "BENCH.md").write_text(
        history + LATEST_RUN_MARKER + "\n\nthe training bench's latest run\n"
    )
    (tmp_path / "BENCH.json").write_text(json.dumps({"training": [1]}))
    for _ in range(2):  # a second run replaces the section instead of adding one
        save_serve(results, tmp_path / "BENCH", "seq2seq bench --serve")
    markdown = (tmp_path / "BENCH.md").read_text()
    assert markdown.startswith(history) and markdown.count(SECTION_START) == 1
    assert (
        markdown.index(SECTION_START)
        < markdown.index(LATEST_RUN_MARKER)
        < markdown.index("the training bench's latest run")
    )
    assert "| fp32 | 4 | on |" in markdown and "| fp32 | 4 | off |" in markdown
    report = json.loads((tmp_path / "BENCH.json").read_text())
    assert report["training"] == [1] and len(report["serve"]["load"]) == 4


# The lines of a summary.txt that the comparison reads, as the peer's summarize.py prints them.
PEER_SUMMARY = "\n".join(
    [
        "== training ==",
        "OpenNMT 'tok/s' (tgt) over 24 log windows: mean 1398, min 1200, max 1500; "
        "without window 1: mean 1452",
        "peak RSS (train): 2150 MiB",
        "== test_2016_flickr (1000 sentences, batch 64 sents) ==",
        "[greedy] sacreBLEU 28.02 (28.02 60.1/34.0/21.0/13.5) | -lc 28.9 | chrF2 55.0",
        "[greedy] OpenNMT 'Total translation time' 5.0 s -> 200.0 sent/s (2400 out tok/s); "
        "whole process 9.0 s -> 111.1 sent/s; peak RSS 900 MiB",
        "[beam5] sacreBLEU 29.91 (29.91 61.0/35.0/22.0/14.0) | -lc 30.8 | chrF2 56.0",
        "[beam5] OpenNMT 'Total translation time' 15.4 s -> 64.9 sent/s (780 out tok/s); "
        "whole process 19.0 s -> 52.6 sent/s; peak RSS 950 MiB",
        "greedy 172.5 sent/s whole process, 5,000 lines",
        "beam5 65.0 sent/s whole process, 5,000 lines",
    ]
)


def test_peer_comparison_reads_the_summary_times_both_sides_and_writes_its_section(
    tiny_checkpoint, mirror, tmp_path
):
    from seq2seq.training.peer import (
        SECTION_START,
        read_bench_report,
        read_peer_summary,
        run_peer_comparison,
    )
    from seq2seq.training.peer import save as save_peer

    summary = tmp_path / "summary.txt"
    summary.write_text(PEER_SUMMARY)
    assert read_peer_summary(summary) == {
        "train_target_tokens_per_second": 1452,
        "train_peak_rss_mb": 2150,
        "bleu_greedy": 28.02,
        "bleu_beam5": 29.91,
        "translate_peak_rss_mb": 950,
        "greedy_sentences_per_second": 172.5,
        "beam5_sentences_per_second": 65.0,
    }
    bench = tmp_path / "BENCH.json"
    training = [
        {"precision": "32-true", "target_tokens_per_second": 3000.0, "peak_memory_mb": 800.0}
    ]
    bench.write_text(json.dumps({"machine": machine(), "training": training}))
    comparison = run_peer_comparison(
        summary,
        str(tiny_checkpoint),
        bench,
        repeats=2,
        peer_commands={"greedy": "sleep 0.2"},  # stands in for the peer's onmt_translate
        mirror=str(mirror),
        split="test",
        sentences=20,
    )
    sides = [(run.side, run.search) for run in comparison.runs]
    assert sides == [("seq2seq", "greedy"), ("OpenNMT-py", "greedy"), ("seq2seq", "beam5")] * 2
    assert all(run.lines == 100 and run.seconds > 0 for run in comparison.runs)
    assert comparison.peak_rss("seq2seq") > 100  # a translating process holds torch and the model

    translator = Translator.from_checkpoint(tiny_checkpoint, "cpu")
    examples = load_split(translator.corpus, "test", str(mirror))["test"][:20]
    expected = score(
        translator.translate([e.source for e in examples]), [e.references for e in examples]
    )[0].score
    assert comparison.bleu["greedy"] == pytest.approx(expected)

    (tmp_path / "BENCH.md").write_text("# Benchmarks\n\n" + LATEST_RUN_MARKER + "\n\nlatest\n")
    for _ in range(2):
        save_peer(comparison, tmp_path / "BENCH", "seq2seq bench --peer summary.txt")
    markdown = (tmp_path / "BENCH.md").read_text()
    assert markdown.count(SECTION_START) == 1
    assert markdown.index(SECTION_START) < markdown.index(LATEST_RUN_MARKER)
    assert "(alternated with ours)" in markdown and "(from its summary)" in markdown
    assert "| training target tokens/s, 32-true | 1,452 | 3,000 | 2.07× |" in markdown
    report = json.loads(bench.read_text())
    assert report["training"] == training and len(report["peer"]["runs"]) == 6
    # the next comparison reads the training figures without this one
    again = read_bench_report(bench)
    assert "peer" not in again and again["training"] == training


def test_a_partial_peer_summary_names_the_missing_line(tmp_path):
    from seq2seq.training.peer import read_peer_summary

    summary = tmp_path / "summary.txt"
    summary.write_text(PEER_SUMMARY.replace("peak RSS (train)", "peak memory"))
    with pytest.raises(Seq2SeqError, match=r"train_peak_rss_mb.*complete run.sh run"):
        read_peer_summary(summary)
    with pytest.raises(Seq2SeqError, match="run.sh first"):
        read_peer_summary(tmp_path / "missing.txt")


def test_settings_after_a_double_dash_reach_the_training_measurement(monkeypatch, tmp_path):
    from seq2seq.cli import main

    calls = []
    monkeypatch.setattr(
        seq2seq.training.bench, "run_bench", lambda *args, **kwargs: calls.append(kwargs)
    )
    monkeypatch.setattr(seq2seq.training.bench, "save", lambda *args: None)
    output = str(tmp_path / "bench")
    arguments = [
        "bench",
        "--config",
        str(TINY_CONFIG),
        "--checkpoint",
        "x.ckpt",
        "--output",
        output,
    ]
    assert main([*arguments, "--", "--data.max_tokens", "8192"]) == 0
    assert main(arguments) == 0
    assert [call["overrides"] for call in calls] == [["--data.max_tokens", "8192"], []]
    for mode in (["--serve"], ["--peer", "summary.txt"]):
        assert main([*arguments, *mode, "--", "--data.max_tokens", "8192"]) != 0
    assert len(calls) == 2
