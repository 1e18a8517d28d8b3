"""Score translations with sacreBLEU and write reports others can reproduce.

The headline is cased, detokenized BLEU (sacreBLEU's default); lowercased BLEU (what
most Multi30k papers report), chrF and TER stand beside it. Every score carries its
sacreBLEU signature. Splits with several references per sentence are scored against
all of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.bleu import BLEUScore

from seq2seq.atomic import write_lines
from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import PRECISIONS, Translator
from seq2seq.corpora import Example, load_recorded_corpus, read_lines
from seq2seq.errors import Seq2SeqError


@dataclass
class Score:
    """One metric's score and its sacreBLEU signature (what makes it reproducible).

    BLEU's `details` are its n-gram precisions and brevity penalty, as sacreBLEU prints
    them: a length ratio well below 1 says the search stops too early (see `--alpha`, `--beta`).
    """

    name: str
    score: float
    signature: str
    details: str = ""

    def __str__(self) -> str:
        return (
            f"{self.name} = {self.score:.2f}{'  ' + self.details if self.details else ''}  "
            f"({self.signature})"
        )


def score(hypotheses: list[str], references: list[tuple[str, ...]]) -> list[Score]:
    """BLEU, lowercased BLEU, chrF and TER of `hypotheses` against one or more references each."""
    streams = reference_streams(references)
    metrics = {
        "BLEU": BLEU(),
        "BLEU lowercased": BLEU(lowercase=True),
        "chrF": CHRF(),
        "TER": TER(),
    }
    scores = []
    for name, metric in metrics.items():
        result = metric.corpus_score(hypotheses, streams)
        details = bleu_details(result) if isinstance(result, BLEUScore) else ""
        scores.append(Score(name, result.score, str(metric.get_signature()), details))
    return scores


def bleu_details(result: BLEUScore) -> str:
    """`67.1/42.6/29.3/20.0 (BP = 0.920 ratio = 0.923 hyp_len = 11836 ref_len = 12825)`."""
    precisions = "/".join(f"{p:.1f}" for p in result.precisions)
    ratio = result.sys_len / max(result.ref_len, 1)
    return (
        f"{precisions} (BP = {result.bp:.3f} ratio = {ratio:.3f} "
        f"hyp_len = {result.sys_len} ref_len = {result.ref_len})"
    )


def score_files(hypothesis_file: str | Path, reference_files: list[str | Path]) -> list[Score]:
    """Score a file of translations against one or more reference files, line by line."""
    hypotheses = read_lines(Path(hypothesis_file))
    columns = []
    for reference_file in reference_files:
        references = read_lines(Path(reference_file))
        if len(references) != len(hypotheses):
            raise Seq2SeqError(
                f"{reference_file} has {len(references)} lines but {hypothesis_file} has "
                f"{len(hypotheses)}: a reference file needs exactly one line per translation"
            )
        columns.append(references)
    return score(hypotheses, list(zip(*columns)))


def load_split(
    info: dict, split: str | None, mirror: str | None = None
) -> dict[str, list[Example]]:
    """The named split (default: every test split) of the corpus a model was trained on,
    `info` the checkpoint's corpus section (`Translator.corpus`)."""
    corpus, splits = load_recorded_corpus(info, mirror)
    wanted = [split] if split else list(corpus.test_splits)
    unknown = [name for name in wanted if name not in splits]
    if unknown or not wanted:
        raise Seq2SeqError(
            f"corpus {info['corpus']} ({corpus.pair}) has no split "
            f"{', '.join(unknown) or '(no test split)'}; splits: {', '.join(splits)}"
        )
    return {name: splits[name] for name in wanted}


@dataclass
class SplitResult:
    """The scores of one split and where its translations were saved."""

    split: str
    sentences: int
    references_per_sentence: int
    hypotheses_file: str
    seconds: float
    scores: list[Score]


@dataclass
class Report:
    """Everything needed to reproduce an evaluation: model, search, corpus, software, scores."""

    checkpoint: str
    search: dict
    corpus: dict
    results: list[SplitResult]
    files: list[str] = field(default_factory=list)  # where this report is saved (.md, .json)
    software: dict = field(
        default_factory=lambda: {
            name: version(name) for name in ("torch", "sacrebleu", "sentencepiece")
        }
    )
    date: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def markdown(self) -> str:
        corpus = self.corpus
        lines = [
            f"# Evaluation of `{self.checkpoint}`",
            "",
            f"Corpus {corpus.get('corpus')} "
            f"{corpus.get('source_lang')}→{corpus.get('target_lang')}; search "
            f"{self.search['name']} (beam size {self.search['beam_size']}, alpha "
            f"{self.search['alpha']}, beta {self.search['beta']}, max length ratio "
            f"{self.search['max_length_ratio']}, {self.search['precision']}); {self.date}; "
            + ", ".join(f"{name} {v}" for name, v in self.software.items()),
            "",
            "| split | sentences | refs | "
            + " | ".join(s.name for s in self.results[0].scores)
            + " | sent/s |",
            "|---|---|---|" + "---|" * (len(self.results[0].scores) + 1),
        ]
        for result in self.results:
            scores = " | ".join(f"{s.score:.2f}" for s in result.scores)
            speed = result.sentences / max(result.seconds, 1e-9)
            lines.append(
                f"| {result.split} | {result.sentences} | {result.references_per_sentence} | "
                f"{scores} | {speed:.0f} |"
            )
        lines += ["", "sacreBLEU signatures:", ""]
        lines += [f"- {s.name}: `{s.signature}`" for s in self.results[0].scores]
        lines += ["", "Translations: " + ", ".join(f"`{r.hypotheses_file}`" for r in self.results)]
        return "\n".join(lines)

    def save(self, stem: Path) -> None:
        """Write `<stem>.md` and `<stem>.json` (atomically)."""
        self.files = [
            str(stem.with_name(stem.name + ".md")),
            str(stem.with_name(stem.name + ".json")),
        ]
        write_lines(self.files[0], [self.markdown()])
        write_lines(self.files[1], [json.dumps(asdict(self), indent=2, ensure_ascii=False)])


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str | None = None,
    mirror: str | None = None,
    batch_size: int | None = None,
    search: SearchSettings = SearchSettings(),
    precision: str = PRECISIONS[0],
    workers: int | None = None,
    shortlist: bool = False,
) -> Report:
    """Translate split(s) of the model's corpus and score them.

    Beside the checkpoint go the translations (`<stem>.<search>.<split>.<lang>`) and the
    report (`<stem>.<search>.report.md` and `.json`); the search name (`greedy`, `beam5`),
    a precision other than the default (`auto`) and `.shortlist` keep runs with different settings
    apart.
    """
    checkpoint = Path(checkpoint)
    translator = Translator.from_checkpoint(
        checkpoint, search=search, precision=precision, workers=workers, shortlist=shortlist
    )
    prefix = (
        f"{checkpoint.stem}.{search.describe()}"
        + ("" if precision == PRECISIONS[0] else f".{precision}")
        + (".shortlist" if shortlist else "")
    )
    results = []
    for name, examples in load_split(translator.corpus, split, mirror).items():
        start = time.perf_counter()
        hypotheses = translator.translate([e.source for e in examples], batch_size)
        seconds = time.perf_counter() - start
        hypotheses_file = checkpoint.with_name(
            f"{prefix}.{name}.{translator.corpus['target_lang']}"
        )
        write_lines(hypotheses_file, hypotheses)
        references = [e.references for e in examples]
        results.append(
            SplitResult(
                name,
                len(examples),
                max(map(len, references)),
                str(hypotheses_file),
                seconds,
                score(hypotheses, references),
            )
        )
    report = Report(
        str(checkpoint),
        {
            "name": search.describe(),
            **asdict(search),
            "precision": translator.precision,
            "shortlist": translator.shortlist is not None,
        },
        translator.corpus,
        results,
    )
    report.save(checkpoint.with_name(f"{prefix}.report"))
    return report


def reference_streams(references: list[tuple[str, ...]]) -> list[list[str | None]]:
    """sacreBLEU's layout: one stream per reference rank, None where a sentence has fewer."""
    width = max((len(r) for r in references), default=1)
    return [[r[k] if k < len(r) else None for r in references] for k in range(width)]
