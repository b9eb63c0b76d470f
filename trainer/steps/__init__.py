"""One step per training method: `draw` makes every random choice for B pairs up front, `loss_on` computes the
loss of a (micro-)batch of those draws. The loop calls the two and backpropagates; it never branches on method."""
from __future__ import annotations

from typing import Callable, NamedTuple

from .context import StepContext, StepOutput
from .duo import duo_draw, duo_loss_on, duo_step
from .esd import esd_draw, esd_loss_on, esd_step


class Method(NamedTuple):
    draw: Callable
    loss_on: Callable


METHODS = {"duo": Method(duo_draw, duo_loss_on), "esd": Method(esd_draw, esd_loss_on)}


def micro_batch(draw: dict, start: int, stop: int) -> dict:
    """Rows start:stop of every per-pair tensor of a draw."""
    return {k: v[start:stop] for k, v in draw.items()}


__all__ = ["METHODS", "Method", "StepContext", "StepOutput", "duo_step", "esd_step", "micro_batch"]
