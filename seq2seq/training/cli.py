"""`seq2seq train`: LightningCLI over `TranslationModule` and `TranslationDataModule`.

LightningCLI gives YAML configs with dotted command-line overrides, rejects unknown
keys, prints every default with `--print_config`, and saves the resolved config with
each run. On top of it this adds the run folder (`checkpoints/<run_name>/`) holding
best.ckpt, last.ckpt, optionally the last N validations' weights (`--keep_last`) and
logs/version_N/{metrics.csv,config.yaml}; a CPU time budget;
and resuming from the run's last.ckpt when one exists. Checkpoints are written to a
temporary file and renamed (`AtomicCheckpointIO`), last.ckpt also every N steps and when
`max_time` stops mid-epoch (`LastCheckpoint`), so a kill loses little and never a file.
A config mistake is one `Seq2SeqError` line naming the key and the closest valid one.
Several processes (`--trainer.devices 2`, `--trainer.num_nodes N`) train with DDP: the
data module shares the batches among them itself, so Lightning's sampler is switched off.
"""

from __future__ import annotations

import difflib
import re
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from seq2seq.core.checkpoint import load_checkpoint
from seq2seq.core.translate import native_bf16
from seq2seq.errors import Seq2SeqError
from seq2seq.training.callbacks import AtomicCheckpointIO, LastCheckpoint
from seq2seq.training.data import TranslationDataModule
from seq2seq.training.module import TranslationModule

UNKNOWN_KEY_PATTERNS = (
    re.compile(r"unrecognized arguments: --(?P<key>[\w.]+)"),
    re.compile(r"Group '(?P<group>[\w.]+)' does not accept option '(?P<key>[\w.]+)'"),
)
BAD_VALUE_PATTERN = re.compile(r'Parser key "(?P<key>[\w.]+)":\s*(?P<reason>.*)', re.DOTALL)


class TrainingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="run", help="run folder name under checkpoint_dir"
        )
        parser.add_argument(
            "--checkpoint_dir", type=str, default="checkpoints", help="where run folders go"
        )
        parser.add_argument(
            "--cpu_max_time",
            type=str | None,
            default=None,
            help=(
                "trainer.max_time (DD:HH:MM:SS) applied only when training on CPU; "
                "GPUs train to early stopping"
            ),
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint (default: the run's last.ckpt)",
        )
        parser.add_argument(
            "--keep_last",
            type=int,
            default=0,
            help=(
                "also keep the weights of the last N validations (stepNNNNNN.ckpt) "
                "for `seq2seq average`"
            ),
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_bleu",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                # last.ckpt is LastCheckpoint's: it also saves mid-epoch
                "checkpoint.save_last": False,
                "checkpoint.enable_version_counter": False,
            }
        )
        # TokenBatchSampler shards itself; Lightning could not inject a DistributedSampler into it
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        # checked after each validation, not at epoch ends: a run cut short by max_steps ends
        # mid-epoch, unvalidated
        parser.set_defaults(
            {
                "early_stopping.monitor": "val_bleu",
                "early_stopping.mode": "max",
                "early_stopping.patience": 5,
                "early_stopping.check_on_train_epoch_end": False,
            }
        )
        # after "checkpoint": sees the new best
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.link_arguments(
            ("checkpoint_dir", "run_name"), "checkpoint.dirpath", compute_fn=run_folder
        )
        parser.link_arguments(
            ("checkpoint_dir", "run_name"), "last_checkpoint.dirpath", compute_fn=run_folder
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """jsonargparse's usage screen becomes one line naming the key and the closest valid one."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise config_error(str(error), list(parser.get_defaults().keys())) from None

    def before_instantiate_classes(self) -> None:
        config = self.config
        if config.checkpoint.save_last:
            raise Seq2SeqError(
                "checkpoint.save_last: last.ckpt is written by last_checkpoint (also mid-epoch and "
                "every last_checkpoint.every_n_train_steps steps); Lightning's own would overwrite "
                "it: remove the key"
            )
        if config.trainer.use_distributed_sampler:
            raise Seq2SeqError(
                "trainer.use_distributed_sampler: the data module already gives each process its "
                "own share of the token batches, and Lightning's sampler cannot wrap them: remove "
                "the key"
            )
        folder = run_folder(config.checkpoint_dir, config.run_name)
        config.trainer.default_root_dir = folder
        if config.trainer.logger in (None, True):
            # logs/version_N/: a resumed run adds a version instead of replacing metrics.csv
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=folder, name="logs"),
            )
        config.trainer.plugins = with_atomic_checkpoints(config.trainer.plugins)
        if config.keep_last > 0:
            config.trainer.callbacks = [
                *(config.trainer.callbacks or []),
                keep_last_checkpoints(folder, config.keep_last),
            ]
        on_gpu = torch.cuda.is_available() and config.trainer.accelerator in ("auto", "gpu", "cuda")
        if config.cpu_max_time and config.trainer.max_time is None and not on_gpu:
            config.trainer.max_time = config.cpu_max_time
        if not on_gpu and "bf16" in str(config.trainer.precision) and not native_bf16("cpu"):
            print(f"{NO_BF16_CPU}: training in 32-true instead of bf16-mixed")
            config.trainer.precision = "32-true"


def with_atomic_checkpoints(plugins: object) -> list:
    """The trainer's plugins (none, one or a list) plus `AtomicCheckpointIO`."""
    given = [] if plugins is None else plugins if isinstance(plugins, list) else [plugins]
    return [
        *given,
        Namespace(class_path=f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__name__}"),
    ]


def keep_last_checkpoints(folder: str, count: int) -> Namespace:
    """A second ModelCheckpoint ranking by step: it keeps the newest `count`, weights only."""
    return Namespace(
        class_path="lightning.pytorch.callbacks.ModelCheckpoint",
        init_args=Namespace(
            dirpath=folder,
            filename="step{step:06d}",
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            save_top_k=count,
            save_weights_only=True,
            enable_version_counter=False,
        ),
    )


def config_error(message: str, valid_keys: list[str]) -> Seq2SeqError:
    """One line for a jsonargparse error: the key, what is wrong, and the closest valid key."""
    for pattern in UNKNOWN_KEY_PATTERNS:
        if match := pattern.search(message):
            key = ".".join(filter(None, (match.groupdict().get("group"), match["key"])))
            close = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "no similar key exists"
            return Seq2SeqError(
                f"unknown config key '{key}' ({hint}); list every key with: seq2seq train --config "
                "FILE --print_config"
            )
    if match := BAD_VALUE_PATTERN.search(message):
        reason = " ".join(match["reason"].split())
        return Seq2SeqError(f"bad value for config key '{match['key']}': {reason}")
    return Seq2SeqError(f"bad training arguments: {' '.join(message.split())}")


NO_BF16_CPU = "This CPU has no bf16 instructions (AVX512-BF16 or AMX)"


def run_folder(checkpoint_dir: str, run_name: str) -> str:
    return str(Path(checkpoint_dir) / run_name)


def build_cli(argv: Sequence[str]) -> TrainingCLI:
    """Parse `argv` like the command line into the model, data module and trainer, without
    fitting."""
    for noise in (
        ".*args parameter is intended to run from within Python",  # we pass argv on purpose
        ".*isinstance\\(treespec, LeafSpec\\)",  # Lightning's own deprecation, not ours
        "Checkpoint directory .* exists and is not empty",  # the run folder also holds the logs
    ):
        warnings.filterwarnings("ignore", message=noise)
    return TrainingCLI(
        TranslationModule,
        TranslationDataModule,
        args=list(argv),
        run=False,
        seed_everything_default=1234,
        save_config_kwargs={"overwrite": True},
        # --trainer.max_epoch is a typo, not max_epochs
        parser_kwargs={
            "exit_on_error": False,
            "allow_abbrev": False,
        },
    )


def train(argv: Sequence[str]) -> TrainingCLI:
    """Parse `argv` like the command line, then fit (resuming the run if it has a last.ckpt)."""
    cli = build_cli(argv)
    resume = cli.config.ckpt_path
    last = Path(run_folder(cli.config.checkpoint_dir, cli.config.run_name)) / "last.ckpt"
    if resume is None and last.exists():
        resume = str(last)
        print(f"Resuming from {last}")
    if resume is not None:
        load_checkpoint(resume)  # a clear error for a missing, truncated or foreign file
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    best: ModelCheckpoint = cli.config_init.checkpoint
    if best.best_model_path and cli.trainer.is_global_zero:
        print(
            f"Best checkpoint: {best.best_model_path} ({best.monitor} "
            f"{float(best.best_model_score):.2f})"
        )
    return cli
