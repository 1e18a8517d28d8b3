"""What users inspect: n-best lists, scores, attention pictures, reports, averaged checkpoints,
curves."""

import json

import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF, TER

from seq2seq.cli import main
from seq2seq.core.checkpoint import average_checkpoints, load_checkpoint
from seq2seq.core.evaluate import score_files
from seq2seq.errors import Seq2SeqError

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def translate(tiny_checkpoint, tmp_path, lines: list[str], *options: str) -> list[str]:
    source = tmp_path / "in.en"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    output = tmp_path / "out.fr"
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--input",
                str(source),
                "--output",
                str(output),
                *options,
            ]
        )
        == 0
    )
    return output.read_text(encoding="utf-8").split("\n")[:-1]


def test_nbest_with_scores_gives_n_numbered_lines_per_input_line(tiny_checkpoint, tmp_path):
    output = translate(
        tiny_checkpoint,
        tmp_path,
        ["I'm hungry.", "", "Go."],
        "--beam-size",
        "4",
        "--nbest",
        "3",
        "--scores",
    )
    assert len(output) == 9
    fields = [line.split("\t") for line in output]
    assert [f[0] for f in fields] == ["1"] * 3 + ["2"] * 3 + ["3"] * 3
    assert all(len(f) == 3 for f in fields)
    assert [f[1] for f in fields[3:6]] == ["", "", ""]  # a blank line stays blank
    assert all(float(f[2]) < 0 for f in fields[:3] + fields[6:])
    assert len({f[1] for f in fields[:3]}) == 3


def test_scores_are_the_log_probability_of_each_line(tiny_checkpoint, tmp_path):
    output = translate(tiny_checkpoint, tmp_path, ["I'm hungry.", "Go."], "--scores")
    plain = translate(tiny_checkpoint, tmp_path, ["I'm hungry.", "Go."])
    assert [line.split("\t")[0] for line in output] == plain
    assert all(float(line.split("\t")[1]) <= 0 for line in output)


@pytest.mark.parametrize("beam_size", ["1", "5"])
def test_attention_pictures_are_written_for_every_translated_line(
    tiny_checkpoint, tmp_path, beam_size
):
    folder = tmp_path / "attention"
    long_line = " ".join(["I'm hungry and you are tired."] * 2)  # about 50 pieces
    translate(
        tiny_checkpoint,
        tmp_path,
        ["Go.", "", long_line],
        "--beam-size",
        beam_size,
        "--attention",
        str(folder),
    )
    assert sorted(p.name for p in folder.iterdir()) == ["000001.png", "000003.png"]
    for picture in folder.iterdir():
        assert picture.read_bytes().startswith(PNG_SIGNATURE)


def test_interactive_prompt_shows_attention_as_text_on_request(
    tiny_checkpoint, monkeypatch, capsys
):
    from seq2seq.cli import interactive
    from seq2seq.core.translate import Translator

    typed = iter([":attention", "Go."])
    monkeypatch.setattr(
        "builtins.input", lambda prompt: next(typed, None) or (_ for _ in ()).throw(EOFError)
    )
    interactive(Translator.from_checkpoint(tiny_checkpoint))
    lines = capsys.readouterr().out.split("\n")
    assert lines[1] == "attention view on"
    assert lines[3].split()[-1] == "</s>"  # the header row: source pieces, eos last
    assert any(shade in "".join(lines[4:]) for shade in "░▒▓█")


@pytest.mark.parametrize("references", [["ref1.de"], ["ref1.de", "ref2.de"]])
def test_scoring_files_equals_the_sacrebleu_api(references):
    hypotheses = (FIXTURES / "hyp.de").read_text(encoding="utf-8").splitlines()
    streams = [(FIXTURES / name).read_text(encoding="utf-8").splitlines() for name in references]
    scores = {
        s.name: s
        for s in score_files(FIXTURES / "hyp.de", [FIXTURES / name for name in references])
    }
    expected = {
        "BLEU": BLEU(),
        "BLEU lowercased": BLEU(lowercase=True),
        "chrF": CHRF(),
        "TER": TER(),
    }
    for name, metric in expected.items():
        assert scores[name].score == pytest.approx(
            metric.corpus_score(hypotheses, streams).score, abs=1e-9
        )
        assert scores[name].signature == str(metric.get_signature())
    assert f"nrefs:{len(references)}" in scores["BLEU"].signature
    bleu = BLEU().corpus_score(hypotheses, streams)
    ratio = (
        f"ratio = {bleu.sys_len / bleu.ref_len:.3f} "
        f"hyp_len = {bleu.sys_len} ref_len = {bleu.ref_len}"
    )
    assert (
        scores["BLEU"].details.startswith(f"{bleu.precisions[0]:.1f}/")
        and ratio in scores["BLEU"].details
    )
    assert scores["chrF"].details == ""


def test_evaluate_command_scores_files(capsys):
    assert (
        main(
            [
                "evaluate",
                "--hyp",
                str(FIXTURES / "hyp.de"),
                "--ref",
                str(FIXTURES / "ref1.de"),
                "--ref",
                str(FIXTURES / "ref2.de"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("BLEU = ") and "nrefs:2" in printed


def test_reference_file_of_another_length_is_refused(tmp_path, capsys):
    short = tmp_path / "short.de"
    short.write_text("Zwei Hunde spielen im Schnee.\n", encoding="utf-8")
    assert main(["evaluate", "--hyp", str(FIXTURES / "hyp.de"), "--ref", str(short)]) == 1
    assert "short.de has 1 lines but" in capsys.readouterr().err


def test_evaluate_writes_markdown_and_json_reports_named_by_search(tiny_checkpoint, mirror, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--mirror",
                str(mirror),
                "--beam-size",
                "3",
            ]
        )
        == 0
    )
    report = json.loads(
        (tiny_checkpoint.parent / "last.beam3.report.json").read_text(encoding="utf-8")
    )
    assert report["search"]["beam_size"] == 3 and report["search"]["name"] == "beam3"
    (result,) = report["results"]
    assert (
        result["split"] == "test"
        and result["sentences"] == 2000
        and result["references_per_sentence"] > 1
    )
    assert [s["name"] for s in result["scores"]] == ["BLEU", "BLEU lowercased", "chrF", "TER"]
    hypotheses = (
        (tiny_checkpoint.parent / "last.beam3.test.fr").read_text(encoding="utf-8").split("\n")[:-1]
    )
    assert len(hypotheses) == 2000
    markdown = (tiny_checkpoint.parent / "last.beam3.report.md").read_text(encoding="utf-8")
    assert (
        f"| test | 2000 | {result['references_per_sentence']} | "
        f"{result['scores'][0]['score']:.2f} |" in markdown
    )


def test_an_explicit_precision_keeps_its_own_report_beside_the_defaults(tiny_checkpoint, mirror):
    """`auto` may resolve to bf16: an fp32 evaluation must not overwrite its files."""
    arguments = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--mirror", str(mirror)]
    assert main([*arguments, "--precision", "fp32"]) == 0
    report = json.loads(
        (tiny_checkpoint.parent / "last.greedy.fp32.report.json").read_text(encoding="utf-8")
    )
    assert report["search"]["precision"] == "fp32"
    assert (tiny_checkpoint.parent / "last.greedy.fp32.test.fr").exists()


def test_averaging_two_identical_checkpoints_gives_the_same_weights(tiny_checkpoint, tmp_path):
    averaged = average_checkpoints([tiny_checkpoint, tiny_checkpoint], tmp_path / "average.ckpt")
    original = load_checkpoint(tiny_checkpoint)["state_dict"]
    reloaded = load_checkpoint(tmp_path / "average.ckpt")["state_dict"]
    assert original.keys() == averaged["state_dict"].keys() == reloaded.keys()
    assert all(torch.equal(original[name], reloaded[name]) for name in original)


def test_averaging_takes_the_mean_of_the_weights(tiny_checkpoint, tmp_path):
    checkpoint = load_checkpoint(tiny_checkpoint)
    shifted = {
        **checkpoint,
        "state_dict": {name: t + 1.0 for name, t in checkpoint["state_dict"].items()},
    }
    torch.save(shifted, tmp_path / "shifted.ckpt")
    assert (
        main(
            [
                "average",
                "--output",
                str(tmp_path / "mean.ckpt"),
                str(tiny_checkpoint),
                str(tmp_path / "shifted.ckpt"),
            ]
        )
        == 0
    )
    mean = load_checkpoint(tmp_path / "mean.ckpt")["state_dict"]
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.allclose(mean[name], tensor + 0.5, atol=1e-6)


def test_checkpoints_of_different_networks_are_not_averaged(tiny_checkpoint, tmp_path):
    checkpoint = load_checkpoint(tiny_checkpoint)
    other = {
        **checkpoint,
        "seq2seq": {
            **checkpoint["seq2seq"],
            "network": {**checkpoint["seq2seq"]["network"], "attention": "dot"},
        },
    }
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(Seq2SeqError, match="another network"):
        average_checkpoints([tiny_checkpoint, tmp_path / "other.ckpt"], tmp_path / "mean.ckpt")
    assert not (tmp_path / "mean.ckpt").exists()


def test_keep_last_checkpoints_can_be_averaged_and_translate(tiny_run, tmp_path):
    kept = sorted(tiny_run.glob("step*.ckpt"))
    assert len(kept) == 2  # configs/tiny.yaml: keep_last 2, two validations
    assert main(["average", "--output", str(tmp_path / "mean.ckpt"), *map(str, kept)]) == 0
    from seq2seq.core.translate import Translator

    assert Translator.from_checkpoint(tmp_path / "mean.ckpt").translate(["Go."])[0]


def test_plot_draws_the_training_curves(tiny_run, tmp_path):
    assert main(["plot", str(tiny_run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_of_a_folder_without_logs_names_the_problem(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "has no logs/version_*/metrics.csv" in capsys.readouterr().err


def test_a_100000_character_line_is_cut_with_a_warning_and_keeps_the_line_count(
    tiny_checkpoint, tmp_path
):
    import warnings

    from seq2seq.core.translate import Translator

    translator = Translator.from_checkpoint(tiny_checkpoint)
    huge = ("I'm hungry. " * 10_000)[:100_000]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        translations = translator.translate_detailed(["Go.", huge, ""])
    assert [bool(t.text) for t in translations] == [True, True, False]
    # 127 pieces + eos
    assert len(translations[1].source_ids) == translator.net.config.max_source_length
    assert [str(w.message) for w in caught] == [
        "input line 2 is longer than 127 tokens: only its beginning is translated"
    ]
    output = translate(tiny_checkpoint, tmp_path, ["Go.", huge, "", "Go."])
    assert len(output) == 4 and output[0] == output[3]
