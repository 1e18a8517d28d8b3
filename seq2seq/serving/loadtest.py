"""`seq2seq bench --serve`: `seq2seq serve` under bounded concurrent clients, batching on and off.

Two servers of one checkpoint run side by side on loopback ports, one micro-batching and
one translating a request at a time; for each client count the two are driven in turn with
the same test sentences, one sentence per request (`POST /v1/translate`, greedy, the
server's default precision). Beside them, the offline throughput of the same sentences:
`Translator` in this process and `seq2seq translate` as a whole process. Every loop is
bounded by a count and by time; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from seq2seq.atomic import write_lines
from seq2seq.core.evaluate import load_split
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError
from seq2seq.serving.limits import ServeLimits

STARTUP_SECONDS = 180  # loading a checkpoint and opening the port


@dataclass
class LoadFigures:
    precision: str
    batching: bool
    clients: int
    requests: int  # sent; each holds one sentence
    answered: int  # 200
    refused: int  # 503 (queue full)
    timed_out: int  # 504
    failed: int  # any other answer or a broken connection
    seconds: float
    sentences_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class OfflineFigures:
    precision: str
    in_process: float  # sentences/s, Translator.translate in its default batches
    whole_process: float  # sentences/s, `seq2seq translate --input --output`, start-up included


@dataclass
class ServeBenchResults:
    machine: dict
    checkpoint: str
    sentences: int
    server_threads: int  # torch threads each server translates on (its `--threads` default)
    offline: list[OfflineFigures] = field(default_factory=list)
    load: list[LoadFigures] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server_process(checkpoint: str, *options: str) -> Iterator[str]:
    """A `seq2seq serve` subprocess on a free loopback port; yields its URL once /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "seq2seq",
        "serve",
        "--checkpoint",
        checkpoint,
        "--port",
        str(port),
        *options,
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while not healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise Seq2SeqError(
                        "seq2seq serve did not start: "
                        f"{log.read().decode(errors='replace')[-2000:]}"
                    )
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def drive(
    url: str, sentences: Sequence[str], clients: int, time_limit: float
) -> tuple[list[float], dict[int, int], float]:
    """`clients` concurrent clients send the sentences one per request until all are sent or
    `time_limit` seconds pass. Returns the latencies of answered requests (ms), the count of
    each status (0: no answer), and the seconds taken.

    aiohttp: its client takes far less CPU per request than httpx's, and here that CPU is
    taken from the server being measured (BENCHMARKS.md).
    """
    pending = iter(sentences)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        start = time.perf_counter()
        stop_at = start + time_limit

        async def one_client() -> None:
            for sentence in pending:
                if time.perf_counter() > stop_at:
                    return
                sent = time.perf_counter()
                try:
                    async with session.post("/v1/translate", json={"text": [sentence]}) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        return latencies, statuses, time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]
        if len(values) > 1
        else values[0]
    )


def measure_load(
    url: str,
    precision: str,
    batching: bool,
    sentences: Sequence[str],
    clients: int,
    time_limit: float,
) -> LoadFigures:
    # warm-up: connections, allocator
    asyncio.run(drive(url, sentences[: 4 * clients], clients, time_limit))
    latencies, statuses, seconds = asyncio.run(drive(url, sentences, clients, time_limit))
    answered = statuses.get(200, 0)
    return LoadFigures(
        precision,
        batching,
        clients,
        sum(statuses.values()),
        answered,
        statuses.get(503, 0),
        statuses.get(504, 0),
        sum(count for status, count in statuses.items() if status not in (200, 503, 504)),
        seconds,
        answered / seconds,
        percentile(latencies, 0.50),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
    )


def offline_whole_process(checkpoint: str, precision: str, sentences: Sequence[str]) -> float:
    """Sentences/s of `seq2seq translate` on a file, timed from outside (start-up included)."""
    from seq2seq.training.peer import time_process, translate_command

    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "source.txt", Path(folder) / "output.txt"
        write_lines(source, sentences)
        command = translate_command(checkpoint, source, output, "--precision", precision)
        return time_process(command, "seq2seq", "greedy", len(sentences)).sentences_per_second


def offline_in_process(checkpoint: str, precision: str, sentences: Sequence[str]) -> float:
    translator = Translator.from_checkpoint(checkpoint, "cpu", precision=precision)
    translator.translate(sentences[:128])  # warm-up: a default greedy batch
    start = time.perf_counter()
    translator.translate(sentences)
    return len(sentences) / (time.perf_counter() - start)


def run_serve_bench(
    checkpoint: str,
    clients: Sequence[int],
    sentences: int,
    time_limit: float,
    mirror: str | None,
    precisions: Sequence[str],
) -> ServeBenchResults:
    """Measure everything (see the module docstring) for each precision, printing each figure as it
    comes."""
    from seq2seq.training.bench import (
        machine,  # the training layer's bench: imported only for this report
    )

    if not Path(checkpoint).is_file():
        raise Seq2SeqError(
            f"no checkpoint {checkpoint}: train one (make train "
            "CONFIG=configs/bench-multi30k-en-de.yaml)"
        )
    translator = Translator.from_checkpoint(checkpoint, "cpu")
    split = next(iter(load_split(translator.corpus, None, mirror).values()))
    lines = [example.source for example in split[:sentences]]
    results = ServeBenchResults(
        machine(), checkpoint, len(lines), ServeLimits().translation_threads()
    )
    for precision in precisions:
        with ExitStack() as stack:
            urls = {
                batching: stack.enter_context(
                    server_process(
                        checkpoint,
                        "--precision",
                        precision,
                        *([] if batching else ["--no-batching"]),
                    )
                )
                for batching in (True, False)
            }
            for count in clients:
                for batching in (True, False):  # alternated, so the machine's drift hits both sides
                    figures = measure_load(
                        urls[batching], precision, batching, lines, count, time_limit
                    )
                    results.load.append(figures)
                    print(
                        f"serve {precision}, batching {'on' if batching else 'off'}, {count} "
                        f"clients: {figures.sentences_per_second:,.0f} sentences/s, p50 "
                        f"{figures.p50_ms:.0f} ms, p95 {figures.p95_ms:.0f} ms, p99 "
                        f"{figures.p99_ms:.0f} ms ({figures.answered}/{figures.requests} answered)"
                    )
        offline = OfflineFigures(
            precision,
            offline_in_process(checkpoint, precision, lines),
            offline_whole_process(checkpoint, precision, lines),
        )
        results.offline.append(offline)
        print(
            f"offline {precision}: {offline.in_process:,.0f} sentences/s in process, "
            f"{offline.whole_process:,.0f} as a whole process"
        )
    return results


def markdown(results: ServeBenchResults, command: str) -> str:
    m = results.machine
    lines = [
        f"## `{command}`",
        "",
        f"{m['date']}; {m['cpu']} ({m['cpu_vector_unit']}, "
        f"{'native' if m['cpu_native_bf16'] else 'no native'} bf16; {m['cpu_count']} logical CPUs, "
        f"{m['torch_threads']} torch threads offline, {results.server_threads} in each server); "
        f"torch {m['torch']}, Python {m['python']}; "
        f"checkpoint `{results.checkpoint}`; {results.sentences} test sentences, one per request "
        "(`POST /v1/translate`), greedy; the clients (aiohttp, one process) and both servers share "
        "the machine.",
        "",
        "| precision | clients | batching | sentences/s | × batching off | % of offline file, "
        "whole process | % of offline, in process | p50 ms | p95 ms | p99 ms | answered | 503 | "
        "504 | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    offline = {o.precision: o for o in results.offline}
    off = {(f.precision, f.clients): f for f in results.load if not f.batching}
    for f in results.load:
        base = off.get((f.precision, f.clients))
        ratio = (
            f"{f.sentences_per_second / base.sentences_per_second:.1f}×"
            if f.batching and base
            else ""
        )
        reference = offline[f.precision]
        lines.append(
            f"| {f.precision} | {f.clients} | {'on' if f.batching else 'off'} | "
            f"{f.sentences_per_second:,.0f} | {ratio} | "
            f"{100 * f.sentences_per_second / reference.whole_process:.0f} | "
            f"{100 * f.sentences_per_second / reference.in_process:.0f} | {f.p50_ms:.0f} | "
            f"{f.p95_ms:.0f} | {f.p99_ms:.0f} | {f.answered}/{f.requests} | {f.refused} | "
            f"{f.timed_out} | {f.failed} |"
        )
    lines += [
        "",
        "Offline, the same sentences: "
        + "; ".join(
            f"{o.precision} {o.whole_process:,.0f} sentences/s with `seq2seq translate --input` as "
            f"a whole process (start-up included), {o.in_process:,.0f} with `Translator` in one "
            "process (its default batches)"
            for o in results.offline
        )
        + ".",
    ]
    return "\n".join(lines)


SECTION_START = "<!-- seq2seq bench --serve rewrites this section -->"
SECTION_END = "<!-- end of the seq2seq bench --serve section -->"


def save(results: ServeBenchResults, output: Path, command: str) -> None:
    """The serve section of `<output>.md` and the `serve` entry of `<output>.json`.

    The rest of both files is `seq2seq bench`'s: the section sits above its latest-run
    marker (which rewrites everything below it), and the JSON keeps its other entries.
    """
    from seq2seq.training.bench import replace_section

    replace_section(
        output.with_suffix(".md"), SECTION_START, SECTION_END, markdown(results, command)
    )
    figures = output.with_suffix(".json")
    report = json.loads(figures.read_text()) if figures.is_file() else {}
    write_lines(figures, [json.dumps({**report, "serve": asdict(results)}, indent=2)])
