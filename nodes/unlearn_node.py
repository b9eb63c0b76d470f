"""DUO Unlearn: pairs + DUO training for a checkpoint of ComfyUI's, inside a graph. A thin caller of trainer.unlearn."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..trainer.errors import UserError, out_of_memory_line
from ..trainer.pairs_folder import pairs_folder
from ..trainer.presets import UNSAFE_PROMPT
from ..trainer.same_schedule import same_schedule
from ..trainer.testbed import TESTBED_FAMILIES, TESTBEDS, available_testbeds
from . import host
from .facts import FAMILY_LABELS, read_facts, summary

PRECISIONS = ("auto", "no", "fp16", "bf16")
CHECKPOINTING = ("auto", "on", "off")
_PRESET_DEFAULT = "0 = the preset's value"


def _preset_names() -> list[str]:
    from ..trainer.presets import load_presets

    return list(load_presets())


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


class DUOUnlearn:
    """Make the pair dataset and train a DUO adapter for the chosen checkpoint; the adapter lands in models/loras."""

    @classmethod
    def INPUT_TYPES(cls):
        presets = _preset_names()
        testbeds = available_testbeds()  # by name, before ComfyUI's checkpoints; only those whose weights exist
        named = ", ".join(f"'{n}' ({FAMILY_LABELS[TESTBED_FAMILIES[n]]})" for n in testbeds)
        return {
            "required": {
                "ckpt_name": (testbeds + host.checkpoint_names(), {
                    "tooltip": f"The base model to unlearn from (models/checkpoints); {named}: the bundled CPU-sized "
                               "shapes models."}),
                "preset": (presets, {"default": "testbed-red" if "testbed-red" in presets else presets[0],
                                     "tooltip": "Prompts, detector and recipe. 'custom': use the prompt boxes."}),
                "concept": ("STRING", {"default": "", "tooltip": "Custom preset: the concept's name. Multi-concept "
                                       "presets (violence): train only this one; empty trains them all."}),
                "unsafe_prompts": ("STRING", {"multiline": True, "default": "",
                                              "tooltip": "Custom preset: prompts showing the concept, one per line."}),
                "safe_prompts": ("STRING", {"multiline": True, "default": "",
                                            "tooltip": "Custom preset: the same prompts without it, one per line."}),
                "num_pairs": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": f"Pairs; {_PRESET_DEFAULT}."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 100000,
                                  "tooltip": f"Training steps; {_PRESET_DEFAULT} (else 1000)."}),
                "beta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 1.0,
                                   "tooltip": f"β: higher stays closer to the base model; {_PRESET_DEFAULT}."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": True}),
                "lora_name": ("STRING", {"default": "duo_adapter", "tooltip": "Saved as <name>.safetensors in "
                                         "models/loras (multi-concept presets: <name>_<concept>.safetensors)."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing adapter of that name "
                                          "that was trained differently. Off: such a name is refused."}),
            },
            "optional": {
                "config_dir": ("STRING", {"default": "", "tooltip": "Diffusers folder of the same family, for "
                               "single-file checkpoints offline. Empty: the first matching one in models/diffusers."}),
                "mixed_precision": (list(PRECISIONS), {"default": "auto", "tooltip": "Frozen weights in half "
                                    "precision (LoRA and optimizer stay fp32). auto: bf16 or fp16 on a GPU, fp32 "
                                    "on the CPU."}),
                "gradient_checkpointing": (list(CHECKPOINTING), {"default": "auto", "tooltip": "Trade compute for "
                                           "memory. auto: on when the estimated need exceeds free memory."}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Pairs and "
                                       "training at this size (a multiple of 8); 0 = the model's native size."}),
                "twin_negative": ("STRING", {"default": "", "tooltip": "The negative prompt the safe twins are "
                                  f"drawn with; {UNSAFE_PROMPT} stands for the pair's unsafe prompt (the paper's). "
                                  "The concept's own words (red) push the twin off the concept only, not off the "
                                  "shape or scene the prompt also names. Empty: the preset's."}),
            },
        }

    RETURN_TYPES = ("STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("lora_name", "preview", "facts")
    OUTPUT_TOOLTIPS = ("The adapter file name(s), one per line: connect to DUO Apply Adapter.",
                       "Base | unlearned on the preset's prompts, same seeds.", "What was trained, one fact a line.")
    FUNCTION = "unlearn"
    CATEGORY = "DUO unlearning"
    DESCRIPTION = "Unlearn a concept: pairs (concept / without) + DUO training of a LoRA for the chosen checkpoint."

    @classmethod
    def IS_CHANGED(cls, lora_name="", **inputs):
        # Same inputs and the same adapter file(s) on disk: ComfyUI reuses the cached result. A deleted or replaced
        # adapter changes the fingerprint, and the node then re-checks (and retrains only if it must).
        state = {"inputs": {k: v for k, v in sorted(inputs.items())}, "lora_name": lora_name, "files": []}
        try:
            stem = Path(_adapter_path(lora_name)).stem
            for path in sorted(host.loras_dir().glob(f"{stem}*.safetensors")):
                state["files"].append([path.name, path.stat().st_mtime_ns])
        except (UserError, OSError, ImportError):
            pass
        return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()

    def unlearn(self, ckpt_name, preset, concept, unsafe_prompts, safe_prompts, num_pairs, steps, beta, seed,
                lora_name, overwrite, config_dir="", mixed_precision="auto", gradient_checkpointing="auto",
                resolution=0, twin_negative=""):
        from ..trainer.previews import preview_path
        from ..trainer.unlearn import UnlearnConfig, plan, unlearn

        model_spec, config = _model_and_configs(ckpt_name, (config_dir or "").strip())
        if preset == "custom":  # named by the node's widgets, not the CLI's flags the trainer would name
            for widget, text in (("unsafe_prompts", unsafe_prompts), ("safe_prompts", safe_prompts)):
                if not _lines(text):
                    raise UserError(f"{widget} is empty: the custom preset needs at least one prompt, one per line")
        out = _adapter_path(lora_name)
        cfg = UnlearnConfig(
            preset=preset, out=str(out), model=model_spec, config_dir=config,
            concept=concept.strip() or None,
            unsafe_prompts=_lines(unsafe_prompts), safe_prompts=_lines(safe_prompts),
            num_pairs=num_pairs or None, steps=steps or None, beta=beta or None, seed=seed, preview=True,
            device=host.training_device(), mixed_precision=mixed_precision or "auto",
            gradient_checkpointing=gradient_checkpointing or "auto", resolution=_resolution(resolution),
            twin_negative=(twin_negative or "").strip() or None,
            overwrite=bool(overwrite))  # checked below against a differently trained file; the trainer checks it too
        preset_obj, plans = plan(cfg)  # every bad input is reported here, before anything is unloaded or written
        # the node has no widget for the pair folder: one per model and pair settings, as the tab keeps them
        cfg.pairs_dir = str(pairs_folder(host.work_dir(), out.stem, model_spec, plans))
        preset_obj, plans = plan(cfg)
        adapters = [Path(p.train.out) for p in plans]
        for path in adapters:
            host.check_adapter_slot(path)
        reusable = all(_same_training(path, p, preset_obj.name, model_spec, cfg.resolution)
                       for path, p in zip(adapters, plans))
        if not reusable:
            existing = [p.name for p in adapters if p.exists()]
            if existing and not overwrite:
                raise UserError(f"{', '.join(existing)} already exists in models/loras and was trained differently; "
                                "choose another lora_name or switch overwrite on")
            previews = [preview_path(p).name for p in adapters if preview_path(p).exists()]
            if previews and not overwrite:  # the trainer would refuse too, but in the CLI's words
                raise UserError(f"{', '.join(previews)} already exists in models/loras; choose another lora_name "
                                "or switch overwrite on")
            host.free_gpu()
            import torch

            # ComfyUI runs nodes under inference mode; training needs autograd (core TrainLoraNode does the same)
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    unlearn(cfg, progress=host.ComfyProgress())
            except torch.OutOfMemoryError as e:  # a card too small for the model: said as the CLI and tab say it
                raise UserError(out_of_memory_line(e)) from None
        texts = [summary(p.name, read_facts(p), None if ckpt_name in TESTBEDS else ckpt_name) for p in adapters]
        if reusable:
            texts.insert(0, "(already trained with these settings: reused, not retrained)")
        facts = "\n\n".join(texts)
        names = "\n".join(p.name for p in adapters)
        return {"ui": {"text": [facts]}, "result": (names, _preview_image(adapters[0]), facts)}


def _adapter_path(lora_name: str) -> Path:
    from ..extension.names import adapter_path

    try:
        return adapter_path(host.loras_dir(), lora_name)
    except UserError as e:  # the tab's words name its text box; here the widget is lora_name
        raise UserError(str(e).replace("Output name", "lora_name", 1)) from None


def _resolution(value) -> int | None:
    """The widget's INT, or what a link carries (a FLOAT): 0 is the model's native size."""
    if not value:
        return None
    if not float(value).is_integer():
        raise UserError(f"resolution must be a whole number of pixels (a multiple of 8), got {value}")
    return int(value)


def _model_and_configs(ckpt_name: str, config_dir: str) -> tuple[str, str | None]:
    """The trainer's model spec and, for a single file, a diffusers config folder (given, or found)."""
    if config_dir and Path(config_dir).is_file():
        raise UserError(f"config_dir {config_dir} is a file: give the folder that holds the model's diffusers "
                        "configs, or leave it empty")
    if ckpt_name in TESTBEDS:  # resolved (or said missing, with the command that trains it) by the trainer
        return ckpt_name, None
    from ..trainer.models import detect_family

    path = host.checkpoint_path(ckpt_name)
    if config_dir:
        if not (Path(config_dir) / "model_index.json").exists():
            raise UserError(f"config_dir {config_dir} is not a diffusers model folder (no model_index.json)")
        return str(path), config_dir
    if path.is_dir():
        return str(path), None
    found = host.diffusers_config_dir(detect_family(path), path)
    return str(path), str(found) if found else None


def _same_training(path: Path, p, preset_name: str, model_spec: str, resolution: int | None = None) -> bool:
    """An adapter already on disk that this request would retrain identically (the facts it records agree)."""
    if not path.exists():
        return False
    try:
        facts = read_facts(path)["facts"]
    except Exception:  # unreadable or not safetensors: not ours to reuse
        return False
    model_name = model_spec if model_spec in TESTBEDS else Path(model_spec).stem
    if not same_schedule(facts, p.train):
        return False
    want = {"preset": preset_name, "concept": p.concept.name, "seed": p.train.seed, "base_model": model_name,
            "method": p.train.method}
    if resolution is not None:  # native (None) is whatever the model's size is: not known without loading it
        want["resolution"] = resolution
    if p.train.lam_retain:  # the preset's retain set (its weight, its size) shapes the adapter as much as β does
        want |= {"lambda_retain": p.train.lam_retain, "retain_images": p.pairs.num_retain}
    if p.train.concept_directions:  # measured against the retain set: its size shapes the adapter too
        want["retain_images"] = p.pairs.num_retain
    if any(facts.get(k) != v for k, v in want.items()):
        return False
    if facts.get("twin_negative", UNSAFE_PROMPT) != p.pairs.twin_negative:  # its twins, and so its pairs, differ
        return False
    return (set(facts.get("unsafe_prompts", [])) <= set(p.concept.unsafe_prompts)
            and set(facts.get("safe_prompts", [])) <= set(p.concept.safe_prompts))


def _preview_image(adapter: Path):
    """The trainer's base | unlearned sheet as a ComfyUI IMAGE ([1, H, W, 3] floats); grey when there is none."""
    import numpy as np
    import torch
    from PIL import Image

    path = adapter.with_name(adapter.stem + ".preview.png")
    if not path.exists():
        return torch.full((1, 64, 64, 3), 0.5)
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]
