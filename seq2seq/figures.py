"""Pictures of a model: attention heatmaps (PNG and text), training curves and the ablation's
bar charts (PNG).

matplotlib is imported only when a PNG is drawn, so translating without pictures
does not pay for it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from torch import Tensor

from seq2seq.atomic import atomic_write
from seq2seq.errors import Seq2SeqError

SHADES = " ·░▒▓█"  # attention weight 0 → 1, for the text view
INCHES_PER_TOKEN = 0.22  # keeps 50-token sentences legible at 8-point labels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    with atomic_write(path) as out:
        figure.savefig(out, format="png", dpi=120, bbox_inches="tight")


def attention_heatmap(
    source_pieces: list[str], target_pieces: list[str], weights: Tensor, path: Path, title: str = ""
) -> None:
    """One PNG: source pieces along the x axis, target pieces down the y axis.

    weights: (len(target_pieces), len(source_pieces)), each row a distribution.
    """
    plt = _pyplot()
    rows, columns = weights.shape
    width = max(4.0, 1.5 + INCHES_PER_TOKEN * columns)
    height = max(3.0, 1.2 + INCHES_PER_TOKEN * rows)
    figure, axes = plt.subplots(figsize=(width, height))
    image = axes.imshow(weights.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(columns), source_pieces, rotation=90, fontsize=8)
    axes.set_yticks(range(rows), target_pieces, fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("translation")
    if title:
        axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    save_figure(figure, path)
    plt.close(figure)


def attention_text(source_pieces: list[str], target_pieces: list[str], weights: Tensor) -> str:
    """The attention matrix as text for a terminal: one row per target piece, shaded cells."""
    label_width = max(len(piece) for piece in target_pieces) + 2
    widths = [len(piece) + 1 for piece in source_pieces]
    lines = [" " * label_width + "".join(piece.ljust(w) for piece, w in zip(source_pieces, widths))]
    for piece, row in zip(target_pieces, weights.tolist()):
        cells = (
            SHADES[min(int(weight * len(SHADES)), len(SHADES) - 1)].ljust(w)
            for weight, w in zip(row, widths)
        )
        lines.append(piece.ljust(label_width) + "".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def read_run_metrics(run_dir: Path) -> list[dict[str, str]]:
    """Every metrics row of a run, across its resumed versions (logs/version_N/metrics.csv) in
    order."""
    files = sorted(
        (run_dir / "logs").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[-1]),
    )
    if not files:
        raise Seq2SeqError(
            f"{run_dir} has no logs/version_*/metrics.csv: pass a run folder written by seq2seq "
            "train"
        )
    rows: list[dict[str, str]] = []
    for path in files:
        with open(path, newline="", encoding="utf-8") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def logged_tokens_per_second(rows: list[dict[str, str]], skip: int = 0) -> float | None:
    """The mean of the target tokens/s a run logged (`read_run_metrics` rows, one every
    `log_every_n_steps`, each the rate of its last few batches), without the first `skip`
    entries; None when it logged none."""
    rates = [float(row["tok/s"]) for row in rows if row.get("tok/s") not in (None, "", "0.0")]
    rates = rates[skip:]
    return sum(rates) / len(rates) if rates else None


def _series(rows: list[dict[str, str]], column: str) -> tuple[list[int], list[float]]:
    points = [
        (int(row["step"]), float(row[column])) for row in rows if row.get(column) not in (None, "")
    ]
    return [step for step, _ in points], [value for _, value in points]


def training_curves(run_dir: Path, path: Path) -> None:
    """Loss (training and validation) and validation BLEU against the training step."""
    rows = read_run_metrics(run_dir)
    plt = _pyplot()
    figure, (loss_axes, bleu_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for column, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        steps, values = _series(rows, column)
        loss_axes.plot(
            steps, values, label=label, marker="o" if column == "val_loss" else None, markersize=3
        )
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("cross-entropy (label-smoothed)")
    loss_axes.legend()
    steps, values = _series(rows, "val_bleu")
    bleu_axes.plot(steps, values, marker="o", markersize=3, color="tab:green")
    bleu_axes.set_xlabel("step")
    bleu_axes.set_ylabel("validation BLEU (greedy)")
    for axes in (loss_axes, bleu_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(run_dir.name)
    save_figure(figure, path)
    plt.close(figure)


def ablation_chart(
    names: list[str], bleu: list[float], speeds: list[float], bleu_label: str, path: Path
) -> None:
    """Two bar charts side by side: the BLEU and the training speed of each variant."""
    plt = _pyplot()
    figure, (bleu_axes, speed_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    for axes, values, label, color, form in (
        (bleu_axes, bleu, bleu_label, "tab:blue", "%.1f"),
        (speed_axes, speeds, "training target tokens/s", "tab:orange", "%.0f"),
    ):
        axes.bar_label(axes.bar(names, values, color=color), fmt=form, fontsize=8)
        axes.set_ylabel(label)
        axes.grid(axis="y", alpha=0.3)
        axes.tick_params(axis="x", labelrotation=30)
    figure.suptitle("one setting changed from GRU + additive attention + bahdanau decoder")
    save_figure(figure, path)
    plt.close(figure)
