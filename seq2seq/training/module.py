"""The LightningModule: optimise the network, validate with loss and BLEU, checkpoint.

The network itself (`model.Seq2Seq`) has no Lightning import; this module only wraps it.
It is built in `setup`, once the data module has trained the tokenizers and so knows the
vocabulary sizes. Every checkpoint carries what translation needs: the network settings,
both SentencePiece models and a description of the corpus (`checkpoint["seq2seq"]`, whose
format seq2seq.core.checkpoint owns).
"""

from __future__ import annotations

import math
import random
import time
from typing import Literal, TypeVar

import lightning as L
import sacrebleu
import torch
from lightning.pytorch.callbacks import Timer

from seq2seq.core.checkpoint import translation_section
from seq2seq.core.evaluate import reference_streams
from seq2seq.core.model import ModelConfig, Seq2Seq
from seq2seq.core.search import greedy_search
from seq2seq.core.tokenizer import PAD_ID
from seq2seq.training.data import Batch, TranslationDataModule
from seq2seq.training.loss import smoothed_cross_entropy

T = TypeVar("T")


class TranslationModule(L.LightningModule):
    """Trains a `Seq2Seq` network.

    Args:
        network: sizes and switches of the network (see `ModelConfig`).
        learning_rate: Adam's peak learning rate.
        warmup_steps: linear warm-up from 0 to `learning_rate`.
        lr_schedule: after the warm-up, `plateau` multiplies the learning rate by `lr_decay`
            when validation BLEU stops improving; `budget` lowers it linearly to zero over the
            training budget (`trainer.max_time`, or the steps `max_epochs`/`max_steps` allow,
            whichever ends first). A fixed-time run ends before the plateau rule acts much;
            decaying to the budget's end trains it further (Li et al., 2020, "Budgeted Training").
        lr_decay: factor applied to the learning rate when validation BLEU stops improving.
        lr_patience: validations without BLEU improvement before the decay.
        label_smoothing: of the cross-entropy loss (padding is ignored).
        teacher_forcing: probability of feeding the reference token (1.0: always).
    """

    def __init__(
        self,
        network: ModelConfig = ModelConfig(),
        learning_rate: float = 1e-3,
        warmup_steps: int = 500,
        lr_schedule: Literal["plateau", "budget"] = "plateau",
        lr_decay: float = 0.5,
        lr_patience: int = 2,
        label_smoothing: float = 0.1,
        teacher_forcing: float = 1.0,
    ) -> None:
        super().__init__()
        self.network_config = network
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.lr_decay = lr_decay
        self.lr_patience = lr_patience
        self.label_smoothing = label_smoothing
        self.teacher_forcing = teacher_forcing
        self.net: Seq2Seq | None = None
        self._hypotheses: dict[int, list[int]] = {}
        self._last_batch_end: float | None = None
        self._tokens_per_second = 0.0

    # ------------------------------------------------------------------ building

    @property
    def data(self) -> TranslationDataModule:
        return self.trainer.datamodule

    def setup(self, stage: str) -> None:
        if self.net is None:
            self.net = Seq2Seq(
                self.data.source_tokenizer.vocab_size,
                self.data.target_tokenizer.vocab_size,
                self.network_config,
            )

    def configure_optimizers(self):
        # The fused kernel makes one pass over all parameters instead of one per tensor. Not
        # with fp16's gradient scaler: it would unscale the gradients only after clipping.
        fused = self.device.type in ("cpu", "cuda") and self.trainer.precision != "16-mixed"
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate, fused=fused)

        def warmup(step: int) -> float:
            return min(1.0, (step + 1) / max(1, self.warmup_steps))

        if self.lr_schedule == "budget":
            budget = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup(step) * (1.0 - self.budget_spent())
            )
            return [optimizer], [{"scheduler": budget, "interval": "step"}]
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.lr_decay, patience=self.lr_patience
        )
        return [optimizer], [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, warmup), "interval": "step"},
            {"scheduler": plateau, "interval": "epoch", "monitor": "val_bleu", "strict": False},
        ]

    def budget_spent(self) -> float:
        """How far training is through its budget, 0 to 1: through `max_time` (its Timer
        counts validation and survives a resume) or through the steps the epoch and step
        limits allow, whichever is further along."""
        spent = [0.0]
        if math.isfinite(self.trainer.estimated_stepping_batches):
            spent.append(self.trainer.global_step / self.trainer.estimated_stepping_batches)
        timer = next(
            (callback for callback in self.trainer.callbacks if isinstance(callback, Timer)), None
        )
        if timer is not None and timer.time_remaining() is not None:
            elapsed = timer.time_elapsed()
            spent.append(elapsed / max(elapsed + timer.time_remaining(), 1e-9))
        return min(1.0, max(spent))

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip fused-Adam gradients too: Lightning's mixed-precision plugin refuses to, for
        fp16's scaler, which `configure_optimizers` never pairs with the fused kernel."""
        if not (gradient_clip_val and optimizer.defaults.get("fused")):
            return super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.net.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), gradient_clip_val)

    # ------------------------------------------------------------------ steps

    def loss(self, batch: Batch, teacher_forcing: float = 1.0) -> torch.Tensor:
        real = batch.target_out != PAD_ID  # (B, T)
        # (N, V)
        logits = self.net(
            batch.source, batch.source_lengths, batch.target_in, teacher_forcing, positions=real
        )
        return smoothed_cross_entropy(logits, batch.target_out[real], self.label_smoothing)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, self.teacher_forcing)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}: lower the "
                "learning_rate or check the data; no checkpoint was written for this step"
            )
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.source.size(0))
        self.log("tok/s", self._tokens_per_second, prog_bar=True, batch_size=batch.source.size(0))
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=batch.source.size(0))
        return loss

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        """Target tokens per second, smoothed over recent batches, for the progress bar.

        At `max_steps` it asks to stop: Lightning then validates the last steps, as it does
        when `max_time` stops a run mid-epoch, so they can become best.ckpt.
        """
        now = time.perf_counter()
        if self._last_batch_end is not None:
            rate = int((batch.target_out != PAD_ID).sum()) / max(now - self._last_batch_end, 1e-9)
            self._tokens_per_second = (
                rate if self._tokens_per_second == 0 else 0.9 * self._tokens_per_second + 0.1 * rate
            )
        self._last_batch_end = now
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # sync_dist: under DDP, the sentence-weighted mean over every process's batches
        self.log(
            "val_loss",
            self.loss(batch),
            prog_bar=True,
            batch_size=batch.source.size(0),
            sync_dist=True,
        )
        hypotheses = greedy_search(self.net, batch.source, batch.source_lengths)
        for index, hypothesis in zip(batch.index.tolist(), hypotheses):
            self._hypotheses[index] = hypothesis.tokens

    def on_validation_epoch_end(self) -> None:
        """BLEU over the union of every process's hypotheses: each sentence once, on every
        process."""
        hypotheses = {
            index: tokens
            for part in gather_objects(self._hypotheses)
            for index, tokens in part.items()
        }
        self._hypotheses = {}
        examples = self.data.splits[self.data.corpus.valid_split]
        indices = sorted(hypotheses)
        texts = self.data.target_tokenizer.decode([hypotheses[i] for i in indices])
        bleu = corpus_bleu(texts, [examples[i].references for i in indices]).score
        # the same on every process already; sync_dist only averages equal values (and tells
        # Lightning so)
        self.log("val_bleu", bleu, prog_bar=True, sync_dist=True)
        self.log("val_sentences", float(len(indices)), sync_dist=True)

    # ------------------------------------------------------------------ checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to save broken weights; store what translation needs and the RNG states."""
        assert_finite(checkpoint["state_dict"], self.global_step)
        checkpoint["rng"] = rng_states()
        # under DDP each process draws its own dropout
        per_process = gather_objects(checkpoint["rng"])
        if len(per_process) > 1:
            checkpoint["rng_per_process"] = per_process
        checkpoint["seq2seq"] = translation_section(
            self.network_config,
            self.data.source_tokenizer,
            self.data.target_tokenizer,
            self.data.checkpoint_record(),
            self.data.shortlist(),
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run continues the random streams (dropout, teacher forcing) of the saved
        one."""
        per_process = checkpoint.get("rng_per_process", [])
        if self.global_rank < len(per_process):
            set_rng_states(per_process[self.global_rank])
        elif "rng" in checkpoint:
            set_rng_states(checkpoint["rng"])


def gather_objects(value: T) -> list[T]:
    """`value` from every process, in rank order (a list of one outside DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def assert_finite(state_dict: dict[str, torch.Tensor], step: int) -> None:
    """Raise before a checkpoint with NaN or infinite weights overwrites a good one."""
    broken = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:
        raise FloatingPointError(
            f"weights became NaN or infinite at step {step} ({', '.join(broken[:3])}); the "
            "checkpoint was not written: lower the learning_rate or check the data, then resume "
            "from the run's last.ckpt"
        )


def rng_states() -> dict:
    """Every random stream training draws from, as tensors and plain data (loadable with
    weights_only)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def corpus_bleu(
    hypotheses: list[str], references: list[tuple[str, ...]]
) -> sacrebleu.metrics.bleu.BLEUScore:
    """Detokenized sacreBLEU with any number of references per sentence."""
    return sacrebleu.corpus_bleu(hypotheses, reference_streams(references))
