"""How the loop talks to its host: events out, cancellation back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled


@dataclass
class ProgressEvent:
    stage: str  # "load", "pairs", "retain", "cache", "train", "checkpoint", "preview", "save", "done"
    step: int = 0
    total: int = 0
    message: str = ""
    logs: dict = field(default_factory=dict)


# A host's callback; returning False (or raising Cancelled) stops the job cleanly.
ProgressCallback = Callable[[ProgressEvent], Optional[bool]]


def report(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    if callback is not None and callback(event) is False:
        raise Cancelled(f"cancelled during {event.stage}")
