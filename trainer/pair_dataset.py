"""The pair dataset on disk: `unsafe/`, `safe/` and `pairs.jsonl` naming each pair and its prompts.

The pair generator writes it; users may bring their own. Only pairs listed in pairs.jsonl exist: a line is
appended after both images are complete, so an interrupted run never lists a half-written pair.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

INDEX = "pairs.jsonl"


@dataclass
class PairRecord:
    id: str
    unsafe: str  # path relative to the dataset folder
    safe: str
    unsafe_prompt: str = ""
    safe_prompt: str = ""
    seed: int | None = None
    strength: float | None = None
    scores: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def read_pairs(folder: str | Path) -> list[PairRecord]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"pairs folder not found: {folder}")
    index = folder / INDEX
    if not index.exists():
        raise UserError(f"{folder} has no {INDEX}: not a pair dataset (make one with `duo-unlearn pairs`)")
    records = []
    known = set(PairRecord.__dataclass_fields__)
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            record = PairRecord(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{index}, line {n}: not a pair record ({e})") from None
        for rel in (record.unsafe, record.safe):
            if not (folder / rel).is_file():
                raise UserError(f"{index}, line {n}: image {rel} is missing")
        records.append(record)
    if not records:
        raise UserError(f"{folder} holds no pairs: {INDEX} is empty")
    return records


def load_image_tensor(path: Path, size: int):
    """RGB in [-1, 1], resized (shorter side) and centre-cropped to size x size, shape 3 x H x W."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not a readable image: {e}") from None
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)
