"""The models a server holds: one per language pair, each with its translator and batcher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError
from seq2seq.serving.batcher import MicroBatcher
from seq2seq.serving.limits import ServeLimits

# LibreTranslate's /languages gives a name beside each code; the corpora's codes and a few more
LANGUAGE_NAMES = {
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
}


@dataclass
class ServedModel:
    """A checkpoint being served."""

    id: int
    name: str
    translator: Translator
    batcher: MicroBatcher

    @property
    def source_language(self) -> str:
        return self.translator.corpus.get("source_lang", "?")

    @property
    def target_language(self) -> str:
        return self.translator.corpus.get("target_lang", "?")

    def info(self) -> dict:
        """The `ModelInfo` schema."""
        search = self.translator.search
        return {
            "name": self.name,
            "id": self.id,
            "source_language": self.source_language,
            "target_language": self.target_language,
            "corpus": self.translator.corpus.get("corpus", "?"),
            "precision": self.translator.precision,
            "search": {
                "beam_size": search.beam_size,
                "n_best": search.nbest,
                "alpha": search.alpha,
                "beta": search.beta,
            },
        }


def load_models(
    checkpoints: Sequence[str | Path],
    search: SearchSettings,
    precision: str,
    limits: ServeLimits,
    device: str | None = None,
    workers: int | None = None,
    shortlist: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> list[ServedModel]:
    """Load every checkpoint once; refuse two models for one language pair or one name.

    A model is named by its run folder (`checkpoints/NAME/best.ckpt`).
    """
    if not checkpoints:
        raise Seq2SeqError(
            "serve needs --checkpoint CKPT (repeat it to serve one model per language pair)"
        )
    if search.beam_size > limits.max_beam_size:
        raise Seq2SeqError(
            f"--beam-size {search.beam_size} is above --max-beam-size {limits.max_beam_size}"
        )
    models: list[ServedModel] = []
    for index, path in enumerate(checkpoints):
        translator = Translator.from_checkpoint(path, device, search, precision, workers, shortlist)
        model = ServedModel(
            index,
            Path(path).resolve().parent.name,
            translator,
            MicroBatcher(translator, limits, on_batch),
        )
        for other in models:
            clash = (
                f"the language pair {model.source_language}→{model.target_language}"
                if (other.source_language, other.target_language)
                == (model.source_language, model.target_language)
                else f"the name {model.name!r} (the run folder)"
                if other.name == model.name
                else None
            )
            if clash:
                for served in (*models, model):
                    served.batcher.close()
                raise Seq2SeqError(
                    f"checkpoints {checkpoints[other.id]} and {path} share {clash}: serve one "
                    "model for each"
                )
        models.append(model)
    return models


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)
