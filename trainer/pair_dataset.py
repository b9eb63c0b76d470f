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


_TYPES = {"id": (str, int), "unsafe": str, "safe": str, "unsafe_prompt": str, "safe_prompt": str,
          "seed": (int, type(None)), "strength": (int, float, type(None)), "scores": dict}


def inside_dataset(folder: Path, rel: str) -> Path:
    """The image's path, resolved (symlinks too) and confined to the dataset folder. A path pointing elsewhere is
    refused before anything is opened, so the message tells nothing about files outside the folder."""
    root = folder.resolve()
    if not rel or Path(rel).is_absolute() or Path(rel).drive:
        raise ValueError(f"image path {rel!r} is not relative to the dataset folder")
    path = (root / rel).resolve()
    if root not in path.parents:
        raise ValueError(f"image path {rel!r} points outside the dataset folder")
    return path


def _record(data, n: int, index: Path) -> PairRecord:
    if not isinstance(data, dict):
        raise UserError(f"{index}, line {n}: not a pair record (a JSON object with unsafe, safe, ...)")
    for key in ("id", "unsafe", "safe"):
        if key not in data:
            raise UserError(f"{index}, line {n}: the record has no {key!r}")
    for key, kinds in _TYPES.items():
        if key in data and (not isinstance(data[key], kinds) or isinstance(data[key], bool)):
            raise UserError(f"{index}, line {n}: {key!r} has the wrong type ({type(data[key]).__name__})")
    return PairRecord(**{k: data[k] for k in _TYPES if k in data})


def read_pairs(folder: str | Path) -> list[PairRecord]:
    folder = Path(folder)
    try:
        found = folder.is_dir()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UserError(f"cannot read the pairs folder {folder}: {e.strerror or e}") from None
    if not found:
        raise UserError(f"{folder} is a file, not a pairs folder" if folder.exists() else f"pairs folder not found: {folder}")
    index = folder / INDEX
    if not index.is_file():
        raise UserError(f"{folder} has no {INDEX}: not a pair dataset (make one with `duo-unlearn pairs`)")
    try:
        text = index.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{index} is not UTF-8 text (byte {e.start}): not a pair index") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise UserError(f"{index}, line {n}: not JSON ({e})") from None
        record = _record(data, n, index)
        for rel in (record.unsafe, record.safe):
            try:
                path = inside_dataset(folder, rel)
            except ValueError as e:
                raise UserError(f"{index}, line {n}: {e}") from None
            if not path.is_file():
                raise UserError(f"{index}, line {n}: image {rel} is missing")
        records.append(record)
    if not records:
        raise UserError(f"{folder} holds no pairs: {INDEX} is empty")
    return records


def open_rgb(path: Path, what: str = "pair image"):
    """The image at `path` as RGB, or one line: not an image, damaged, or over Pillow's pixel limit (a bomb)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError:
        raise UserError(f"{path} is not a usable {what}: its pixel count is over Pillow's safety limit "
                        f"({Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image: {e}") from None


def load_image_tensor(path: Path, size: int):
    """RGB in [-1, 1], resized (shorter side) and centre-cropped to size x size, shape 3 x H x W."""
    return image_tensor(open_rgb(path), size)


def image_tensor(im, size: int):
    """An RGB PIL image in [-1, 1], resized (shorter side) and centre-cropped to size x size, shape 3 x H x W."""
    import numpy as np
    import torch
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)
