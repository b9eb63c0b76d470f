"""Safe twins that differ from their unsafe image only where the concept is.

SDEdit repaints the whole image, so a twin also changes the background and the shape's size; trained on such
pairs, DUO learns those changes too (a gray background turning dark on the test bed). With the detector's concept
regions, the twin keeps the unsafe image's pixels outside them: x⁺ = m·twin + (1 − m)·x⁻, m the union of both
images' regions, dilated and feathered so no seam is left to learn.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .detectors import concept_regions


def composite(unsafe: Image.Image, twin: Image.Image, unsafe_mask, twin_mask) -> Image.Image:
    """The twin inside the (dilated, feathered) union of the two masks, the unsafe image outside it."""
    size = unsafe.size
    twin = twin.convert("RGB").resize(size) if twin.size != size else twin.convert("RGB")
    union = np.zeros((size[1], size[0]), dtype=bool)
    for m in (unsafe_mask, twin_mask):
        if m is not None:
            union |= np.asarray(Image.fromarray(np.asarray(m, dtype=np.uint8) * 255).resize(size)) > 127
    grow = max(3, (min(size) // 16) | 1)  # odd kernel: the region plus a margin for soft edges
    mask = Image.fromarray(union.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(grow))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, min(size) / 40)))
    a = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    out = a * np.asarray(twin, dtype=np.float32) + (1 - a) * np.asarray(unsafe.convert("RGB"), dtype=np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def keep_outside_concept(detector, unsafe: list, twins: list) -> list:
    """Every twin restricted to the concept's region; where the detector finds no region, the twin as it was."""
    u_masks, t_masks = concept_regions(detector, unsafe), concept_regions(detector, twins)
    return [composite(u, t, mu, mt) if mu is not None else t
            for u, t, mu, mt in zip(unsafe, twins, u_masks, t_masks)]
