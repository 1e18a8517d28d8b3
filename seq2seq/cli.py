"""The `seq2seq` command: thin wrappers that parse, call library functions and print.

    seq2seq train --config configs/tatoeba-en-fr.yaml [--model.learning_rate 5e-4 ...]
    seq2seq translate --checkpoint CKPT [--input F] [--output F]
    seq2seq evaluate --checkpoint CKPT [--split NAME]

Errors a user can cause become one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from seq2seq.errors import Seq2SeqError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"]:
            from seq2seq.train_cli import train

            train(argv[1:])
            return 0
        args = build_parser().parse_args(argv)
        args.run(args)
        return 0
    except Seq2SeqError as error:
        print(f"seq2seq: error: {error}", file=sys.stderr)
        return 1
    except FloatingPointError as error:
        print(f"seq2seq: training stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2seq", description="GRU + attention neural machine translation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("train", help="train a model (LightningCLI: seq2seq train --help)", add_help=False)

    translate = commands.add_parser("translate", help="translate lines of text (stdin or a file)")
    translate.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq train")
    translate.add_argument("--input", help="file to translate, one sentence a line (default: stdin)")
    translate.add_argument("--output", help="file to write (default: stdout)")
    translate.add_argument("--batch-size", type=int, default=64, help="sentences decoded together")
    translate.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_search_arguments(translate)
    translate.set_defaults(run=run_translate)

    evaluate = commands.add_parser("evaluate", help="BLEU and chrF on a split of the model's corpus")
    evaluate.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq train")
    evaluate.add_argument("--split", help="split to score (default: every test split)")
    evaluate.add_argument("--mirror", help="folder to copy corpus files from (default: $SEQ2SEQ_DATA_MIRROR)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="sentences decoded together")
    add_search_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    return parser


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy search (default); more: beam search")
    parser.add_argument("--alpha", type=float, default=0.6, help="beam search length penalty (GNMT); 0: none")


def run_translate(args: argparse.Namespace) -> None:
    from seq2seq.corpora import read_lines
    from seq2seq.evaluate import write_lines
    from seq2seq.translate import Translator

    translator = Translator.from_checkpoint(args.checkpoint, args.device, args.beam_size, args.alpha)
    if args.input is None and sys.stdin.isatty():
        interactive(translator)
        return
    if args.input is None:
        lines = read_lines(Path("<stdin>"), sys.stdin.buffer.read())
    else:
        lines = read_lines(Path(args.input))
    translations = translator.translate(lines, args.batch_size)
    if args.output:
        write_lines(Path(args.output), translations)
    else:
        sys.stdout.writelines(line + "\n" for line in translations)


def interactive(translator) -> None:
    corpus = translator.corpus
    print(f"Translating {corpus.get('source_lang', '?')} → {corpus.get('target_lang', '?')}. Type a sentence; Ctrl-D to quit.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        print(translator.translate([line])[0])


def run_evaluate(args: argparse.Namespace) -> None:
    from seq2seq.evaluate import evaluate_checkpoint

    for split, scores in evaluate_checkpoint(
        args.checkpoint, args.split, args.mirror, args.batch_size, args.beam_size, args.alpha
    ).items():
        print(f"{split}:")
        for result in scores:
            print(f"  {result}")
