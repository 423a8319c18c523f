"""File helpers: strict JSON reading with located errors, and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import DataError


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; a missing or unreadable file raises DataError naming it."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror}") from None


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file; a missing file or invalid UTF-8 raises DataError naming the file and byte."""
    p = Path(path)
    data = read_bytes(p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 (byte {e.start}: {data[e.start : e.start + 1]!r})") from None


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; malformed JSON raises DataError with ``file:line:column``."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: ``write`` fills a temporary file in the same folder, which then replaces
    ``path`` in one rename. A crash leaves either the old file or none, never a partial one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Serialise first (so an unserialisable object writes nothing), then write atomically."""
    data = json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
