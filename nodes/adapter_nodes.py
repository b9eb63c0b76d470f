"""ComfyUI nodes to load, stack and inspect DUO adapters. Thin: ComfyUI's own LoRA code does the patching."""
from __future__ import annotations

import math

from ..trainer.errors import UserError
from . import host
from .facts import read_facts, summary

_STRENGTH = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
_SLOTS = 4


def _apply(model, clip, lora_name: str, strength_model: float, strength_clip: float):
    """Exactly what core LoraLoader does with the file, so DUO's loaders give its pixels."""
    for what, value in (("strength_model", strength_model), ("strength_clip", strength_clip)):
        if not math.isfinite(value):  # a linked FLOAT can carry what the widget's range cannot
            raise UserError(f"{what} of {lora_name} must be a finite number, got {value}")
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(str(host.lora_path(lora_name)), safe_load=True)
    return comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)


def adapter_summary(lora_name: str) -> str:
    """One line per fact: concept, beta, steps, pairs, base model (or a note that it is not a DUO adapter)."""
    return summary(lora_name, read_facts(host.lora_path(lora_name)))


class DUOLoraLoader:
    """LoraLoader semantics (strength_model / strength_clip), plus the adapter's DUO facts as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "lora_name": (host.lora_names(),),
                             "strength_model": _STRENGTH, "strength_clip": _STRENGTH}}

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "duo_info")
    FUNCTION = "load"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Apply a DUO unlearning adapter (a kohya LoRA) and show what it unlearned."

    def load(self, model, clip, lora_name, strength_model, strength_clip):
        text = adapter_summary(lora_name)
        if strength_model == 0 and strength_clip == 0:
            return (model, clip, text)
        model, clip = _apply(model, clip, lora_name, strength_model, strength_clip)
        return (model, clip, text)


class DUOApplyAdapter:
    """The adapter(s) a DUO Unlearn node just trained (its lora_name output, one file a line), applied in order."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",),
                             "lora_name": ("STRING", {"forceInput": True}),
                             "strength_model": _STRENGTH, "strength_clip": _STRENGTH}}

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "duo_info")
    FUNCTION = "apply"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Apply the adapter(s) named by DUO Unlearn's lora_name output, with LoraLoader semantics."

    def apply(self, model, clip, lora_name, strength_model, strength_clip):
        names = [n.strip() for n in lora_name.splitlines() if n.strip()]
        if not names:
            raise UserError("lora_name is empty: connect DUO Unlearn's lora_name output")
        for name in names:
            if strength_model != 0 or strength_clip != 0:
                model, clip = _apply(model, clip, name, strength_model, strength_clip)
        return (model, clip, "\n\n".join(adapter_summary(n) for n in names))


class DUOLoraStack:
    """Up to four adapters in one node (e.g. the four violence sub-concepts); "None" slots are skipped."""

    @classmethod
    def INPUT_TYPES(cls):
        names = ["None"] + host.lora_names()
        optional = {}
        for i in range(1, _SLOTS + 1):
            optional[f"lora_{i}"] = (names,)
            optional[f"strength_{i}"] = _STRENGTH
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",)}, "optional": optional}

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "duo_info")
    FUNCTION = "stack"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Stack several DUO adapters, each with its own weight (same as chaining LoraLoaders)."

    def stack(self, model, clip, **slots):
        lines = []
        for i in range(1, _SLOTS + 1):
            name, weight = slots.get(f"lora_{i}", "None"), slots.get(f"strength_{i}", 1.0)
            if name in (None, "None") or weight == 0:
                continue
            model, clip = _apply(model, clip, name, weight, weight)
            lines.append(f"{weight:g} x {adapter_summary(name).splitlines()[0]}")
        return (model, clip, "\n".join(lines) or "no adapter applied")


class DUOAdapterInfo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora_name": (host.lora_names(),)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "info"
    CATEGORY = "DUO unlearning"
    OUTPUT_NODE = True
    DESCRIPTION = "What a DUO adapter unlearned (concept, β, steps, pairs, base model), shown on the node."

    def info(self, lora_name):
        text = adapter_summary(lora_name)
        return {"ui": {"text": [text]}, "result": (text,)}


class DUOCompareImages:
    """Base and unlearned images (same seed) side by side, the check artists make; a before/after slider on the node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"base": ("IMAGE",), "unlearned": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "compare"
    CATEGORY = "DUO unlearning"
    OUTPUT_NODE = True  # it shows the slider even with nothing downstream
    DESCRIPTION = "Base | unlearned side by side, and a before/after slider on the node."

    def compare(self, base, unlearned):
        import torch

        if base.shape != unlearned.shape:
            raise UserError(f"base {tuple(base.shape)} and unlearned {tuple(unlearned.shape)} images differ in "
                             "size or batch: sample both with the same latent")
        gap = torch.ones_like(base[:, :, : max(2, base.shape[2] // 64)])
        side_by_side = torch.cat([base, gap, unlearned], dim=2)
        return {"ui": {"duo_compare": _save_temp_pair(base[0], unlearned[0])}, "result": (side_by_side,)}


def _save_temp_pair(base, unlearned) -> list[dict]:
    """Both first images as PNGs in ComfyUI's temp folder, addressed as /view addresses them."""
    import os
    import uuid

    import folder_paths
    import numpy as np
    from PIL import Image

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    out = []
    for role, image in (("base", base), ("unlearned", unlearned)):
        name = f"duo_compare_{token}_{role}.png"
        array = (image.detach().cpu().float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(os.path.join(folder, name), compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp", "role": role})
    return out
