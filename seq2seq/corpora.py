"""Parallel corpora: fetch, verify, read, clean and split into train / valid / test.

A corpus is described by a small class that knows its files (URL + SHA-256) and how to
turn them into splits of `Example`s. Every example carries all its references, so BLEU
on valid and test is multi-reference wherever the corpus offers several translations.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import unicodedata
import urllib.error
import urllib.request
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from seq2seq.atomic import atomic_write
from seq2seq.errors import Seq2SeqError

MIRROR_VARIABLE = "SEQ2SEQ_DATA_MIRROR"


@dataclass(frozen=True)
class Example:
    """One source sentence with every reference translation the corpus has for it."""

    source: str
    references: tuple[str, ...]


Splits = dict[str, list[Example]]


# --------------------------------------------------------------------------- fetching


@dataclass(frozen=True)
class RemoteFile:
    """A corpus file: `name` is its path under the data folder and under a mirror."""

    name: str
    url: str
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_mirror(mirror: str | os.PathLike | None) -> Path | None:
    """The mirror folder: the explicit argument, else $SEQ2SEQ_DATA_MIRROR, else none."""
    chosen = mirror or os.environ.get(MIRROR_VARIABLE)
    return Path(chosen).expanduser().resolve() if chosen else None


def fetch(remote: RemoteFile, data_dir: Path, mirror: str | os.PathLike | None = None) -> Path:
    """Return the local path of `remote`, downloading or copying it first if needed.

    The file is written to a temporary name beside its target, verified, then renamed,
    so an interrupted fetch or a bad checksum never leaves a file under the final name.
    """
    target = Path(data_dir) / remote.name
    if target.exists() and sha256_of(target) == remote.sha256:
        return target
    mirror_dir = resolve_mirror(mirror)
    origin = remote.url if mirror_dir is None else str(mirror_dir / remote.name)
    with atomic_write(target) as out:
        hashed = HashingWriter(out)
        if mirror_dir is None:
            _download(remote, hashed)
        else:
            _copy_from_mirror(mirror_dir / remote.name, hashed)
        actual = hashed.digest.hexdigest()
        if actual != remote.sha256:
            raise Seq2SeqError(
                f"checksum mismatch for {remote.name} from {origin}: expected SHA-256 "
                f"{remote.sha256}, got {actual}; the file was discarded. Replace the source "
                f"file with the published one and run again."
            )
    return target


class HashingWriter:
    """Passes writes on to `out` and hashes them, so a download is verified as it streams."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def _copy_from_mirror(source: Path, out: HashingWriter) -> None:
    if not source.is_file():
        raise Seq2SeqError(
            f"mirror file {source} does not exist: the mirror folder must hold the corpus "
            "files under their names (the `RemoteFile` names of the corpus), or unset "
            f"{MIRROR_VARIABLE} to download."
        )
    with open(source, "rb") as handle:
        shutil.copyfileobj(handle, out)


def _download(remote: RemoteFile, out: HashingWriter) -> None:
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Seq2SeqError(
            f"could not download {remote.url} ({reason}). If this machine is offline, set "
            f"{MIRROR_VARIABLE} (or --mirror) to a folder that holds {remote.name}."
        ) from None


# --------------------------------------------------------------------------- reading


def read_lines(path: Path, data: bytes | None = None) -> list[str]:
    """Lines of a UTF-8 text file (gzip allowed), without line endings (\\n or \\r\\n).

    Invalid UTF-8 is an error naming the file and line, never silently replaced.
    """
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise Seq2SeqError(f"cannot read {path}: {error.strerror}") from None
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise Seq2SeqError(
            f"{path}, line {line}: invalid UTF-8 (byte {data[error.start]:#04x}); "
            f"the file must be UTF-8 text, convert it (e.g. with iconv) and retry."
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_archive_member(path: Path, member: str) -> bytes:
    """One member of a zip archive, read into memory (nothing is extracted to disk).

    An archive holding any member whose path would leave its folder (absolute, `..`,
    a drive letter) is refused whole: such an archive was crafted, not published.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if escapes_folder(name):
                    raise Seq2SeqError(
                        f"{path} holds a member whose path leaves its folder ({name}); refusing "
                        "the archive: delete it and fetch the published one again"
                    )
            if member not in archive.namelist():
                raise Seq2SeqError(
                    f"{path} has no {member}: delete it and fetch the published archive again"
                )
            return archive.read(member)
    except (zipfile.BadZipFile, OSError) as error:
        raise Seq2SeqError(
            f"{path} is not a readable zip archive ({error}): delete it and fetch the published "
            "one again"
        ) from None


def escapes_folder(name: str) -> bool:
    """Whether an archive member name, extracted, would land outside the extraction folder."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or (bool(parts) and ":" in parts[0])


def normalize(text: str) -> str:
    """NFC form with surrounding whitespace removed: one spelling per sentence."""
    return unicodedata.normalize("NFC", text).strip()


def group_by_source(pairs: list[tuple[str, str]]) -> list[Example]:
    """Merge pairs sharing a source into one example, keeping first-seen order."""
    grouped: dict[str, list[str]] = {}
    for source, target in pairs:
        references = grouped.setdefault(source, [])
        if target not in references:
            references.append(target)
    return [Example(source, tuple(references)) for source, references in grouped.items()]


def clean_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Normalize, drop pairs with an empty side and exact duplicates (order kept)."""
    seen: set[tuple[str, str]] = set()
    cleaned = []
    for source, target in pairs:
        pair = (normalize(source), normalize(target))
        if pair[0] and pair[1] and pair not in seen:
            seen.add(pair)
            cleaned.append(pair)
    return cleaned


def stable_rank(text: str) -> int:
    """A hash that is the same on every machine and Python run (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# --------------------------------------------------------------------------- corpora


class Corpus(ABC):
    """A parallel corpus for one translation direction."""

    train_split = "train"
    valid_split = "valid"
    test_splits: tuple[str, ...] = ("test",)

    def __init__(self, source_lang: str, target_lang: str) -> None:
        self.source_lang = source_lang
        self.target_lang = target_lang

    @property
    def pair(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"

    @abstractmethod
    def remote_files(self) -> list[RemoteFile]:
        """Files to fetch before `load` (empty for local corpora)."""

    @abstractmethod
    def load(self, data_dir: Path) -> Splits:
        """Read the fetched files into every split."""

    def load_for_training(self, data_dir: Path, max_train_examples: int | None = None) -> Splits:
        """Every split, the training split cut to its first `max_train_examples` (None: all of
        it): what a run so cut trains on, and what its checkpoint's readers must see again."""
        splits = self.load(data_dir)
        splits[self.train_split] = splits[self.train_split][:max_train_examples]
        return splits

    def prepare(self, data_dir: Path, mirror: str | os.PathLike | None = None) -> None:
        for remote in self.remote_files():
            fetch(remote, data_dir, mirror)


class Tatoeba(Corpus):
    """English-French Tatoeba pairs (manythings.org), split by a stable hash of the source.

    Several French translations often share one English sentence (and vice versa), so
    pairs are grouped by source sentence and whole groups go to one split: no source
    sentence is in two splits, and valid/test keep every reference.
    """

    archive = RemoteFile(
        "tatoeba/fra-eng.zip",
        "https://raw.githubusercontent.com/genimind/seq2seq/"
        "4f3f8eb0adde54fcc8b89394336b002e7961244c/fra-eng.zip",
        "16c4f7d0df9e7c5e6c54cdb0447f3f4a18a55052ff5e2e0b27dd4a06c0e49d04",
    )
    pairs_supported = ("en-fr", "fr-en")

    def __init__(
        self,
        source_lang: str,
        target_lang: str,
        test_sources: int = 2000,
        valid_sources: int = 1000,
    ) -> None:
        super().__init__(source_lang, target_lang)
        if self.pair not in self.pairs_supported:
            raise Seq2SeqError(
                f"corpus tatoeba has no pair {self.pair}; choose one of "
                f"{', '.join(self.pairs_supported)}"
            )
        self.test_sources = test_sources
        self.valid_sources = valid_sources

    def remote_files(self) -> list[RemoteFile]:
        return [self.archive]

    def load(self, data_dir: Path) -> Splits:
        path = Path(data_dir) / self.archive.name
        lines = read_lines(Path(f"{path}!fra.txt"), read_archive_member(path, "fra.txt"))
        pairs = []
        for number, line in enumerate(lines, start=1):
            columns = line.split("\t")
            if len(columns) < 2:
                raise Seq2SeqError(f"{path}!fra.txt, line {number}: expected 'English<TAB>French'")
            english, french = columns[0], columns[1]
            pairs.append((english, french) if self.source_lang == "en" else (french, english))
        examples = group_by_source(clean_pairs(pairs))
        ranked = sorted(examples, key=lambda example: stable_rank(example.source))
        test = ranked[: self.test_sources]
        valid = ranked[self.test_sources : self.test_sources + self.valid_sources]
        held_out = {example.source for example in test + valid}
        train = [example for example in examples if example.source not in held_out]  # file order
        return {"test": test, "valid": valid, "train": train}


class Multi30k(Corpus):
    """Multi30k task 1 (image captions) with its official splits, one reference each."""

    base_url = (
        "https://raw.githubusercontent.com/multi30k/dataset/"
        "a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/"
    )
    checksums = {
        "test_2016_flickr.cs": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
        "test_2016_flickr.de": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.en": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
        "test_2016_flickr.fr": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
        "test_2017_flickr.de": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
        "test_2017_flickr.en": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
        "test_2017_flickr.fr": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
        "train.cs": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
        "train.de": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.en": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "train.fr": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
        "val.cs": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
        "val.de": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.en": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "val.fr": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
    }
    valid_split = "val"
    all_splits = ("train", "val", "test_2016_flickr", "test_2017_flickr")

    def __init__(self, source_lang: str, target_lang: str) -> None:
        super().__init__(source_lang, target_lang)
        languages = {key.split(".")[1] for key in self.checksums}
        if source_lang == target_lang or not {source_lang, target_lang} <= languages:
            raise Seq2SeqError(
                f"corpus multi30k has no pair {self.pair}; languages are "
                f"{', '.join(sorted(languages))}"
            )
        self.splits = [
            s for s in self.all_splits if self._has(s, source_lang) and self._has(s, target_lang)
        ]
        self.test_splits = tuple(s for s in self.splits if s.startswith("test"))

    def _has(self, split: str, lang: str) -> bool:
        return f"{split}.{lang}" in self.checksums

    def _remote(self, split: str, lang: str) -> RemoteFile:
        key = f"{split}.{lang}"
        return RemoteFile(f"multi30k/{key}.gz", f"{self.base_url}{key}.gz", self.checksums[key])

    def remote_files(self) -> list[RemoteFile]:
        return [
            self._remote(s, lang)
            for s in self.splits
            for lang in (self.source_lang, self.target_lang)
        ]

    def load(self, data_dir: Path) -> Splits:
        splits = {}
        for split in self.splits:
            source_path = Path(data_dir) / self._remote(split, self.source_lang).name
            target_path = Path(data_dir) / self._remote(split, self.target_lang).name
            pairs = read_parallel(source_path, target_path)
            splits[split] = [Example(normalize(s), (normalize(t),)) for s, t in pairs]
        return splits


class Custom(Corpus):
    """Your own data: per split, two aligned text files or one TSV file.

    A TSV line is `source<TAB>reference[<TAB>more references...]`.
    """

    def __init__(self, source_lang: str, target_lang: str, files: dict[str, list[str]]) -> None:
        super().__init__(source_lang, target_lang)
        missing = {"train", "valid"} - set(files)
        if missing:
            raise Seq2SeqError(
                "corpus custom needs files for the splits train and valid (missing: "
                f"{', '.join(sorted(missing))}); "
                "give data.custom_files as {split: [source_file, target_file]} or "
                "{split: [file.tsv]}"
            )
        self.files = files
        self.test_splits = tuple(split for split in files if split not in ("train", "valid"))

    def remote_files(self) -> list[RemoteFile]:
        return []

    def load(self, data_dir: Path) -> Splits:
        splits = {}
        for split, paths in self.files.items():
            if len(paths) == 2:
                examples = [
                    Example(normalize(s), (normalize(t),))
                    for s, t in read_parallel(Path(paths[0]), Path(paths[1]))
                ]
            elif len(paths) == 1:
                examples = read_tsv(Path(paths[0]))
            else:
                raise Seq2SeqError(
                    f"custom split {split!r}: give one TSV file or two aligned files, got "
                    f"{len(paths)}"
                )
            splits[split] = [e for e in examples if e.source and all(e.references)]
        return splits


def read_parallel(source_path: Path, target_path: Path) -> list[tuple[str, str]]:
    """Aligned lines of two files; different line counts are an error, never truncated."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise Seq2SeqError(
            f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}: "
            f"parallel files must have one line per sentence pair"
        )
    return list(zip(sources, targets))


def read_tsv(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) < 2:
            raise Seq2SeqError(
                f"{path}, line {number}: expected 'source<TAB>reference', found no tab"
            )
        examples.append(Example(normalize(columns[0]), tuple(normalize(c) for c in columns[1:])))
    return examples


CORPORA = {"tatoeba": Tatoeba, "multi30k": Multi30k, "custom": Custom}


def open_corpus(
    name: str, source_lang: str, target_lang: str, custom_files: dict[str, list[str]] | None = None
) -> Corpus:
    """The corpus called `name` for the direction source_lang → target_lang."""
    if name not in CORPORA:
        raise Seq2SeqError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    if name == "custom":
        return Custom(source_lang, target_lang, custom_files or {})
    return CORPORA[name](source_lang, target_lang)


def load_recorded_corpus(
    info: dict, mirror: str | os.PathLike | None = None
) -> tuple[Corpus, dict[str, list[Example]]]:
    """The corpus a checkpoint records (its `corpus` section: name, languages, files,
    data folder), fetched there if need be, and its splits; the training split only as far
    as the run read it (`max_train_examples`, recorded since 2026-12-07; older: all of it)."""
    corpus = open_corpus(
        info["corpus"], info["source_lang"], info["target_lang"], info.get("custom_files")
    )
    data_dir = Path(info["data_dir"])
    corpus.prepare(data_dir, mirror)
    return corpus, corpus.load_for_training(data_dir, info.get("max_train_examples"))


def training_pairs(examples: list[Example]) -> list[tuple[str, str]]:
    """One (source, reference) pair per reference: what the model is trained on."""
    return [(example.source, reference) for example in examples for reference in example.references]
