"""Write files so that a kill or a full disk never leaves a half-written file under the final name.

The data go to a temporary file beside the target (same folder, so same file system),
are flushed to disk, and only then renamed over the target: readers see either the old
file or the new one, never a mix. A target that is no regular file (`/dev/null`,
`/dev/stdout`, a named pipe) is written straight into: renaming over it would put a file
where the device or the pipe was.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path`, unique to this writer.

    Unique, because two runs may write the same file at once (both training the same
    tokenizer, both fetching a corpus): with a shared name one could rename the other's
    half-written file into place. A `kill -9` can leave one behind (`.NAME.PID.XXXX.tmp`).
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; when the block ends without error it replaces `path` in one step
    (`replace_file`), or for a device or a pipe (`is_stream`) writes straight into it.

    An `OSError` that names no file (a failed write or flush) is given `path` as its file.
    """
    path = Path(path)
    try:
        with open(path, "wb") if is_stream(path) else replace_file(path) as out:
            yield out
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


@contextmanager
def replace_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path` that replaces it when the block ends.

    On any error (a full disk, an exception in the block) the temporary file is removed
    and `path` keeps its previous content. A symbolic link keeps pointing where it did:
    the file it points to is replaced.
    """
    if path.is_dir():  # named here: os.replace would name the temporary file
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as out:  # x: never write into another writer's file
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def is_stream(path: Path) -> bool:
    """A device, a named pipe or a socket: something that takes data, not a file to replace."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """One UTF-8 line per item, written atomically."""
    with atomic_write(path) as out:
        out.write("".join(line + "\n" for line in lines).encode("utf-8"))


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut right after it keeps the new name)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
