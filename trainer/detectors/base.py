"""One small interface for every concept detector: a score per image, and a threshold that means "found"."""
from __future__ import annotations

from typing import Protocol, Sequence

from PIL import Image


class Detector(Protocol):
    name: str
    threshold: float

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """Confidence in [0, 1] that each image shows the concept."""


def detect(detector: Detector, images: Sequence[Image.Image]) -> list[bool]:
    return [s >= detector.threshold for s in detector.scores(images)]


def concept_regions(detector, images: Sequence[Image.Image]) -> list:
    """Where each image shows the concept (bool H x W), from detectors that can say so (`regions`); None where
    the detector cannot, or finds nothing."""
    regions = getattr(detector, "regions", None)
    return list(regions(images)) if regions else [None] * len(images)
