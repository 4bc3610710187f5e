"""Where the project keeps what it derives from models, and how it names a model file's content."""

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
