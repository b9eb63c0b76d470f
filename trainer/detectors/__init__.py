"""Concept detectors behind one interface (see base.Detector); `make_detector("colour:red")` builds one by name."""
from __future__ import annotations

from ..errors import UserError
from .base import Detector, detect

DETECTOR_NAMES = ("none", "nudenet", "colour:<colour>")


def make_detector(spec: str | None) -> Detector | None:
    spec = (spec or "none").strip().lower()
    if spec == "none":
        return None
    if spec == "nudenet":
        from .nudenet_detector import NudeNetDetector
        return NudeNetDetector()
    if spec.startswith(("colour:", "color:")):
        from .colour import ColourDetector
        try:
            return ColourDetector(spec.split(":", 1)[1])
        except ValueError as e:
            raise UserError(str(e)) from None
    raise UserError(f"unknown detector {spec!r}; detectors: {', '.join(DETECTOR_NAMES)}")


__all__ = ["Detector", "detect", "make_detector", "DETECTOR_NAMES"]
