"""Where the project keeps what it derives from models, how it names a model file's content, and
how it checks and writes output files."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """The root of every derived-artefact cache (engines, calibration ranges): $ROADSEG_CACHE,
    else ~/.cache/roadseg. Read on each call so a test or a user can point it elsewhere."""
    return Path(os.environ.get("ROADSEG_CACHE", Path.home() / ".cache" / "roadseg"))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write beside the target, then rename: a reader never sees half a file, and a failed
    write leaves no partial one behind."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data)
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


class OutputError(RuntimeError):
    """An output that cannot be written; the message names the problem and the fix."""


def check_writable(path: Path, what: str) -> None:
    """Fail before any work starts when the output `path` (given with option `what`) cannot be
    created."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: folder {parent} does not exist; create it or choose "
                          "another path")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} {path}: folder {parent} is not writable; choose another path")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    # The mode bits are not the last word (root, read-only mounts, /proc): create the file now,
    # without truncating one that exists and without blocking on a FIFO, and remove it again.
    existed = path.exists()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666))
    except OSError as error:
        raise OutputError(f"{what} {path}: cannot create it ({error.strerror}); choose another "
                          "path") from None
    if not existed:
        path.unlink(missing_ok=True)
