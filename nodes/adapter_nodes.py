"""ComfyUI nodes to load, stack and inspect DUO adapters. Thin: ComfyUI's own LoRA code does the patching."""
from __future__ import annotations

import json

_STRENGTH = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
_SLOTS = 4


def _lora_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def _apply(model, clip, lora_name: str, strength_model: float, strength_clip: float):
    import comfy.sd
    import comfy.utils
    import folder_paths

    path = folder_paths.get_full_path_or_raise("loras", lora_name)
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    return comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)


def adapter_summary(lora_name: str) -> str:
    """One line per fact: concept, beta, steps, pairs, base model (or a note that it is not a DUO adapter)."""
    import folder_paths

    from ..trainer.export import describe_adapter

    info = describe_adapter(folder_paths.get_full_path_or_raise("loras", lora_name))
    if not info["is_duo"]:
        return f"{lora_name}: not a DUO adapter ({info['modules']} LoRA modules)"
    duo = info["duo"]
    keys = ("concept", "method", "beta", "lambda", "steps", "pairs", "base_model", "unsafe_prompts")
    return "\n".join([lora_name] + [f"{k}: {json.dumps(duo[k]) if not isinstance(duo[k], str) else duo[k]}"
                                    for k in keys if k in duo])


class DUOLoraLoader:
    """LoraLoader semantics (strength_model / strength_clip), plus the adapter's DUO facts as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "lora_name": (_lora_names(),),
                             "strength_model": _STRENGTH, "strength_clip": _STRENGTH}}

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "duo_info")
    FUNCTION = "load"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Apply a DUO unlearning adapter (a kohya LoRA) and show what it unlearned."

    def load(self, model, clip, lora_name, strength_model, strength_clip):
        summary = adapter_summary(lora_name)
        if strength_model == 0 and strength_clip == 0:
            return (model, clip, summary)
        model, clip = _apply(model, clip, lora_name, strength_model, strength_clip)
        return (model, clip, summary)


class DUOLoraStack:
    """Up to four adapters in one node (e.g. the four violence sub-concepts); "None" slots are skipped."""

    @classmethod
    def INPUT_TYPES(cls):
        names = ["None"] + _lora_names()
        optional = {}
        for i in range(1, _SLOTS + 1):
            optional[f"lora_{i}"] = (names,)
            optional[f"strength_{i}"] = _STRENGTH
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",)}, "optional": optional}

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "duo_info")
    FUNCTION = "stack"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Stack several DUO adapters, each with its own weight."

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
        return {"required": {"lora_name": (_lora_names(),)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "info"
    CATEGORY = "DUO unlearning"
    OUTPUT_NODE = True

    def info(self, lora_name):
        text = adapter_summary(lora_name)
        return {"ui": {"text": [text]}, "result": (text,)}


class DUOCompareImages:
    """Base and unlearned images (same seed) side by side, the check artists make."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"base": ("IMAGE",), "unlearned": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "compare"
    CATEGORY = "DUO unlearning"

    def compare(self, base, unlearned):
        import torch

        if base.shape != unlearned.shape:
            raise ValueError(f"base {tuple(base.shape)} and unlearned {tuple(unlearned.shape)} images differ in "
                             "size or batch: sample both with the same latent")
        gap = torch.ones_like(base[:, :, : max(2, base.shape[2] // 64)])
        return (torch.cat([base, gap, unlearned], dim=2),)
