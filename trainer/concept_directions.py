"""The adapter restricted to the concept's input directions: a constraint in place of a penalty.

DUO's λ terms *penalise* change on what must be kept (pure noise, the retain set); close concepts still drift,
because the DPO term pulls harder than any λ that lets it work. Here each adapted layer's LoRA down-projection A
is kept inside the span of the N input directions where the concept's features carry the most energy relative to
the kept inputs (the null-space idea of AlphaEdit, Fang et al. 2024, with the concept's side explicit; a convolution's
input is read as its k × k patches, the vectors its flattened weight multiplies):

    C_concept v = μ C_keep v,   V = the N generalised eigenvectors of largest μ,   A ← A · Q Qᵀ   (Q: orthonormal
                                                                                        basis of span V)

C_concept: the layer's uncentred input second moment over noised unsafe images (t uniform over the whole schedule,
empty prompt); C_keep: over noised retain images under their own and the empty prompt and over pure noise, plus the
retain images of named close concepts `close_weight` more times. An input with no component in span V passes the
adapter untouched: W x + B A Q Qᵀ x = W x. A is projected at the start and after every optimiser step, so the saved
adapter is an ordinary LoRA (B · A Q Qᵀ has rank ≤ the LoRA's). Only Q (d × N per layer) is kept, and the moments
wait on the CPU between passes: SDXL's hundreds of 1280-wide layers would otherwise hold gigabytes of d × d matrices.

Layers that read only the prompt (cross-attention keys and values, the family's `prompt_side_targets`) see nothing
of the image, so there C_concept is taken over the concept's own prompts (the pairs' unsafe prompts) and C_keep over
the retain prompts and the empty one: such a layer changes what the concept's words say and passes every other
prompt's words through. That needs the pairs trained on their prompts (condition "unsafe" or "prompt"): under the
empty prompt alone, the adapter there would never see the words it is restricted to.

A fixed N of the test bed's 32- and 64-wide layers says nothing for SD 1.5's 320–1280-wide ones, so N may follow the
width instead: a share 0 < N < 1 keeps ⌈N·d⌉ of a d-wide layer's directions; N = "auto" keeps those whose μ is at
least the layer's mean μ (tr(C_keep⁻¹ C_concept) / d), where the concept stands out more than it does on average, a
count that follows the layer's spectrum too and does not move when a moment is scaled as a whole.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

DRAWS = 4  # noise draws per image for the moments (t and ε differ per draw)
RIDGE = 1e-3  # C_keep + RIDGE·mean eigenvalue·I: a direction no kept input uses must not divide by zero
CHUNK = 16  # images per forward pass while measuring
AUTO = "auto"  # per layer: the directions whose μ is at least the layer's mean μ


def valid_count(n) -> bool:
    """A directions setting: 0 (off), a positive count per layer, a share of each layer's width, or AUTO."""
    if isinstance(n, bool):
        return False
    return n == AUTO or (isinstance(n, int) and n >= 0) or (isinstance(n, float) and 0 < n < 1)


def parse_setting(text: str) -> int | float | str | None:
    """A directions setting as a user types it (the flag, the tab's field): AUTO, a whole number ("24.0" too: a
    share is below 1, so a whole value can only be a count) or a share; None when the text is none of these. The
    range is `valid_count`'s."""
    text = text.strip()
    if text.lower() == AUTO:
        return AUTO
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


def describe(n) -> str:
    """A directions setting in words, for progress lines."""
    if n == AUTO:
        return "those above each layer's mean μ"
    return f"{n:.0%} of each layer's" if isinstance(n, float) else f"{n} per layer"


def layer_count(n, values) -> int:
    """How many of a layer's directions setting `n` keeps, given its μ (one per input direction)."""
    import math

    if n == AUTO:
        return int((values >= values.mean()).sum())
    if isinstance(n, float):
        return math.ceil(n * len(values))
    return min(n, len(values))


def top_directions(c_concept, c_keep, n: int | float | str, ridge: float = RIDGE):
    """Q (d × n, float32): an orthonormal basis of the span of the n generalised eigenvectors of (C_concept, C_keep)
    with the largest eigenvalues (Q Qᵀ projects onto it), and those eigenvalues (descending). n as `layer_count`
    reads it. Float64 on the CPU."""
    import torch

    c_concept, c_keep = c_concept.double().cpu(), c_keep.double().cpu()
    d = c_keep.shape[0]
    c_keep = c_keep + ridge * torch.trace(c_keep) / d * torch.eye(d, dtype=c_keep.dtype)
    l_inv = torch.linalg.inv(torch.linalg.cholesky(c_keep))
    values, vectors = torch.linalg.eigh(l_inv @ c_concept @ l_inv.T)
    values, vectors = values.flip(0), vectors.flip(1)
    n = layer_count(n, values)
    v = l_inv.T @ vectors[:, :n]  # back from the whitened space, where they are not orthonormal
    basis, _ = torch.linalg.qr(v)
    return basis.float(), values[:n]


def layer_rows(module, x):
    """What a layer's down-projection reads, one row per position: a linear layer's last dimension; a convolution's
    k × k patches (channels·k·k, the order of its flattened weight)."""
    import torch

    conv = getattr(module, "base_layer", module)
    if isinstance(conv, torch.nn.Conv2d):
        patches = torch.nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def input_moments(raw, layers: dict, run) -> dict:
    """name → E[x xᵀ] of each layer's input rows over every forward pass `run()` makes (float32, on the CPU)."""
    import torch

    sums, hooks = {}, []

    def hook(name):
        def record(module, args):
            x = layer_rows(module, args[0].detach()).float()
            total, count = sums.get(name, (0, 0))
            sums[name] = (total + x.T @ x, count + len(x))
        return record

    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return {name: (total / max(count, 1)).cpu() for name, (total, count) in sums.items()}


@dataclass
class ConceptDirections:
    """The projectors of one run, applied to the LoRA down-projections at the start and after every step."""
    bases: dict  # LoRA down-projection weight (Parameter) → Q, on the weight's device
    top_ratio: float  # the largest μ over all layers: how far the concept's inputs stand out (≈1: not at all)
    kept_share: float  # the directions kept over all layers' input widths: what N (or AUTO) came to

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for weight, q in self.bases.items():  # a convolution's weight flattened to (rank, channels·k·k)
                flat = weight.reshape(weight.shape[0], -1)
                weight.copy_(((flat @ q) @ q.T).reshape(weight.shape))


def prompt_side_layers(names, family) -> set:
    """The adapted layers whose input is the prompt's encoding alone."""
    from .lora import targeted

    return {n for n in names if targeted(n, family.prompt_side_targets)}


def check_condition(denoiser, family, targets, n, condition: str) -> None:
    """Directions on prompt-side layers are measured on the concept's prompts: refuse them, before any pair is made,
    where training would never show the adapter a prompt."""
    from .lora import targeted

    if not n or condition != "empty":
        return
    # by name: on a model an earlier run adapted, peft's wrappers stand where the linear layers were
    side = sorted(prompt_side_layers([name for name, _ in denoiser.named_modules() if targeted(name, targets)],
                                     family))
    if side:
        raise UserError(f"concept directions on layers that read only the prompt ({side[0]}"
                        f"{f' and {len(side) - 1} more' if len(side) > 1 else ''}) are measured on the concept's "
                        "prompts: train with --condition unsafe (or prompt), or leave those layers out of "
                        "--target-modules")


def close_rows(prompts, close_concepts) -> list[int]:
    """Retain images whose prompt names a close concept (whole words, any case)."""
    import re

    words = [re.compile(rf"\b{re.escape(c.strip())}\b", re.IGNORECASE) for c in close_concepts if c.strip()]
    return [i for i, p in enumerate(prompts) if any(w.search(p) for w in words)]


def weighed_close_rows(prompts, close_concepts, close_weight: float) -> list[int]:
    """The retain images to weigh more; close words with a weight that no retain prompt uses are a UserError."""
    rows = close_rows(prompts, close_concepts) if close_weight else []
    if close_concepts and close_weight and not rows:
        raise UserError(f"no retain prompt names a close concept ({', '.join(close_concepts)}): give --close-concepts "
                        "words the retain prompts use, or --close-weight 0")
    return rows


def concept_directions(raw, family, process, cache, retain_prompts, n: int | float | str, close_concepts=(),
                       close_weight: float = 0.0, seed: int = 0, autocast=None):
    """Measure both moments with the adapter off and project every LoRA down-projection onto its layer's top-n
    directions. Needs the retain set's latents in `cache` (what must be kept)."""
    import contextlib

    import torch

    from .lora import adapters_disabled, lora_down_layers

    if not cache.retain_size():
        raise UserError("concept_directions needs a retain set (what the adapter must leave alone): make the pairs "
                        "with --retain-prompt and --num-retain")
    close = weighed_close_rows(retain_prompts, close_concepts, close_weight)
    adapted = lora_down_layers(raw)
    layers = {name: layer for name, (layer, _) in adapted.items()}
    if not layers:
        raise UserError("concept_directions works on linear and convolution LoRA targets; none of the targets is one")
    on_prompts = prompt_side_layers(layers, family)
    if on_prompts and cache.unsafe_cond is None:  # check_condition says so before the pairs; this is its backstop
        raise UserError("concept directions on prompt-side layers need the pairs on their prompts (--condition unsafe)")
    autocast = autocast or contextlib.nullcontext
    gen = torch.Generator().manual_seed(seed)
    device = cache.unsafe_mean.device

    def noised(which, idx):
        z = cache.sample(which, idx, gen)
        t = process.draw_t(len(idx), 0, 1000, gen).to(device)
        return process.add_noise(z, torch.randn(z.shape, generator=gen).to(device), t), t

    def predict(x, t, cond):
        with autocast():
            family.predict(raw, x, t, cond)

    def concept(on_its_prompts: bool):
        def run():
            for _ in range(DRAWS):
                for idx in torch.arange(cache.pair_count()).split(CHUNK):
                    x, t = noised("unsafe", idx)
                    predict(x, t, cache.condition("unsafe", idx) if on_its_prompts else cache.empty.repeat(len(idx)))
        return run

    def kept(rows, pure_noise: bool):
        def run():
            for _ in range(DRAWS):
                for idx in rows.split(CHUNK):
                    x, t = noised("retain", idx)
                    predict(x, t, cache.empty.repeat(len(idx)))
                    predict(x, t, cache.retain_cond.rows(idx))
                    if pure_noise:  # x_T, which DUO's own λ term keeps
                        noise = torch.randn(x.shape, generator=gen).to(device)
                        predict(noise, process.pure_noise_t(len(idx), device), cache.empty.repeat(len(idx)))
        return run

    with adapters_disabled(raw):
        c_concept = input_moments(raw, {k: v for k, v in layers.items() if k not in on_prompts}, concept(False))
        if on_prompts:
            c_concept |= input_moments(raw, {k: layers[k] for k in on_prompts}, concept(True))
        c_keep = input_moments(raw, layers, kept(torch.arange(cache.retain_size()), True))
        if close:
            c_close = input_moments(raw, layers, kept(torch.tensor(close), False))
            c_keep = {name: c + close_weight * c_close[name] for name, c in c_keep.items()}
    bases, top, kept_directions, widths = {}, 1.0, 0, 0
    for name, (_, weight) in adapted.items():
        q, values = top_directions(c_concept[name], c_keep[name], n)
        bases[weight] = q.to(weight.device, weight.dtype)
        top = max(top, float(values[0]))
        kept_directions, widths = kept_directions + q.shape[1], widths + q.shape[0]
    directions = ConceptDirections(bases, top, kept_directions / widths)
    directions.apply()
    return directions
