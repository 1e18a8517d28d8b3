"""Property-based: any Unicode text goes through tokenizer → translation without a crash,
and the output always has exactly one line per input line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq.core.translate import Translator
from seq2seq.corpora import read_lines

# Characters that break naive text handling, mixed into otherwise arbitrary text.
AWKWARD = [
    "",
    " ",
    "\t",
    "\u00a0",
    "\u3000",  # empty and blank
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\x0b",
    "\x0c",  # control characters
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",  # zero-width
    "\u202e",
    "\u2066",  # bidirectional overrides
    "😀",
    "👍🏽",
    "👩‍👩‍👧",
    "🇫🇷",  # emoji, modifiers, ZWJ sequences, flags
    "日本語のテキスト",
    "Ελληνικά",
    "עברית",
    "हिन्दी",
    "𓂀𓃾",
    "ᚠᛇᚻ",  # scripts never seen in training
    "e\u0301",
    "\ufb01",
    "Ａ",  # combining marks and compatibility forms
    "I am very tired.",  # ordinary input between the strange
]
any_character = st.characters(exclude_categories=("Cs",))  # every code point UTF-8 can carry
piece = st.one_of(st.sampled_from(AWKWARD), st.text(any_character, max_size=30))
line = (
    st.lists(piece, max_size=4)
    .map("".join)
    .map(lambda text: text.replace("\n", " ").replace("\r", " "))
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def translator(tiny_checkpoint) -> Translator:
    return Translator.from_checkpoint(tiny_checkpoint, "cpu")


def assert_one_line_each(inputs: list[str], outputs: list[str]) -> None:
    assert len(outputs) == len(inputs)
    for output in outputs:
        assert isinstance(output, str) and "\n" not in output and "\r" not in output, repr(output)


@FUZZ
@given(lines=st.lists(line, max_size=8))
def test_any_lines_translate_to_exactly_one_line_each(translator, lines):
    assert_one_line_each(lines, translator.translate(lines))


@FUZZ
@given(pieces=st.lists(st.tuples(line, st.sampled_from(["\n", "\r\n"])), max_size=6), last=line)
def test_any_text_file_gives_one_output_line_per_input_line(translator, pieces, last):
    """Files as the CLI reads them: Windows or Unix line endings, with or without a final
    newline."""
    text = "".join(content + ending for content, ending in pieces) + last
    lines = read_lines(Path("fuzz.txt"), text.encode("utf-8"))
    assert len(lines) == text.count("\n") + (1 if last else 0)
    assert_one_line_each(lines, translator.translate(lines, batch_size=3))
