"""The retain set: base-model images of prompts the unlearning must leave alone, stored beside the pairs.

DUO's own regulariser keeps the adapter's output on pure noise; on its own it lets close concepts (orange next to
red) and the background drift, because nothing in training shows them. The retain set shows them: `retain/` and
`retain.jsonl` in the pair folder, one line per image written after the image is complete, like the pairs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .pair_dataset import inside_dataset

RETAIN_INDEX = "retain.jsonl"


@dataclass
class RetainRecord:
    id: str
    image: str  # path relative to the dataset folder
    prompt: str
    seed: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def read_retain(folder: str | Path) -> list[RetainRecord]:
    """The folder's retain records; none when it has no retain set (older folders, or one a user brought)."""
    folder = Path(folder)
    index = folder / RETAIN_INDEX
    if not index.is_file():
        return []
    try:
        lines = index.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{index} is not UTF-8 text: not a retain index") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            record = RetainRecord(id=str(data["id"]), image=data["image"], prompt=data["prompt"],
                                  seed=data.get("seed"))
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError):
            raise UserError(f"{index}, line {n}: not a retain record (id, image, prompt)") from None
        if not isinstance(record.image, str) or not isinstance(record.prompt, str):
            raise UserError(f"{index}, line {n}: 'image' and 'prompt' must be text")
        try:
            path = inside_dataset(folder, record.image)
        except ValueError as e:
            raise UserError(f"{index}, line {n}: {e}") from None
        if not path.is_file():
            raise UserError(f"{index}, line {n}: image {record.image} is missing")
        records.append(record)
    return records


def retain_seed(base: int, i: int) -> int:
    """Seeds apart from the pairs' (image_seed's layout stays below 2**31 for any sane run seed)."""
    return 2**40 + base * 1_000_000 + i


def retain_prompt(prompts, i: int, n: int) -> str:
    """Image i of n: the prompt list laid over the images in contiguous blocks, as pairs.prompts_for does."""
    return prompts[i * len(prompts) // n] if n >= len(prompts) else prompts[i % len(prompts)]
