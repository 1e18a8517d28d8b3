"""`python -m seq2seq` is the same as the `seq2seq` command."""

from seq2seq.cli import run

run()
