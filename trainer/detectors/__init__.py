"""Concept detectors behind one interface (see base.Detector); `make_detector("colour:red")` builds one by name."""
from __future__ import annotations

from ..errors import UserError
from .base import Detector, concept_regions, detect

DETECTOR_NAMES = ("none", "nudenet", "nudenet:<min score>", "colour:<colour>")


def no_detector(spec: str | None) -> bool:
    """Whether a detector setting means "no detector" (unset, empty, or "none" in any case)."""
    return (spec or "none").strip().lower() == "none"


def check_detector(spec: str | None) -> None:
    """The spelling of a detector setting, checked with the other settings: building NudeNet loads its model."""
    if no_detector(spec):
        return
    spec = spec.strip().lower()
    if spec == "nudenet" or spec.startswith("nudenet:"):
        _nudenet_threshold(spec)
    else:
        make_detector(spec)


def _nudenet_threshold(spec: str) -> float | None:
    if spec == "nudenet":
        return None  # the official gating: any finding of the four classes
    try:
        threshold = float(spec.split(":", 1)[1])
    except ValueError:
        threshold = -1.0
    if not 0 < threshold <= 1:
        raise UserError(f"nudenet:<min score> needs a score in (0, 1], got {spec!r}")
    return threshold


def make_detector(spec: str | None) -> Detector | None:
    if no_detector(spec):
        return None
    spec = spec.strip().lower()
    if spec == "nudenet" or spec.startswith("nudenet:"):
        threshold = _nudenet_threshold(spec)
        from .nudenet_detector import NudeNetDetector

        return NudeNetDetector() if threshold is None else NudeNetDetector(threshold=threshold)
    if spec.startswith(("colour:", "color:")):
        from .colour import ColourDetector
        try:
            return ColourDetector(spec.split(":", 1)[1])
        except ValueError as e:
            raise UserError(str(e)) from None
    raise UserError(f"unknown detector {spec!r}; detectors: {', '.join(DETECTOR_NAMES)}")


__all__ = ["Detector", "check_detector", "concept_regions", "detect", "make_detector", "DETECTOR_NAMES"]
