"""The `seq2seq` command: thin wrappers that parse, call library functions and print.

    seq2seq train --config configs/tatoeba-en-fr.yaml [--model.learning_rate 5e-4 ...]
    seq2seq translate --checkpoint CKPT [--input F] [--output F]
        [--beam-size 5 --nbest 3 --scores --attention DIR]
    seq2seq evaluate --checkpoint CKPT [--split NAME] [--beam-size 5]
    seq2seq evaluate --hyp FILE --ref FILE [--ref FILE ...]
    seq2seq average --output CKPT CKPT1 CKPT2 ...
    seq2seq shortlist CKPT
    seq2seq plot RUN_DIR
    seq2seq bench [--config configs/bench-multi30k-en-de.yaml] [--serve]
    seq2seq ablation [--config configs/bench-multi30k-en-de.yaml] [--variants gru lstm ...]
    seq2seq serve --checkpoint CKPT [--checkpoint CKPT2 ...] [--port 8000] [--api-key KEY]

Errors a user can cause become one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from seq2seq.errors import Seq2SeqError

if TYPE_CHECKING:  # the heavy imports (torch, Lightning) wait until a command needs them
    from seq2seq.core.search import SearchSettings
    from seq2seq.core.translate import Translation, Translator


# Commands whose libraries clean up at exit (Lightning's loggers, data-loader workers): they
# leave through the interpreter's normal shutdown (`run`).
TRAINING_COMMANDS = ("train", "bench", "ablation")


def run() -> NoReturn:
    """The `seq2seq` program: `main`, then a prompt exit.

    Tearing down an interpreter that has imported torch takes about 0.4 s, a tenth of
    translating 5,000 lines (BENCHMARKS.md). Once a command has returned, its files are
    written and closed, so only the standard streams are flushed before the process ends;
    commands that train keep the normal shutdown. As at a normal exit, a failed flush (the
    reader of a pipe has gone) gives status 120.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] and argv[0] in TRAINING_COMMANDS:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = 120
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"]:
            from seq2seq.training.cli import train

            train(argv[1:])
            return 0
        args = build_parser().parse_args(argv)
        args.run(args)
        return 0
    except Seq2SeqError as error:
        print(f"seq2seq: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except OSError as error:  # a file given that cannot be read or written: one line, no traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"seq2seq: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except FloatingPointError as error:
        print(f"seq2seq: training stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    from seq2seq.core.search import SearchSettings
    from seq2seq.core.translate import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="seq2seq", description="GRU + attention neural machine translation."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "train", help="train a model (LightningCLI: seq2seq train --help)", add_help=False
    )

    translate = commands.add_parser("translate", help="translate lines of text (stdin or a file)")
    translate.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq train")
    translate.add_argument(
        "--input", help="file to translate, one sentence a line (default: stdin)"
    )
    translate.add_argument("--output", help="file to write (default: stdout)")
    translate.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    translate.add_argument(
        "--nbest",
        type=int,
        default=SearchSettings.nbest,
        help="hypotheses per line (needs --beam-size at least as large): "
        "N lines per input line, each LINE_NUMBER<TAB>TRANSLATION, best first",
    )
    translate.add_argument(
        "--scores", action="store_true", help="append <TAB>log-probability to every output line"
    )
    translate.add_argument(
        "--attention",
        metavar="DIR",
        help="write a heatmap PNG of the attention per sentence (DIR/000001.png, ...)",
    )
    add_batch_size_argument(translate)
    add_search_arguments(translate)
    translate.set_defaults(run=run_translate)

    evaluate = commands.add_parser(
        "evaluate", help="BLEU, chrF and TER of a model on its corpus, or of given files"
    )
    evaluate.add_argument("--checkpoint", help="a .ckpt written by seq2seq train")
    evaluate.add_argument("--split", help="split to score (default: every test split)")
    evaluate.add_argument(
        "--mirror", help="folder to copy corpus files from (default: $SEQ2SEQ_DATA_MIRROR)"
    )
    evaluate.add_argument(
        "--hyp", help="score this file of translations instead of a checkpoint (with --ref)"
    )
    evaluate.add_argument(
        "--ref",
        action="append",
        default=[],
        help="reference file for --hyp; repeat for more references",
    )
    add_batch_size_argument(evaluate)
    add_search_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    average = commands.add_parser("average", help="average the weights of checkpoints of one run")
    average.add_argument(
        "checkpoints", nargs="+", help="checkpoints to average, e.g. checkpoints/RUN/step*.ckpt"
    )
    average.add_argument("--output", required=True, help="the averaged checkpoint to write")
    average.set_defaults(run=run_average)

    shortlist = commands.add_parser(
        "shortlist",
        help="add the lexical shortlist of its training corpus to a checkpoint written without "
        "one (training writes it into every checkpoint)",
    )
    shortlist.add_argument("checkpoint", help="the checkpoint to add it to (rewritten in place)")
    shortlist.add_argument(
        "--mirror", help="folder to copy corpus files from (default: $SEQ2SEQ_DATA_MIRROR)"
    )
    shortlist.set_defaults(run=run_shortlist)

    plot = commands.add_parser("plot", help="draw a run's loss and validation BLEU curves to PNG")
    plot.add_argument("run_dir", help="a run folder, e.g. checkpoints/tatoeba-en-fr")
    plot.add_argument("--output", help="PNG to write (default: RUN_DIR/curves.png)")
    plot.set_defaults(run=run_plot)

    ablation = commands.add_parser(
        "ablation",
        help="train one variant per cell, attention rule and decoder on one budget; compare them",
    )
    ablation.add_argument(
        "--config",
        default="configs/bench-multi30k-en-de.yaml",
        help="the config every variant changes one setting of (its budget is theirs)",
    )
    ablation.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="variants to train and score, in order (default: all, VARIANTS in "
        "seq2seq/training/ablation.py)",
    )
    ablation.add_argument("--checkpoint-dir", default="checkpoints", help="where the runs go")
    ablation.add_argument("--split", default="test_2016_flickr", help="the test split scored")
    ablation.add_argument("--output", default="docs/ablation", help="writes OUTPUT.json/.png")
    ablation.add_argument(
        "--summary", default="BENCHMARKS.md", help="the markdown file that gets the table"
    )
    ablation.set_defaults(run=run_ablation)

    bench = commands.add_parser(
        "bench", help="measure training and translation speed of the reference model here"
    )
    bench.add_argument(
        "--config",
        default="configs/bench-multi30k-en-de.yaml",
        help="the model and data to measure",
    )
    bench.add_argument(
        "--checkpoint",
        help="trained model for translation (default: the config's run folder best.ckpt)",
    )
    bench.add_argument(
        "--precision",
        nargs="+",
        default=["32-true", "bf16-mixed"],
        help="training precisions to measure",
    )
    bench.add_argument(
        "--warmup-steps", type=int, default=20, help="training steps before timing starts"
    )
    bench.add_argument("--steps", type=int, default=100, help="training steps timed")
    bench.add_argument("--sentences", type=int, default=1000, help="test sentences translated")
    bench.add_argument(
        "--mirror", help="folder to copy corpus files from (default: $SEQ2SEQ_DATA_MIRROR)"
    )
    bench.add_argument("--output", default="BENCHMARKS", help="writes OUTPUT.md and OUTPUT.json")
    bench.add_argument(
        "overrides",
        nargs="*",
        metavar="-- SETTING VALUE",
        help="after --: settings of the config for the training measurement, as seq2seq train "
        "takes them (on a GPU: -- --data.max_tokens 8192)",
    )
    bench.add_argument(
        "--serve",
        action="store_true",
        help=(
            "measure `seq2seq serve` instead: concurrent clients, batching on and off "
            "(its own section)"
        ),
    )
    bench.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="with --serve: client counts"
    )
    bench.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="with --serve: most seconds per client count and side",
    )
    bench.add_argument(
        "--serve-precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32", "int8"],
        help=(
            "with --serve: the servers' --precision, each measured in turn "
            "(int8: the fastest on CPUs)"
        ),
    )
    bench.add_argument(
        "--peer",
        metavar="SUMMARY",
        help="compare with OpenNMT-py instead: the summary.txt of "
        "../shared/peers/opennmt-py/run.sh on this machine, beside `seq2seq translate` timed the "
        "same way (its own section)",
    )
    bench.add_argument(
        "--peer-greedy",
        metavar="COMMAND",
        help="with --peer: a shell command translating the peer's 5,000 lines greedily, timed "
        "alternately with ours (default: the summary's figure)",
    )
    bench.add_argument("--peer-beam5", metavar="COMMAND", help="with --peer: the same for beam 5")
    bench.add_argument(
        "--repeats", type=int, default=3, help="with --peer: timed runs per search and side"
    )
    bench.set_defaults(run=run_bench)

    serve = commands.add_parser(
        "serve",
        help="serve translations over HTTP (own API, LibreTranslate's, OpenNMT-py's; a page at /)",
    )
    serve.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="a .ckpt written by seq2seq train; repeat it to serve one model per language pair",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("SEQ2SEQ_API_KEY"),
        help="require this key (Authorization: Bearer KEY) on every route but /health and the page "
        "(default: $SEQ2SEQ_API_KEY; none: open)",
    )
    serve.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (uvicorn's access log)"
    )
    add_search_arguments(serve)
    add_limit_arguments(serve)
    serve.set_defaults(run=run_serve)
    return parser


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    from seq2seq.core.translate import ROWS_PER_BATCH

    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"sentences decoded together (default: {ROWS_PER_BATCH} decoder rows, i.e. "
        f"{ROWS_PER_BATCH} sentences for greedy search, {ROWS_PER_BATCH // 5} for beam 5)",
    )


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `ServeLimits` field, with its default from there."""
    from seq2seq.serving.limits import ServeLimits

    limits = parser.add_argument_group("limits and batching (see ServeLimits)")
    for field in dataclasses.fields(ServeLimits):
        if field.name == "batching":
            limits.add_argument(
                "--no-batching",
                dest="batching",
                action="store_false",
                help="translate one request at a time (the load benchmark's baseline)",
            )
        else:
            kind = {"int": int, "float": float}[str(field.type)]
            limits.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=kind,
                default=field.default,
                help=f"{field.metadata['help']} (default {field.default:,})",
            )


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The search options, with their defaults from `SearchSettings`."""
    from seq2seq.core.search import SearchSettings
    from seq2seq.core.translate import PRECISIONS

    defaults = SearchSettings()
    parser.add_argument(
        "--beam-size",
        type=int,
        default=defaults.beam_size,
        help=f"1: greedy search; more: beam search (default {defaults.beam_size})",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=defaults.alpha,
        help=f"beam search length penalty (GNMT); 0: none (default {defaults.alpha})",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=defaults.beta,
        help="beam search coverage penalty (GNMT): against dropped source words; 0: none "
        f"(default {defaults.beta})",
    )
    parser.add_argument(
        "--max-length-ratio",
        type=float,
        default=defaults.max_length_ratio,
        help=f"output cap in tokens per source token (default {defaults.max_length_ratio})",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=PRECISIONS[0],
        help="auto: bf16 where the CPU (AMX, AVX512-BF16) or GPU multiplies it natively, else "
        "fp32; int8: dynamic quantization, about twice as fast on CPUs but a sentence's "
        "translation then depends on the batch it is in (BENCHMARKS.md) "
        f"(default {PRECISIONS[0]})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=(
            "batches translated side by side on a CPU, sharing torch's threads "
            "(default: one per thread)"
        ),
    )
    parser.add_argument(
        "--shortlist",
        action="store_true",
        help="score only each sentence's likely target pieces, from the checkpoint's lexical "
        "shortlist: faster beam search, but a few tenths of BLEU less (BENCHMARKS.md); "
        "default: every target piece",
    )


def search_settings(args: argparse.Namespace) -> SearchSettings:
    from seq2seq.core.search import SearchSettings

    nbest = {"nbest": args.nbest} if "nbest" in args else {}  # translate has --nbest
    return SearchSettings(
        beam_size=args.beam_size,
        alpha=args.alpha,
        beta=args.beta,
        max_length_ratio=args.max_length_ratio,
        **nbest,
    )


def run_translate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from seq2seq.atomic import write_lines
    from seq2seq.core.translate import Translator
    from seq2seq.corpora import read_lines

    if args.output and Path(args.output).is_dir():  # before the work, not after it
        raise Seq2SeqError(f"--output {args.output} is a folder: give a file to write")
    translator = Translator.from_checkpoint(
        args.checkpoint,
        args.device,
        search_settings(args),
        args.precision,
        args.workers,
        args.shortlist,
    )
    if args.input is None and sys.stdin.isatty():
        interactive(translator)
        return
    if args.input is None:
        lines = read_lines(Path("<stdin>"), sys.stdin.buffer.read())
    else:
        lines = read_lines(Path(args.input))
    with tqdm(
        total=len(lines), unit="sent", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        translations = translator.translate_detailed(lines, args.batch_size, bar.update)
    if args.attention:
        draw_attention(translator, translations, Path(args.attention))
    output = format_translations(translations, args.nbest, args.scores)
    if args.output:
        write_lines(Path(args.output), output)
    else:
        sys.stdout.writelines(line + "\n" for line in output)


def format_translations(translations: list[Translation], nbest: int, scores: bool) -> list[str]:
    """One line per input line, or with nbest > 1, `nbest` lines `LINE_NUMBER<TAB>TRANSLATION` per
    input line."""
    lines = []
    for number, translation in enumerate(translations, start=1):
        candidates = list(zip(translation.texts, translation.hypotheses)) or [("", None)] * nbest
        for text, hypothesis in candidates[:nbest]:
            fields = [str(number)] if nbest > 1 else []
            fields.append(text)
            if scores:
                fields.append(f"{hypothesis.log_probability:.4f}" if hypothesis else "")
            lines.append("\t".join(fields))
    return lines


def draw_attention(translator: Translator, translations: list[Translation], folder: Path) -> None:
    """One heatmap per translated line (the best hypothesis), named by line number."""
    from seq2seq.figures import attention_heatmap

    for number, translation in enumerate(translations, start=1):
        if translation.hypotheses:
            best = translation.hypotheses[0]
            attention_heatmap(
                translator.source_pieces(translation),
                translator.target_pieces(best),
                best.attention,
                folder / f"{number:06d}.png",
                title=f"line {number}: {translation.text[:80]}",
            )


def interactive(translator: Translator) -> None:
    """A prompt: type a sentence, read its translation; `:attention` toggles the attention view."""
    from seq2seq.figures import attention_text

    corpus = translator.corpus
    print(
        f"Translating {corpus.get('source_lang', '?')} → {corpus.get('target_lang', '?')}. "
        "Type a sentence; ':attention' shows or hides where the model looked; Ctrl-D quits."
    )
    show_attention = False
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        if line.strip() == ":attention":
            show_attention = not show_attention
            print(f"attention view {'on' if show_attention else 'off'}")
            continue
        translation = translator.translate_detailed([line])[0]
        print(translation.text)
        if show_attention and translation.hypotheses:
            best = translation.hypotheses[0]
            print(
                attention_text(
                    translator.source_pieces(translation),
                    translator.target_pieces(best),
                    best.attention,
                )
            )


def run_evaluate(args: argparse.Namespace) -> None:
    from seq2seq.core.evaluate import evaluate_checkpoint, score_files

    if args.hyp or args.ref:
        if not (args.hyp and args.ref) or args.checkpoint:
            raise Seq2SeqError(
                "score files with --hyp FILE --ref FILE [--ref FILE ...] (and no --checkpoint)"
            )
        for result in score_files(args.hyp, args.ref):
            print(result)
        return
    if not args.checkpoint:
        raise Seq2SeqError(
            "evaluate needs --checkpoint CKPT (or --hyp FILE --ref FILE to score files)"
        )
    report = evaluate_checkpoint(
        args.checkpoint,
        args.split,
        args.mirror,
        args.batch_size,
        search_settings(args),
        args.precision,
        args.workers,
        args.shortlist,
    )
    for result in report.results:
        print(f"{result.split} ({result.sentences} sentences, {report.search['name']}):")
        for value in result.scores:
            print(f"  {value}")
    print(f"Report: {', '.join(report.files)}")


def run_average(args: argparse.Namespace) -> None:
    from seq2seq.core.checkpoint import average_checkpoints

    average_checkpoints(args.checkpoints, args.output)
    print(f"Averaged {len(args.checkpoints)} checkpoints into {args.output}")


def run_shortlist(args: argparse.Namespace) -> None:
    from seq2seq.core.checkpoint import add_shortlist

    shortlist = add_shortlist(args.checkpoint, args.mirror)
    rows, per_source = shortlist.candidates.shape
    print(
        f"Added to {args.checkpoint}: {per_source} candidates for each of {rows:,} source "
        f"pieces and {len(shortlist.frequent):,} frequent target pieces"
    )


def run_plot(args: argparse.Namespace) -> None:
    from seq2seq.figures import training_curves

    run_dir = Path(args.run_dir)
    output = Path(args.output) if args.output else run_dir / "curves.png"
    training_curves(run_dir, output)
    print(f"Wrote {output}")


def run_serve(args: argparse.Namespace) -> None:
    from seq2seq.serving.limits import ServeLimits
    from seq2seq.serving.server import serve

    limits = ServeLimits(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(ServeLimits)}
    )
    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        search=search_settings(args),
        precision=args.precision,
        limits=limits,
        device=args.device,
        workers=args.workers,
        shortlist=args.shortlist,
        access_log=args.access_log,
    )


def run_ablation(args: argparse.Namespace) -> None:
    from seq2seq.training.ablation import VARIANTS, run_ablation

    run_ablation(
        args.config,
        args.variants or list(VARIANTS),
        args.checkpoint_dir,
        args.split,
        Path(args.output),
        Path(args.summary),
    )
    print(f"Wrote {args.output}.json, {args.output}.png and the table in {args.summary}")


def run_bench(args: argparse.Namespace) -> None:
    arguments = sys.argv[2:] if sys.argv[1:2] == ["bench"] else []
    command = shlex.join(["seq2seq", "bench", *arguments])
    if args.overrides and (args.serve or args.peer):
        raise Seq2SeqError(
            f"settings after -- ({shlex.join(args.overrides)}) change the training measurement, "
            "which --serve and --peer do not take: drop them or the mode"
        )
    if args.serve:
        run_serve_bench(args, command)
        return
    if args.peer:
        run_peer_bench(args, command)
        return
    from seq2seq.training.bench import default_checkpoint, run_bench, save

    checkpoint = args.checkpoint or default_checkpoint(args.config)
    results = run_bench(
        args.config,
        checkpoint,
        args.precision,
        args.warmup_steps,
        args.steps,
        sentences=args.sentences,
        mirror=args.mirror,
        overrides=args.overrides,
    )
    save(results, Path(args.output), args.config, checkpoint, command)
    print(f"Wrote {args.output}.md and {args.output}.json")


def run_peer_bench(args: argparse.Namespace, command: str) -> None:
    from seq2seq.training.bench import default_checkpoint
    from seq2seq.training.peer import run_peer_comparison, save

    peer_commands = {"greedy": args.peer_greedy, "beam5": args.peer_beam5}
    comparison = run_peer_comparison(
        Path(args.peer),
        args.checkpoint or default_checkpoint(args.config),
        Path(args.output).with_suffix(".json"),
        args.repeats,
        {search: command for search, command in peer_commands.items() if command},
        args.mirror,
    )
    save(comparison, Path(args.output), command)
    print(f"Wrote the peer section of {args.output}.md and {args.output}.json")


def run_serve_bench(args: argparse.Namespace, command: str) -> None:
    from seq2seq.serving.loadtest import run_serve_bench, save
    from seq2seq.training.bench import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint(args.config)
    results = run_serve_bench(
        checkpoint,
        args.clients,
        args.sentences,
        args.time_limit,
        args.mirror,
        args.serve_precisions,
    )
    save(results, Path(args.output), command)
    print(f"Wrote the serve section of {args.output}.md and {args.output}.json")
