"""Train the tiny config on real Tatoeba pairs, then use it the way a user would."""

import io
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from seq2seq.cli import main
from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.core.evaluate import score
from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import Translator
from seq2seq.figures import read_run_metrics
from tests.conftest import TINY_CONFIG


def test_training_loss_falls(tiny_run):
    losses = [
        float(row["train_loss"]) for row in read_run_metrics(tiny_run) if row.get("train_loss")
    ]
    assert losses[-1] < losses[0] / 10


def test_run_folder_holds_checkpoints_config_and_metrics(tiny_run):
    for name in (
        "best.ckpt",
        "last.ckpt",
        "logs/version_0/config.yaml",
        "logs/version_0/metrics.csv",
    ):
        assert (tiny_run / name).is_file(), name
    assert any(row.get("val_bleu") for row in read_run_metrics(tiny_run))


def test_tiny_model_reproduces_its_training_pairs(tiny_checkpoint, training_examples):
    translator = Translator.from_checkpoint(tiny_checkpoint)
    hypotheses = translator.translate([e.source for e in training_examples])
    bleu = score(hypotheses, [e.references for e in training_examples])[0]
    assert bleu.score > 90, bleu


def test_checkpoint_alone_carries_tokenizers_and_settings(tiny_checkpoint):
    info = load_checkpoint(tiny_checkpoint)["seq2seq"]
    assert info["corpus"]["corpus"] == "tatoeba"
    assert info["network"]["attention"] == "additive"
    assert isinstance(info["source_tokenizer"], bytes) and isinstance(
        info["target_tokenizer"], bytes
    )


def is_one_of(output: str, references: tuple[str, ...]) -> bool:
    """Exact match up to SentencePiece's NFKC normalisation (e.g. narrow no-break spaces)."""
    return output in {" ".join(unicodedata.normalize("NFKC", r).split()) for r in references}


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """The program as a user runs it: with buffered standard streams, whatever this
    environment's PYTHONUNBUFFERED says."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-m", "seq2seq", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def test_translate_command_writes_one_line_per_input_line(tiny_checkpoint, training_examples):
    lines = [training_examples[0].source, "", "   ", training_examples[5].source]
    result = run_cli(
        "translate", "--checkpoint", str(tiny_checkpoint), stdin="\n".join(lines) + "\n"
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout.split("\n")[:-1]
    assert len(output) == 4
    assert is_one_of(output[0], training_examples[0].references)
    assert output[1] == "" and output[2] == ""
    assert is_one_of(output[3], training_examples[5].references)


def test_translate_command_with_files(tiny_checkpoint, training_examples, tmp_path):
    source = tmp_path / "in.en"
    source.write_text("".join(e.source + "\r\n" for e in training_examples[:20]), encoding="utf-8")
    result = run_cli(
        "translate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out.fr"),
    )
    assert result.returncode == 0, result.stderr
    output = (tmp_path / "out.fr").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(output) == 20
    assert sum(is_one_of(o, e.references) for o, e in zip(output, training_examples)) >= 18


def test_translate_command_writes_into_a_named_pipe_and_leaves_it_one(
    tiny_checkpoint, training_examples, tmp_path
):
    source = tmp_path / "in.en"
    source.write_text("".join(e.source + "\n" for e in training_examples[:20]), encoding="utf-8")
    pipe = tmp_path / "out.fr"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # 20 lines fit the pipe's buffer
    try:
        result = run_cli(
            "translate", "--checkpoint", str(tiny_checkpoint), "--input", str(source),
            "--output", str(pipe),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        output = os.read(reader, 1 << 16).decode("utf-8").split("\n")[:-1]
    finally:
        os.close(reader)
    assert pipe.is_fifo()
    assert output == Translator.from_checkpoint(tiny_checkpoint).translate(
        [e.source for e in training_examples[:20]]
    )


def test_an_output_folder_is_refused_before_any_work(tmp_path):
    result = run_cli(
        "translate", "--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(tmp_path)
    )
    assert result.returncode == 1
    assert (
        result.stderr == f"seq2seq: error: --output {tmp_path} is a folder: give a file to write\n"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_failed_write_is_one_line_naming_the_file(tiny_checkpoint, training_examples, tmp_path):
    source = tmp_path / "in.en"
    source.write_text(training_examples[0].source + "\n", encoding="utf-8")
    args = ["translate", "--checkpoint", str(tiny_checkpoint), "--input", str(source)]
    result = run_cli(*args, "--output", "/dev/full")
    assert result.returncode == 1
    assert result.stderr == "seq2seq: error: /dev/full: No space left on device\n"
    assert Path("/dev/full").is_char_device()


def test_translate_command_delivers_a_long_output_whole_through_a_pipe(
    tiny_checkpoint, training_examples
):
    # the program ends without the interpreter's teardown (`cli.run`): what stdout still
    # buffers must be flushed first, or the end of the output is lost
    sources = [e.source for e in training_examples[:100]] * 5
    result = run_cli("translate", "--checkpoint", str(tiny_checkpoint), stdin="\n".join(sources))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == Translator.from_checkpoint(tiny_checkpoint).translate(
        sources
    )


def test_the_program_exits_promptly_with_mains_status_except_after_training(monkeypatch):
    import seq2seq.cli as cli

    def fake_exit(code: int) -> None:
        raise SystemExit(("prompt", code))

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli, "main", lambda argv: 3)
    for argv, expected in ((["translate"], ("prompt", 3)), (["train"], 3), ([], ("prompt", 3))):
        monkeypatch.setattr(cli.sys, "argv", ["seq2seq", *argv])
        with pytest.raises(SystemExit) as exit_info:
            cli.run()
        assert exit_info.value.code == expected, argv


def test_a_failed_flush_at_the_prompt_exit_gives_status_120(monkeypatch):
    import seq2seq.cli as cli

    class GoneReader(io.StringIO):
        def flush(self) -> None:
            raise BrokenPipeError

    def fake_exit(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli, "main", lambda argv: 0)
    monkeypatch.setattr(cli.sys, "argv", ["seq2seq", "translate"])
    monkeypatch.setattr(cli.sys, "stdout", GoneReader())
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == 120


def test_evaluate_command_prints_scores_and_saves_hypotheses(tiny_checkpoint, mirror, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--mirror", str(mirror)]) == 0
    printed = capsys.readouterr().out
    for metric in ("BLEU = ", "BLEU lowercased = ", "chrF = ", "TER = "):
        assert metric in printed
    assert "nrefs:var" in printed
    hypotheses = (
        (tiny_checkpoint.parent / "last.greedy.test.fr")
        .read_text(encoding="utf-8")
        .split("\n")[:-1]
    )
    assert len(hypotheses) == 2000


def test_missing_checkpoint_is_one_line_and_exit_1(tmp_path):
    result = run_cli("translate", "--checkpoint", str(tmp_path / "nope.ckpt"), stdin="hello\n")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_unknown_config_key_is_rejected(tmp_path):
    result = run_cli("train", "--config", str(TINY_CONFIG), "--model.network.hiden_size", "3")
    assert result.returncode != 0
    assert "hiden_size" in result.stderr


def test_beam_search_also_reproduces_training_pairs(tiny_checkpoint, training_examples):
    beam = Translator.from_checkpoint(tiny_checkpoint, search=SearchSettings(beam_size=5))
    hypotheses = beam.translate([e.source for e in training_examples])
    assert score(hypotheses, [e.references for e in training_examples])[0].score > 90


def test_interactive_prompt_translates_each_line_until_end_of_input(
    tiny_checkpoint, training_examples, monkeypatch, capsys
):
    from seq2seq.cli import interactive

    typed = iter([training_examples[0].source, ""])

    def fake_input(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    interactive(Translator.from_checkpoint(tiny_checkpoint))
    lines = capsys.readouterr().out.split("\n")
    assert lines[0].startswith("Translating en → fr")
    assert is_one_of(lines[1], training_examples[0].references)
    assert lines[2] == ""  # an empty line gives an empty translation
