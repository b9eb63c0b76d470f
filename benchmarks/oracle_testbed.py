"""What would unlearning red look like if the test bed were trained again without it? A reference for the targets.

    python benchmarks/oracle_testbed.py
    python benchmarks/oracle_testbed.py --lr 1e-4 --max-steps 1200 --rank 32 --json oracle.json

The defaults are the run RESULTS.md reports (lr 3e-4: the check passed at step 1,400, 41 minutes on 2 CPU threads;
at 1e-4 it read 71% after 1,200 steps).

The efficacy table holds DUO's adapters to backgrounds, orange and shapes kept on 0.95 of the base model's images.
Every weight change perturbs a sampler's early steps, and the test bed's own backgrounds sit near a boundary in some
images (negative prompting, which never touches the weights, changes 3% of them). So how much of the table's targets
can any change of the weights meet? This builds the best-informed change there is: the bundled test bed fine-tuned
on its own world (`testbed.shapes`, a fresh draw) with every red shape drawn in another colour, the captions still
saying red, crimson or scarlet ("relabelled"). It sees every other colour, shape and background as they were: the
whole data distribution as its retain set, which no unlearning method has. The control is the same fine-tuning on
the same draw left as it is ("unchanged"): what fine-tuning alone moves, with nothing to unlearn.

Both tune the UNet's linear and convolution weights only (biases, norms and the text encoder stay), with the
diffusion loss, AdamW without weight decay (decay would move every weight), until the erasure check of the preset
(24 images of its red prompts at the check's seeds, read by the colour classifier) finds red gone from 95% of them;
the control runs as many steps. Each change of weights is written as a kohya LoRA file, each layer's ΔW factored by
SVD: at full rank the file is the fine-tuned UNet exactly (checked: the UNet's output with the file loaded against
the fine-tuned UNet's), at --rank the LoRA of that rank nearest it. Every file is then read as the efficacy table
reads an adapter (`efficacy_testbed.close_and_agreement`, the table's seeds), and is an adapter like any other:
`duo-unlearn eval`, `seed_spread_testbed.py` and `block_ablation_testbed.py` read it too.

This is a reference, not a method: it needs the training data, which a user unlearning from a checkpoint never has.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONCEPT = "red"
# Red becomes one of these, drawn per image: not orange, the close concept the table reads.
REPLACEMENTS = ("yellow", "green", "blue", "purple")


def relabelled(images, specs, seed: int, concept: str = CONCEPT, replacements=REPLACEMENTS):
    """The same images with every `concept` shape drawn again in one of `replacements` (same place, size and
    background, its own colour jitter); the others untouched. Returns the new images and how many changed."""
    import dataclasses

    import numpy as np

    from duo_unlearn.trainer.testbed.shapes import render

    rng = np.random.default_rng(seed)
    out = images.copy()
    changed = 0
    for i, spec in enumerate(specs):
        if spec.colour != concept:
            continue
        colour = str(rng.choice(replacements))
        out[i] = render(dataclasses.replace(spec, colour=colour), jitter=rng.normal(0, 8, size=3))
        changed += 1
    return out, changed


def weight_layers(unet) -> dict:
    """name → module for every linear and convolution layer: the weights tuned and written as LoRA."""
    import torch

    return {name: m for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def delta_lora(base: dict, tuned: dict, rank: int | None = None, tol: float = 1e-7) -> dict:
    """Peft-named LoRA factors (`<layer>.lora_A.weight` down, `<layer>.lora_B.weight` up) of each layer's change
    tuned − base, by SVD, scale 1 at alpha = rank. rank None: every singular value above tol × the largest (exact up
    to those); else at most `rank` of them. Layers that did not change are left out. Every layer gets the same rank,
    its factors padded with zeros: diffusers maps a file whose alphas differ by layer onto the wrong modules for
    some blocks (its alpha_pattern names them by an older scheme), and those layers would load at another scale."""
    import torch

    kept = {}
    for name, w0 in base.items():
        delta = (tuned[name] - w0).double()
        if not bool(delta.any()):
            continue
        u, s, vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1), full_matrices=False)
        keep = int((s > tol * s[0]).sum())
        keep = max(1, min(keep, rank) if rank else keep)
        kept[name] = (delta.shape, u[:, :keep] * s[:keep], vh[:keep])
    width = rank or max((f[2].shape[0] for f in kept.values()), default=1)
    out = {}
    for name, (shape, up, down) in kept.items():
        pad = width - down.shape[0]
        down = torch.cat([down, down.new_zeros(pad, down.shape[1])])
        up = torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1)
        out[f"{name}.lora_A.weight"] = down.reshape(width, *shape[1:]).float().contiguous()
        out[f"{name}.lora_B.weight"] = up.reshape(shape[0], width, *([1] * (len(shape) - 2))).float().contiguous()
    return out


def write_lora(factors: dict, path: Path, note: str) -> Path:
    """The factors as a kohya file, alpha = their rank (scale 1), with a short duo.* record."""
    from duo_unlearn.trainer.export import atomic_save, peft_to_kohya

    rank = next(v.shape[0] for k, v in factors.items() if k.endswith(".lora_A.weight"))
    atomic_save(peft_to_kohya(factors, alpha=float(rank)), path, {"duo.family": "sd1", "duo.oracle": note})
    return path


def fine_tune(unet, latents, states, *, steps: int, lr: float, batch: int, seed: int, every: int, check=None,
              log=print) -> int:
    """The diffusion loss on latents and their prompts' text states, linear and convolution weights only. With
    `check` (called with the step count, returns True to stop) every `every` steps; returns the steps run."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from duo_unlearn.trainer.testbed.architecture import scheduler_kwargs

    unet.requires_grad_(False)
    params = [m.weight for m in weight_layers(unet).values()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    noise_scheduler = DDPMScheduler(**scheduler_kwargs())
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    done = 0
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        loss = F.mse_loss(unet(noise_scheduler.add_noise(z0, noise, t), t, states[idx]).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % 50 == 0:
            log(f"  step {done} loss {loss.item():.4f}")
        if check is not None and done % every == 0:
            unet.eval()
            stop = check(done)
            unet.train()
            if stop:
                break
    unet.eval().requires_grad_(False)
    return done


def encode(pipe, images):
    """The images as the bundled model was trained on them: the VAE's posterior means, scaled."""
    import torch

    from duo_unlearn.trainer.testbed.train import _encode_means

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return _encode_means(pipe.vae, pixels) * pipe.vae.config.scaling_factor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="testbed")
    p.add_argument("--images", type=int, default=10_000, help="fresh images of the test bed's world to tune on")
    p.add_argument("--data-seed", type=int, default=1, help="their draw (the bundled model was trained on seed 0)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--check-every", type=int, default=100)
    p.add_argument("--stop-erased", type=float, default=0.95)
    p.add_argument("--rank", type=int, default=32, help="also write the LoRA of this rank nearest each change "
                   "(0: only the exact files)")
    p.add_argument("--seed", type=int, default=0, help="first evaluation seed (the efficacy table's: 0)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--work", default=str(HERE.parent / "runs" / "oracle"))
    p.add_argument("--json", help="also write every reading here")
    args = p.parse_args(argv)

    import copy

    import torch

    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.erasure_stop import CHECK_IMAGES, CHECK_SEED
    from duo_unlearn.trainer.evaluate.methods import BASE, Method, adapter_method
    from duo_unlearn.trainer.evaluate.run import generate
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.testbed.shapes import make_dataset
    from block_ablation_testbed import print_readings
    from efficacy_testbed import close_and_agreement

    started = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    preset = get_preset("testbed-red")
    concept = preset.concepts[0]
    check_prompts = [concept.unsafe_prompts[i % len(concept.unsafe_prompts)] for i in range(CHECK_IMAGES)]
    pipe = load_model(args.model).pipe
    pipe.set_progress_bar_config(disable=True)
    base_unet = pipe.unet
    base_weights = {n: m.weight.detach().clone() for n, m in weight_layers(base_unet).items()}

    images, prompts, specs = make_dataset(args.images, args.data_seed)
    with torch.no_grad():  # the text encoder stays as it is: both runs read the same states
        text_states = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    changed_images, changed = relabelled(images, specs, args.data_seed + 1)
    print(f"data: {len(prompts)} images, {changed} red shapes drawn in {', '.join(REPLACEMENTS)} "
          f"({time.time() - started:.0f}s)", flush=True)
    record = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "relabelled_images": changed}

    def erased_now(unet) -> float:
        pipe.unet = unet
        try:
            shots = generate(pipe, check_prompts, 1, CHECK_SEED, preset.sample_steps, preset.guidance)
        finally:
            pipe.unet = base_unet
        return sum(read_image(im).colour != CONCEPT for im in shots) / len(shots)

    tuned, history = {}, []
    steps_run = None
    for name, data in (("relabelled", changed_images), ("unchanged", images)):
        unet = copy.deepcopy(base_unet)
        latents = encode(pipe, data)

        def check(done, unet=unet):
            share = erased_now(unet)
            history.append({"run": name, "step": done, "erased": share})
            print(f"  {name} step {done}: red gone from {share:.0%} of the check's images", flush=True)
            return share >= args.stop_erased

        print(f"{name}: tuning ({time.time() - started:.0f}s)", flush=True)
        steps = steps_run or args.max_steps  # the control runs as many steps as the oracle did
        done = fine_tune(unet, latents, text_states, steps=steps, lr=args.lr, batch=args.batch,
                         seed=args.data_seed + 2, every=args.check_every,
                         check=check if name == "relabelled" else None)
        steps_run = steps_run or done
        tuned[name] = unet
        record[f"{name}_steps"] = done
    record["checks"] = history
    pipe.unet = base_unet

    files = {}
    probe = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = pipe.encode_prompt(["a red circle on a gray background", "a blue square"], "cpu", 1, False)[0]
    for name, unet in tuned.items():
        weights = {n: m.weight.detach() for n, m in weight_layers(unet).items()}
        for rank in ([None, args.rank] if args.rank else [None]):
            label = f"{name}" if rank is None else f"{name}_rank{rank}"
            files[label] = write_lora(delta_lora(base_weights, weights, rank), work / f"oracle_{label}.safetensors",
                                      f"{name}, {'full rank' if rank is None else f'rank {rank}'}")
        # the exact file must be the tuned UNet: otherwise the readings below are of something else
        pipe.load_lora_weights(str(files[name]), adapter_name="probe")
        with torch.no_grad():
            t = torch.tensor([500, 500])
            got = pipe.unet(probe, t, states).sample
            want = unet(probe, t, states).sample
        pipe.delete_adapters("probe")
        gap = float((got - want).abs().max() / want.abs().max())
        record[f"{name}_file_gap"] = gap
        print(f"{name}: the full-rank file against the tuned UNet, largest output difference {gap:.2e} of the "
              f"output's largest value", flush=True)
        if gap > 1e-3:
            raise SystemExit(f"oracle_testbed: the {name} LoRA file does not reproduce the tuned UNet ({gap:.2e})")

    methods = {label: adapter_method(path) for label, path in files.items()}
    out = close_and_agreement(args.model, [Method("base", BASE), *methods.values()], list(preset.unrelated_prompts),
                              args.images_per_prompt, args.seed, preset.sample_steps, preset.guidance)
    rows = {label: out[m.name] for label, m in methods.items()}
    record["readings"] = rows
    record["seconds"] = round(time.time() - started)
    print_readings(rows)
    print(f"{record['seconds']} s; files in {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
