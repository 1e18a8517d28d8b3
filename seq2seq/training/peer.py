"""`seq2seq bench --peer SUMMARY`: this project beside OpenNMT-py, measured on one machine.

The peer's harness (`../shared/peers/opennmt-py/run.sh`) trains and times OpenNMT-py 3.5.1
on this machine and writes a `summary.txt`; this module never installs it. It reads that
summary, times `seq2seq translate` the way the harness times the peer (the whole process,
`test_2016_flickr` five times over: 5,000 lines, greedy and beam 5, the default precision),
takes this project's training figures from the latest `make bench` run, and reports each
ratio. Given the peer's own translate commands (`--peer-greedy`, `--peer-beam5`), it times
them too, alternating with ours, so the noise of the hour hits both sides alike.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seq2seq.atomic import write_lines
from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.core.evaluate import load_split, score
from seq2seq.core.translate import PRECISIONS, default_device, resolve_precision
from seq2seq.errors import Seq2SeqError
from seq2seq.figures import logged_tokens_per_second, read_run_metrics

REPEATS_OF_THE_SPLIT = 5  # the harness's 5,000 lines: start-up amortised as a user's file is
SPLIT = "test_2016_flickr"
SEARCHES = {"greedy": [], "beam5": ["--beam-size", "5"]}
SECTION_START = "<!-- seq2seq bench --peer rewrites this section -->"
SECTION_END = "<!-- end of the seq2seq bench --peer section -->"

# What the peer's summary.txt says, one pattern per figure (see its summarize.py).
PEER_PATTERNS = {
    "train_target_tokens_per_second": r"OpenNMT 'tok/s' \(tgt\).*without window 1: mean (\d+)",
    "train_peak_rss_mb": r"peak RSS \(train\): (\d+) MiB",
    "bleu_greedy": r"\[greedy\] sacreBLEU ([\d.]+)",
    "bleu_beam5": r"\[beam5\] sacreBLEU ([\d.]+)",
    "translate_peak_rss_mb": r"\[beam5\] OpenNMT 'Total translation time'.*peak RSS (\d+) MiB",
    "greedy_sentences_per_second": r"^greedy ([\d.]+) sent/s whole process, 5,000 lines",
    "beam5_sentences_per_second": r"^beam5 ([\d.]+) sent/s whole process, 5,000 lines",
}


@dataclass
class ProcessRun:
    """One whole-process translation of the 5,000 lines."""

    side: str  # "seq2seq" or "OpenNMT-py"
    search: str
    seconds: float
    peak_rss_mb: float

    lines: int

    @property
    def sentences_per_second(self) -> float:
        return self.lines / self.seconds


@dataclass
class PeerComparison:
    machine: dict
    peer_summary: str
    peer: dict[str, float]
    bench: dict  # this project's training figures: the latest `make bench` run
    bleu: dict[str, float]  # ours on the split, by search, from the timed output
    checkpoint: str = ""  # ours, whose run folder's log gives a second training figure
    runs: list[ProcessRun] = field(default_factory=list)

    def median_speed(self, side: str, search: str) -> float | None:
        speeds = [r.sentences_per_second for r in self.runs if (r.side, r.search) == (side, search)]
        return statistics.median(speeds) if speeds else None

    def peak_rss(self, side: str) -> float | None:
        rss = [r.peak_rss_mb for r in self.runs if r.side == side]
        return max(rss) if rss else None


def read_peer_summary(path: Path) -> dict[str, float]:
    """Every figure of `PEER_PATTERNS` from the harness's summary.txt, or a clear refusal."""
    if not path.is_file():
        raise Seq2SeqError(
            f"no peer summary at {path}: run bash ../shared/peers/opennmt-py/run.sh first "
            "(about 25 minutes); it writes $WORK/results/summary.txt"
        )
    text = path.read_text(errors="replace")
    figures = {}
    for name, pattern in PEER_PATTERNS.items():
        match = re.search(pattern, text, re.MULTILINE)
        if not match:
            raise Seq2SeqError(
                f"{path} has no line matching {pattern!r} ({name}): is it the summary.txt of "
                "a complete run.sh run?"
            )
        figures[name] = float(match.group(1))
    return figures


def read_bench_report(path: Path) -> dict:
    """The latest `make bench` report, without the peer comparison saved beside it: kept, each
    comparison would carry the one before it, nested ever deeper."""
    if not path.is_file():
        raise Seq2SeqError(
            f"no {path}: run make bench first, so that the training figures are of "
            "this machine and this hour"
        )
    report = json.loads(path.read_text())
    report.pop("peer", None)
    return report


def translate_command(checkpoint: str, source: Path, output: Path, *options: str) -> list[str]:
    """`seq2seq translate` of a file as a user runs it: a process of its own."""
    command = [sys.executable, "-m", "seq2seq", "translate", "--checkpoint", checkpoint]
    return [*command, "--input", str(source), "--output", str(output), *options]


def time_process(command: list[str], side: str, search: str, lines: int) -> ProcessRun:
    """Wall clock and peak resident memory of one child process, which must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise Seq2SeqError(f"{shlex.join(command)} failed: {error.strip()[-500:]}")
    return ProcessRun(side, search, seconds, usage.ru_maxrss / 1024, lines)  # kB on Linux


def run_peer_comparison(
    summary: Path,
    checkpoint: str,
    bench_json: Path,
    repeats: int = 3,
    peer_commands: dict[str, str] | None = None,
    mirror: str | None = None,
    split: str = SPLIT,
    sentences: int | None = None,
) -> PeerComparison:
    """Read the peer, time ours (and the peer's commands, if given) `repeats` times, alternated.

    `split` and `sentences` (its first so many) exist for tests; the peer's figures are of
    the whole `test_2016_flickr`.
    """
    peer = read_peer_summary(summary)
    bench = read_bench_report(bench_json)
    corpus = load_checkpoint(checkpoint)["seq2seq"]["corpus"]
    examples = load_split(corpus, split, mirror)[split]
    examples = examples[:sentences]
    references = [e.references for e in examples]
    lines = len(examples) * REPEATS_OF_THE_SPLIT
    comparison = PeerComparison(bench["machine"], str(summary), peer, bench, {}, checkpoint)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "five.en"
        write_lines(source, [e.source for e in examples] * REPEATS_OF_THE_SPLIT)
        for _ in range(repeats):
            for search, options in SEARCHES.items():
                output = Path(folder) / f"{search}.de"
                ours = translate_command(checkpoint, source, output, *options)
                comparison.runs.append(time_process(ours, "seq2seq", search, lines))
                # the first copy: the others are the same lines, translated alike
                hypotheses = output.read_text().splitlines()[: len(examples)]
                comparison.bleu[search] = score(hypotheses, references)[0].score
                if peer_commands and search in peer_commands:
                    peer_command = ["bash", "-c", peer_commands[search]]
                    peer_run = time_process(peer_command, "OpenNMT-py", search, lines)
                    comparison.runs.append(peer_run)
                print(
                    "  ".join(
                        f"{r.side} {r.search} {r.sentences_per_second:.1f} sent/s"
                        for r in comparison.runs[-2:]
                    )
                )
    return comparison


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}×" if ours and theirs else "–"


def markdown(comparison: PeerComparison, command: str) -> str:
    peer, bench = comparison.peer, comparison.bench
    training = {t["precision"]: t for t in bench["training"]}
    best = max(training.values(), key=lambda t: t["target_tokens_per_second"])
    fp32 = training.get("32-true")
    machine = comparison.machine
    lines = [
        "## Side by side with OpenNMT-py 3.5.1",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine['cpu']} "
        f"({machine['cpu_vector_unit']}, native bf16: {machine['cpu_native_bf16']}); "
        f"the peer: `{comparison.peer_summary}`; training figures: the `make bench` run of "
        f"{machine['date']}.",
        "",
        "| figure | OpenNMT-py | seq2seq | ratio |",
        "|---|---|---|---|",
        f"| training target tokens/s, {best['precision']} | "
        f"{peer['train_target_tokens_per_second']:,.0f} | "
        f"{best['target_tokens_per_second']:,.0f} | "
        f"{ratio(best['target_tokens_per_second'], peer['train_target_tokens_per_second'])} |",
    ]
    try:
        logged = logged_tokens_per_second(read_run_metrics(Path(comparison.checkpoint).parent), 1)
    except Seq2SeqError:  # a checkpoint without its run's logs
        logged = None
    if logged:
        lines.append(
            "| training target tokens/s over the 15-minute run (each side's log after its first "
            f"entry; ours: `{comparison.checkpoint}`'s run) | "
            f"{peer['train_target_tokens_per_second']:,.0f} | {logged:,.0f} | "
            f"{ratio(logged, peer['train_target_tokens_per_second'])} |"
        )
    if fp32 and fp32 is not best:
        lines.append(
            f"| training target tokens/s, 32-true | "
            f"{peer['train_target_tokens_per_second']:,.0f} | "
            f"{fp32['target_tokens_per_second']:,.0f} | "
            f"{ratio(fp32['target_tokens_per_second'], peer['train_target_tokens_per_second'])} |"
        )
    for search in SEARCHES:
        ours = comparison.median_speed("seq2seq", search)
        alternated = comparison.median_speed("OpenNMT-py", search)
        theirs = alternated or peer[f"{search}_sentences_per_second"]
        where = "alternated with ours" if alternated else "from its summary"
        lines.append(
            f"| whole process, 5,000 lines, {search} sentences/s ({where}) | {theirs:,.1f} | "
            f"{ours:,.1f} | {ratio(ours, theirs)} |"
        )
    for search in SEARCHES:
        lines.append(
            f"| BLEU {search}, {SPLIT} (cased sacreBLEU) | {peer[f'bleu_{search}']:.2f} | "
            f"{comparison.bleu[search]:.2f} | "
            f"{comparison.bleu[search] - peer[f'bleu_{search}']:+.2f} |"
        )
    lines.append(
        f"| peak memory, training (MiB; ours: the `make bench` process, {best['precision']}) | "
        f"{peer['train_peak_rss_mb']:,.0f} | {best['peak_memory_mb']:,.0f} | "
        f"{ratio(best['peak_memory_mb'], peer['train_peak_rss_mb'])} |"
    )
    ours_rss = comparison.peak_rss("seq2seq")
    theirs_rss = comparison.peak_rss("OpenNMT-py") or peer["translate_peak_rss_mb"]
    timed = sum(r.side == "seq2seq" for r in comparison.runs) // len(SEARCHES)
    precision = resolve_precision(PRECISIONS[0], default_device(PRECISIONS[0]))
    lines += [
        f"| peak memory, translation (MiB) | {theirs_rss:,.0f} | {ours_rss:,.0f} | "
        f"{ratio(ours_rss, theirs_rss)} |",
        "",
        f"Our translation: `seq2seq translate` with no precision flag (`auto`: {precision} "
        f"here) and no batch size, the median of {timed} runs per search; its BLEU is "
        "of the timed output's first copy of the split. The "
        "peer's training figure is OpenNMT-py's own steady-state target "
        "tokens/s (its log windows after the first); ours is `make bench`'s steady state after "
        "its warm-up steps.",
    ]
    return "\n".join(lines)


def save(comparison: PeerComparison, output: Path, command: str) -> None:
    """The peer section of `<output>.md` and the `peer` entry of `<output>.json`."""
    from seq2seq.training.bench import replace_section

    replace_section(
        output.with_suffix(".md"), SECTION_START, SECTION_END, markdown(comparison, command)
    )
    figures = output.with_suffix(".json")
    report = json.loads(figures.read_text()) if figures.is_file() else {}
    write_lines(figures, [json.dumps({**report, "peer": asdict(comparison)}, indent=2)])
