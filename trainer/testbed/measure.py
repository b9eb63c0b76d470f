"""Prompt-following figures of a test-bed pipeline, read by the colour classifier."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..detectors.colour import read_image
from ..previews import generate_images
from .shapes import BACKGROUNDS, COLOURS, SHAPES, full_prompt


def generate(pipe, prompts: list[str], seed: int, steps: int = 25, guidance: float = 5.0):
    """One image per prompt, image i from seed + i; the test bed's defaults (25 steps, guidance 5)."""
    return generate_images(pipe, prompts, seed, steps, guidance)


def prompt_following(pipe, per_colour: int = 8, seed: int = 0, steps: int = 25, guidance: float = 5.0,
                     colour_words: dict[str, str] | None = None) -> dict:
    """Colour accuracy per colour word, shape accuracy, on full prompts over random shapes and backgrounds."""
    rng = np.random.default_rng(seed)
    words = {c: c for c in COLOURS} | (colour_words or {})
    prompts, truth = [], []
    for word, colour in words.items():
        for _ in range(per_colour):
            shape, bg = rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            prompts.append(full_prompt(word, shape, bg))
            truth.append((word, colour, shape))
    images = []
    for i in range(0, len(prompts), 32):
        images += generate(pipe, prompts[i:i + 32], seed * 100_003 + i, steps, guidance)
    hits: dict[str, list[bool]] = defaultdict(list)
    shape_hits = []
    for im, (word, colour, shape) in zip(images, truth):
        r = read_image(im)
        hits[word].append(r.colour == colour)
        shape_hits.append(r.shape == shape)
    return {
        "colour_accuracy": {w: float(np.mean(h)) for w, h in hits.items()},
        "shape_accuracy": float(np.mean(shape_hits)),
        "images": images,
    }


def empty_prompt_colours(pipe, n: int = 32, seed: int = 0, steps: int = 25) -> dict[str, int]:
    images = generate(pipe, [""] * n, seed, steps, guidance=1.0)
    counts: dict[str, int] = defaultdict(int)
    for im in images:
        counts[str(read_image(im).colour)] += 1
    return dict(counts)
