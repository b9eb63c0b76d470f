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
