"""The one way anything is written to disk: under a temporary name beside the target, then renamed over it.

A reader (a host listing LoRAs, a resumed run) sees the old file or the complete new one, never a half-written one.
New files follow the umask like any other file (tempfile.mkstemp would leave them 0600, unreadable to a web UI
running as another user).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_error(path: Path, e: OSError) -> UserError:
    """One line for a write that failed (disk full, read-only, permissions)."""
    if e.errno == errno.ENOSPC:
        return UserError(f"the disk is full: could not write {path}; free some space and run again")
    if e.errno == errno.ENAMETOOLONG:
        return UserError(f"the file name {path.name!r} is longer than the file system allows")
    return UserError(f"cannot write {path}: {e.strerror or e}")


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o666) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed onto `path`, on any failure removed."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise disk_error(path, e) from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """write(tmp_path) fills the temporary file; then it replaces `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed into place: complete or absent."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="." + path.name[:40] + ".", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise disk_error(path, e) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
