"""`seq2seq bench`: how fast this machine trains and translates the reference model.

One run measures everything moments apart on the same machine, so its ratios can be
compared even where absolute figures are noisy:

- the machine's matrix-multiply peak (fp32 and bf16), the yardstick for the rest;
- training: steady-state target tokens/s after a warm-up, without validation, for each
  precision asked for, the peak memory, and the FLOPs per target token of a training
  step, hence the GFLOP/s achieved against the peak;
- translation of a test split with a trained checkpoint: greedy and beam search at the
  default batch size (sentences/s, target tokens/s, BLEU) and batch-1 latency.

It writes a markdown summary and the raw figures as JSON.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from seq2seq.atomic import write_lines
from seq2seq.core.checkpoint import load_checkpoint, load_shortlist
from seq2seq.core.evaluate import load_split, score
from seq2seq.core.search import SearchSettings
from seq2seq.core.tokenizer import PAD_ID
from seq2seq.core.translate import Translator, default_batch_size, native_bf16
from seq2seq.errors import Seq2SeqError
from seq2seq.training.cli import NO_BF16_CPU, TrainingCLI, build_cli, run_folder
from seq2seq.training.data import Batch, TranslationDataModule
from seq2seq.training.module import TranslationModule


@dataclass
class TrainingFigures:
    precision: str
    steps: int
    target_tokens_per_second: float
    sentences_per_batch: float
    peak_memory_mb: float
    between_steps_percent: float  # data loading and loop overhead, outside the training step


@dataclass
class TranslationFigures:
    search: str
    precision: str
    shortlist: bool  # the checkpoint's lexical shortlist on
    batch_size: int
    workers: int  # batches searched side by side (`Translator.worker_count`)
    sentences: int
    sentences_per_second: float
    target_tokens_per_second: float
    bleu: float

    @property
    def name(self) -> str:
        """e.g. "beam5 bf16", or "beam5 bf16 shortlist" with the shortlist."""
        return f"{self.search} {self.precision}" + (" shortlist" if self.shortlist else "")


@dataclass
class BenchResults:
    machine: dict
    matmul_gflops: dict[str, float]  # fp32; bf16 only where the hardware has bf16 instructions
    flops_per_target_token: float = 0.0
    training: list[TrainingFigures] = field(default_factory=list)
    translation: list[TranslationFigures] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)


def machine() -> dict:
    """What the figures depend on: processor, threads, accelerator, software."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_flags": " ".join(cpu_flags()),
        # e.g. AVX2 or AVX512: runs differ by it
        "cpu_vector_unit": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_bf16("cpu"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def cpu_flags() -> list[str]:
    """The vector and matrix extensions of /proc/cpuinfo that speeds depend on (AVX2, AVX-512,
    its bf16 and VNNI parts, AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return [flag for flag in wanted if flag in line.split(":", 1)[-1].split()]


def matmul_gflops(dtype: torch.dtype, device: str, size: int = 2048, seconds: float = 1.5) -> float:
    """Sustained GFLOP/s of square matrix products: the most this machine can do."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def matmul_peaks(device: str) -> dict[str, float]:
    """GFLOP/s of fp32 and, where the hardware has bf16 instructions, bf16 products.

    Emulated bf16 is left out: nothing the bench times runs in it there, and one
    2048-square product takes a minute on an AVX2 CPU.
    """
    peaks = {"fp32": matmul_gflops(torch.float32, device)}
    if native_bf16(device):
        peaks["bf16"] = matmul_gflops(torch.bfloat16, device)
    return peaks


def describe_peaks(peaks: dict[str, float]) -> str:
    """`fp32 170 GFLOP/s, bf16 401 GFLOP/s`, or `..., bf16 emulated (not measured)`."""
    measured = [f"{name} {gflops:,.0f} GFLOP/s" for name, gflops in peaks.items()]
    return ", ".join(measured + ([] if "bf16" in peaks else ["bf16 emulated (not measured)"]))


def trainable_precisions(precisions: list[str], device: str) -> list[str]:
    """`precisions` without bf16-mixed where bf16 is emulated: it runs many times slower than
    fp32 there (`seq2seq train` falls back to 32-true), so it would time nothing a user runs."""
    if "bf16-mixed" not in precisions or native_bf16(device):
        return precisions
    print(f"{NO_BF16_CPU}: bf16-mixed training not measured")
    return [p for p in precisions if p != "bf16-mixed"]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator counter, or Linux's peak resident set (VmHWM)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak covers the whole process


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ThroughputMeter(L.Callback):
    """Counts target tokens and wall time over the steps after the warm-up.

    Also the time between one step's end and the next one's start: the data loader's
    and the training loop's share, which should stay small (the model never waits).
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.start = 0.0
        self.end = 0.0
        self.between_steps = 0.0
        self.tokens = 0
        self.sentences = 0
        self.batches = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        if trainer.global_step > self.warmup_steps:
            self.between_steps += time.perf_counter() - self.end

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs, batch: Batch, batch_idx: int
    ) -> None:
        synchronize(str(module.device))
        if trainer.global_step == self.warmup_steps:
            self.start = self.end = time.perf_counter()
        elif trainer.global_step > self.warmup_steps:
            self.end = time.perf_counter()
            self.tokens += int((batch.target_out != PAD_ID).sum())
            self.sentences += batch.source.size(0)
            self.batches += 1


def measure_training(
    template: TranslationModule,
    data: TranslationDataModule,
    precision: str,
    warmup: int,
    steps: int,
    device: str,
    gradient_clip_val: float | None,
) -> tuple[TrainingFigures, TranslationModule]:
    """Train a fresh copy of `template` (not yet built) for warmup + steps optimiser steps;
    time the last `steps`."""
    module = copy.deepcopy(template)
    meter = ThroughputMeter(warmup)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter],
    )
    reset_peak_memory(device)
    trainer.fit(module, datamodule=data)
    seconds = meter.end - meter.start
    figures = TrainingFigures(
        precision,
        meter.batches,
        meter.tokens / seconds,
        meter.sentences / max(meter.batches, 1),
        peak_memory_mb(device),
        100 * meter.between_steps / seconds,
    )
    return figures, module


def flops_per_target_token(module: TranslationModule, batch: Batch) -> float:
    """FLOPs of one training step (forward + backward) on a real batch, per target token."""
    module.train()
    with FlopCounterMode(display=False) as counter:
        module.loss(batch).backward()
    module.zero_grad()
    return counter.get_total_flops() / int((batch.target_out != PAD_ID).sum())


def measure_translation(
    translator: Translator,
    sources: list[str],
    references: list[tuple[str, ...]],
    batch_size: int | None = None,
) -> TranslationFigures:
    """Speed and BLEU of `sources`; `batch_size` None: the translator's default for its search."""
    if batch_size is None:
        batch_size = default_batch_size(translator.search.beam_size)
    translator.translate(sources[:batch_size], batch_size)  # warm-up: allocator, kernels
    synchronize(str(translator.device))
    start = time.perf_counter()
    translations = translator.translate_detailed(sources, batch_size)
    synchronize(str(translator.device))
    seconds = time.perf_counter() - start
    tokens = sum(len(t.hypotheses[0].tokens) + 1 for t in translations if t.hypotheses)
    bleu = score([t.text for t in translations], references)[0].score
    return TranslationFigures(
        translator.search.describe(),
        translator.precision,
        translator.shortlist is not None,
        batch_size,
        translator.worker_count,
        len(sources),
        len(sources) / seconds,
        tokens / seconds,
        bleu,
    )


def latency_ms(translator: Translator, sources: list[str]) -> float:
    """Median milliseconds to translate one sentence on its own (batch size 1)."""
    times = []
    for sentence in sources:
        start = time.perf_counter()
        translator.translate([sentence], 1)
        synchronize(str(translator.device))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_bench(
    config: str,
    checkpoint: str | None,
    precisions: list[str],
    warmup: int,
    steps: int,
    sentences: int,
    mirror: str | None,
    beam_size: int = 5,
    batch_size: int | None = None,
    latency_sentences: int = 100,
    device: str | None = None,
    overrides: Sequence[str] = (),
) -> BenchResults:
    """Measure everything (see the module docstring), printing each figure as it comes.

    `overrides` are extra `seq2seq train` arguments for the config (e.g. `--data.data_dir`).
    """
    check_precisions(precisions)
    # no per-run banners between the figures
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precisions = trainable_precisions(precisions, device)
    results = BenchResults(machine(), matmul_peaks(device))
    print(f"matmul peak: {describe_peaks(results.matmul_gflops)}")

    args = [
        "--config",
        config,
        "--trainer.logger",
        "false",
        *(["--data.mirror", mirror] if mirror else []),
        *overrides,
    ]
    cli = build_cli(args)
    for precision in precisions:
        figures, module = measure_training(
            cli.model,
            cli.datamodule,
            precision,
            warmup,
            steps,
            device,
            cli.config.trainer.gradient_clip_val,
        )
        results.training.append(figures)
        print(
            f"training {precision}: {figures.target_tokens_per_second:,.0f} target tokens/s, "
            f"peak {figures.peak_memory_mb:,.0f} MB"
        )
    batch = next(iter(cli.datamodule.train_dataloader()))
    results.flops_per_target_token = flops_per_target_token(module.cpu(), batch)

    checkpoint = checkpoint or config_checkpoint(cli)
    if not Path(checkpoint).is_file():
        print(
            f"No checkpoint {checkpoint}: translation not measured "
            f"(train one: make train CONFIG={config})"
        )
        return results
    # bf16 where the hardware multiplies it natively (GPUs, CPUs with AVX512-BF16/AMX); int8 on CPUs
    inference_precisions = [
        "fp32",
        *(["bf16"] if native_bf16(device) else []),
        *(["int8"] if device == "cpu" else []),
    ]
    saved = load_checkpoint(checkpoint)
    split = load_split(saved["seq2seq"]["corpus"], None, mirror)
    split = next(iter(split.values()))[:sentences]
    # without the shortlist (the default) and, where the checkpoint has one, with it
    shortlists = (False, True) if load_shortlist(saved) is not None else (False,)
    for precision, shortlist in itertools.product(inference_precisions, shortlists):
        for search in (SearchSettings(), SearchSettings(beam_size=beam_size)):
            translator = Translator.from_checkpoint(
                checkpoint, device, search, precision, shortlist=shortlist
            )
            figures = measure_translation(
                translator, [e.source for e in split], [e.references for e in split], batch_size
            )
            results.translation.append(figures)
            results.latency_ms[figures.name] = latency_ms(
                translator, [e.source for e in split[:latency_sentences]]
            )
            print(
                f"translation {figures.name}: {figures.sentences_per_second:,.0f} sentences/s, "
                f"BLEU {figures.bleu:.2f}"
            )
    return results


def config_checkpoint(cli: TrainingCLI) -> str:
    """The best checkpoint `make train CONFIG=...` leaves for this config."""
    return str(Path(run_folder(cli.config.checkpoint_dir, cli.config.run_name)) / "best.ckpt")


def default_checkpoint(config: str) -> str:
    return config_checkpoint(build_cli(["--config", config, "--trainer.logger", "false"]))


def markdown(results: BenchResults, config: str, checkpoint: str | None, command: str) -> str:
    m = results.machine
    peak = results.matmul_gflops
    lines = [
        f"## `{command}`",
        "",
        f"{m['date']}; {m['cpu']} ({m['cpu_vector_unit']}, "
        f"{'native' if m['cpu_native_bf16'] else 'no native'} bf16; "
        f"{m['cpu_count']} logical CPUs, {m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']}" if m["gpu"] else "")
        + f"; torch {m['torch']}, Lightning {m['lightning']}, Python {m['python']}; "
        f"config `{config}`.",
        "",
        f"Matrix-multiply peak: {describe_peaks(peak)}. "
        f"A training step costs {results.flops_per_target_token / 1e6:,.1f} MFLOP "
        "per target token (forward + backward).",
        "",
        "| training precision | target tokens/s | sentences/batch | achieved GFLOP/s | % of peak "
        "| peak memory (MB) | % of time between steps (data, loop) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in results.training:
        achieved = results.flops_per_target_token * t.target_tokens_per_second / 1e9
        reference = peak["bf16" if "bf16" in t.precision else "fp32"]
        lines.append(
            f"| {t.precision} | {t.target_tokens_per_second:,.0f} | "
            f"{t.sentences_per_batch:.0f} | {achieved:,.0f} | "
            f"{100 * achieved / reference:.1f} | {t.peak_memory_mb:,.0f} | "
            f"{t.between_steps_percent:.1f} |"
        )
    if results.translation:
        lines += [
            "",
            f"Translation with `{checkpoint}`:",
            "",
            "| search | precision | shortlist | batch | workers | sentences | sentences/s "
            "| target tokens/s | BLEU | batch-1 latency (ms, median) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in results.translation:
            lines.append(
                f"| {t.search} | {t.precision} | {'on' if t.shortlist else 'off'} "
                f"| {t.batch_size} | {t.workers} | {t.sentences} | "
                f"{t.sentences_per_second:,.0f} | {t.target_tokens_per_second:,.0f} | "
                f"{t.bleu:.2f} | {results.latency_ms[t.name]:.1f} |"
            )
    return "\n".join(lines)


LATEST_RUN_MARKER = "<!-- make bench rewrites everything below this line; write above it -->"


def replace_section(summary: Path, start: str, end: str, body: str) -> None:
    """Put `body` between the markers `start` and `end` of `summary`, in place of what was there.

    A new section goes just above `LATEST_RUN_MARKER` (whose part `make bench` rewrites), or
    at the end of a file without it.
    """
    section = f"{start}\n\n{body}\n\n{end}"
    text = summary.read_text() if summary.is_file() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    elif LATEST_RUN_MARKER in text:
        before, after = text.split(LATEST_RUN_MARKER, 1)
        text = f"{before}{section}\n\n{LATEST_RUN_MARKER}{after}"
    else:
        text = f"{text}\n{section}\n" if text else f"{section}\n"
    write_lines(summary, [text.rstrip("\n")])


def save(
    results: BenchResults, output: Path, config: str, checkpoint: str | None, command: str
) -> None:
    """`<output>.md` (a summary to read) and `<output>.json` (every figure).

    The markdown keeps whatever precedes `LATEST_RUN_MARKER` (the curated figures and the
    sections of `--serve` and `--peer`) and replaces what follows with this run; the JSON
    keeps the entries of `--serve` and `--peer`.
    """
    summary, figures = output.with_suffix(".md"), output.with_suffix(".json")
    kept = summary.read_text().split(LATEST_RUN_MARKER)[0] if summary.is_file() else ""
    write_lines(
        summary, [kept + LATEST_RUN_MARKER, "", markdown(results, config, checkpoint, command)]
    )
    report = asdict(results)
    previous = json.loads(figures.read_text()) if figures.is_file() else {}
    others = {key: value for key, value in previous.items() if key not in report}
    write_lines(figures, [json.dumps({**report, **others}, indent=2)])


def check_precisions(precisions: list[str]) -> None:
    known = ("32-true", "bf16-mixed", "16-mixed")
    unknown = [p for p in precisions if p not in known]
    if unknown:
        raise Seq2SeqError(
            f"unknown precision {', '.join(unknown)}: choose from {', '.join(known)}"
        )
