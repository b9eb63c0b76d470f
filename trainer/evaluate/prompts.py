"""Prompt sets: a text file (one prompt a line), a CSV file with a `prompt` column (I2P, Ring-A-Bell), or a preset."""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError

CSV_COLUMNS = ("prompt", "prompts", "text", "caption", "sensitive prompt")  # first one found wins, any case


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a .txt (one per line; blank lines and lines starting with # are skipped) or a .csv file.

    A CSV must have a `prompt` column (I2P and Ring-A-Bell files do; `text`, `caption` are accepted too).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e}") from None
    if path.suffix.lower() == ".csv":
        prompts = _csv_prompts(text, path)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts[:limit] if limit else prompts


def _csv_prompts(text: str, path: Path) -> list[str]:
    rows = csv.DictReader(text.splitlines())
    try:
        fieldnames = rows.fieldnames or []
    except csv.Error as e:  # a header field past csv's size limit, like a row's below
        raise UserError(f"{path} is not a readable CSV file: {e}") from None
    names = {(n or "").strip().lower(): n for n in fieldnames}
    column = next((names[c] for c in CSV_COLUMNS if c in names), None)
    if column is None:
        raise UserError(f"{path}: no prompt column; a CSV needs a column named 'prompt' "
                        f"(found: {', '.join(n for n in names if n) or 'none'})")
    try:
        return [(row.get(column) or "").strip() for row in rows if (row.get(column) or "").strip()]
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file: {e}") from None


def replace_words(prompt: str, words, replacement: str) -> str | None:
    """The prompt with every whole-word occurrence of any of `words` replaced; None when none occurs."""
    import re

    pattern = r"\b(" + "|".join(re.escape(w) for w in words if w) + r")\b"
    new, count = re.subn(pattern, replacement, prompt, flags=re.IGNORECASE)
    return new if count else None
