"""What a step function gets from the loop, and what it gives back."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..families import Family, NoiseProcess
from ..latent_cache import LatentCache
from ..lora import adapters_disabled


@dataclass
class StepContext:
    family: Family
    process: NoiseProcess
    denoiser: Any  # what the forward runs through (accelerate may wrap it)
    raw: Any  # the unwrapped peft-carrying module, for toggling the adapter
    cache: LatentCache
    t_range: tuple[int, int]
    beta: float = 0.0
    lam: float = 0.0
    esd_eta: float = 1.0
    autocast: Any = nullcontext  # a callable returning a context manager (accelerator.autocast)

    def policy(self, x, t, cond):
        with self.autocast():
            return self.family.predict(self.denoiser, x, t, cond)

    def reference(self, x, t, cond):
        import torch

        with torch.no_grad(), adapters_disabled(self.raw), self.autocast():
            return self.family.predict(self.denoiser, x, t, cond)


@dataclass
class StepOutput:
    loss: Any  # scalar tensor to backpropagate
    logs: dict = field(default_factory=dict)
    chosen_rewards: Any = None  # per pair, DUO: implicit reward of the safe twin
    rejected_rewards: Any = None  # per pair, DUO: implicit reward of the unsafe image
