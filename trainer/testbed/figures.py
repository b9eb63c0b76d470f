"""The test bed's measured figures (model card, issue targets): `python -m duo_unlearn.trainer.testbed.figures`.

Colour and shape accuracy on full prompts, synonyms, the empty prompt's colour mix, SDEdit colour change and
shape overlap, generation and load time. All read by the project's colour classifier; 25 steps, guidance 5.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..detectors.colour import read_image
from . import TESTBED_DIR
from .measure import empty_prompt_colours, generate, prompt_following
from .shapes import BACKGROUNDS, SHAPES, full_prompt


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def sdedit_figures(pipe, n: int = 32, seed: int = 7, strength: float = 0.75) -> dict:
    """Red shapes edited with a blue prompt and "red" as negative prompt: colour changed? same shape place?"""
    from diffusers import StableDiffusionImg2ImgPipeline

    import torch

    rng = np.random.default_rng(seed)
    specs = [(rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))) for _ in range(n)]
    sources = generate(pipe, [full_prompt("red", s, b) for s, b in specs], seed, 25, 5.0)
    keep = [(im, sb) for im, sb in zip(sources, specs) if read_image(im).colour == "red"]
    edit = StableDiffusionImg2ImgPipeline(**pipe.components)
    edit.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(seed * 1000 + i) for i in range(len(keep))]
    edited = edit(prompt=[full_prompt("blue", s, b) for _, (s, b) in keep], negative_prompt=["red"] * len(keep),
                  image=[im for im, _ in keep], strength=strength, num_inference_steps=25, guidance_scale=5.0,
                  generator=gens).images
    changed, ious = [], []
    for (src, _), out in zip(keep, edited):
        a, b = read_image(src), read_image(out)
        changed.append(b.colour != "red")
        ious.append(mask_iou(a.mask, b.mask))
    return {"sources_red": len(keep), "colour_changed": float(np.mean(changed)), "mask_iou_mean": float(np.mean(ious)),
            "mask_iou_min": float(np.min(ious)), "strength": strength}


def measure(model_dir: Path = TESTBED_DIR, per_colour: int = 16) -> dict:
    from diffusers import StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True)
    load_seconds = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, ["a red circle"] * 2, 0, 2)  # warm-up
    t0 = time.perf_counter()
    generate(pipe, ["a blue square on a white background"] * 16, 0, 25, 5.0)
    sixteen = time.perf_counter() - t0
    follow = prompt_following(pipe, per_colour=per_colour, steps=25, guidance=5.0,
                              colour_words={"crimson": "red", "scarlet": "red"})
    follow.pop("images")
    weights = sum(p.stat().st_size for p in Path(model_dir).rglob("*.safetensors"))
    return {
        **follow,
        "empty_prompt_colours": empty_prompt_colours(pipe, n=48, steps=25),
        "sdedit": sdedit_figures(pipe),
        "seconds_16_images": round(sixteen, 2),
        "seconds_load": round(load_seconds, 2),
        "weights_mb": round(weights / 1e6, 2),
        "per_colour": per_colour,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
