"""The test bed's world: one coloured shape on a plain background, 32x32 RGB, with prompts.

Everything here is numpy and seeded so that the data set, and therefore the bundled model, can be rebuilt exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
# Synonyms give prompt attacks something to find: after unlearning "red", does "crimson" still paint red?
SYNONYMS = {"red": ("crimson", "scarlet")}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str
    cx: float  # centre, in pixels
    cy: float
    radius: float  # half the bounding box side, in pixels


def render(spec: ShapeSpec, jitter: np.ndarray | None = None) -> np.ndarray:
    """Draw one shape, anti-aliased by supersampling; returns uint8 HxWx3."""
    n = IMAGE_SIZE * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    dx, dy = x - spec.cx, y - spec.cy
    r = spec.radius
    if spec.shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif spec.shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif spec.shape == "triangle":  # apex up, base at the bottom of the box
        inside = (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    cover = inside.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    fg = np.array(COLOURS[spec.colour], dtype=np.float64)
    if jitter is not None:
        fg = np.clip(fg + jitter, 0, 255)
    bg = np.array(BACKGROUNDS[spec.background], dtype=np.float64)
    return np.round(cover * fg + (1 - cover) * bg).astype(np.uint8)


def random_spec(rng: np.random.Generator, colour: str | None = None, shape: str | None = None,
                background: str | None = None) -> ShapeSpec:
    radius = float(rng.uniform(5.0, 11.0))
    lo, hi = radius + 1.0, IMAGE_SIZE - radius - 1.0
    return ShapeSpec(
        shape=shape or str(rng.choice(SHAPES)),
        colour=colour or str(rng.choice(list(COLOURS))),
        background=background or str(rng.choice(list(BACKGROUNDS))),
        cx=float(rng.uniform(lo, hi)),
        cy=float(rng.uniform(lo, hi)),
        radius=radius,
    )


def colour_word(colour: str, rng: np.random.Generator, synonym_rate: float = 0.3) -> str:
    synonyms = SYNONYMS.get(colour, ())
    if synonyms and rng.random() < synonym_rate:
        return str(rng.choice(synonyms))
    return colour


def full_prompt(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def random_prompt(spec: ShapeSpec, rng: np.random.Generator, empty_rate: float = 0.12) -> str:
    """One caption for a spec: the full form most often, shorter forms, and sometimes "" for guidance."""
    u = rng.random()
    if u < empty_rate:
        return ""
    word = colour_word(spec.colour, rng)
    u = rng.random()
    if u < 0.55:
        return full_prompt(word, spec.shape, spec.background)
    if u < 0.80:
        return f"a {word} {spec.shape}"
    if u < 0.90:
        return f"a {spec.shape} on a {spec.background} background"
    return f"a {word} shape on a {spec.background} background"


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, list[str], list[ShapeSpec]]:
    """n images (uint8 N x 32 x 32 x 3), one caption each, and the specs that drew them."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    prompts, specs = [], []
    for i in range(n):
        spec = random_spec(rng)
        images[i] = render(spec, jitter=rng.normal(0, 8, size=3))
        prompts.append(random_prompt(spec, rng))
        specs.append(spec)
    return images, prompts, specs


def vocabulary_words() -> list[str]:
    """Every word a caption can contain: the tokenizer keeps each as one token."""
    words = {"a", "on", "background", "shape", *SHAPES, *COLOURS, *BACKGROUNDS}
    for syns in SYNONYMS.values():
        words.update(syns)
    return sorted(words)
