"""What one server accepts and how it batches: each default once, with its reason.

Each field is a `seq2seq serve` option of the same name (`--max-lines`), whose help is the
field's `help` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seq2seq.errors import Seq2SeqError


def limit(default: int | float | bool, help: str):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeLimits:
    """Limits and batching of `seq2seq serve`."""

    max_lines: int = limit(
        100,
        "lines in one request: a client with more sends several requests, so no request holds the "
        "worker long",
    )
    max_line_characters: int = limit(
        2000,
        "characters in one line: the model reads 127 pieces, so a longer line would mostly be cut",
    )
    max_body_bytes: int = limit(
        1 << 20, "bytes in a request body: 1 MiB holds max-lines lines of max-line-characters"
    )
    max_beam_size: int = limit(
        16, "the widest beam a request may ask for: each beam costs a decoder row"
    )
    max_queue_lines: int = limit(
        2000, "lines waiting for the worker before new requests get 503: a few seconds of work"
    )
    timeout_seconds: float = limit(
        30.0, "a request not answered by then gets 504 (its lines are skipped if not yet reached)"
    )
    batch_tokens: int = limit(
        4096,
        "source tokens gathered into one batch; a larger request is translated alone, never split",
    )
    batch_wait_ms: float = limit(
        5.0,
        "how long the worker gathers companions of a request under load: a few ms buy larger "
        "batches",
    )
    batching: bool = limit(True, "False: one request at a time (the load benchmark's baseline)")
    threads: int = limit(
        0,
        "torch threads translating (0: one per core but one, which is left to the event loop's "
        "HTTP and JSON work: on a small CPU under load the two otherwise stall each other)",
    )

    def translation_threads(self) -> int:
        """The torch threads to translate with: `threads`, or for 0 one per core but one."""
        return self.threads or max(1, torch.get_num_threads() - 1)

    def __post_init__(self) -> None:
        for name in (
            "max_lines",
            "max_line_characters",
            "max_body_bytes",
            "max_beam_size",
            "max_queue_lines",
            "batch_tokens",
        ):
            if getattr(self, name) < 1:
                raise Seq2SeqError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.max_queue_lines < self.max_lines:
            raise Seq2SeqError(
                f"--max-queue-lines {self.max_queue_lines} is below --max-lines {self.max_lines}: "
                "a full request could never be queued"
            )
        if self.timeout_seconds <= 0:
            raise Seq2SeqError(f"--timeout-seconds must be positive, got {self.timeout_seconds}")
        if self.batch_wait_ms < 0:
            raise Seq2SeqError(f"--batch-wait-ms must be 0 or more, got {self.batch_wait_ms}")
        if self.threads < 0:
            raise Seq2SeqError(f"--threads must be 0 (automatic) or more, got {self.threads}")
