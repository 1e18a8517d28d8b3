"""The ablation: what each of the course's choices buys, on one training budget.

Each variant is the benchmark config with one setting changed (`VARIANTS`): the cell (GRU,
LSTM, plain RNN), the encoder (one-way instead of bidirectional, two stacked layers instead
of one), the `Attn` score rule (additive, concat, dot) or the decoder (bahdanau, cgru). Each
trains on the config's budget in its own process, one after the other (the machine to
itself), then its best checkpoint is scored with beam 5 on a test split. A variant whose run
folder already holds its result is not trained again, so an ablation cut short goes on
where it stopped.

Results: `<output>.json` (every figure), `<output>.png` (the chart), and the table in
BENCHMARKS.md between `TABLE_START` and `TABLE_END`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from seq2seq.atomic import write_lines
from seq2seq.core.checkpoint import load_checkpoint, load_network
from seq2seq.core.evaluate import evaluate_checkpoint
from seq2seq.core.model import ModelConfig
from seq2seq.core.search import SearchSettings
from seq2seq.errors import Seq2SeqError
from seq2seq.figures import ablation_chart, logged_tokens_per_second, read_run_metrics
from seq2seq.training.bench import machine, replace_section

# name: the config keys it changes (from the config's bidirectional GRU + additive + bahdanau)
VARIANTS: dict[str, dict[str, str]] = {
    "gru": {},
    "lstm": {"model.network.cell": "lstm"},
    "rnn": {"model.network.cell": "rnn"},
    "one-way": {"model.network.bidirectional": "false"},
    "two-layer": {"model.network.encoder_layers": "2"},
    "concat": {"model.network.attention": "concat"},
    "dot": {"model.network.attention": "dot"},
    "cgru": {"model.network.decoder": "cgru"},
}
RESULT_FILE = "ablation-result.json"  # in each variant's run folder
TABLE_START = "<!-- ablation table: seq2seq ablation rewrites it -->"
TABLE_END = "<!-- end of the ablation table -->"


@dataclass
class VariantResult:
    """One variant's row.

    Attributes:
        name: its key in `VARIANTS`.
        cell, encoder, attention, decoder: the network it trained (encoder: its directions
            and layers).
        parameters: trainable parameters (tied ones once).
        steps: optimiser steps within the budget.
        tokens_per_second: target tokens per second of training, the mean of the rate the
            run logged (validation excluded).
        bleu, bleu_lowercased: sacreBLEU on `split`, beam 5, of the run's best checkpoint.
        split: the test split scored.
        checkpoint: that checkpoint.
    """

    name: str
    cell: str
    encoder: str
    attention: str
    decoder: str
    parameters: int
    steps: int
    tokens_per_second: float
    bleu: float
    bleu_lowercased: float
    split: str
    checkpoint: str


def run_ablation(
    config: str, names: list[str], checkpoint_dir: str, split: str, output: Path, summary: Path
) -> list[VariantResult]:
    """Train and score each variant of `names` not yet done, then write the table and chart
    of all of them."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise Seq2SeqError(
            f"unknown ablation variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}"
        )
    results = []
    for name in names:
        folder = Path(checkpoint_dir) / f"{Path(config).stem}-ablation-{name}"
        result_file = folder / RESULT_FILE
        if not result_file.is_file():
            train_variant(config, name, checkpoint_dir, folder.name)
            result = score_variant(name, folder, split)
            write_lines(result_file, [json.dumps(asdict(result), indent=2)])
        results.append(VariantResult(**json.loads(result_file.read_text())))
        print(f"{name}: BLEU {results[-1].bleu:.2f}, {results[-1].tokens_per_second:,.0f} tok/s")
    command = " ".join(["seq2seq ablation --config", config, "--variants", *names])
    save_results(results, config, command, output, summary)
    return results


def train_variant(config: str, name: str, checkpoint_dir: str, run_name: str) -> None:
    """`seq2seq train` of one variant in a process of its own (a resumed run goes on)."""
    overrides = [part for key, value in VARIANTS[name].items() for part in (f"--{key}", value)]
    command = [
        sys.executable,
        "-m",
        "seq2seq",
        "train",
        "--config",
        config,
        "--run_name",
        run_name,
        "--checkpoint_dir",
        checkpoint_dir,
        "--trainer.enable_progress_bar",
        "false",
        *overrides,
    ]
    print("$", " ".join(command[2:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise Seq2SeqError(f"training the ablation variant {name} failed (its output is above)")


def score_variant(name: str, folder: Path, split: str) -> VariantResult:
    best = folder / "best.ckpt"
    checkpoint = load_checkpoint(best)
    net, _, _ = load_network(checkpoint, best)
    # fp32 and the full output layer: the same search for every variant, whatever its checkpoint
    report = evaluate_checkpoint(
        best, split=split, search=SearchSettings(beam_size=5), precision="fp32", shortlist=False
    )
    scores = {s.name: s.score for s in report.results[0].scores}
    rows = read_run_metrics(folder)
    return VariantResult(
        name=name,
        cell=net.config.encoder_cell_type,
        encoder=encoder_name(net.config),
        attention=net.config.attention,
        decoder=net.config.decoder,
        parameters=sum(p.numel() for p in net.parameters()),
        steps=max(int(row["step"]) for row in rows),
        tokens_per_second=logged_tokens_per_second(rows) or 0.0,
        bleu=scores["BLEU"],
        bleu_lowercased=scores["BLEU lowercased"],
        split=split,
        checkpoint=str(best),
    )


def encoder_name(config: ModelConfig) -> str:
    """e.g. "bi, 1 layer" or "one-way, 2 layers"."""
    layers = config.encoder_layers
    return f"{'bi' if config.bidirectional else 'one-way'}, {layers} layer{'s' * (layers > 1)}"


def markdown(results: list[VariantResult], config: str, command: str) -> str:
    info = machine()
    lines = [
        f"`{command}`: each row trains `{config}` with one setting changed, on its budget, "
        f"then scores its best checkpoint with beam 5 (fp32, full output layer) on "
        f"`{results[0].split}`. "
        f"Machine: {info['cpu']} (flags: {info['cpu_flags']}), "
        f"{info['torch_threads']} torch threads.",
        "",
        "| variant | cell | encoder | attention | decoder | parameters | steps | target tok/s "
        "| BLEU | BLEU lc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.cell} | {r.encoder} | {r.attention} | {r.decoder} "
            f"| {r.parameters / 1e6:.2f} M "
            f"| {r.steps:,} | {r.tokens_per_second:,.0f} | {r.bleu:.2f} | {r.bleu_lowercased:.2f} |"
        )
    return "\n".join(lines)


def save_results(
    results: list[VariantResult], config: str, command: str, output: Path, summary: Path
) -> None:
    """`<output>.json`, the chart `<output>.png`, and the table in `summary`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine(), "variants": [asdict(r) for r in results]}
    write_lines(output.with_suffix(".json"), [json.dumps(report, indent=2)])
    ablation_chart(
        [r.name for r in results],
        [r.bleu for r in results],
        [r.tokens_per_second for r in results],
        f"BLEU, beam 5, {results[0].split}",
        output.with_suffix(".png"),
    )
    replace_section(summary, TABLE_START, TABLE_END, markdown(results, config, command))
