"""Output names typed by a user become file names inside the LoRA folder, and nowhere else."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from ..trainer.errors import UserError

MAX_NAME = 100
ADAPTER_SUFFIX = ".safetensors"
# Windows refuses these as file names whatever the extension; A1111 and ComfyUI run there too.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_KEEP = re.compile(r"[^\w.+()\-]+")  # letters and digits of any script, _ . + ( ) -


def sanitise_name(name: str) -> str:
    """A plain file stem from what the user typed, or a UserError that says what is wrong with it.

    Folders are refused, not flattened: `../x` or `sub/x` is almost certainly a mistake, and silently writing
    `.._x` would surprise the user. Other characters are replaced: spaces and odd symbols become `_`.
    """
    raw = (name or "").strip()
    if not raw:
        raise UserError("Output name is empty: give the adapter a name, e.g. duo_red")
    if "/" in raw or "\\" in raw or raw in (".", "..") or raw.startswith(".."):
        raise UserError(f"Output name {raw!r} points into another folder; give a plain name without '/', "
                        "'\\' or '..' (the adapter always goes into the LoRA folder)")
    if any(unicodedata.category(c) == "Cc" for c in raw):
        raise UserError("Output name contains control characters")
    if raw.lower().endswith(ADAPTER_SUFFIX):
        raw = raw[: -len(ADAPTER_SUFFIX)]
    stem = _KEEP.sub("_", unicodedata.normalize("NFKC", raw)).strip("._ ")
    if not stem:
        raise UserError(f"Output name {name!r} has no usable characters; use letters, digits, '-' or '_'")
    if len(stem) > MAX_NAME:
        raise UserError(f"Output name is {len(stem)} characters long; keep it under {MAX_NAME + 1}")
    if stem.split(".")[0].lower() in _RESERVED:
        raise UserError(f"Output name {stem!r} is reserved on Windows; choose another")
    return stem


def adapter_path(lora_dir: str | Path, name: str) -> Path:
    """<lora_dir>/<sanitised name>.safetensors, checked to lie directly inside lora_dir (symlinks resolved)."""
    folder = Path(lora_dir).expanduser().resolve()
    stem = sanitise_name(name)
    path = folder / f"{stem}{ADAPTER_SUFFIX}"
    # A symlink named like the adapter could point elsewhere: refuse it rather than write through it.
    if path.is_symlink() or path.resolve().parent != folder:
        raise UserError(f"{path.name} in the LoRA folder is a link to somewhere else; choose another name")
    return path
