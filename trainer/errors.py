"""The one exception type users see as a message, not a traceback."""
from __future__ import annotations

import errno
import os
import re
import stat
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""


class Cancelled(Exception):
    """A host asked the running job to stop (Cancel button, Ctrl-C)."""


_DENIED = (errno.EACCES, errno.EPERM)


def out_of_memory_line(error: BaseException) -> str | None:
    """The one line for a GPU out-of-memory that no stage turned into its own message (sampling pairs or eval images,
    placing a model bigger than the card), or None for any other error. torch is not imported here: an error from
    torch means torch is loaded already."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(error, torch.OutOfMemoryError):
        return None
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(error))
    detail = f" asking for {asked.group(1)} more" if asked else ""
    # the settings by their words, which the CLI's flags, the tab's and the nodes' widgets all carry
    return (f"out of GPU memory{detail}: close what else uses the GPU, or try a smaller resolution, mixed precision "
            "bf16 (or fp16), gradient checkpointing on, or the cpu device")


def unreadable(path: str | Path) -> bool:
    """Whether `path` is there but this user may not read it (a folder: list it and open what is in it).

    Asked of the file system because the libraries hide it: safetensors reports any file it cannot open as "No such
    file or directory", and torch's PermissionError reaches handlers that can only call the file damaged."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        return True  # a folder on the way may not be searched
    except OSError:
        return False  # absent: the caller's own message says so
    return not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0))


def refuse_unreadable(path: str | Path, error: BaseException | None = None) -> None:
    """Raise the one line for a read that permissions refuse (the error's errno says so, or the file system does);
    return otherwise, so that the caller says what else is wrong."""
    if isinstance(error, OSError) and error.errno in _DENIED:
        path = error.filename or path
    elif not unreadable(path):
        return
    raise UserError(f"cannot read {path}: permission denied") from None
