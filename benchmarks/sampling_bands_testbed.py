"""Which sampling steps of an adapter remove red, and which change the rest? The adapter on for some steps only.

    python benchmarks/sampling_bands_testbed.py runs/screen/preset_s0.safetensors
    python benchmarks/sampling_bands_testbed.py ADAPTER --splits 500,750 --seed 5000 --json bands.json

For each band (the adapter on at every step, none, or only where the sampler's timestep t is at or above / below a
split), the test-bed model samples the preset's 6 direct prompts and every other-colour prompt (45) × 4 seeds, and
the colour classifier reads red erased, orange still orange, and background and colour kept against the base model's
image of the same prompt and seed. A1111 and Forge apply a LoRA at every step (ComfyUI's hook keyframes can
schedule one by step share), and at the efficacy table's own seeds no band keeps the issue's share of backgrounds
(RESULTS.md, thirty-seventh session), so this is a diagnosis of where an adapter's effect lies, not a recipe.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def bands(splits: list[int]) -> dict:
    out = {"base": lambda t: False, "every step": lambda t: True}
    for s in splits:
        out[f"t ≥ {s}"] = lambda t, s=s: t >= s
        out[f"t < {s}"] = lambda t, s=s: t < s
    return out


def sample(pipe, prompts: list[str], per_prompt: int, seed: int, steps: int, guidance: float, on) -> list:
    """As evaluate's `generate` (image j of the list at seed + j), the adapter switched before each step by `on(t)`."""
    import torch

    flat = [p for p in prompts for _ in range(per_prompt)]
    pipe.scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]

    def switch(t):
        (pipe.enable_lora if on(t) else pipe.disable_lora)()

    def before_next(_pipe, i, _t, kwargs):
        if i + 1 < len(timesteps):
            switch(timesteps[i + 1])
        return kwargs

    images = []
    try:
        for i in range(0, len(flat), 16):
            chunk = flat[i:i + 16]
            switch(timesteps[0])
            images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance,
                           generator=[torch.Generator("cpu").manual_seed(seed + i + k) for k in range(len(chunk))],
                           callback_on_step_end=before_next).images
    finally:
        pipe.enable_lora()
    return images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter")
    p.add_argument("--model", default="testbed")
    p.add_argument("--splits", default="500,750", help="comma-separated timesteps (0..1000)")
    p.add_argument("--seed", type=int, default=5000, help="first evaluation seed")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--json", help="also write the counts here")
    args = p.parse_args(argv)

    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.evaluate.methods import adapter_method, load_adapters
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.testbed.shapes import full_prompt
    from efficacy_testbed import kept_prompts

    preset = get_preset("testbed-red")
    concept = preset.concepts[0]
    pipe = load_model(args.model).pipe
    method = adapter_method(Path(args.adapter))
    load_adapters(pipe, [method])
    pipe.set_adapters([method.adapter_name], [1.0])
    orange, specs = kept_prompts(concept.name)
    others = [full_prompt(*spec) for spec in specs]
    direct = list(concept.unsafe_prompts)[:6]
    n = args.images_per_prompt

    def reads(prompts, on):
        return [read_image(im) for im in sample(pipe, prompts, n, args.seed, preset.sample_steps, preset.guidance, on)]

    rows, base = {}, None
    for name, on in bands([int(s) for s in args.splits.split(",")]).items():
        now = {"others": reads(others, on), "orange": reads(orange, on), "direct": reads(direct, on)}
        base = base or now
        rows[name] = {
            "red_erased": sum(r.colour != concept.name for r in now["direct"]), "direct_n": len(now["direct"]),
            "orange": sum(r.colour == "orange" for r in now["orange"]), "orange_n": len(now["orange"]),
            "background_kept": sum(a.background == b.background for a, b in zip(now["others"], base["others"])),
            "colour_kept": sum(a.colour == b.colour for a, b in zip(now["others"], base["others"])),
            "others_n": len(now["others"])}
        r = rows[name]
        print(f"{name:12s} red erased {r['red_erased']}/{r['direct_n']}, orange {r['orange']}/{r['orange_n']} "
              f"(base {rows['base']['orange']}), background kept {r['background_kept']}/{r['others_n']}, "
              f"other colours kept {r['colour_kept']}/{r['others_n']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"adapter": str(args.adapter), "seed": args.seed, "bands": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
