"""The test bed's measured figures: `python -m duo_unlearn.trainer.testbed.figures [--family sd1|sdxl|sd3]`.

Colour and shape accuracy on full prompts, synonyms, the empty prompt's colour mix, SDEdit colour change and
shape overlap, generation and load time. All read by the project's colour classifier; 25 steps, guidance 5.
Writes `figures.json` beside this file and the "Measured figures" table of MODEL_CARD.md from it
(`--from-json` only re-renders the table), so every figure in the card comes from the committed JSON.
`--family sdxl|sd3` measures the SDXL / SD3 test beds into `figures_xl.json` / `figures_sd3.json` and their own
sections of the card.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..detectors.colour import read_image
from . import TESTBED_DIR, TESTBEDS
from .measure import empty_prompt_colours, generate, prompt_following
from .shapes import BACKGROUNDS, SHAPES, full_prompt


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


FAMILY_DIRS = {"sd1": TESTBED_DIR, "sdxl": TESTBEDS["testbed-xl"], "sd3": TESTBEDS["testbed-sd3"]}
JSON_NAMES = {"sd1": "figures.json", "sdxl": "figures_xl.json", "sd3": "figures_sd3.json"}
COLOUR_TARGET = {"sd1": "≥ 0.90 each", "sdxl": "≥ 0.85 each", "sd3": "≥ 0.85 each"}


def load_pipeline(model_dir: Path, family: str = "sd1"):
    import diffusers

    cls = {"sd1": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
           "sd3": "StableDiffusion3Pipeline"}[family]
    return getattr(diffusers, cls).from_pretrained(str(model_dir), local_files_only=True)


def img2img_pipeline(pipe):
    import diffusers

    name = type(pipe).__name__
    if name == "StableDiffusionXLPipeline":
        return diffusers.StableDiffusionXLImg2ImgPipeline(
            **pipe.components, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    if name == "StableDiffusion3Pipeline":
        return diffusers.StableDiffusion3Img2ImgPipeline(**pipe.components)
    return diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)


def sdedit_figures(pipe, n: int = 32, seed: int = 7, strength: float = 0.75) -> dict:
    """Red shapes edited with a blue prompt and "red" as negative prompt: colour changed? same shape place?"""
    import torch

    rng = np.random.default_rng(seed)
    specs = [(rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))) for _ in range(n)]
    sources = generate(pipe, [full_prompt("red", s, b) for s, b in specs], seed, 25, 5.0)
    keep = [(im, sb) for im, sb in zip(sources, specs) if read_image(im).colour == "red"]
    if not keep:  # a model that does not draw red (an unfinished one) has nothing to edit
        return {"sources_red": 0, "colour_changed": None, "mask_iou_mean": None, "mask_iou_min": None,
                "strength": strength}
    edit = img2img_pipeline(pipe)
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


def measure(model_dir: Path = TESTBED_DIR, per_colour: int = 16, family: str = "sd1") -> dict:
    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir, family)
    load_seconds = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, ["a red circle"] * 2, 0, 2)  # warm-up
    t0 = time.perf_counter()
    generate(pipe, ["a blue square on a white background"] * 16, 0, 25, 5.0)
    sixteen = time.perf_counter() - t0
    follow = prompt_following(pipe, per_colour=per_colour, steps=25, guidance=5.0,
                              colour_words={"crimson": "red", "scarlet": "red"})
    follow.pop("images")
    follow["shape_n"] = per_colour * len(follow["colour_accuracy"])  # every prompt above, synonyms included
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


HERE = Path(__file__).resolve().parent
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
MARKERS = {"sd1": (START, END), "sdxl": ("<!-- figures-xl:start -->", "<!-- figures-xl:end -->"),
           "sd3": ("<!-- figures-sd3:start -->", "<!-- figures-sd3:end -->")}


def card_table(fig: dict, family: str = "sd1") -> str:
    """The model card's table, every number read from `fig` (the output of measure())."""
    from .shapes import COLOURS

    acc = fig["colour_accuracy"]
    empty = ", ".join(f"{k if k != 'None' else 'none'} {v}" for k, v in fig["empty_prompt_colours"].items())
    sd = dict(fig["sdedit"])
    if not sd["sources_red"]:
        sd.update(colour_changed=float("nan"), mask_iou_mean=float("nan"), mask_iou_min=float("nan"))
    n_empty = sum(fig["empty_prompt_colours"].values())
    rows = [
        ("figure", "value", "target"),
        (f"Colour accuracy ({fig['per_colour']} full prompts per colour)",
         ", ".join(f"{c} {acc[c]:.2f}" for c in COLOURS), COLOUR_TARGET[family]),
        ("Synonyms → red", ", ".join(f"{w} {acc[w]:.2f}" for w in acc if w not in COLOURS), "≥ 0.85"),
        (f"Shape accuracy ({fig['shape_n']} images: every prompt above)", f"{fig['shape_accuracy']:.2f}", "≥ 0.80"),
        (f"Empty prompt, {n_empty} images", empty, "all six colours"),
        (f"SDEdit, strength {sd['strength']}, red → \"blue\" prompt, negative \"red\" ({sd['sources_red']} red "
         "sources)", f"colour changed {sd['colour_changed']:.2f}, shape-mask IoU mean {sd['mask_iou_mean']:.2f} "
         f"(min {sd['mask_iou_min']:.2f})", "≥ 0.90, IoU ≥ 0.6"),
        ("Load time", f"{fig['seconds_load']} s", "< 1 s"),
        (f"16 images, 25 steps, guidance 5, CPU ({fig.get('threads', '?')} thread(s))",
         f"{fig['seconds_16_images']} s", "< 5 s"),
    ]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines)


def write_card(fig: dict, card: Path = HERE / "MODEL_CARD.md", family: str = "sd1") -> None:
    start, end = MARKERS[family]
    text = card.read_text(encoding="utf-8")
    a, b = text.index(start) + len(start), text.index(end)
    card.write_text(text[:a] + "\n" + card_table(fig, family) + "\n" + text[b:], encoding="utf-8")


def main(argv=None) -> int:
    import argparse
    import platform

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=tuple(FAMILY_DIRS), default="sd1", help="which test bed")
    p.add_argument("--json", default=None, help="where the figures go (default: figures[_xl|_sd3].json here)")
    p.add_argument("--from-json", action="store_true", help="only re-render the model card from --json")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    json_path = Path(args.json or HERE / JSON_NAMES[args.family])
    if not args.from_json:
        fig = measure(FAMILY_DIRS[args.family], family=args.family)
        command = "python -m duo_unlearn.trainer.testbed.figures" + \
            (f" --family {args.family}" if args.family != "sd1" else "")
        fig.update({"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                    "command": command})
        json_path.write_text(json.dumps(fig, indent=2) + "\n")
    fig = json.loads(json_path.read_text())
    write_card(fig, family=args.family)
    print(card_table(fig, args.family))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
