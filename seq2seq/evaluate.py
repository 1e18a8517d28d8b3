"""Score translations with sacreBLEU (detokenized, multi-reference where the split has it)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.corpora import Example, open_corpus
from seq2seq.errors import Seq2SeqError
from seq2seq.training import reference_streams
from seq2seq.translate import Translator


@dataclass
class Score:
    """One metric's score and its sacreBLEU signature (what makes it reproducible)."""

    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f}  ({self.signature})"


def score(hypotheses: list[str], references: list[tuple[str, ...]]) -> list[Score]:
    """BLEU and chrF of `hypotheses` against one or more references per sentence."""
    streams = reference_streams(references)
    results = []
    for metric in (BLEU(), CHRF()):
        value = metric.corpus_score(hypotheses, streams)
        results.append(Score(metric.__class__.__name__.replace("CHRF", "chrF"), value.score, str(metric.get_signature())))
    return results


def load_split(translator: Translator, split: str | None, mirror: str | None = None) -> dict[str, list[Example]]:
    """The named split (default: every test split) of the corpus the model was trained on."""
    info = translator.corpus
    corpus = open_corpus(info["corpus"], info["source_lang"], info["target_lang"], info.get("custom_files"))
    data_dir = Path(info["data_dir"])
    corpus.prepare(data_dir, mirror)
    splits = corpus.load(data_dir)
    wanted = [split] if split else list(corpus.test_splits)
    unknown = [name for name in wanted if name not in splits]
    if unknown or not wanted:
        raise Seq2SeqError(
            f"corpus {info['corpus']} ({corpus.pair}) has no split {', '.join(unknown) or '(no test split)'}; "
            f"splits: {', '.join(splits)}"
        )
    return {name: splits[name] for name in wanted}


def write_lines(path: Path, lines: list[str]) -> None:
    """Write atomically: a temporary file renamed into place, never a half-written file."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str | None = None,
    mirror: str | None = None,
    batch_size: int = 64,
    beam_size: int = 1,
    alpha: float = 0.6,
) -> dict[str, list[Score]]:
    """Translate split(s) of the model's corpus, save the hypotheses beside the checkpoint, score them."""
    translator = Translator.from_checkpoint(checkpoint, beam_size=beam_size, alpha=alpha)
    results = {}
    for name, examples in load_split(translator, split, mirror).items():
        hypotheses = translator.translate([e.source for e in examples], batch_size)
        target = translator.corpus["target_lang"]
        write_lines(Path(checkpoint).with_name(f"{Path(checkpoint).stem}.{name}.{target}"), hypotheses)
        results[name] = score(hypotheses, [e.references for e in examples])
    return results
