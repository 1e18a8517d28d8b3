"""Short runs of the tiny config: seeding and resuming (weights compared exactly)."""

import csv
from pathlib import Path

import pytest
import torch

from seq2seq.training.cli import train
from tests.conftest import tiny_train_args


def short_run(
    folder: Path, data_dir: Path, mirror: Path, epochs: int, *extra: str
) -> dict[str, torch.Tensor]:
    cli = train(
        tiny_train_args(folder, data_dir, mirror, "--trainer.max_epochs", str(epochs), *extra)
    )
    return {name: tensor.detach().clone() for name, tensor in cli.model.net.state_dict().items()}


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=name)


def test_same_seed_gives_the_same_weights(tmp_path, data_dir, mirror):
    assert_same_weights(
        short_run(tmp_path / "a", data_dir, mirror, 3),
        short_run(tmp_path / "b", data_dir, mirror, 3),
    )


def test_another_seed_gives_other_weights(tmp_path, data_dir, mirror):
    first = short_run(tmp_path / "a", data_dir, mirror, 1)
    second = short_run(tmp_path / "b", data_dir, mirror, 1, "--seed_everything", "7")
    assert not torch.equal(first["encoder.embedding.weight"], second["encoder.embedding.weight"])


@pytest.mark.parametrize(
    "sampling", [[], ["--data.subword_sampling", "0.3"]], ids=["fixed", "subword-sampling"]
)
def test_rerunning_resumes_from_last_checkpoint_and_matches_an_uninterrupted_run(
    tmp_path, data_dir, mirror, capsys, sampling
):
    uninterrupted = short_run(tmp_path / "straight", data_dir, mirror, 4, *sampling)
    short_run(tmp_path / "resumed", data_dir, mirror, 2, *sampling)
    assert (tmp_path / "resumed" / "tiny" / "last.ckpt").is_file()
    capsys.readouterr()
    resumed = short_run(tmp_path / "resumed", data_dir, mirror, 4, *sampling)
    assert "Resuming from" in capsys.readouterr().out
    assert_same_weights(uninterrupted, resumed)


def test_resume_from_an_explicit_checkpoint(tmp_path, data_dir, mirror):
    short_run(tmp_path / "first", data_dir, mirror, 1)
    checkpoint = tmp_path / "first" / "tiny" / "last.ckpt"
    weights = short_run(tmp_path / "second", data_dir, mirror, 2, "--ckpt_path", str(checkpoint))
    assert_same_weights(weights, short_run(tmp_path / "third", data_dir, mirror, 2))


def test_fused_adam_trains_in_bf16_mixed_and_its_gradients_are_clipped(tmp_path, data_dir, mirror):
    cli = train(
        tiny_train_args(
            tmp_path,
            data_dir,
            mirror,
            "--trainer.max_epochs",
            "1",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.gradient_clip_val",
            "0.5",
        )
    )
    (optimizer,) = cli.trainer.optimizers
    # Lightning's mixed-precision plugin alone would refuse to clip it
    assert optimizer.defaults["fused"]
    parameters = list(cli.model.net.parameters())
    for parameter in parameters:
        parameter.grad = torch.full_like(parameter, 10.0)
    cli.model.configure_gradient_clipping(optimizer, 0.5, "norm")
    assert float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
    ) == pytest.approx(0.5, rel=1e-3)


def logged_learning_rates(folder: Path) -> dict[int, float]:
    """step → learning rate, from the run's metrics.csv."""
    (metrics,) = folder.rglob("metrics.csv")
    return {
        int(row["step"]): float(row["lr"])
        for row in csv.DictReader(metrics.open())
        if row.get("lr")
    }


def test_budget_schedule_warms_up_then_falls_linearly_to_zero_at_the_last_step(
    tmp_path, data_dir, mirror
):
    short_run(
        tmp_path,
        data_dir,
        mirror,
        6,
        "--model.lr_schedule",
        "budget",
        "--model.warmup_steps",
        "5",
        "--trainer.log_every_n_steps",
        "1",
    )
    rates = logged_learning_rates(tmp_path)
    last = max(rates)
    peak = 0.005  # configs/tiny.yaml
    for step, rate in rates.items():
        assert rate == pytest.approx(
            peak * min(1.0, (step + 1) / 5) * (1 - step / (last + 1)), rel=1e-5
        ), step


def test_budget_schedule_spends_a_time_budget(tmp_path, data_dir, mirror):
    short_run(
        tmp_path,
        data_dir,
        mirror,
        1000,  # far more epochs than 4 seconds allow: the time budget rules
        "--model.lr_schedule",
        "budget",
        "--model.warmup_steps",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.max_time",
        "00:00:00:04",
    )
    rates = list(logged_learning_rates(tmp_path).values())
    assert len(rates) > 10
    assert rates == sorted(rates, reverse=True)
    assert rates[0] > 0.5 * 0.005 and rates[-1] < 0.1 * 0.005  # from near the peak to near zero


def test_a_step_budget_that_ends_mid_epoch_validates_its_last_step(tmp_path, data_dir, mirror):
    # the tiny config's epoch is 8 batches: 10 steps end in the middle of the second epoch
    short_run(
        tmp_path,
        data_dir,
        mirror,
        5,
        "--trainer.max_steps",
        "10",
        "--trainer.check_val_every_n_epoch",
        "1",
    )
    (metrics,) = tmp_path.rglob("metrics.csv")
    validated = [int(row["step"]) for row in csv.DictReader(metrics.open()) if row.get("val_bleu")]
    # the end of epoch 0 (8 batches), then the stop (steps count from 0 here)
    assert validated == [7, 9]
    assert (tmp_path / "tiny" / "best.ckpt").is_file()
