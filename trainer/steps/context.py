"""What a step function gets from the loop, and what it gives back."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

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
    shared_t: bool = False  # the pair's two images at one timestep
    beta: float = 0.0
    lam: float = 0.0
    lam_retain: float = 0.0  # weight of output preservation on the retain set (0: off)
    retain_t_range: tuple[int, int] | None = None  # the retain term's timesteps (None: t_range)
    esd_eta: float = 1.0
    autocast: Any = nullcontext  # a callable returning a context manager (the runtime's autocast)
    backward: Callable | None = None  # the loop's backward, for a term computed apart from the step's loss
    loss_weight: float = 1.0  # this micro-batch's share of the step's loss
    half: bool = False  # the runtime autocasts to fp16/bf16
    _frozen_half: list | None = None  # found once: the frozen weights' dtype does not change during a run

    def frozen_half(self) -> list:
        if self._frozen_half is None:
            self._frozen_half = _half_frozen(self.raw)
        return self._frozen_half

    def full_precision(self) -> bool:
        """Nothing rounds to half precision: every row can share one batched pass."""
        return not self.half and not self.frozen_half()

    def policy(self, x, t, cond):
        with self.autocast():
            return self.family.predict(self.denoiser, x, t, cond)

    def reference(self, x, t, cond):
        import torch

        with torch.no_grad(), adapters_disabled(self.raw), self.autocast():
            return self.family.predict(self.denoiser, x, t, cond)

    def preservation(self, x, t, cond, weight: float | None = None):
        """‖ε_θ(x_T) − ε_ref(x_T)‖² (or on any rows to preserve, weighted `weight`, default λ), in float32 whatever the frozen weights are stored in.

        λ (5e6 in the official recipe) times the squared rounding difference of two half-precision passes
        (≈1e-5 in bf16) would swamp the DPO term, so these rows run in full precision. With half-precision frozen
        weights that means upcasting them for these rows only, one layer at a time, and backpropagating this term
        inside that window (its gradient is added to the step's); the returned value is then detached.
        """
        from ..loss import output_preservation

        half = self.frozen_half()
        if not half:
            with _full_precision_kernels():
                pred = self.family.predict(self.denoiser, x, t, cond)
                ref = self._reference_fp32(x, t, cond)
            return output_preservation(pred, ref)
        import torch

        with _upcast_per_layer(half), _full_precision_kernels():
            cond = cond.to(dtype=torch.float32)
            pred = self.family.predict(self.denoiser, x.float(), t, cond)
            ref = self._reference_fp32(x.float(), t, cond)
            prior = output_preservation(pred, ref)
            self.backward((self.lam if weight is None else weight) * prior * self.loss_weight)
        return prior.detach()

    def _reference_fp32(self, x, t, cond):
        import torch

        with torch.no_grad(), adapters_disabled(self.raw):
            return self.family.predict(self.denoiser, x, t, cond)


def _half_frozen(module) -> list:
    import torch

    return [p for n, p in module.named_parameters() if ".lora_" not in n and p.dtype in (torch.float16,
                                                                                           torch.bfloat16)]


_UPCAST = object()  # marks a saved frozen weight that autograd gets back by upcasting its half original again


@contextmanager
def _upcast_per_layer(params):
    """Frozen half-precision weights as float32 only while their own module runs, and again when backward needs them
    (both lossless): the numbers of upcasting the whole model, with the float32 copy of one layer at a time instead
    of the whole model's (SDXL's UNet: 10 GB in float32, on top of which a 12 GB card has no room for the pass)."""
    import weakref

    import torch

    half = {id(p) for p in params}
    live = {}  # storage address of a float32 copy -> (weak reference to it, its half-precision original)
    swapped = {}

    def upcast(module, args):
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in half:
                up = p.detach().float()
                key = up.untyped_storage().data_ptr()
                live[key] = (weakref.ref(up), p)
                module._parameters[name] = up  # for this call only: the module's own parameter is untouched
                swapped.setdefault(module, []).append((name, p, key))

    def restore(module, args, output):
        for name, p, key in swapped.pop(module, ()):
            module._parameters[name] = p
            live.pop(key, None)  # ops save what they need while the module runs

    def pack(t):
        if t.dtype == torch.float32 and t.layout == torch.strided:
            entry = live.get(t.untyped_storage().data_ptr())
            if entry is not None and entry[0]() is not None:  # alive, so the address is not reused
                return (_UPCAST, entry[1], t.size(), t.stride(), t.storage_offset())
        return t

    def unpack(saved):
        if isinstance(saved, tuple) and saved[0] is _UPCAST:
            _, p, size, stride, offset = saved
            return p.detach().float().as_strided(size, stride, offset)
        return saved

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = [register_module_forward_pre_hook(upcast), register_module_forward_hook(restore)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
        for module, names in swapped.items():  # a forward that raised midway
            for name, p, _ in names:
                module._parameters[name] = p
        live.clear()


@contextmanager
def _full_precision_kernels():
    """No autocast and no TF32 (a 10-bit mantissa is rounding of the same order as fp16's)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device, enabled=False), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old


@dataclass
class StepOutput:
    loss: Any  # scalar tensor to backpropagate
    logs: dict = field(default_factory=dict)
    chosen_rewards: Any = None  # per pair, DUO: implicit reward of the safe twin
    rejected_rewards: Any = None  # per pair, DUO: implicit reward of the unsafe image
