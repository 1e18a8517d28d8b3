"""The CUDA path: bf16-mixed training and translation on a GPU (skipped where there is none, as in
CI)."""

from pathlib import Path

import pytest
import torch

from seq2seq.core.evaluate import score
from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import Translator
from seq2seq.figures import read_run_metrics
from seq2seq.training.cli import train
from tests.conftest import tiny_train_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, data_dir, mirror):
    """The tiny config trained on the GPU in bf16-mixed: (the LightningCLI, its run folder)."""
    folder = tmp_path_factory.mktemp("cuda")
    cli = train(
        tiny_train_args(
            folder,
            data_dir,
            mirror,
            "--trainer.accelerator",
            "gpu",
            "--trainer.devices",
            "1",
            "--trainer.precision",
            "bf16-mixed",
        )
    )
    return cli, folder / "tiny"


def test_bf16_mixed_training_on_the_gpu_memorises_the_training_pairs(cuda_run, training_examples):
    cli, run = cuda_run
    # fit moves the module back to the CPU at its end
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert cli.trainer.precision == "bf16-mixed"
    (optimizer,) = cli.trainer.optimizers
    assert optimizer.defaults["fused"]
    losses = [float(row["train_loss"]) for row in read_run_metrics(run) if row.get("train_loss")]
    assert losses[-1] < losses[0] / 10
    translator = Translator.from_checkpoint(run / "last.ckpt", "cuda", precision="bf16")
    hypotheses = translator.translate([e.source for e in training_examples])
    assert score(hypotheses, [e.references for e in training_examples])[0].score > 80


@pytest.mark.parametrize("beam_size", [1, 5])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_translation_agrees_with_the_cpu(
    tiny_checkpoint: Path, training_examples, beam_size, precision
):
    sources = [e.source for e in training_examples[:64]]
    settings = SearchSettings(beam_size=beam_size)
    on_cpu = Translator.from_checkpoint(tiny_checkpoint, "cpu", settings).translate(sources)
    on_gpu = Translator.from_checkpoint(tiny_checkpoint, "cuda", settings, precision).translate(
        sources
    )
    assert sum(a == b for a, b in zip(on_cpu, on_gpu)) >= 58


def test_a_gpu_trained_checkpoint_translates_on_the_cpu(cuda_run, training_examples):
    _, run = cuda_run
    translator = Translator.from_checkpoint(run / "last.ckpt", "cpu")
    assert next(translator.net.parameters()).device.type == "cpu"
    hypotheses = translator.translate([e.source for e in training_examples])
    assert score(hypotheses, [e.references for e in training_examples])[0].score > 80
