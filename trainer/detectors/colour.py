"""The test bed's classifier: reads background, shape and colour straight off the pixels.

The test bed draws flat colours on flat backgrounds, so a rule on pixels is exact on its own data (validated in
the tests) and needs no weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..testbed.shapes import BACKGROUNDS, COLOURS

_MIN_PIXELS = 6
_SOFTNESS = 40.0  # RGB distance scale of the soft colour score


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: no shape found
    shape: str | None
    mask: np.ndarray  # bool HxW, the shape's pixels
    colour_probs: dict[str, float]


def _nearest(value: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    d = np.linalg.norm(np.array([table[n] for n in names], dtype=np.float64) - value, axis=1)
    return names[int(np.argmin(d))]


def read_image(image: Image.Image | np.ndarray) -> Reading:
    px = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    dist = np.linalg.norm(px - bg_rgb, axis=-1)
    mask = dist > 60
    if mask.sum() < _MIN_PIXELS:
        return Reading(background, None, None, mask, {c: 0.0 for c in COLOURS})
    core = dist >= 0.6 * dist[mask].max()
    rgb = np.median(px[core], axis=0)
    names = list(COLOURS)
    d = np.linalg.norm(np.array([COLOURS[n] for n in names], dtype=np.float64) - rgb, axis=1)
    logits = -(d**2) / (2 * _SOFTNESS**2)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    shape = "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"
    return Reading(background, names[int(np.argmax(p))], shape, mask, dict(zip(names, p.tolist())))


class ColourDetector:
    """Finds one colour (the test bed's concept, e.g. "red")."""

    def __init__(self, colour: str = "red", threshold: float = 0.5):
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; the test bed knows {', '.join(COLOURS)}")
        self.colour = colour
        self.threshold = threshold
        self.name = f"colour:{colour}"

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        return [read_image(im).colour_probs[self.colour] for im in images]

    def regions(self, images: Sequence[Image.Image]) -> list:
        """The shape's pixels (the test bed draws one shape, the concept's colour is on it)."""
        out = []
        for im in images:
            r = read_image(im)
            out.append(r.mask if r.colour is not None else None)
        return out
