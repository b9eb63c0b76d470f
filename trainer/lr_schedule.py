"""The learning rate over a run: diffusers' schedules (as the official DUO scripts and kohya-style trainers offer),
built once per run and stepped once per optimiser step. The official recipe is "constant"."""
from __future__ import annotations

from .errors import UserError

# diffusers' SchedulerType names, less piecewise_constant (it needs a rule string no recipe here uses)
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
WARMUP = tuple(s for s in SCHEDULES if s != "constant")


def check_schedule(name: str, warmup_steps: int, cycles: int, steps: int) -> None:
    if name not in SCHEDULES:
        raise UserError(f"lr_scheduler must be one of {', '.join(SCHEDULES)}, got {name!r}")
    if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < steps):
        raise UserError(f"lr_warmup_steps must be a whole number from 0 to steps - 1 ({steps - 1}), "
                        f"got {warmup_steps!r}")
    if warmup_steps and name not in WARMUP:
        raise UserError(f"lr_warmup_steps needs a schedule with a warm-up ({', '.join(WARMUP)}); "
                        f"'{name}' has none")
    if not (isinstance(cycles, int) and cycles > 0):
        raise UserError(f"lr_cycles must be a positive whole number, got {cycles!r}")


def build_schedule(optimizer, name: str, warmup_steps: int, cycles: int, steps: int):
    """A LambdaLR over `steps` optimiser steps; its state goes into checkpoints so a resumed run continues it."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps, num_cycles=cycles)
