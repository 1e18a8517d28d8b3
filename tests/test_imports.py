"""The package's two layers: the inference core never pulls in the training stack."""

import subprocess
import sys
from pathlib import Path

# Imports every module of seq2seq.core, translates a line, and prints the top-level modules
# that came with them beyond the standard library and the core's three dependencies.
CORE_IMPORTS = """
import importlib, pkgutil, sys
import sacrebleu, sentencepiece, torch
allowed = set(sys.modules) | set(sys.stdlib_module_names) | {"seq2seq"}
import seq2seq.core
for module in pkgutil.walk_packages(seq2seq.core.__path__, "seq2seq.core."):
    importlib.import_module(module.name)
from seq2seq.core.translate import Translator
print(Translator.from_checkpoint(sys.argv[1]).translate(["Tom is here."]))
print(sorted({name.split(".")[0] for name in sys.modules} - allowed))
"""

# `seq2seq translate` as a user runs it, then the Lightning modules it loaded.
TRANSLATE_COMMAND = """
import sys
from seq2seq.cli import main
status = main(["translate", "--checkpoint", sys.argv[1], "--input", sys.argv[2]])
print(status, sorted(name for name in sys.modules if "lightning" in name.split(".")[0]))
"""


def run_python(code: str, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_inference_core_imports_torch_sentencepiece_and_sacrebleu_only(tiny_checkpoint):
    translation, extra_modules = run_python(CORE_IMPORTS, str(tiny_checkpoint))
    assert translation.startswith("['") and translation != "['']"
    assert extra_modules == "[]"


def test_seq2seq_translate_never_imports_lightning(tiny_checkpoint, tmp_path: Path):
    source = tmp_path / "source.txt"
    source.write_text("Tom is here.\n")
    *translations, last = run_python(TRANSLATE_COMMAND, str(tiny_checkpoint), str(source))
    assert len(translations) == 1 and translations[0].strip()
    assert last == "0 []"
